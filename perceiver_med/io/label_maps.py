"""Label maps (segmentation masks) -> voxel labels and where they lie: NIfTI label maps and DICOM SEG.

A label map is not a scan: its voxels are whole numbers (0 = background), it is compared with its scan's grid
in patient millimetres, and a DICOM SEG may cover only the slices it segments. `read_label_map` gives the labels
in the file's own voxel order with their affine (voxel index -> LPS mm); `inputs/masks.py` turns them into
points. A NIfTI label map is told by its name, a DICOM SEG by its Modality.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.errors import ScanError
from perceiver_med.io.limits import check_size, describe
from perceiver_med.io.nifti import is_nifti
from perceiver_med.io.orientation import LPS_FROM_RAS


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Args:
        labels: integer label values, in the file's voxel order (NIfTI i, j, k; a SEG's volume axes).
        affine: 4x4, voxel index of `labels` -> LPS mm.
        whole: True when it must cover its whole scan (a NIfTI label map), False for a DICOM SEG (a block of it).
    """

    labels: np.ndarray
    affine: np.ndarray
    whole: bool


def is_segmentation(path: Path) -> bool:
    """A DICOM SEG (Modality SEG, read from the header alone); False for anything else, readable or not."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:
        return False
    return str(header.get("Modality", "")) == "SEG"


def segmented_series(path: Path) -> list[str]:
    """The SeriesInstanceUIDs a DICOM SEG segments (ReferencedSeriesSequence); ScanError if it cannot be read."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise ScanError(f"unreadable DICOM SEG: {describe(exc)}") from None
    return [item.get("SeriesInstanceUID", "") for item in header.get("ReferencedSeriesSequence", [])]


def read_label_map(path: Path) -> LabelMap:
    """A NIfTI label map (by its name) or a DICOM SEG; ScanError with the reason it cannot be used."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if is_nifti(path):
                return LabelMap(*_read_nifti(path), whole=True)
            return LabelMap(*_read_seg(path), whole=False)
    except (ScanError, OSError):
        raise
    except Exception as exc:
        raise ScanError(f"unreadable mask: {describe(exc)}") from None


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    image = nib.load(str(path))
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3 or any(n > 1 for n in shape[3:]):
        raise ScanError(f"a label map must be one 3D volume, not shape {'x'.join(map(str, shape))}")
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        raise ScanError("no qform or sform code: the mask's place in the patient is unknown")
    check_size(shape[1:3], shape[0], "mask")
    data = np.asarray(image.dataobj).reshape(shape[:3])
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or (data != np.round(data)).any():
            raise ScanError("not a label map: its values are not whole numbers (a probability map? threshold it)")
        data = data.astype(np.int64)
    return data, LPS_FROM_RAS @ np.asarray(image.affine, float)


def _read_seg(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import highdicom

    segmentation = highdicom.seg.segread(path)
    numbers = list(segmentation.get_segment_numbers())
    volume = segmentation.get_volume(combine_segments=False, segment_numbers=numbers)
    binary = volume.array > 0.5  # (i, j, k, segment); fractional segments count where at least half is covered
    labels = np.zeros(binary.shape[:3], np.int32)
    for index, number in enumerate(numbers):
        if (labels[binary[..., index]] > 0).any():
            raise ScanError("its segments overlap: one voxel cannot be two lesions (store one segment per SEG)")
        labels[binary[..., index]] = number
    return labels, np.asarray(volume.affine, float)
