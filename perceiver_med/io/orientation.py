"""One orientation convention for every volume, whichever file format it came from.

Volumes are returned as (slices, rows, cols) in the radiological axial view: slices run
inferior -> superior, rows anterior -> posterior, columns patient-right -> patient-left.
That is what an axial DICOM series shows, and what a NIfTI becomes after reorienting to RAS
and flipping its first two axes, so the same anatomy gives the same array from either format.
"""
from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform


def to_display(data_ijk: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorient voxel data (i, j[, k]) with a RAS affine; return the display array and spacing (z, y, x)."""
    squeeze = data_ijk.ndim == 2
    data = data_ijk[..., None] if squeeze else data_ijk
    transform = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    ras = apply_orientation(data, transform)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = zooms[np.argsort(transform[:, 0])]  # zooms of the reoriented axes, in RAS order
    display = np.ascontiguousarray(ras.transpose(2, 1, 0)[:, ::-1, ::-1], dtype=np.float32)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    if squeeze:
        return display[0], spacing[1:]
    return display, spacing


def from_display(display: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of to_display with a canonical RAS affine: what a writer stores so readers get `display` back."""
    volume = display[None] if display.ndim == 2 else display
    data = np.ascontiguousarray(volume[:, ::-1, ::-1].transpose(2, 1, 0))
    z, y, x = (1.0, *spacing) if display.ndim == 2 else spacing
    affine = np.diag([x, y, z, 1.0])
    return (data[..., 0] if display.ndim == 2 else data), affine
