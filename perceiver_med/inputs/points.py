"""Points CSV files: one sample per row, a place in a scan in patient millimetres (LUNA16's annotations.csv).

A row names its scan by `seriesuid` (the DICOM SeriesInstanceUID) or by `path` (relative to the CSV, or to the
scan folder), and gives `coordX,coordY,coordZ` in DICOM patient coordinates (LPS mm: x towards the patient's
left, y posterior, z superior), the convention of LUNA16 and pylidc. `diameter_mm`, `label` and `patient_id` are
optional; any other column is carried along untouched. A NIfTI scan stores RAS, and its reader converts its
affine to LPS, so the same coordinates work for both formats.

A row that cannot be used (a cell that is not a number, a series not found) is skipped with its reason; only
a file without the needed columns is refused as a whole.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_med.csvfiles import printable, read_csv
from perceiver_med.errors import UserError
from perceiver_med.io.discover import Discovery, Scan, Skip

COORDINATES = ("coordX", "coordY", "coordZ")
NOT_FOUND = "not found among the scans in"
RAS_HINT = ("no point lies inside its scan: are the coordinates RAS (NIfTI/ITK world coordinates) instead of "
            "DICOM LPS? LPS = RAS with x and y negated")


@dataclass
class PointRow:
    """One row of a points CSV: where the point is and what is known of it.

    Args:
        line: the row's line in the CSV, for messages.
        reference: the `seriesuid` or `path` cell as written.
        by: "seriesuid" or "path".
        point: (x, y, z) LPS mm.
        cells: every cell of the row as written (coordinates included), for outputs that carry them.
    """

    line: int
    reference: str
    by: str
    point: tuple[float, float, float]
    label: str = ""
    patient_id: str = ""
    diameter_mm: float | None = None
    cells: dict[str, str] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        return f"{self.line}"


@dataclass
class PointSample:
    """A point matched to its scan."""

    row: PointRow
    scan: Scan


@dataclass
class PointsFile:
    source: Path
    by: str  # "seriesuid" or "path"
    columns: list[str]
    rows: list[PointRow]
    skipped: list[Skip]


def read_points(csv_path: Path) -> PointsFile:
    """Read and check a points CSV; rows with a bad cell are skipped with the reason (line number included). A row
    repeating an earlier row's scan and point is the same sample: it is skipped, and the point prepared once."""
    table = read_csv(csv_path, "points file", COORDINATES)
    by = next((name for name in ("seriesuid", "path") if name in table.columns), None)
    if by is None:
        raise UserError(f"{printable(csv_path)} is not a points file: it needs a seriesuid or a path column to "
                        "name each point's scan")
    rows, skipped = [], []
    first: dict[tuple, PointRow] = {}
    for record in table.rows:
        try:
            reference = record.path(by) if by == "path" else record.text(by, required=True)
            point = tuple(_number(record, name) for name in COORDINATES)
            diameter = _number(record, "diameter_mm") if record.text("diameter_mm") else None
            row = PointRow(record.line, reference, by, point, record.text("label"),
                           record.text("patient_id", any_bytes=True), diameter, dict(record.cells))
        except UserError as exc:
            skipped.append(Skip(Path(csv_path), str(exc)))
            continue
        earlier = first.setdefault((reference, point), row)
        if earlier is row:
            rows.append(row)
        else:  # one reason for every repeat of a row, so the skip summary counts them on one line
            labels = f" (labelled {earlier.label!r} there)" if row.label != earlier.label else ""
            skipped.append(Skip(Path(csv_path), f"the same point of the same scan as line {earlier.line}{labels}, "
                                                "which is used once"))
    return PointsFile(Path(csv_path), by, table.columns, rows, skipped)


def _number(record, column: str) -> float:
    text = record.text(column)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise record.error(f"{column} must be a number in mm, not {printable(text)!r}")
    return value


def match_points(points: PointsFile, discovery: Discovery) -> tuple[list[PointSample], list[Skip]]:
    """Each row's scan among those discovered: by SeriesInstanceUID, or by path (relative to the CSV's folder,
    else to the scan folder, else absolute). Rows whose scan is not found are skipped with the reason."""
    samples, skipped = [], list(points.skipped)
    by_uid: dict[str, Scan] = {}
    by_path: dict[Path, Scan] = {}
    for scan in discovery.scans:
        if scan.series_uid:
            by_uid.setdefault(scan.series_uid, scan)
        by_path.setdefault(scan.path.resolve(), scan)
    for row in points.rows:
        where = f"{printable(points.source)}:{row.line}"
        if row.by == "seriesuid":
            scan = by_uid.get(row.reference)
            reason = f"{where}: series {printable(row.reference)} {NOT_FOUND} {printable(discovery.root)}"
        else:
            scan = next((by_path[p] for p in _candidates(row.reference, points.source.parent, discovery.root)
                         if p in by_path), None)
            reason = f"{where}: {printable(row.reference)} {NOT_FOUND} {printable(discovery.root)}"
        if scan is None:
            skipped.append(Skip(points.source, reason))
        elif scan.kind != "volume":
            skipped.append(Skip(scan.path, f"{where}: a point needs a volume, and this scan is a 2D image"))
        else:
            samples.append(PointSample(row, scan))
    return samples, skipped


def _candidates(reference: str, csv_folder: Path, data: Path) -> list[Path]:
    path = Path(reference)
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
