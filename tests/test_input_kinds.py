"""Input kinds: one interface for image, grid and point; "auto" decided in one place."""
from __future__ import annotations

import pytest

from perceiver_med.errors import UserError
from perceiver_med.inputs.kinds import KINDS, choose_kind
from perceiver_med.inputs.preprocess import PreprocessConfig


def test_auto_picks_a_point_grid_for_points_a_slice_grid_for_volumes_and_an_image_otherwise():
    assert choose_kind("auto", True, {"volume"}).name == "point"
    assert choose_kind(None, False, {"volume"}).name == "grid"
    assert choose_kind("auto", False, {"image"}).name == "image"
    assert choose_kind("auto", False, {"image", "volume"}).name == "image"  # mixed: what every scan can give
    assert choose_kind("image", False, {"volume"}).name == "image"  # as asked


def test_points_and_whole_scan_kinds_do_not_mix():
    with pytest.raises(UserError, match="centred on points, and none was given"):
        choose_kind("point", False, {"volume"})
    with pytest.raises(UserError, match=r"takes whole scans \(grid\), and points were given"):
        choose_kind("grid", True, {"volume"})


@pytest.mark.parametrize("name,side", [("image", 32), ("grid", 96), ("point", 96)])
def test_each_kind_gives_its_shape_and_tiles(name, side):
    config = PreprocessConfig(input=name, size=32, channels=3)
    assert config.output_shape == (3, side, side)
    assert KINDS[name].tiles * 32 == side  # augmentation treats each tile as its own picture


def test_an_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown input kind 'volume'"):
        PreprocessConfig(input="volume").output_shape
