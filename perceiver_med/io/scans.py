"""What discovery finds: a scan (one model input's worth of files) and a file passed over with the reason."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# What a file holds (Scan.kind, ImageHeader.kind, a run's scan_kinds): one 2D picture, or a volume of slices. A scan
# kind says what was read; an input kind (inputs/kinds.py) says what a sample becomes for the model.
IMAGE_SCAN = "image"
VOLUME_SCAN = "volume"
SCAN_KINDS = (IMAGE_SCAN, VOLUME_SCAN)


@dataclass
class Scan:
    """One model input's worth of files: a 2D image, or a volume (a DICOM series or a NIfTI)."""

    id: str
    path: Path  # the file, or the folder holding all the files of a DICOM series (their common folder)
    files: list[Path]  # in slice order for a DICOM series volume; a MetaImage header, then its data files
    format: str  # a format its reader produces (Reader.formats): "dicom", "nifti", "metaimage", "png", "jpeg"
    kind: str  # a scan kind: IMAGE_SCAN or VOLUME_SCAN
    modality: str = ""
    shape: tuple = ()  # (rows, cols) or (slices, rows, cols), as read_scan returns it
    spacing: tuple | None = None  # in the order of `shape`, millimetres
    series_uid: str = ""
    patient_id: str = ""
    laterality: str = ""
    ordering: str = ""  # how a DICOM series was ordered: "position", "instance", or ""
    warnings: list[str] = field(default_factory=list)
    window: tuple | None = None  # a DICOM series' VOI window when every slice has the same one
    # For the reader only, DICOM series: stored voxel (column, row, slice) -> RAS mm, and that grid's shape.
    # Geometry for everyone else is ScanImage.affine (display voxel -> LPS), from read_scan.
    grid_affine: tuple | None = None
    grid_shape: tuple = ()
    assumed: tuple = ()  # what a DICOM file did not say about its geometry (see ScanImage.assumed)
    sop_uids: tuple = ()  # DICOM: each file's SOPInstanceUID, in the order of `files` (LIDC outlines name them)


@dataclass
class Skip:
    """What was passed over and why: a file, or with `row` a row of a table (a points file's line)."""

    file: Path
    reason: str
    row: int | None = None


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` in POSIX form (a scan's id), or the whole path when it lies elsewhere."""
    try:
        return path.relative_to(root).as_posix() or path.name
    except ValueError:
        return str(path)
