"""Array functions: intensities to [0, 1], resizing, and the 3x3 slice grid.

No files here, except in `scan_input`, which reads just the slices a model input needs (9 of a
volume for a grid, the middle one for an image) and gives exactly what `model_input` gives on the
whole decoded volume.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_med.errors import ScanError

GRID_SLICES = 9
CT_WINDOW = (-1000.0, 400.0)


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns a decoded scan into a model input; stored in every run.

    Args:
        input: "image" (one 2D picture, S x S) or "grid" (9 consecutive slices tiled 3x3, 3S x 3S).
        size: side S of an image, or of one tile of the grid.
        channels: 1, or 3 to repeat the grey channel (the seed project's 64x64x3).
        window: (low, high) intensity window of grids, in HU for CT; None for percentiles.
        grid_pad: pad volumes with fewer than 9 slices by repeating the edge slices.
    """

    input: str = "image"
    size: int = 64
    channels: int = 1
    window: tuple[float, float] | None = CT_WINDOW
    grid_pad: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        data = dict(data)
        if data.get("window") is not None:
            data["window"] = tuple(float(v) for v in data["window"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def output_shape(self) -> tuple[int, int, int]:
        side = self.size * 3 if self.input == "grid" else self.size
        return (self.channels, side, side)


def scale_to_unit(array: np.ndarray, window: tuple[float, float] | None = None,
                  percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip to `window` = (low, high), or to the percentiles when no window is given, and map to [0, 1]."""
    if window is None:
        low, high = np.percentile(array, percentiles)
    else:
        low, high = window
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)


def voi_to_range(window: tuple[float, float]) -> tuple[float, float]:
    """DICOM VOI (center, width) -> (low, high), the linear function of PS3.3 C.11.2.1.2."""
    center, width = window
    return (center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize the last two axes to size x size, antialiased when shrinking."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    lead = tensor.shape[:-2]
    tensor = tensor.reshape(1, -1, *tensor.shape[-2:])
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, size, size).numpy()


def grid_slices(num_slices: int, center: int | None = None, pad: bool = False) -> list[int]:
    """Indices of the 9 consecutive slices centred on `center` (default: the middle slice)."""
    if num_slices < GRID_SLICES and not pad:
        raise ScanError(f"only {num_slices} slices, a 3x3 grid needs {GRID_SLICES} (use --grid-pad)")
    center = num_slices // 2 if center is None else int(center)
    if not 0 <= center < num_slices:
        raise ScanError(f"slice {center} is outside the volume's {num_slices} slices")
    start = center - GRID_SLICES // 2
    if num_slices >= GRID_SLICES:
        start = min(max(start, 0), num_slices - GRID_SLICES)
    return [min(max(start + k, 0), num_slices - 1) for k in range(GRID_SLICES)]


def tile_grid(slices: np.ndarray) -> np.ndarray:
    """(9, S, S) -> (3S, 3S), row-major in slice order: slice 0 top-left, slice 8 bottom-right."""
    count, height, width = slices.shape
    return slices.reshape(3, 3, height, width).transpose(0, 2, 1, 3).reshape(3 * height, 3 * width)


def make_image(array: np.ndarray, config: PreprocessConfig, window: tuple[float, float] | None = None) -> np.ndarray:
    """A 2D scan (or the middle slice of a volume) -> (C, S, S) in [0, 1]."""
    if array.ndim == 3:
        array = array[array.shape[0] // 2]
    unit = scale_to_unit(array, voi_to_range(window) if window else None)
    return _channels(resize(unit, config.size), config.channels)


def make_grid(volume: np.ndarray, config: PreprocessConfig, center: int | None = None) -> np.ndarray:
    """A volume -> (C, 3S, 3S): 9 consecutive slices, windowed, resized and tiled 3x3."""
    if volume.ndim != 3:
        raise ScanError("a 3x3 slice grid needs a volume, and this scan is a single 2D image")
    return _grid(volume[grid_slices(volume.shape[0], center, config.grid_pad)], config)


def _grid(picked: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    unit = scale_to_unit(picked, config.window)
    return _channels(tile_grid(resize(unit, config.size)), config.channels)


def input_slices(num_slices: int, config: PreprocessConfig, center: int | None = None) -> list[int]:
    """The display slices of a volume that its model input uses: 9 for a grid, the middle one for an image."""
    if config.input == "grid":
        return grid_slices(num_slices, center, config.grid_pad)
    return [num_slices // 2]


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    # antialiasing weights can overshoot [0, 1] by rounding; inputs stay in range
    return np.repeat(np.clip(image, 0.0, 1.0)[None], channels, axis=0).astype(np.float32)


def model_input(array: np.ndarray, meta: dict, config: PreprocessConfig, center: int | None = None) -> np.ndarray:
    """The exact model input for a decoded scan.

    `array` is the whole scan, or, when `meta` has "slices" and "num_slices", those display slices of a
    volume (what `read_scan(scan, pick)` returns); both give the same input.
    """
    if "slices" in meta and array.ndim == 3:
        held = {k: n for n, k in enumerate(meta["slices"])}
        wanted = input_slices(meta["num_slices"], config, center)
        if any(k not in held for k in wanted):
            raise ScanError("the slices read are not the ones this input needs")
        picked = array[[held[k] for k in wanted]]
        if config.input == "grid":
            return _grid(picked, config)
        return make_image(picked[0], config, meta.get("window"))
    if config.input == "grid":
        return make_grid(array, config, center)
    return make_image(array, config, meta.get("window"))


def scan_input(scan, config: PreprocessConfig, center: int | None = None) -> np.ndarray:
    """The exact model input for a scan found by `discover`, decoding only the slices it needs."""
    from perceiver_med.io import read_scan

    if config.input == "grid" and scan.kind != "volume":
        raise ScanError("a 3x3 slice grid needs a volume, and this scan is a single 2D image")
    array, meta = read_scan(scan, lambda num_slices: input_slices(num_slices, config, center))
    return model_input(array, meta, config, center)
