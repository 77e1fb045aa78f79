"""LIDC-IDRI readings -> a points CSV: the readers' marks of one nodule gathered into one row per nodule.

Each LIDC CT series comes with the XML of up to four radiologists' readings (io/lidc_xml.py). Each reader marked
each nodule on their own, so one nodule is up to four marks, and the marks are gathered as pylidc's
`Scan.cluster_annotations` gathers them:
- only nodules of 3 mm or more count: marks with an outline. The single point of a nodule under 3 mm and the
  point of a non-nodule are left out (and counted);
- two marks are neighbours when some outline pixel of one lies within `tolerance` of some outline pixel of the
  other, and a nodule is a connected group of neighbours. The tolerance starts at the series' slice spacing
  (pylidc's default, the slice thickness) and shrinks by 0.9 while a group holds more marks than the reading has
  readers, down to 0.1 mm, below which the series is skipped (pylidc's ClusterError). Distances are in patient
  millimetres, as pylidc's documentation states (its code measures voxel indices).

A mark's voxels are the pixels whose centres lie strictly inside its outlines (inclusion TRUE), less those inside
or on its hole outlines (inclusion FALSE), never its outline pixels: LIDC's readers drew each outline just
outside the nodule, and pylidc's `boolean_mask` leaves the outline out the same way. (A mark whose outlines
enclose no pixel centre is its outline pixels.) Its centroid is the mean of its voxels' centres, through the
series geometry to LPS mm (the mask path's centroid), and its diameter is that of the sphere of its volume, voxels
x voxel volume (the mask path's `diameter_mm`; not pylidc's greatest in-plane diameter, which measures another
thing). A nodule's row gives the mean of its marks' centroids and diameters (as LUNA16 averaged the readers'),
`readers` (how many marked it), every rating and their median, `malignancy`.

Labels follow one stated rule, LABEL_RULE: median malignancy rating above 3 is malignant, below 3 benign; a
median of exactly 3 (indeterminate) or no rating at all gives no label, and the nodule is left out of the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import printable, write_csv
from perceiver_med.errors import ScanError, UserError
from perceiver_med.files import refuse_inside
from perceiver_med.io import discover
from perceiver_med.io.discover import Scan, Skip
from perceiver_med.io.lidc_xml import LidcReading, NoduleMark, OutlineGrid, outline_grid, read_lidc_xml, reading_kind

LABEL_RULE = "median malignancy rating: above 3 malignant, below 3 benign (exactly 3, or no rating: left out)"
COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "label", "patient_id", "readers", "malignancy",
           "ratings"]
SHRINK = 0.9  # pylidc's `factor`
SMALLEST_TOLERANCE_MM = 0.1  # pylidc's `min_tol`
FILL_BLOCK = 4096  # pixel centres tested against an outline at a time


@dataclass
class PlacedMark:
    """A reader's mark placed in the patient: its centroid (LPS mm), volume and outline pixels (LPS mm)."""

    mark: NoduleMark
    centre: np.ndarray
    volume_mm3: float
    outline_mm: np.ndarray  # (N, 3)

    @property
    def diameter_mm(self) -> float:
        """Of the sphere with the mark's volume."""
        return (6 * self.volume_mm3 / math.pi) ** (1 / 3)


@dataclass
class Nodule:
    """One nodule: the marks of the readers who outlined it."""

    marks: list[PlacedMark]

    @property
    def readers(self) -> int:
        return len({placed.mark.session for placed in self.marks})

    @property
    def ratings(self) -> list[int]:
        return sorted(placed.mark.malignancy for placed in self.marks if placed.mark.malignancy is not None)

    @property
    def malignancy(self) -> float | None:
        """The median malignancy rating, None when no reader rated it."""
        return float(np.median(self.ratings)) if self.ratings else None

    @property
    def centre(self) -> np.ndarray:
        return np.mean([placed.centre for placed in self.marks], axis=0)

    @property
    def diameter_mm(self) -> float:
        return float(np.mean([placed.diameter_mm for placed in self.marks]))

    @property
    def label(self) -> str:
        return label_of(self.malignancy)


@dataclass
class ReadSeries:
    """One reading on its series: the nodules found, and the marks and outlines not used."""

    reading: Path
    scan: Scan
    nodules: list[Nodule]
    small_marks: int  # single points: nodules under 3 mm
    non_nodules: int
    unplaced: int  # outlines on no image of the series

    @property
    def labelled(self) -> list[Nodule]:
        return [nodule for nodule in self.nodules if nodule.label]


@dataclass
class LidcPoints:
    """What `points_from_lidc` wrote: the readings used, the files skipped and why, the label rule."""

    out: Path
    series: list[ReadSeries]
    skipped: list[Skip]
    label_source: str = LABEL_RULE
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(item.labelled) for item in self.series)


def label_of(malignancy: float | None) -> str:
    """The class LABEL_RULE gives a median malignancy rating ("" for none)."""
    if malignancy is None or malignancy == 3:
        return ""
    return "malignant" if malignancy > 3 else "benign"


def holds_lidc_readings(path: Path) -> bool:
    """True when `path` is an LIDC CT reading (XML) or a folder holding at least one."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".xml"
    return any(reading_kind(file) == "lidc" for file in _xml_files(path))


def outline_fill(pixels) -> tuple[np.ndarray, np.ndarray]:
    """(pixels whose centres lie strictly inside a closed outline, pixels whose centres lie on it), each (N, 2)
    (column, row). The outline is closed from its last pixel back to its first; inside is by the even-odd rule."""
    polygon = np.asarray(pixels, float)
    polygon = np.vstack([polygon, polygon[:1]])
    x1, y1, x2, y2 = polygon[:-1, 0], polygon[:-1, 1], polygon[1:, 0], polygon[1:, 1]  # (E,) each edge
    low, high = polygon.min(axis=0).astype(int), polygon.max(axis=0).astype(int)
    columns, rows = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1), indexing="ij")
    centres = np.stack([columns.ravel(), rows.ravel()], axis=1)
    inside, on = [], []
    for start in range(0, len(centres), FILL_BLOCK):
        block = centres[start:start + FILL_BLOCK].astype(float)
        px, py = block[:, :1], block[:, 1:]  # (M, 1)
        crosses = (y1 > py) != (y2 > py)  # the edge spans the centre's row: (M, E)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        odd = (crosses & (px < x_at)).sum(axis=1) % 2 == 1
        collinear = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1) == 0
        within = ((px >= np.minimum(x1, x2)) & (px <= np.maximum(x1, x2))
                  & (py >= np.minimum(y1, y2)) & (py <= np.maximum(y1, y2)))
        boundary = (collinear & within).any(axis=1)
        inside.append(odd & ~boundary)
        on.append(boundary)
    inside, on = np.concatenate(inside), np.concatenate(on)
    return centres[inside], centres[on]


def place_mark(mark: NoduleMark, grid: OutlineGrid) -> tuple[PlacedMark | None, int]:
    """(the mark placed in the patient, or None when none of its outlines is on an image of the series; how many of
    its outlines are not)."""
    kept: dict[int, set] = {}
    outline_pixels: dict[int, set] = {}
    holes: dict[int, set] = {}
    vertices, unplaced = [], 0
    for outline in mark.outlines:
        if len(outline.pixels) < 2:  # a stray point beside an outline (pylidc drops these too)
            continue
        k = grid.image_of(outline)
        if k is None:
            unplaced += 1
            continue
        inside, on = outline_fill(outline.pixels)
        if outline.inclusion:
            kept.setdefault(k, set()).update(map(tuple, inside.tolist()))
            outline_pixels.setdefault(k, set()).update(map(tuple, on.tolist()))
        else:
            holes.setdefault(k, set()).update(map(tuple, inside.tolist()), map(tuple, on.tolist()))
        vertices += [(x, y, k) for x, y in outline.pixels]
    if not vertices:
        return None, unplaced
    voxels = [(x, y, k) for k, pixels in kept.items()
              for x, y in pixels - outline_pixels.get(k, set()) - holes.get(k, set())]
    if not voxels:  # outlines too small to enclose a pixel centre: the outline is all there is
        voxels = [(x, y, k) for k, pixels in outline_pixels.items() for x, y in pixels]
    centre = grid.to_patient(np.mean(np.asarray(voxels, float), axis=0)[None])[0]
    return PlacedMark(mark, centre, len(voxels) * grid.voxel_mm3, grid.to_patient(vertices)), unplaced


def cluster(marks: list[PlacedMark], tolerance: float, most: int) -> list[list[int]]:
    """Groups of marks (indices, each group sorted) that are one nodule, by pylidc's rule (see the module):
    connected by outline distances within `tolerance` mm, shrunk until no group has more than `most` marks."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist

    count = len(marks)
    if not count:
        return []
    distance = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            distance[i, j] = distance[j, i] = cdist(marks[i].outline_mm, marks[j].outline_mm).min()
    while True:
        _, groups = connected_components(csr_matrix(distance <= tolerance), directed=False)
        if np.bincount(groups).max() <= most:
            break
        tolerance *= SHRINK
        if tolerance < SMALLEST_TOLERANCE_MM:
            raise ScanError(f"its nodule marks cannot be told apart: marks closer than {SMALLEST_TOLERANCE_MM} mm "
                            f"form a nodule of more marks than its {most} reader(s)")
    return [np.flatnonzero(groups == group).tolist() for group in range(groups.max() + 1)]


def nodules_of(reading: LidcReading, grid: OutlineGrid) -> tuple[list[Nodule], int]:
    """The nodules of a reading (ordered along the patient's z axis, as pylidc orders them) and how many outlines
    lie on no image of the series."""
    placed, unplaced = [], 0
    for mark in reading.marks:
        if mark.outlined:
            found, missing = place_mark(mark, grid)
            unplaced += missing
            if found is not None:
                placed.append(found)
    groups = cluster(placed, grid.slice_spacing, max(reading.sessions, 1))
    nodules = [Nodule([placed[i] for i in group]) for group in groups]
    return sorted(nodules, key=lambda nodule: float(nodule.centre[2])), unplaced


def points_from_lidc(readings: Path, scans: Path, out: Path) -> LidcPoints:
    """Read every LIDC CT reading under `readings` (the XML beside each series in a TCIA download, or a folder of
    the XML files alone), find the series it reads under `scans`, and write one row per labelled nodule to `out`.
    Readings that cannot be used are skipped with the reason."""
    readings, scans = Path(readings), Path(scans)
    for folder, what in ((readings, "MASKS"), (scans, "--scans")):
        if not folder.exists():
            raise UserError(f"{what} {printable(folder)} does not exist")
    refuse_inside(out, readings, scans)
    files, skipped = _reading_files(readings)
    if not files:
        raise UserError(f"no LIDC-IDRI CT reading (XML) in {printable(readings)}"
                        + (f" ({skipped[0].reason})" if skipped else ""))
    found = [scan for scan in discover(scans).scans if scan.kind == "volume" and scan.format == "dicom"]
    if not found:
        raise UserError(f"no DICOM series in {printable(scans)}")
    series, used = [], {}
    for path in files:
        try:
            reading = read_lidc_xml(path)
            scan = _scan_of(reading, found)
            if scan.id in used:
                raise ScanError(f"a second reading of series {printable(scan.id)} (the first: {used[scan.id].name})")
            nodules, unplaced = nodules_of(reading, outline_grid(scan))
        except ScanError as exc:
            skipped.append(Skip(path, str(exc)))
            continue
        used[scan.id] = path
        small = sum(1 for mark in reading.marks if not mark.outlined)
        series.append(ReadSeries(path, scan, nodules, small, reading.non_nodules, unplaced))
    if not series:
        raise UserError(f"no LIDC reading in {printable(readings)} could be used: {skipped[-1].reason}")
    total = sum(len(item.nodules) for item in series)
    if not any(item.labelled for item in series):
        raise UserError(f"none of the {total} nodule(s) of 3 mm or more has a label by the rule ({LABEL_RULE})")
    notes = _notes(series, total)
    _write(out, series)
    return LidcPoints(out, series, skipped, LABEL_RULE, notes)


def _xml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".xml" and p.is_file()
                  and not p.name.startswith("."))


def _reading_files(readings: Path) -> tuple[list[Path], list[Skip]]:
    if readings.is_file():
        return [readings], []
    files, skipped = [], []
    for path in _xml_files(readings):
        kind = reading_kind(path)
        if kind == "lidc":
            files.append(path)
        elif kind == "radiograph":
            skipped.append(Skip(path, "an LIDC-IDRI chest radiograph reading (IdriReadMessage): no CT nodules"))
        else:
            skipped.append(Skip(path, "not an LIDC-IDRI CT reading (no LidcReadMessage)"))
    return files, skipped


def _scan_of(reading: LidcReading, scans: list[Scan]) -> Scan:
    """The series a reading names (ResponseHeader SeriesInstanceUid), else the one holding the images its outlines
    are drawn on."""
    named = next((scan for scan in scans if reading.series_uid and scan.series_uid == reading.series_uid), None)
    if named is not None:
        return named
    wanted = reading.sop_uids
    overlap = [(len(wanted & set(scan.sop_uids)), scan) for scan in scans] if wanted else []
    best = max(overlap, key=lambda pair: pair[0], default=(0, None))
    if best[0]:
        return best[1]
    what = (f"series {printable(reading.series_uid)} it reads" if reading.series_uid
            else "the series it reads (it names none)")
    raise ScanError(f"{what} is not among the scans, nor are the images its outlines are drawn on")


def _notes(series: list[ReadSeries], total: int) -> list[str]:
    notes = []
    left_out = total - sum(len(item.labelled) for item in series)
    if left_out:
        notes.append(f"{left_out} of {total} nodule(s) of 3 mm or more have a median malignancy of 3 or no rating: "
                     "left out (no label by the rule)")
    small, non_nodules = sum(item.small_marks for item in series), sum(item.non_nodules for item in series)
    if small or non_nodules:
        notes.append(f"{small} mark(s) of nodules under 3 mm (a point, no outline) and {non_nodules} non-nodule "
                     "mark(s): not used")
    unplaced = sum(item.unplaced for item in series)
    if unplaced:
        notes.append(f"{unplaced} outline(s) lie on no image of their series (neither its SOPInstanceUID nor its z "
                     "position is there): left out of their marks")
    unnamed = [item for item in series if not item.scan.patient_id.strip()]
    if unnamed:
        notes.append(f"{len(unnamed)} series carry no DICOM PatientID: each is its own patient, named after the series")
    return notes


def _write(out: Path, series: list[ReadSeries]) -> None:
    rows = []
    for item in series:
        patient = item.scan.patient_id.strip() or item.scan.id
        for nodule in item.labelled:
            rows.append([item.scan.series_uid, *(float(c) for c in nodule.centre), round(nodule.diameter_mm, 3),
                         nodule.label, patient, nodule.readers, f"{nodule.malignancy:g}",
                         " ".join(map(str, nodule.ratings))])
    write_csv(out, COLUMNS, rows)
