"""A run's preprocessing: its settings (PreprocessConfig) and the exact model input they give for a scan.

The input kind named in the settings builds the input (inputs/kinds.py) from the array functions of
inputs/arrays.py; here a scan is read, decoding just the slices its input needs (9 of a volume for a grid, the
middle one for an image, a slab around a point), which gives exactly what `model_input` gives on the whole
decoded volume.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.inputs.arrays import point_lattice
from perceiver_med.inputs.kinds import DEFAULT_INPUT, KINDS, input_kind
from perceiver_med.inputs.windows import needs_statistics, parse_window, statistics_slices

# Point-centred grids: chosen on the nodule phantom (4-12 mm nodules), see arrays.point_grid.
POINT_FOV_MM = 40.0
POINT_SLICE_MM = 2.0
MAX_SIZE = 2048  # the largest side of an image or tile a run may ask for


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns a decoded scan into a model input; stored in every run.

    Args:
        input: "image" (one 2D picture, S x S), "grid" (9 consecutive slices tiled 3x3, 3S x 3S) or "point"
            (9 planes around a point in patient mm, tiled 3x3, 3S x 3S: see arrays.point_grid).
        size: side S of an image, or of one tile of the grid.
        channels: 1, or 3 to repeat the grey channel (the seed project's 64x64x3).
        window: how values become [0, 1]: "auto", "percentile", a CT preset ("lung", ...) or "LOW,HIGH" (see
            windows.py); (low, high) numbers and None ("percentile") are accepted and stored as that text.
        grid_pad: pad volumes with fewer than 9 slices by repeating the edge slices.
        fov_mm: side of the in-plane square of a point-centred grid ("point"), in mm.
        slice_mm: distance between the 9 planes of a point-centred grid, in mm.
    """

    input: str = DEFAULT_INPUT
    size: int = 64
    channels: int = 1
    window: str = "auto"
    grid_pad: bool = False
    fov_mm: float = POINT_FOV_MM
    slice_mm: float = POINT_SLICE_MM

    def __post_init__(self):
        object.__setattr__(self, "window", parse_window(self.window))

    def check(self) -> None:
        """ValueError naming the first field out of range (config.json's types are checked as it is read)."""
        if self.input not in KINDS:
            raise ValueError(f"input must be one of {', '.join(KINDS)}, not {self.input!r}")
        if not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be from 1 to {MAX_SIZE}, not {self.size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        for name in ("fov_mm", "slice_mm"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number of mm more than 0, not {getattr(self, name)}")

    @property
    def kind(self):
        """The InputKind named by `input` (inputs/kinds.py)."""
        return input_kind(self.input)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.kind.output_shape(self.size, self.channels)


def read_slices(num_slices: int, config: PreprocessConfig, modality: str, center: int | None = None) -> list[int]:
    """The display slices to decode for a model input: those it shows, and those that set its window."""
    shown = config.kind.shown_slices(num_slices, config, center)
    if not needs_statistics(config.window, modality):
        return shown
    return sorted(set(shown) | set(statistics_slices(num_slices)))


def model_input(image, config: PreprocessConfig, center: int | None = None, point=None) -> np.ndarray:
    """The exact model input for a decoded scan (a ScanImage from `read_scan`), as the run's input kind builds it.

    The image holds the whole scan, or only some display slices of a volume (`image.slices`, what
    `read_scan(scan, pick)` returns); both give the same input. A kind centred on points needs `point`, LPS mm.
    """
    return config.kind.build(image, config, center, point)


def scan_input(scan, config: PreprocessConfig, center: int | None = None, point=None) -> np.ndarray:
    """The exact model input for a scan found by `discover`, decoding only the slices it needs."""
    from perceiver_med.io import read_scan

    config.kind.check_scan(scan)
    if config.kind.takes_points:
        return model_input(informative(read_scan(scan, point_pick(scan, config, point))), config, point=point)
    image = read_scan(scan, lambda num_slices: read_slices(num_slices, config, scan.modality, center))
    return model_input(informative(image), config, center)


def informative(image):
    """The ScanImage itself, or ScanError when every voxel read has one value (a RescaleSlope of 0, an empty
    volume): its model input would be one flat grey, and a prediction from it a guess with nothing to guess from."""
    voxels = image.voxels
    low, high = float(voxels.min()), float(voxels.max())
    if low == high:
        read = "voxel" if image.slices is None else f"voxel of the {len(image.slices)} slice(s) it is made from"
        raise ScanError(f"constant: every {read} has the value {low:g}, so there is no image to classify")
    return image


def point_inputs(scan, config: PreprocessConfig, points) -> list:
    """The point grids of several points of one volume, decoding it once (a CT with four nodules was read four
    times, a NIfTI whole each time): the slices from the lowest any point needs to the highest, or all of them
    where `point_pick` cannot tell. Each item is the grid, or the ScanError that point alone raised."""
    from perceiver_med.io import read_scan

    config.kind.check_scan(scan)
    picks = [point_pick(scan, config, point) for point in points]
    pick = None
    if picks and all(p is not None for p in picks):
        def pick(num_slices: int) -> list[int]:
            wanted = [k for p in picks for k in p(num_slices)]
            return list(range(min(wanted), max(wanted) + 1))  # consecutive, as point_grid needs
    image = informative(read_scan(scan, pick))
    grids = []
    for point in points:
        try:
            grids.append(model_input(image, config, point=point))
        except ScanError as exc:
            grids.append(exc)
    return grids


def point_pick(scan, config: PreprocessConfig, point_lps):
    """For `read_scan`: the consecutive display slices a point grid samples (its smoothing margin included),
    when discovery already knows the geometry (a DICOM series); None (read everything) otherwise, or when the
    window needs the whole volume's values. A CT of 300 slices is then read 20 or 30 slices at a time."""
    from types import SimpleNamespace

    from perceiver_med.io.orientation import display_affine

    if scan.grid_affine is None or len(scan.grid_shape) != 3 or needs_statistics(config.window, scan.modality):
        return None
    affine = display_affine(np.asarray(scan.grid_affine, float), scan.grid_shape)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        return None
    lattice = point_lattice(SimpleNamespace(affine=affine), point_lps, config.fov_mm, config.slice_mm, config.size)
    depth = np.linalg.inv(affine)[0, :3] @ lattice.reshape(-1, 3).T + np.linalg.inv(affine)[0, 3]
    thickness = float(np.linalg.norm(affine[:3, 0]))
    step = config.slice_mm / thickness
    # twice point_grid's crop margin: its crop, and so its smoothing, is then the one of the whole volume
    margin = 2 * (int(np.ceil(3 * np.sqrt(max(step ** 2 - 1.0, 0.0)) / 2)) + 2)

    def pick(num_slices: int) -> list[int]:
        low = int(np.clip(np.floor(depth.min()) - margin, 0, num_slices - 1))
        high = int(np.clip(np.ceil(depth.max()) + margin, low, num_slices - 1))
        return list(range(low, high + 1))

    return pick
