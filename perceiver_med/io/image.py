"""ScanImage: one decoded scan and where it sits in the patient. Every reader returns one.

Voxels are in the one display convention of orientation.py, whatever the file format: (rows, cols) or
(slices, rows, cols), slices inferior -> superior, rows anterior -> posterior, columns patient right -> left.

`affine` maps a voxel index in the array's own axis order, (slice, row, col, 1), to DICOM patient
coordinates: LPS millimetres (x towards the patient's left, y posterior, z superior). NIfTI's RAS is
converted (x and y negated); MetaImage's world coordinates are LPS already. Index (k, r, c) is the centre of
voxel `voxels[k, r, c]`.

- A 2D image is one plane at slice index 0: its index is (0, row, col), and the affine's first column is the
  plane's normal, one slice thickness (or 1 mm) long. `to_voxel` of a point off the plane gives a non-zero
  first coordinate: how many thicknesses away it is.
- When only some slices were read (`slices` is set), indices still count slices of the whole volume:
  `voxels[n]` is whole-volume slice `slices[n]`, and the affine is the whole volume's.
- `assumed` names what the file did not say and was assumed instead ("orientation", "position",
  "pixel spacing", "slice order", "slice spacing"); a warning says so for DICOM. A scan with "orientation"
  or "position" assumed has no patient geometry: a point in patient millimetres cannot be placed in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_med.io.orientation import display_affine, display_spacing

# How the slices of a scan were put in order (ScanImage.ordering):
ORDERINGS = {
    "position": "DICOM slices or frames sorted along the slice normal by ImagePositionPatient",
    "instance": "DICOM slices without positions, in InstanceNumber order, assumed to follow the normal",
    "frames": "a DICOM multi-frame file without per-frame positions, frames in stored order along the normal",
    "nifti": "a NIfTI volume or slice, reoriented by its affine",
    "metaimage": "a MetaImage volume or slice, reoriented by its direction matrix",
    "image": "a single 2D image (one DICOM frame, PNG or JPEG)",
}
NO_GEOMETRY = ("orientation", "position")


@dataclass(frozen=True, eq=False)
class ScanImage:
    """A decoded scan: voxels in the display convention and their place in the patient (LPS mm).

    Args:
        voxels: float32, (rows, cols) or (slices, rows, cols) in the display convention.
        affine: 4x4, (slice, row, col, 1) -> LPS mm; a 2D image is slice 0 of its plane.
        spacing: mm between voxel centres along each axis of `voxels`, in its axis order.
        modality: DICOM Modality ("" when the format has none).
        window: the DICOM VOI window (center, width), or None.
        ordering: how the slices were ordered, a key of ORDERINGS.
        format: "dicom", "nifti", "metaimage", "png" or "jpeg".
        assumed: what the file did not say and was assumed (see the module docstring).
        warnings: sentences for the user: what was assumed, left out or guessed while reading.
        slices: the whole-volume slice indices `voxels` holds when only some were read, else None.
        num_slices: the whole volume's slice count (1 for a 2D image).
        voi: a single DICOM file's VOI LUT module (a dicom.DicomVoi), applied in preprocessing; else None.
    """

    voxels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    modality: str = ""
    window: tuple[float, float] | None = None
    ordering: str = "image"
    format: str = ""
    assumed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    slices: tuple[int, ...] | None = None
    num_slices: int = 1
    voi: object | None = None

    def __post_init__(self):
        affine = np.asarray(self.affine, dtype=float)
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("a ScanImage affine must be a finite, invertible 4x4 matrix")
        if self.voxels.ndim not in (2, 3) or len(self.spacing) != self.voxels.ndim:
            raise ValueError(f"voxels of shape {self.voxels.shape} with spacing {self.spacing}")
        object.__setattr__(self, "affine", affine)

    @property
    def has_patient_geometry(self) -> bool:
        """True when the file placed the scan in the patient (orientation and position were not assumed)."""
        return not set(NO_GEOMETRY) & set(self.assumed)

    def to_voxel(self, points_lps) -> np.ndarray:
        """LPS mm points, shape (3,) or (N, 3) -> float voxel indices (slice, row, col), same leading shape.

        Round to the nearest integer for the voxel a point falls in; for a 2D image the first index is the
        distance from the plane in slice thicknesses (0 on it). Slices count in the whole volume.
        """
        points = np.asarray(points_lps, dtype=float)
        if points.shape[-1:] != (3,):
            raise ValueError(f"points in patient space need 3 coordinates (x, y, z), not shape {points.shape}")
        return _apply(np.linalg.inv(self.affine), points)

    def to_patient(self, voxel_indices) -> np.ndarray:
        """Voxel indices (slice, row, col), shape (3,) or (N, 3) -> LPS mm; a 2D image also takes (row, col)."""
        indices = np.asarray(voxel_indices, dtype=float)
        if self.voxels.ndim == 2 and indices.shape[-1:] == (2,):
            indices = np.concatenate([np.zeros(indices.shape[:-1] + (1,)), indices], axis=-1)
        if indices.shape[-1:] != (3,):
            raise ValueError(f"voxel indices need 3 values (slice, row, col), not shape {indices.shape}")
        return _apply(self.affine, indices)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def placed(voxels: np.ndarray, affine_ras: np.ndarray, shape_ijk, **fields) -> ScanImage:
    """A ScanImage of display voxels made by `to_display` (or `display_slices`) from stored voxels of
    shape `shape_ijk` whose affine is `affine_ras` (stored voxel -> RAS mm)."""
    affine_ras = _invertible(np.asarray(affine_ras, dtype=float))
    affine = display_affine(affine_ras, shape_ijk)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:  # a degenerate header: still read, placed nowhere in particular
        given = tuple(fields.pop("assumed", ()))
        assumed = given + tuple(a for a in NO_GEOMETRY if a not in given)
        affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
        return ScanImage(voxels=voxels, affine=affine, spacing=(1.0,) * voxels.ndim, assumed=assumed, **fields)
    return ScanImage(voxels=voxels, affine=affine, spacing=display_spacing(affine_ras, voxels.ndim), **fields)


def _invertible(affine: np.ndarray) -> np.ndarray:
    """A stored axis of zero length (a 2D NIfTI with pixdim 0 for its third axis) becomes 1 mm along the normal
    of the other two, so that points can still be mapped to voxels; orientation.py keeps such an axis in place."""
    lengths = np.linalg.norm(affine[:3, :3], axis=0)
    zero = np.flatnonzero(lengths < 1e-9)
    if len(zero) != 1:
        return affine
    others = [axis for axis in range(3) if axis != zero[0]]
    normal = np.cross(affine[:3, others[0]], affine[:3, others[1]])
    normal *= np.sign(normal[np.argmax(np.abs(normal))]) or 1.0  # positive, as orientation.py orders it
    fixed = affine.copy()
    fixed[:3, zero[0]] = normal / (np.linalg.norm(normal) or 1.0)
    return fixed
