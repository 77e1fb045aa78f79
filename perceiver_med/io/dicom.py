"""DICOM files -> (array, metadata). Reading only: no resizing, no windowing beyond the modality LUT."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from perceiver_med.errors import ScanError

DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# Modalities whose single-frame series are stacked into volumes even when positions are missing.
VOLUME_MODALITIES = {"CT", "MR", "PT", "NM"}


def _looks_like_raw_dicom(path: Path) -> bool:
    """A file without preamble and meta header starts directly with a group 0x0008 element."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] in (b"\x08\x00", b"\x00\x08")


def read_dataset(path: Path, pixels: bool = False) -> pydicom.Dataset:
    """Read a DICOM file (with or without meta header); raise ScanError with a reason otherwise."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        if not _looks_like_raw_dicom(path):
            raise ScanError("not a DICOM file") from None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise ScanError(f"corrupt DICOM: {_short(exc)}") from None
        _set_transfer_syntax(ds)
        return ds
    except Exception as exc:
        raise ScanError(f"corrupt or truncated DICOM: {_short(exc)}") from None


def _set_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A file without meta header has no transfer syntax element: record the encoding pydicom detected."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = ds.original_encoding
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def _guarded(function):
    """pydicom raises many exception types (and warns) on odd files; turn them into one skip reason."""

    def wrapper(path: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return function(path)
            except ScanError:
                raise
            except Exception as exc:
                raise ScanError(f"invalid DICOM: {_short(exc)}") from None

    wrapper.__doc__ = function.__doc__
    return wrapper


@_guarded
def header(path: Path) -> dict:
    """Header facts needed to find, group and label scans. Raises ScanError for non-image files."""
    ds = read_dataset(path)
    sop = str(ds.get("SOPClassUID", ""))
    if sop == DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        raise ScanError("DICOMDIR (a media index, not an image)")
    if "Rows" not in ds or "Columns" not in ds:
        name = getattr(ds.get("SOPClassUID"), "name", "") or ds.get("Modality", "unknown")
        raise ScanError(f"no pixel data ({name})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return {
        "format": "dicom",
        "modality": str(ds.get("Modality", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")).strip(),
        "laterality": str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).strip().upper(),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "frames": frames,
        "instance_number": _int_or_none(ds.get("InstanceNumber")),
        "position": _floats(ds.get("ImagePositionPatient")),
        "orientation": _floats(ds.get("ImageOrientationPatient")),
        "pixel_spacing": _pixel_spacing(ds),
        "slice_thickness": _float_or_none(ds.get("SliceThickness")),
    }


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _pixel_spacing(ds) -> tuple[float, float] | None:
    spacing = _floats(ds.get("PixelSpacing")) or _floats(ds.get("ImagerPixelSpacing"))
    if spacing is None and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            spacing = _floats(shared.PixelMeasuresSequence[0].get("PixelSpacing"))
    return tuple(spacing[:2]) if spacing and len(spacing) >= 2 else None


def _voi_window(ds) -> tuple[float, float] | None:
    """First (center, width) pair of the VOI LUT window, if the file has one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, pydicom.multival.MultiValue) else center
    width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
    try:
        return (float(center), float(width)) if float(width) > 0 else None
    except (TypeError, ValueError):
        return None


@_guarded
def decode(path: Path) -> tuple[np.ndarray, dict]:
    """Decode one file's pixels: modality LUT applied, grey, dense = bright.

    Returns an array of shape (rows, cols) or (frames, rows, cols) in float32, and metadata.
    """
    ds = read_dataset(path, pixels=True)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ScanError("no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ScanError(f"cannot decode pixel data: {_short(exc)}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 or photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            pixels = apply_color_lut(pixels, ds)
        # pydicom already converted YBR to RGB; ITU-R 601 luma weights give the grey level.
        array = (pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        window = None
    else:
        array = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
        window = _voi_window(ds)
        if photometric == "MONOCHROME1":
            # MONOCHROME1 shows dense tissue dark; invert so dense is always bright, window included.
            low, high = float(array.min()), float(array.max())
            array = (high + low) - array
            if window is not None:
                window = (high + low - window[0], window[1])
    meta = header_from_dataset(ds)
    meta["window"] = window
    return array, meta


def header_from_dataset(ds) -> dict:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return {
        "format": "dicom",
        "modality": str(ds.get("Modality", "")),
        "pixel_spacing": _pixel_spacing(ds),
        "frames": frames,
        "frame_positions": _frame_positions(ds) if frames > 1 else None,
        "orientation": _floats(ds.get("ImageOrientationPatient")) or _shared_orientation(ds),
        "position": _floats(ds.get("ImagePositionPatient")),
    }


def _shared_orientation(ds):
    if "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PlaneOrientationSequence" in shared:
            return _floats(shared.PlaneOrientationSequence[0].get("ImageOrientationPatient"))
    return None


def _frame_positions(ds) -> list | None:
    """Per-frame ImagePositionPatient of an enhanced multi-frame file, if present for every frame."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return None
    positions = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        if "PlanePositionSequence" not in item:
            return None
        positions.append(_floats(item.PlanePositionSequence[0].get("ImagePositionPatient")))
    return positions if all(p is not None for p in positions) else None


def slice_normal(orientation) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction (DICOM LPS)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    return normal / (np.linalg.norm(normal) or 1.0)


def series_affine(orientation, first_position, step, pixel_spacing) -> np.ndarray:
    """Voxel (column i, row j, slice k) -> RAS millimetres, from DICOM geometry (which is LPS)."""
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    row_spacing, col_spacing = pixel_spacing or (1.0, 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # moving along a row = next column
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first_position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
