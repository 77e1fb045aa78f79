"""Augmentation of 3x3 slice grids: each tile is warped alike about its own centre (issue 11, item 6)."""
from __future__ import annotations

import torch

from perceiver_med.inputs.augment import AugmentConfig, augment_batch


def _grid_of_constant_tiles(batch: int = 4, side: int = 16) -> torch.Tensor:
    values = torch.arange(9, dtype=torch.float32) / 10 + 0.05  # tile k (slice k) holds k/10 + 0.05
    tiles = values.view(3, 3, 1, 1).expand(3, 3, side, side)
    return tiles.permute(0, 2, 1, 3).reshape(1, 1, 3 * side, 3 * side).repeat(batch, 1, 1, 1)


def test_no_content_crosses_a_tile_border():
    grid = _grid_of_constant_tiles()
    config = AugmentConfig(rotate=30, shift=0.2, zoom=0.2, intensity=0.0, flip=True, tiles=3)
    out = augment_batch(grid, config, torch.Generator().manual_seed(0))
    assert torch.allclose(out, grid, atol=1e-6)  # a warped constant tile is the same constant
    whole = augment_batch(grid, AugmentConfig(rotate=30, shift=0.2, zoom=0.2, intensity=0.0, tiles=1),
                          torch.Generator().manual_seed(0))
    assert not torch.allclose(whole, grid, atol=1e-3)  # warping the mosaic mixes slices: the defect fixed here


def test_a_mirror_keeps_the_slice_order_and_mirrors_each_tile():
    side = 16
    grid = _grid_of_constant_tiles(batch=1, side=side)
    grid[..., :, 0:2] = 1.0  # a bright stripe at the left edge of the left column of tiles
    config = AugmentConfig(rotate=0, shift=0, zoom=0, intensity=0.0, flip=True, tiles=3)
    mirrored = None
    for seed in range(20):  # flip has probability 0.5: find a mirrored draw
        out = augment_batch(grid, config, torch.Generator().manual_seed(seed))
        if not torch.allclose(out, grid):
            mirrored = out
            break
    assert mirrored is not None
    # the stripe is now at the right edge of the same (left) tiles, and every tile keeps its own slice's value
    assert torch.allclose(mirrored[0, 0, :, side - 2:side], torch.ones(3 * side, 2))
    assert torch.allclose(mirrored[0, 0, :, 0:side - 2], grid[0, 0, :, 2:side])
    assert torch.allclose(mirrored[0, 0, :, side:], grid[0, 0, :, side:].flip(-1).view(3 * side, 2, side).flip(1)
                          .reshape(3 * side, 2 * side))
