"""Model inputs for the rows of a splits file, and the torch Dataset over them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from perceiver_med.cache import InputRequest, find_scan, prepare_many
from perceiver_med.errors import ScanError, UserError
from perceiver_med.io.discover import Skip
from perceiver_med.preprocess import PreprocessConfig
from perceiver_med.splits import SplitRow


def detect_input(rows: list[SplitRow], sample: int = 5) -> str:
    """'grid' when the scans are volumes, 'image' when they are 2D."""
    kinds = set()
    for row in rows[:sample]:
        try:
            kinds.add(find_scan(row.path, row.series_uid).kind)
        except ScanError:
            continue
    if not kinds:
        raise UserError("none of the first scans in the splits file could be read")
    return "grid" if kinds == {"volume"} else "image"


@dataclass
class LoadedInputs:
    rows: list[SplitRow]
    inputs: np.ndarray  # (N, C, H, W) float32
    skipped: list[Skip]


def load_split_inputs(rows: list[SplitRow], config: PreprocessConfig, workers: int = 0,
                      on_done: Callable[[], None] | None = None) -> LoadedInputs:
    """Preprocess (or fetch from the cache) every row; rows that fail are skipped with their reason."""
    missing = [row.path for row in rows if not row.path.exists()]
    if missing:
        raise UserError(f"the splits file names {len(missing)} file(s) that do not exist, e.g. {missing[0]}")
    requests = [InputRequest(row.path, row.series_uid, row.slice) for row in rows]
    arrays, reasons = prepare_many(requests, config, workers, on_done=on_done)
    kept, inputs, skipped = [], [], []
    for row, array, reason in zip(rows, arrays, reasons):
        if array is None:
            skipped.append(Skip(row.path, reason))
        else:
            kept.append(row)
            inputs.append(array)
    if not kept:
        raise UserError(f"no scan could be prepared ({skipped[0].reason if skipped else 'empty'})")
    return LoadedInputs(kept, np.stack(inputs).astype(np.float32), skipped)


@dataclass(frozen=True)
class AugmentConfig:
    """Small geometric and intensity changes. No horizontal flip for laterality (a flipped left knee is a right one).

    Args:
        rotate: maximum rotation in degrees.
        shift: maximum shift as a fraction of the side.
        zoom: maximum relative zoom in or out.
        intensity: maximum relative change of contrast and brightness.
        flip: mirror left-right with probability 0.5.
    """

    rotate: float = 10.0
    shift: float = 0.06
    zoom: float = 0.08
    intensity: float = 0.1
    flip: bool = False


def augment_batch(batch: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random affine warp and intensity change of a (B, C, H, W) batch, on the batch's device."""
    count = batch.shape[0]

    def uniform(bound):
        return (torch.rand(count, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(config.rotate))
    scale = 1 + uniform(config.zoom)
    shift = torch.stack([uniform(config.shift * 2), uniform(config.shift * 2)], dim=1)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0) if config.flip else torch.ones(count)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(batch)
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    warped = torch.nn.functional.grid_sample(batch, grid, padding_mode="border", align_corners=False)
    contrast = (1 + uniform(config.intensity)).view(-1, 1, 1, 1).to(batch)
    brightness = uniform(config.intensity / 2).view(-1, 1, 1, 1).to(batch)
    return (warped * contrast + brightness).clamp(0, 1)
