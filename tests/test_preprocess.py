import numpy as np
import pytest

from perceiver_med.errors import ScanError
from perceiver_med.inputs.arrays import grid_slices, make_grid, make_image
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.inputs.windows import to_unit
from tests.conftest import index_volume


def test_grid_is_row_major_in_slice_order_centred_on_the_middle():
    volume = index_volume(slices=15, rows=32, cols=32)  # slice k = 100k - 1000 HU
    grid = make_grid(volume, PreprocessConfig(input="grid", size=8, window=(-1000, 400)))
    assert grid.shape == (1, 24, 24)
    tiles = [grid[0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].mean() for r in range(3) for c in range(3)]
    expected = [(100 * k) / 1400 for k in range(3, 12)]  # middle slice 7, so slices 3..11
    np.testing.assert_allclose(tiles, expected, atol=1e-5)


def test_grid_centre_from_a_slice_column_and_clamping_at_the_edge():
    assert grid_slices(20, center=2) == list(range(0, 9))
    assert grid_slices(20, center=15) == list(range(11, 20))
    assert grid_slices(20, center=10) == list(range(6, 15))


def test_too_few_slices_is_a_clear_error_unless_padded():
    volume = index_volume(slices=5)
    with pytest.raises(ScanError, match="only 5 slices"):
        make_grid(volume, PreprocessConfig(input="grid", size=8))
    padded = make_grid(volume, PreprocessConfig(input="grid", size=8, grid_pad=True))
    assert padded.shape == (1, 24, 24)


def test_ct_window_clips_to_unit_range():
    out = to_unit(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]), -1000, 400)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])


def test_image_uses_percentiles_without_a_window_and_voi_with_one():
    image = np.linspace(0, 1000, 100 * 100).reshape(100, 100).astype(np.float32)
    plain = make_image(image, PreprocessConfig(size=32))
    assert plain.shape == (1, 32, 32) and plain.min() < 0.02 and plain.max() > 0.98
    windowed = make_image(image, PreprocessConfig(size=32, channels=3), window=(250.5, 101))
    assert windowed.shape == (3, 32, 32)
    assert 0.15 < (windowed[0] < 1e-3).mean() < 0.2 and 0.65 < (windowed[0] > 1 - 1e-3).mean() < 0.7


def test_resize_is_antialiased():
    stripes = np.tile([0.0, 1.0], (64, 32)).astype(np.float32)  # one-pixel stripes
    small = make_image(stripes, PreprocessConfig(size=16))
    assert small.std() < 0.05  # averaged, not aliased into stripes
