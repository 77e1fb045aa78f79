"""Array functions: intensities to [0, 1], resizing, the 3x3 slice grid, and planes sampled around a point in
patient millimetres. No files and no input kinds here: inputs/kinds.py composes these into each kind's input.

`config` is a run's PreprocessConfig (inputs/preprocess.py); these functions read its size, channels, window,
grid_pad, fov_mm and slice_mm.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_med.errors import ScanError
from perceiver_med.inputs.windows import image_to_unit, needs_statistics, statistics_slices, to_unit, volume_range

GRID_SLICES = 9
GRID_TILES = 3  # a grid is GRID_TILES x GRID_TILES tiles, one slice each
AIR_HU = -1000.0


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


def make_image(array: np.ndarray, config, window: tuple[float, float] | None = None, *,
               voi=None, modality: str = "") -> np.ndarray:
    """A 2D scan (or the middle slice of a volume) -> (C, S, S) in [0, 1], windowed as windows.py says.

    `voi`: a DICOM file's VOI module (dicom.DicomVoi); `window`: a VOI (center, width) without one. The middle
    slice of a volume is windowed as the whole volume is (by `modality`).
    """
    if array.ndim == 3:
        unit = to_unit(array[array.shape[0] // 2], *volume_window(array, config.window, modality))
    else:
        unit = image_to_unit(array, config.window, voi, window)
    return to_channels(resize(unit, config.size), config.channels)


def make_grid(volume: np.ndarray, config, center: int | None = None,
              modality: str = "") -> np.ndarray:
    """A volume -> (C, 3S, 3S): 9 consecutive slices, windowed (by `modality`, see windows.py), resized, tiled 3x3."""
    if volume.ndim != 3:
        raise ScanError("a 3x3 slice grid needs a volume, and this scan is a single 2D image")
    value_range = volume_window(volume, config.window, modality)
    return grid_of(volume[grid_slices(volume.shape[0], center, config.grid_pad)], config, value_range)


def grid_of(picked: np.ndarray, config, value_range: tuple[float, float]) -> np.ndarray:
    """The 9 display slices of a grid, already picked -> (C, 3S, 3S): windowed to `value_range`, resized, tiled."""
    unit = to_unit(picked, *value_range)
    return to_channels(tile_grid(resize(unit, config.size)), config.channels)


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


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    # antialiasing weights can overshoot [0, 1] by rounding; inputs stay in range
    return np.repeat(np.clip(image, 0.0, 1.0)[None], channels, axis=0).astype(np.float32)


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
    shape = (image.num_slices if image.slices is not None else image.voxels.shape[0], *image.voxels.shape[1:])

    def inside(index) -> bool:
        return all(-0.5 <= k <= n - 0.5 for k, n in zip(index, shape))

    index = image.to_voxel(point_lps)
    if not inside(index):
        x, y, z = (float(v) for v in point_lps)
        # The usual mistake: NIfTI/ITK world coordinates (RAS) given as DICOM LPS, x and y negated.
        mirrored = inside(image.to_voxel((-x, -y, z)))
        raise ScanError(f"point ({x:g}, {y:g}, {z:g}) mm lies outside this scan (voxel "
                        f"{', '.join(_voxel_number(k) for k in index)} of {'x'.join(map(str, shape))})"
                        + (f"; ({-x:g}, {-y:g}, {z:g}), x and y negated, lies inside: are the coordinates RAS "
                           "instead of LPS?" if mirrored else ""))
    return index


def _voxel_number(k: float) -> str:
    return f"{k:.0f}" if abs(k) < 1e6 else f"{k:.3g}"  # a point far off is not printed 30 digits long


def point_grid(image, point_lps, config) -> np.ndarray:
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
    return to_channels(tile_grid(to_unit(planes, *value_range)), config.channels)
