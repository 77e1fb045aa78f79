"""LIDC-IDRI readings: the radiologists' XML beside a CT series -> their nodule marks, placed on the series' pixels.

The LIDC-IDRI collection (TCIA) gives each CT series one XML file (a `LidcReadMessage`, namespace
http://www.nih.gov) holding up to four `readingSession`s, one per radiologist. In each, an `unblindedReadNodule`
is one reader's mark of one nodule: its `characteristics` (`malignancy` rated 1-5 among them) and one `roi` per
image it appears on, giving the image (`imageSOP_UID`, `imageZposition` in mm), whether the outline adds to the
nodule or cuts a hole in it (`inclusion` TRUE/FALSE), and the outline's pixels (`edgeMap`: `xCoord` = column,
`yCoord` = row, from the image's top-left pixel). A nodule of 3 mm or more is outlined; a smaller one is one
point (an roi with a single edgeMap); a `nonNodule` (a lesion that is not a nodule) is one point (`locus`).

The XML is parsed by defusedxml with DTDs forbidden: these files come from users' folders, and an entity
declaration (the "billion laughs") or an external reference must never be expanded or fetched. No LIDC reading
has a DTD. Tag names are read without their namespace, as some copies of the files carry none.

`outline_grid` places the pixels of a scan's images in the patient: DICOM series stored as the scan's grid
(column, row, file) -> LPS mm, each image found by its SOPInstanceUID, else by its z position.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, parse

from perceiver_med.csvfiles import printable
from perceiver_med.errors import ScanError
from perceiver_med.io.orientation import LPS_FROM_RAS
from perceiver_med.io.scans import Scan

ROOT = "LidcReadMessage"
CHEST_RADIOGRAPH_ROOT = "IdriReadMessage"  # LIDC-IDRI's radiograph readings: no outlines in a CT
MAX_BYTES = 64 * 2**20  # the largest LIDC reading is a few MB
PEEK_BYTES = 4096


@dataclass(frozen=True)
class Outline:
    """One roi: a reader's outline on one image, as (column, row) pixels in drawing order."""

    sop_uid: str
    z: float | None  # imageZposition, mm
    inclusion: bool  # False: the outline cuts a hole out of the nodule
    pixels: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class NoduleMark:
    """One reader's mark of one nodule (an unblindedReadNodule)."""

    session: int  # the reading session's place in the file, from 1: one radiologist
    nodule_id: str
    malignancy: int | None  # 1 (highly unlikely) .. 5 (highly suspicious); None when not rated
    outlines: tuple[Outline, ...]

    @property
    def outlined(self) -> bool:
        """True for a nodule of 3 mm or more: its reader drew an outline, not the single point of a small one."""
        return any(len(outline.pixels) > 1 for outline in self.outlines)


@dataclass(frozen=True)
class LidcReading:
    """One LIDC XML file: the series it reads and every reader's nodule marks."""

    path: Path
    series_uid: str
    sessions: int
    marks: tuple[NoduleMark, ...]
    non_nodules: int

    @property
    def sop_uids(self) -> set[str]:
        return {outline.sop_uid for mark in self.marks for outline in mark.outlines if outline.sop_uid}


def reading_kind(path: Path) -> str:
    """"lidc" for an LIDC CT reading, "radiograph" for an LIDC-IDRI chest radiograph reading, else "", from the
    root element's name in the file's first bytes (a name ending in .xml, any case)."""
    if path.suffix.lower() != ".xml":
        return ""
    try:
        with open(path, "rb") as handle:
            start = handle.read(PEEK_BYTES)
    except OSError:
        return ""
    if f"<{ROOT}".encode() in start:
        return "lidc"
    if f"<{CHEST_RADIOGRAPH_ROOT}".encode() in start:
        return "radiograph"
    return ""


def read_lidc_xml(path: Path) -> LidcReading:
    """Parse one LIDC CT reading; a ScanError with a one-line reason when it is not one or is malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ScanError(f"{size / 2**20:.0f} MB: larger than any LIDC reading ({MAX_BYTES // 2**20} MB at most)")
        root = parse(path, forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()
    except ParseError as exc:
        raise ScanError(f"not well-formed XML ({printable(exc)})") from None
    except DefusedXmlException as exc:
        raise ScanError(f"refused: it declares a DTD, entities or external references ({type(exc).__name__}), "
                        "which no LIDC reading has") from None
    except OSError as exc:
        raise ScanError(f"cannot be read ({printable(exc.strerror or exc)})") from None
    if _name(root) != ROOT:
        raise ScanError(f"its root element is <{printable(_name(root))}>, not an LIDC CT reading's <{ROOT}>")
    header = _child(root, "ResponseHeader")
    series_uid = _text(_child(header, "SeriesInstanceUid")) if header is not None else ""
    marks, non_nodules = [], 0
    sessions = _children(root, "readingSession")
    for number, session in enumerate(sessions, start=1):
        non_nodules += len(_children(session, "nonNodule"))
        for nodule in _children(session, "unblindedReadNodule"):
            marks.append(_mark(nodule, number))
    return LidcReading(path, series_uid, len(sessions), tuple(marks), non_nodules)


def _mark(nodule, session: int) -> NoduleMark:
    nodule_id = _text(_child(nodule, "noduleID"))
    where = f"reading session {session}, {printable(nodule_id) or 'a nodule without a noduleID'}"
    characteristics = _child(nodule, "characteristics")
    rating = _text(_child(characteristics, "malignancy")) if characteristics is not None else ""
    malignancy = int(rating) if rating in {"1", "2", "3", "4", "5"} else None  # 0 or blank: not rated
    outlines = []
    for roi in _children(nodule, "roi"):
        z_text = _text(_child(roi, "imageZposition"))
        try:
            z = float(z_text) if z_text else None
            pixels = tuple((int(_text(_child(edge, "xCoord"))), int(_text(_child(edge, "yCoord"))))
                           for edge in _children(roi, "edgeMap"))
        except ValueError:
            raise ScanError(f"{where}: an roi whose imageZposition or edgeMap coordinates are not numbers") from None
        if z is not None and not np.isfinite(z):
            raise ScanError(f"{where}: imageZposition {printable(z_text)!r} is not a position")
        if pixels:
            outlines.append(Outline(_text(_child(roi, "imageSOP_UID")), z,
                                    _text(_child(roi, "inclusion")).upper() != "FALSE", pixels))
    return NoduleMark(session, nodule_id, malignancy, tuple(outlines))


def _name(element) -> str:
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def _children(element, name: str) -> list:
    return [child for child in element if _name(child) == name]


def _child(element, name: str):
    return next((child for child in element if _name(child) == name), None) if element is not None else None


def _text(element) -> str:
    return (element.text or "").strip() if element is not None else ""


@dataclass(frozen=True)
class OutlineGrid:
    """Where a DICOM series' stored pixels lie in the patient, and which image an outline is drawn on.

    `affine` maps (column, row, k) -> LPS mm, k the image's place in the series along the slice normal (the
    scan's own grid, so points agree with every other use of the scan); `shape` is (columns, rows, images).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    image_of_sop: dict[str, int]

    @property
    def voxel_mm3(self) -> float:
        return abs(float(np.linalg.det(self.affine[:3, :3])))

    @property
    def slice_spacing(self) -> float:
        """Millimetres between neighbouring images of the series."""
        return float(np.linalg.norm(self.affine[:3, 2]))

    def image_of(self, outline: Outline) -> int | None:
        """The series image an outline is drawn on: by its SOPInstanceUID, else (an axial series) the image within
        a quarter of the slice spacing of its z position; None when neither is in the series."""
        if outline.sop_uid in self.image_of_sop:
            return self.image_of_sop[outline.sop_uid]
        axial = abs(self.affine[2, 2]) >= 0.5 * self.slice_spacing  # z tells images apart only when they step along it
        if outline.z is None or not axial:
            return None
        origins_z = self.affine[2, 2] * np.arange(self.shape[2]) + self.affine[2, 3]
        nearest = int(np.argmin(np.abs(origins_z - outline.z)))
        return nearest if abs(origins_z[nearest] - outline.z) <= 0.25 * self.slice_spacing else None

    def to_patient(self, indices) -> np.ndarray:
        """(column, row, k) indices, shape (N, 3) -> LPS mm, (N, 3)."""
        return np.asarray(indices, float) @ self.affine[:3, :3].T + self.affine[:3, 3]


def outline_grid(scan: Scan) -> OutlineGrid:
    """The OutlineGrid of a DICOM series of single-image files; a ScanError when the scan is not one, or does not
    say where it lies in the patient."""
    if scan.format != "dicom" or scan.kind != "volume" or scan.grid_affine is None:
        raise ScanError("LIDC outlines are drawn on the images of a DICOM series, and this scan is not one")
    if {"orientation", "position"} & set(scan.assumed):
        raise ScanError("its images do not say where they lie in the patient (no orientation or position)")
    affine = LPS_FROM_RAS @ np.asarray(scan.grid_affine, float)
    return OutlineGrid(affine, tuple(int(n) for n in scan.grid_shape),
                       {uid: k for k, uid in enumerate(scan.sop_uids) if uid})
