"""One orientation convention for every volume, whichever file format it came from.

Volumes are returned as (slices, rows, cols) in the radiological axial view: slices run
inferior -> superior, rows anterior -> posterior, columns patient-right -> patient-left.
That is what an axial DICOM series shows, and what a NIfTI becomes after reorienting to RAS
and flipping its first two axes, so the same anatomy gives the same array from either format.
Shapes and spacings are reported in the same order, (slices, rows, cols), by every reader.

`display_slices` gives some display slices of a volume while reading only the voxel planes they
come from, equal to the same slices of `to_display` of the whole volume. `display_affine` says where
every display voxel sits in the patient (DICOM LPS millimetres), for the array `to_display` gives.

Affines given to these functions map stored voxel indices (i, j[, k]) to RAS millimetres, as nibabel's
do; only `display_affine` answers in LPS, the space every ScanImage is placed in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from perceiver_med.errors import ScanError


def _transform(affine: np.ndarray) -> np.ndarray:
    """Per voxel axis: (RAS axis it becomes, +1 or -1). Axes an affine leaves undetermined keep their order."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ScanError("its voxel-to-world matrix (affine) is not a finite 4x4 matrix")
    ornt = io_orientation(affine)
    missing = np.isnan(ornt[:, 0])
    if missing.any():  # a zero voxel size: keep that axis where it is
        free = [axis for axis in range(3) if axis not in set(ornt[~missing, 0].astype(int))]
        for row, axis in zip(np.flatnonzero(missing), free):
            ornt[row] = (axis, 1)
    return ornt_transform(ornt, axcodes2ornt("RAS"))


def _zooms(affine: np.ndarray, transform: np.ndarray) -> np.ndarray:
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    return zooms[np.argsort(transform[:, 0])]  # zooms of the reoriented axes, in RAS order


def to_display(data_ijk: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorient voxel data (i, j[, k]) with a RAS affine; return the display array and spacing (z, y, x).

    A 2D array is a single slice: the result is that slice as displayed, (rows, cols). A single coronal or
    sagittal slice is shown with superior at the top.
    """
    squeeze = data_ijk.ndim == 2
    data = data_ijk[..., None] if squeeze else data_ijk
    transform = _transform(affine)
    ras = apply_orientation(data, transform)
    zooms = _zooms(affine, transform)
    display = np.ascontiguousarray(ras.transpose(2, 1, 0)[:, ::-1, ::-1], dtype=np.float32)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    if squeeze:
        return _squeeze(display, spacing, 2 - int(transform[2, 0]))
    return display, spacing


def _squeeze(display: np.ndarray, spacing: tuple, axis: int) -> tuple[np.ndarray, tuple[float, ...]]:
    image = np.take(display, 0, axis=axis)
    if axis != 0:  # a coronal or sagittal slice: superior at the top
        image = image[::-1]
    return np.ascontiguousarray(image), tuple(s for k, s in enumerate(spacing) if k != axis)


LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def display_affine(affine: np.ndarray, shape_ijk: Sequence[int]) -> np.ndarray:
    """(slice, row, col, 1) of the array `to_display(data, affine)` gives -> LPS mm (a 4x4 matrix).

    For 2D data the display image is one plane, indexed (0, row, col): the first column is then the plane's
    normal (towards superior for an axial plane, posterior for a coronal one, patient-left for a sagittal
    one), one voxel of the stored third axis long.
    """
    shape = tuple(int(s) for s in shape_ijk)
    padded = shape + (1,) * (3 - len(shape))
    transform = _transform(affine)
    ras_shape = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        ras_shape[int(target)] = padded[axis]
    columns, rows, slices = ras_shape  # sizes along R, A, S after reorienting
    # display[s, r, c] = ras[columns - 1 - c, rows - 1 - r, s]
    display_to_ras = np.array([[0, 0, -1, columns - 1], [0, -1, 0, rows - 1], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    index = inv_ornt_aff(transform, padded) @ display_to_ras
    if len(shape) == 2:
        index = index @ _plane_to_volume(2 - int(transform[2, 0]), slices)
    return LPS_FROM_RAS @ np.asarray(affine, float) @ index


def _plane_to_volume(axis: int, slices: int) -> np.ndarray:
    """(normal, row, col) of a 2D display image -> (slice, row, col) of the one-plane display volume it came from.

    Mirrors `_squeeze`: a coronal or sagittal image has superior at the top, so its rows count slices down.
    """
    if axis == 0:
        return np.eye(4)
    matrix = np.zeros((4, 4))
    matrix[0, 1], matrix[0, 3] = -1.0, slices - 1  # display slice = slices - 1 - image row
    matrix[axis, 0] = 1.0  # the squeezed axis is the plane's normal
    matrix[3 - axis, 2] = 1.0  # coronal: image column = display column; sagittal: = display row
    matrix[3, 3] = 1.0
    return matrix


def display_shape(shape_ijk: Sequence[int], affine: np.ndarray) -> tuple[int, ...]:
    """The shape `to_display` gives for voxel data of this shape, without any data."""
    shape = tuple(int(s) for s in shape_ijk)
    transform = _transform(affine)
    padded = shape + (1,) * (3 - len(shape))
    ras = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        ras[int(target)] = padded[axis]
    display = (ras[2], ras[1], ras[0])
    if len(shape) == 2:
        axis = 2 - int(transform[2, 0])
        return tuple(s for k, s in enumerate(display) if k != axis)
    return display


def display_spacing(affine: np.ndarray, ndim: int = 3) -> tuple[float, ...]:
    """The spacing `to_display` gives, (slices, rows, cols) in mm, without any data."""
    transform = _transform(affine)
    zooms = _zooms(affine, transform)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    if ndim == 2:
        axis = 2 - int(transform[2, 0])
        return tuple(s for k, s in enumerate(spacing) if k != axis)
    return spacing


def slice_source(affine: np.ndarray) -> tuple[int, bool]:
    """Which voxel axis the display slices run along, and whether display slice 0 is its last plane."""
    transform = _transform(affine)
    axis = int(np.flatnonzero(transform[:, 0] == 2)[0])
    return axis, bool(transform[axis, 1] < 0)


def display_slices(read_planes: Callable[[int, list[int]], np.ndarray], shape_ijk: Sequence[int],
                   affine: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Display slices `indices` (slices, rows, cols) of a 3D volume, reading only the voxel planes needed.

    `read_planes(axis, planes)` returns the voxel data with only `planes` (sorted) kept along `axis`.
    The result equals `to_display(whole_volume, affine)[0][indices]`.
    """
    axis, flip = slice_source(affine)
    count = int(shape_ijk[axis])
    wanted = [count - 1 - int(d) if flip else int(d) for d in indices]
    if any(not 0 <= v < count for v in wanted):
        raise ScanError(f"slice index outside the volume's {count} slices")
    unique = sorted(set(wanted))
    planes = read_planes(axis, unique)
    out = [to_display(np.take(planes, [unique.index(v)], axis=axis), affine)[0][0] for v in wanted]
    return np.stack(out) if out else np.zeros((0, 0, 0), np.float32)


def from_display(display: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of to_display with a canonical RAS affine: what a writer stores so readers get `display` back."""
    volume = display[None] if display.ndim == 2 else display
    data = np.ascontiguousarray(volume[:, ::-1, ::-1].transpose(2, 1, 0))
    z, y, x = (1.0, *spacing) if display.ndim == 2 else spacing
    affine = np.diag([x, y, z, 1.0])
    return (data[..., 0] if display.ndim == 2 else data), affine
