"""Task-aware augmentation of model inputs: small warps and intensity changes that keep a sample's label true."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange


@dataclass(frozen=True)
class AugmentConfig:
    """Small geometric and intensity changes. No horizontal flip for laterality (a flipped left knee is a right one).

    Args:
        rotate: maximum rotation in degrees.
        shift: maximum shift as a fraction of the side.
        zoom: maximum relative zoom in or out.
        intensity: maximum relative change of contrast and brightness.
        flip: mirror left-right with probability 0.5.
        tiles: the input is a tiles x tiles mosaic of slices (3 for a grid): each tile is warped and mirrored
            alike, about its own centre, so no content crosses a tile border and a mirror keeps the slice order;
            warping the whole mosaic would show training inputs that evaluation never sees.
    """

    rotate: float = 10.0
    shift: float = 0.06
    zoom: float = 0.08
    intensity: float = 0.1
    flip: bool = False
    tiles: int = 1

    def check(self) -> None:
        """ValueError naming the first field out of range (config.json's types are checked as it is read)."""
        for name, high in (("rotate", 180.0), ("shift", 1.0), ("zoom", 0.9), ("intensity", 1.0)):
            if not 0 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be from 0 to {high:g}, not {getattr(self, name)}")
        if self.tiles < 1:
            raise ValueError(f"tiles must be 1 or more, not {self.tiles}")


def augment_batch(batch: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random affine warp and intensity change of a (B, C, H, W) batch, on the batch's device."""
    count, tiles = batch.shape[0], config.tiles

    def uniform(bound):
        return (torch.rand(count, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(config.rotate))
    scale = 1 + uniform(config.zoom)
    shift = torch.stack([uniform(config.shift * 2), uniform(config.shift * 2)], dim=1)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0) if config.flip else torch.ones(count)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(batch)
    pieces = rearrange(batch, "b c (r h) (q w) -> (b r q) c h w", r=tiles, q=tiles)  # one piece per tile
    grid = torch.nn.functional.affine_grid(theta.repeat_interleave(tiles * tiles, dim=0), list(pieces.shape),
                                           align_corners=False)
    warped = torch.nn.functional.grid_sample(pieces, grid, padding_mode="border", align_corners=False)
    warped = rearrange(warped, "(b r q) c h w -> b c (r h) (q w)", r=tiles, q=tiles)
    contrast = (1 + uniform(config.intensity)).view(-1, 1, 1, 1).to(batch)
    brightness = uniform(config.intensity / 2).view(-1, 1, 1, 1).to(batch)
    return (warped * contrast + brightness).clamp(0, 1)
