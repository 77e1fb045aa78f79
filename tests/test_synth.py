"""The lung phantom's difficulty: small nodules that differ between the classes only in shape."""
from __future__ import annotations

import numpy as np
import pytest

from perceiver_med.cache import InputRequest, prepare
from perceiver_med.io import discover
from perceiver_med.io.labels import folder_label
from perceiver_med.preprocess import PreprocessConfig, grid_slices
from perceiver_med.synth import DIFFICULTIES, LUNG_CENTRES, nodule_masks


def _nodules(difficulty, label, count=20):
    rng = np.random.default_rng(7)
    return [nodule_masks(label, rng, difficulty) for _ in range(count)]


def test_hard_nodules_are_3_to_6_pixels_and_show_in_3_to_5_grid_tiles():
    hard = DIFFICULTIES["hard"]
    depth, rows, cols = hard.shape
    tiles = set(grid_slices(depth))
    for label in ("benign", "malignant"):
        for core, _ in _nodules(hard, label):
            shown = [k for k in tiles if core[k].any()]
            assert 3 <= len(shown) <= 5
            zs, ys, xs = np.nonzero(core)
            middle = core[int(np.round(zs.mean()))]
            radius = np.sqrt(middle.sum() / np.pi)  # of a disc with the core's area in its middle slice
            assert 2.5 <= radius <= 6.5 if label == "benign" else 2.0 <= radius <= 7.5
            # near the middle of one lung: within spread_mm (+ a pixel) of a lung centre
            centre_x = (xs.mean() / (cols - 1) - 0.5)
            offset_mm = min(abs(centre_x - c) for c in LUNG_CENTRES) * (cols - 1) * hard.spacing[2]
            assert offset_mm <= hard.spread_mm + hard.spacing[2]


def test_hard_classes_share_size_and_differ_in_shape():
    """Size gives nothing away (the easy phantom's benign nodules were half the size); spicules do."""
    hard = DIFFICULTIES["hard"]
    benign, malignant = _nodules(hard, "benign", 30), _nodules(hard, "malignant", 30)
    size = {name: np.array([core.sum() for core, _ in masks]) for name, masks in
            (("benign", benign), ("malignant", malignant))}
    assert abs(np.median(size["benign"]) / np.median(size["malignant"]) - 1) < 0.35
    assert size["benign"].max() > size["malignant"].min() and size["malignant"].max() > size["benign"].min()
    assert not any(spicules.any() for _, spicules in benign)
    assert all(spicules.sum() > 0 for _, spicules in malignant)


@pytest.mark.parametrize("difficulty", ["medium", "hard"])
def test_synth_lung_difficulty_writes_small_nodule_series(tmp_path, run_cli, difficulty):
    data = tmp_path / "lung"
    code, out, err = run_cli("synth", "lung", data, "--patients", 2, "--difficulty", difficulty.upper())
    assert code == 0, err
    found = discover(data)
    assert sorted(folder_label(scan, found.root) for scan in found.scans) == ["benign", "malignant"]
    for scan in found.scans:
        assert scan.kind == "volume" and len(scan.files) == 24
    grid = prepare(InputRequest(found.scans[0].path), PreprocessConfig(input="grid", size=64), use_cache=False)
    assert grid.shape == (1, 192, 192)
    # tiles are the 64x64 slices themselves, not resized: the nodule keeps its 3-6 pixel radius
    assert run_cli("synth", "knee", tmp_path / "knee", "--difficulty", "hard")[0] == 2
