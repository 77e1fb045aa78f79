"""Points CSV files: one sample per row, a place in a scan in patient millimetres (LUNA16's annotations.csv).

A row names its scan by `seriesuid` (the DICOM SeriesInstanceUID) or by `path` (relative to the CSV, or to the
scan folder), and gives `coordX,coordY,coordZ` in DICOM patient coordinates (LPS mm: x towards the patient's
left, y posterior, z superior), the convention of LUNA16 and pylidc. `diameter_mm`, `label` and `patient_id` are
optional; any other column is ignored. A NIfTI scan stores RAS, and its reader converts its
affine to LPS, so the same coordinates work for both formats.

A row that cannot be used (a cell that is not a number, a series not found) is skipped with its reason; only
a file without the needed columns is refused as a whole.
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
from perceiver_med.inputs.samples import Sample

COORDINATES = ("coordX", "coordY", "coordZ")
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
    scan_cells: dict[str, str]  # point_id -> the `by` cell as written, for outputs that echo the file


def read_points(csv_path: Path) -> PointsFile:
    """Read and check a points CSV; rows with a bad cell are skipped with the reason (line number included). A row
    repeating an earlier row's scan and point is the same sample: it is skipped, and the point prepared once."""
    table = read_csv(csv_path, "points file", COORDINATES)
    by = next((name for name in ("seriesuid", "path") if name in table.columns), None)
    if by is None:
        raise UserError(f"{printable(csv_path)} is not a points file: it needs a seriesuid or a path column to "
                        "name each point's scan")
    samples, skipped, scan_cells = [], [], {}
    first: dict[tuple, Sample] = {}
    for record in table.rows:
        try:
            reference = record.path(by) if by == "path" else record.text(by, required=True)
            point = tuple(_number(record, name) for name in COORDINATES)
            diameter = _number(record, "diameter_mm") if record.text("diameter_mm") else None
            sample = Sample(Path(reference if by == "path" else ""),
                            series_uid=reference if by == "seriesuid" else "", point=point,
                            diameter_mm=diameter, point_id=str(record.line), label=record.text("label"),
                            patient_id=record.text("patient_id", any_bytes=True))
        except UserError as exc:
            skipped.append(Skip(Path(csv_path), str(exc), record.line))
            continue
        earlier = first.setdefault((reference, point), sample)
        if earlier is sample:
            samples.append(sample)
            scan_cells[str(record.line)] = record.cells.get(by, "")
        else:  # one reason for every repeat of a row, so the skip summary counts them on one line
            labels = f" (labelled {earlier.label!r} there)" if sample.label != earlier.label else ""
            skipped.append(Skip(Path(csv_path), f"the same point of the same scan as line {earlier.point_id}{labels}, "
                                                "which is used once", record.line))
    return PointsFile(Path(csv_path), by, table.columns, samples, skipped, scan_cells)


def _number(record, column: str) -> float:
    text = record.text(column)
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
        elif scan.kind != "volume":
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
