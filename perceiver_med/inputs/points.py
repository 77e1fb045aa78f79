"""Points CSV files: one sample per row, a place in a scan in patient millimetres (LUNA16's annotations.csv and
candidates_V2.csv, LUNA25's table), read as the benchmarks ship them.

A row names its scan by `seriesuid` (the DICOM SeriesInstanceUID; a MetaImage named by its UID has it too) or by
`path` (relative to the CSV, or to the scan folder), and gives `coordX,coordY,coordZ` in DICOM patient coordinates
(LPS mm: x towards the patient's left, y posterior, z superior), the convention of LUNA16, LUNA25 and pylidc.
`diameter_mm`, `label` and `patient_id` are optional. Each column is found under the spellings of COLUMNS, the one
place that knows them: LUNA25 writes `SeriesInstanceUID, CoordX, CoordY, CoordZ, PatientID`, LUNA16's candidates
`class`. Every other column (LUNA25's `AnnotationID, NoduleID, StudyDate`...) is carried, as written, to the outputs
that echo the file (`predict` writes the file's table with its own columns added). A NIfTI scan stores RAS, and its
reader converts its affine to LPS, so the same coordinates work for every format.

Labels are used as written ("0" and "1" are two classes), or renamed by `--classes 0=benign,1=malignant`.
A row that cannot be used (a cell that is not a number, a series not found, a label --classes does not name) is
skipped with its reason; only a file without the needed columns is refused as a whole.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from perceiver_med.csvfiles import printable, read_csv
from perceiver_med.errors import UserError
from perceiver_med.io.discover import Discovery, Scan, Skip
from perceiver_med.io.scans import VOLUME_SCAN
from perceiver_med.inputs.samples import Sample

COORDINATES = ("coordX", "coordY", "coordZ")
# Each column a points file may give, under every spelling a benchmark uses: ours and LUNA16's first, then LUNA25's.
COLUMNS = {"seriesuid": ("seriesuid", "SeriesInstanceUID"), "path": ("path",), "coordX": ("coordX", "CoordX"),
           "coordY": ("coordY", "CoordY"), "coordZ": ("coordZ", "CoordZ"), "diameter_mm": ("diameter_mm",),
           "label": ("label", "class"), "patient_id": ("patient_id", "PatientID")}
NOT_FOUND = "not found among the scans in"
RAS_HINT = ("no point lies inside its scan: are the coordinates RAS (NIfTI/ITK world coordinates) instead of "
            "DICOM LPS? LPS = RAS with x and y negated")


@dataclass
class PointsFile:
    """A points CSV's usable rows as samples, before each is matched to its scan (match_points): a sample's `path`
    is its path cell as written, or for a seriesuid file only its `series_uid` is set; `point_id` is its line."""

    source: Path
    by: str  # "seriesuid" or "path": the column that names each point's scan
    columns: list[str]
    samples: list[Sample]
    skipped: list[Skip]
    names: dict[str, str]  # a column of COLUMNS -> its name in this file, for the columns the file has
    cells: dict[str, dict[str, str]]  # point_id -> its row's cells as written, for outputs that echo the file

    def echo(self, samples: list[Sample]) -> "Echo":
        """The file's own columns and cells for these samples (of this file), as an output repeats them."""
        return Echo([column for column in self.columns if column], [self.names[c] for c in COORDINATES],
                    self.names.get("label", ""), [self.cells[sample.point_id] for sample in samples])


@dataclass
class Echo:
    """A points file's table as an output repeats it: its columns in its order, which of them hold the coordinates
    and the label ("" where it has none), and each sample's row of cells as written."""

    columns: list[str]
    coordinates: list[str]
    label_column: str
    rows: list[dict[str, str]]


def column_names(header: list[str], csv_path: Path) -> dict[str, str]:
    """Which column of `header` holds each column of COLUMNS (those it has). A file naming one column twice (label
    and class) is refused: which one holds it cannot be told."""
    names = {}
    for column, spellings in COLUMNS.items():
        present = [name for name in spellings if name in header]
        if len(present) > 1:
            raise UserError(f"{printable(csv_path)} has both {' and '.join(present)} columns: keep the one that "
                            f"holds the {column.replace('_', ' ')}")
        if present:
            names[column] = present[0]
    return names


def parse_classes(text: str | None) -> dict[str, str]:
    """"0=benign,1=malignant" -> {"0": "benign", "1": "malignant"}: the class each label cell names; {} for None."""
    if text is None:
        return {}
    classes: dict[str, str] = {}
    for part in text.split(","):
        value, equals, name = (piece.strip() for piece in part.partition("="))
        if not equals or not value or not name or value in classes:
            raise UserError(f"--classes needs VALUE=CLASS pairs with distinct values, like 0=benign,1=malignant; "
                            f"{printable(part.strip())!r} is not one")
        classes[value] = name
    if len(set(classes.values())) < 2:
        raise UserError("--classes must name at least two classes: a classifier needs two")
    return classes


def read_points(csv_path: Path, classes: dict[str, str] | None = None) -> PointsFile:
    """Read and check a points CSV; rows with a bad cell are skipped with the reason (line number included). A row
    repeating an earlier row's scan and point is the same sample: it is skipped, and the point prepared once.
    `classes` ({label cell: class}, parse_classes) renames the labels; a row whose label it does not name is
    skipped."""
    table = read_csv(csv_path, "points file", ())
    names = column_names(table.columns, Path(csv_path))
    if any(c not in names for c in COORDINATES):
        found = ",".join(printable(name) for name in table.columns) or "nothing"
        raise UserError(f"{printable(csv_path)} is not a points file: it needs the columns {','.join(COORDINATES)} "
                        f"(or {','.join(COLUMNS[c][1] for c in COORDINATES)}; found: {found})")
    by = next((name for name in ("seriesuid", "path") if name in names), None)
    if by is None:
        raise UserError(f"{printable(csv_path)} is not a points file: it needs a seriesuid or a path column "
                        "(LUNA25: SeriesInstanceUID) to name each point's scan")
    named = {column: names.get(column, "") for column in COLUMNS}
    samples, skipped, cells = [], [], {}
    first: dict[tuple, Sample] = {}
    for record in table.rows:
        try:
            reference = record.path(named[by]) if by == "path" else record.text(named[by], required=True)
            point = tuple(millimetres_cell(record, named[name]) for name in COORDINATES)
            diameter = millimetres_cell(record, named["diameter_mm"]) if record.text(named["diameter_mm"]) else None
            label = _label(record, named["label"], classes or {})
            sample = Sample(Path(reference if by == "path" else ""),
                            series_uid=reference if by == "seriesuid" else "", point=point,
                            diameter_mm=diameter, point_id=str(record.line), label=label,
                            patient_id=record.text(named["patient_id"], any_bytes=True))
        except UserError as exc:
            skipped.append(Skip(Path(csv_path), str(exc), record.line))
            continue
        earlier = first.setdefault((reference, point), sample)
        if earlier is sample:
            samples.append(sample)
            cells[str(record.line)] = record.cells
        else:  # one reason for every repeat of a row, so the skip summary counts them on one line
            labels = f" (labelled {earlier.label!r} there)" if sample.label != earlier.label else ""
            skipped.append(Skip(Path(csv_path), f"the same point of the same scan as line {earlier.point_id}{labels}, "
                                                "which is used once", record.line))
    return PointsFile(Path(csv_path), by, table.columns, samples, skipped, names, cells)


def _label(record, column: str, classes: dict[str, str]) -> str:
    """A row's label: its cell as written, or the class --classes names for it."""
    text = record.text(column) if column else ""
    if not classes or not text:
        return text
    if text not in classes:
        raise record.error(f"{column} {printable(text)!r} is not one of the values --classes names "
                           f"({', '.join(classes)})")
    return classes[text]


def millimetres_cell(record, column: str) -> float:
    """A finite number of millimetres from a CSV cell (a coordinate, a diameter); a one-line error naming the row."""
    text = record.text(column) if column else ""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise record.error(f"{column} must be a number in mm, not {printable(text)!r}")
    return value


def match_points(points: PointsFile, discovery: Discovery, mismatch: Callable[[Scan], str] = lambda scan: ""
                 ) -> tuple[list[Sample], list[Skip]]:
    """Each row's sample placed on its scan among those discovered: by SeriesInstanceUID, or by path (relative to
    the CSV's folder, else to the scan folder, else absolute); a patient id the file does not give is the scan's
    DICOM PatientID. Rows whose scan is not found, is not a volume, or is refused by `mismatch` (a reason, or "")
    are skipped with the reason."""
    samples, skipped = [], list(points.skipped)
    by_uid: dict[str, Scan] = {}
    by_path: dict[Path, Scan] = {}
    for scan in discovery.scans:
        if scan.series_uid:
            by_uid.setdefault(scan.series_uid, scan)
        by_path.setdefault(scan.path.resolve(), scan)
    for sample in points.samples:
        where = f"{printable(points.source)}:{sample.point_id}"
        if points.by == "seriesuid":
            scan = by_uid.get(sample.series_uid)
            reason = f"{where}: series {printable(sample.series_uid)} {NOT_FOUND} {printable(discovery.root)}"
        else:
            scan = next((by_path[p] for p in _candidates(sample.path, points.source.parent, discovery.root)
                         if p in by_path), None)
            reason = f"{where}: {printable(sample.path)} {NOT_FOUND} {printable(discovery.root)}"
        if scan is None:
            skipped.append(Skip(points.source, reason, int(sample.point_id)))
        elif scan.kind != VOLUME_SCAN:
            skipped.append(Skip(scan.path, f"{where}: a point needs a volume, and this scan is a 2D image",
                                int(sample.point_id)))
        elif reason := mismatch(scan):
            skipped.append(Skip(scan.path, f"{where}: {reason}", int(sample.point_id)))
        else:
            samples.append(replace(sample, path=scan.path, series_uid=scan.series_uid,
                                   patient_id=sample.patient_id or scan.patient_id))
    return samples, skipped


def _candidates(path: Path, csv_folder: Path, data: Path) -> list[Path]:
    if path.is_absolute():
        return [path.resolve()]
    root = data if data.is_dir() else data.parent
    return [Path(os.path.normpath(folder / path)).resolve() for folder in (csv_folder, root)]


def parse_point(text: str) -> tuple[float, float, float]:
    """"X,Y,Z" in LPS mm -> (x, y, z); a UserError naming the problem otherwise."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UserError(f"--point needs three numbers X,Y,Z in LPS mm, not {printable(text)!r}")
    return values


def all_outside(skipped: list[Skip]) -> bool:
    """True when the skips include points outside their scans, the sign of RAS coordinates given as LPS."""
    return any("lies outside this scan" in skip.reason for skip in skipped)
