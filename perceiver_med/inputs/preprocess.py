"""Array functions: intensities to [0, 1], resizing, and the 3x3 slice grid.

No files here, except in `scan_input`, which reads just the slices a model input needs (9 of a
volume for a grid, the middle one for an image) and gives exactly what `model_input` gives on the
whole decoded volume.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_med.errors import ScanError
from perceiver_med.inputs.windows import (image_to_unit, needs_statistics, parse_window, statistics_slices,
                                   to_unit, volume_range)

GRID_SLICES = 9
GRID_TILES = 3  # a grid is GRID_TILES x GRID_TILES tiles, one slice each
# Point-centred grids: chosen on the nodule phantom (4-12 mm nodules), see point_grid.
POINT_FOV_MM = 40.0
POINT_SLICE_MM = 2.0
MAX_SIZE = 2048  # the largest side of an image or tile a run may ask for
AIR_HU = -1000.0


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns a decoded scan into a model input; stored in every run.

    Args:
        input: "image" (one 2D picture, S x S), "grid" (9 consecutive slices tiled 3x3, 3S x 3S) or "point"
            (9 planes around a point in patient mm, tiled 3x3, 3S x 3S: see point_grid).
        size: side S of an image, or of one tile of the grid.
        channels: 1, or 3 to repeat the grey channel (the seed project's 64x64x3).
        window: how values become [0, 1]: "auto", "percentile", a CT preset ("lung", ...) or "LOW,HIGH" (see
            windows.py); (low, high) numbers and None ("percentile") are accepted and stored as that text.
        grid_pad: pad volumes with fewer than 9 slices by repeating the edge slices.
        fov_mm: side of the in-plane square of a point-centred grid ("point"), in mm.
        slice_mm: distance between the 9 planes of a point-centred grid, in mm.
    """

    input: str = "image"
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
        from perceiver_med.inputs.kinds import KINDS

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
        from perceiver_med.inputs.kinds import input_kind

        return input_kind(self.input)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.kind.output_shape(self.size, self.channels)


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
    return slices.reshape(GRID_TILES, GRID_TILES, height, width).transpose(0, 2, 1, 3).reshape(
        GRID_TILES * height, GRID_TILES * width)


def make_image(array: np.ndarray, config: PreprocessConfig, window: tuple[float, float] | None = None, *,
               voi=None, modality: str = "") -> np.ndarray:
    """A 2D scan (or the middle slice of a volume) -> (C, S, S) in [0, 1], windowed as windows.py says.

    `voi`: a DICOM file's VOI module (dicom.DicomVoi); `window`: a VOI (center, width) without one. The middle
    slice of a volume is windowed as the whole volume is (by `modality`).
    """
    if array.ndim == 3:
        unit = to_unit(array[array.shape[0] // 2], *volume_window(array, config.window, modality))
    else:
        unit = image_to_unit(array, config.window, voi, window)
    return _channels(resize(unit, config.size), config.channels)


def make_grid(volume: np.ndarray, config: PreprocessConfig, center: int | None = None,
              modality: str = "") -> np.ndarray:
    """A volume -> (C, 3S, 3S): 9 consecutive slices, windowed (by `modality`, see windows.py), resized, tiled 3x3."""
    if volume.ndim != 3:
        raise ScanError("a 3x3 slice grid needs a volume, and this scan is a single 2D image")
    value_range = volume_window(volume, config.window, modality)
    return _grid(volume[grid_slices(volume.shape[0], center, config.grid_pad)], config, value_range)


def _grid(picked: np.ndarray, config: PreprocessConfig, value_range: tuple[float, float]) -> np.ndarray:
    unit = to_unit(picked, *value_range)
    return _channels(tile_grid(resize(unit, config.size)), config.channels)


def volume_window(voxels: np.ndarray, window: str, modality: str, slices=None, num_slices: int = 0
                  ) -> tuple[float, float]:
    """(low, high) of a volume: `voxels` is the whole volume, or its display slices `slices` of `num_slices`
    (which must include the `windows.statistics_slices` when the window depends on the values)."""
    if not needs_statistics(window, modality):
        return volume_range(window, modality, None)
    if slices is None:
        return volume_range(window, modality, voxels[statistics_slices(voxels.shape[0])])
    held = {k: n for n, k in enumerate(slices)}
    wanted = statistics_slices(num_slices)
    if any(k not in held for k in wanted):
        raise ScanError("the slices read do not include those that set this volume's intensity window")
    return volume_range(window, modality, voxels[[held[k] for k in wanted]])


def read_slices(num_slices: int, config: PreprocessConfig, modality: str, center: int | None = None) -> list[int]:
    """The display slices to decode for a model input: those it shows, and those that set its window."""
    shown = config.kind.shown_slices(num_slices, config, center)
    if not needs_statistics(config.window, modality):
        return shown
    return sorted(set(shown) | set(statistics_slices(num_slices)))


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    # antialiasing weights can overshoot [0, 1] by rounding; inputs stay in range
    return np.repeat(np.clip(image, 0.0, 1.0)[None], channels, axis=0).astype(np.float32)


def shown_part(image, config: PreprocessConfig, center: int | None = None
               ) -> tuple[np.ndarray, tuple[float, float]] | None:
    """For a volume decoded in part (`image.slices`): the display slices its input shows and the whole volume's
    value range; None for a scan decoded whole."""
    array = image.voxels
    if image.slices is None or array.ndim != 3:
        return None
    held = {k: n for n, k in enumerate(image.slices)}
    wanted = config.kind.shown_slices(image.num_slices, config, center)
    if any(k not in held for k in wanted):
        raise ScanError("the slices read are not the ones this input needs")
    value_range = volume_window(array, config.window, image.modality, image.slices, image.num_slices)
    return array[[held[k] for k in wanted]], value_range


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


# ---------------------------------------------------------------- grids centred on a point, in millimetres
def point_lattice(image, point_lps, fov_mm: float, slice_mm: float, size: int) -> np.ndarray:
    """(9, S, S, 3): LPS mm of the samples of a point-centred grid.

    Nine planes perpendicular to the scan's slice axis, `slice_mm` apart (plane 4 through the point), each an
    `fov_mm` square of S x S sample centres; in-plane axes follow the scan's rows (anterior -> posterior) and
    columns (right -> left), so a tile reads like a slice of the whole-slice grid.
    """
    axes = np.asarray(image.affine, float)[:3, :3]
    row_dir = axes[:, 1] / np.linalg.norm(axes[:, 1])
    col_dir = axes[:, 2] - (axes[:, 2] @ row_dir) * row_dir  # orthogonal even if the file's axes are not quite
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    normal *= np.sign(normal @ axes[:, 0]) or 1.0  # inferior -> superior, as the slices are ordered
    along = ((np.arange(size) + 0.5) / size - 0.5) * fov_mm
    planes = (np.arange(GRID_SLICES) - GRID_SLICES // 2) * slice_mm
    return (np.asarray(point_lps, float)[None, None, None]
            + planes[:, None, None, None] * normal
            + along[None, :, None, None] * row_dir
            + along[None, None, :, None] * col_dir)


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


def point_voxel(image, point_lps) -> np.ndarray:
    """The point's voxel index (slice, row, col); ScanError when the scan has no geometry or the point is outside."""
    if image.voxels.ndim != 3:
        raise ScanError("a point-centred grid needs a volume, and this scan is a single 2D image")
    if not image.has_patient_geometry:
        raise ScanError("the file does not place this scan in the patient (no orientation or position), so a "
                        "point in patient millimetres cannot be found in it")
    guessed = [size for size in ("pixel spacing", "slice spacing") if size in image.assumed]
    if guessed:  # 1 mm stands in for it: the grid would show another field of view, off-centre
        raise ScanError(f"the file does not give its {' or '.join(guessed)} (1 mm would be assumed), so a point in "
                        "patient millimetres cannot be placed in it")
    index = image.to_voxel(point_lps)
    shape = (image.num_slices if image.slices is not None else image.voxels.shape[0], *image.voxels.shape[1:])
    if any(not -0.5 <= k <= n - 0.5 for k, n in zip(index, shape)):
        x, y, z = (float(v) for v in point_lps)
        raise ScanError(f"point ({x:g}, {y:g}, {z:g}) mm lies outside this scan (voxel "
                        f"{', '.join(f'{k:.0f}' for k in index)} of {'x'.join(map(str, shape))})")
    return index


def point_grid(image, point_lps, config: PreprocessConfig) -> np.ndarray:
    """A volume around a point -> (C, 3S, 3S): 9 planes `slice_mm` apart, each an `fov_mm` square, windowed and
    tiled 3x3 (plane 4, through the point, in the middle tile).

    Sampled in millimetres, so a grid covers the same anatomy whatever the slice thickness and pixel spacing:
    the voxels are smoothed where the samples are sparser than the voxels (no aliasing), then interpolated
    linearly at each sample; samples outside the volume are air for CT, else the volume's minimum.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    point_voxel(image, point_lps)
    volume = image.voxels
    first = image.slices[0] if image.slices is not None else 0
    if image.slices is not None and list(image.slices) != list(range(first, first + len(image.slices))):
        raise ScanError("a point-centred grid needs consecutive slices")
    size = config.size
    coords = image.to_voxel(point_lattice(image, point_lps, config.fov_mm, config.slice_mm, size).reshape(-1, 3))
    coords[:, 0] -= first
    steps = np.array([config.slice_mm, config.fov_mm / size, config.fov_mm / size]) / np.asarray(image.spacing)
    sigma = np.sqrt(np.maximum(steps ** 2 - 1.0, 0.0)) / 2
    margin = np.ceil(3 * sigma).astype(int) + 2
    low = np.maximum(np.floor(coords.min(axis=0)).astype(int) - margin, 0)
    high = np.minimum(np.ceil(coords.max(axis=0)).astype(int) + margin + 1, volume.shape)
    fill = AIR_HU if image.modality.upper() == "CT" else float(volume.min())
    if np.any(high <= low):  # the lattice misses the volume (cannot happen for a point inside it)
        samples = np.full(len(coords), fill, np.float32)
    else:
        crop = volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]].astype(np.float32)
        if sigma.any():
            crop = gaussian_filter(crop, sigma, mode="nearest")
        samples = map_coordinates(crop, (coords - low).T, order=1, mode="constant", cval=fill)
    planes = samples.reshape(GRID_SLICES, size, size)
    value_range = volume_window(volume, config.window, image.modality, image.slices, image.num_slices)
    return _channels(tile_grid(to_unit(planes, *value_range)), config.channels)
