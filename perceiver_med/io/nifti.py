"""NIfTI (.nii, .nii.gz) -> (array, metadata), reoriented to the common display convention."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io.orientation import to_display

SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _load(path: Path):
    try:
        return nib.load(str(path))
    except Exception as exc:
        raise ScanError(f"unreadable NIfTI: {str(exc).splitlines()[0][:120]}") from None


def header(path: Path) -> dict:
    image = _load(path)
    shape = tuple(int(s) for s in image.shape)
    warnings = []
    if len(shape) == 4 and shape[3] > 1:
        warnings.append(f"4D NIfTI with {shape[3]} volumes: the first is used")
    spatial = tuple(s for s in shape[:3])
    kind = "volume" if len(spatial) == 3 and spatial[2] > 1 else "image"
    return {"format": "nifti", "modality": "", "shape": spatial, "kind": kind, "warnings": warnings,
            "spacing": tuple(float(z) for z in image.header.get_zooms()[:3])}


def read(path: Path) -> tuple[np.ndarray, dict]:
    image = _load(path)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise ScanError(f"corrupt NIfTI data: {str(exc).splitlines()[0][:120]}") from None
    warnings = []
    if data.ndim == 4:
        if data.shape[3] > 1:
            warnings.append(f"4D NIfTI with {data.shape[3]} volumes: the first is used")
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ScanError(f"NIfTI with {data.ndim} dimensions is not an image or volume")
    slope, inter = image.dataobj.slope, image.dataobj.inter
    data = np.asarray(data, dtype=np.float32)
    if slope is not None and not np.isnan(slope) and (slope, inter) != (1.0, 0.0):
        data = data * np.float32(slope) + np.float32(0.0 if inter is None or np.isnan(inter) else inter)
    array, spacing = to_display(data, image.affine)
    return array, {"format": "nifti", "modality": "", "spacing": spacing, "window": None, "warnings": warnings}
