"""What a scan's DICOM header says about how it was acquired and of whom, for a report's characteristics table.

Only the tags below are ever read (pydicom's specific_tags), so a name, a birth date or an ID never enters
memory. A NIfTI or a picture has no such header: it gives None.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TAGS = ["Modality", "Manufacturer", "BodyPartExamined", "ViewPosition", "ImageLaterality", "Laterality",
        "PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "PatientSex", "PatientAge", "SeriesInstanceUID"]
_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")
_FIRST_FILES = 64  # a series folder's files tried before giving up


@dataclass(frozen=True)
class ScanDescription:
    """The DICOM acquisition and demographic tags of a scan, as stored ("" or None where a tag is absent).

    `pixel_spacing` and `slice_thickness` are both None when either cannot be read as numbers.
    """

    modality: str
    manufacturer: str
    body_part: str
    view: str
    laterality: str  # ImageLaterality, else Laterality
    pixel_spacing: tuple[float, ...] | None  # PixelSpacing, else ImagerPixelSpacing (mm)
    slice_thickness: float | None
    sex: str  # PatientSex as stored: "M", "F", "O" or ""
    age: str  # PatientAge as stored: nnnD/W/M/Y, or ""


def describe_scan(path: Path, series_uid: str = "") -> ScanDescription | None:
    """The tags of a DICOM file, or of the first file of a series folder (of `series_uid`, when given);
    None when there is no such DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    candidates = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _DICOM_SUFFIXES) if path.is_dir() else []
    for candidate in candidates[:_FIRST_FILES]:
        try:
            ds = pydicom.dcmread(candidate, stop_before_pixels=True, specific_tags=TAGS)
        except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
            continue
        if not ds.get("Modality") and not ds.get("SeriesInstanceUID"):
            continue  # pydicom may read a non-DICOM file as an empty data set
        if series_uid and str(ds.get("SeriesInstanceUID", "")) != series_uid:
            continue
        return _description(ds)
    return None


def _description(ds) -> ScanDescription:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    thickness = ds.get("SliceThickness")
    try:
        spacing_mm = tuple(float(v) for v in spacing) if spacing else None
        thickness_mm = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        spacing_mm = thickness_mm = None
    return ScanDescription(
        modality=str(ds.get("Modality", "") or ""), manufacturer=str(ds.get("Manufacturer", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""), view=str(ds.get("ViewPosition", "") or ""),
        laterality=str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or ""),
        pixel_spacing=spacing_mm, slice_thickness=thickness_mm,
        sex=str(ds.get("PatientSex", "") or ""), age=str(ds.get("PatientAge", "") or ""))
