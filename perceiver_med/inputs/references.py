"""Nodule reference files: where the nodules of each scan are, for FROC (LUNA16's annotations.csv and
annotations_excluded.csv).

A reference is a different file from the candidates a run classifies: one row per nodule, naming its scan by
`seriesuid` (or by `path`, relative to the CSV's folder or absolute) with its centre `coordX,coordY,coordZ` in
DICOM patient coordinates (LPS mm, as a points file) and its `diameter_mm`. The evaluation's result rests on every
row, so a row that cannot be read refuses the whole file rather than being skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import printable, read_csv
from perceiver_med.errors import UserError
from perceiver_med.inputs.points import COORDINATES, millimetres_cell
from perceiver_med.inputs.samples import Sample

# a scan file named by its SeriesInstanceUID (LUNA16's <seriesuid>.mhd): the name less these endings is the uid
SCAN_FILE_ENDINGS = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".dcm")


@dataclass(frozen=True)
class NoduleTable:
    """The rows of a reference file: each nodule's scan as the file names it, its centre (M, 3) and diameter (M,)
    in mm (negative where the file records none)."""

    source: Path
    by: str  # "seriesuid" or "path"
    scans: list[str]
    centres: np.ndarray
    diameters: np.ndarray

    def scan_key(self, sample: Sample) -> str:
        """How this file would name the scan of `sample`: its SeriesInstanceUID (else the scan file's name less its
        ending, as LUNA16 names its files), or its resolved path."""
        if self.by == "seriesuid":
            return sample.series_uid or _uid_of_name(sample.path.name)
        return str(sample.path.resolve())


def read_nodules(csv_path: Path, kind: str = "nodules file") -> NoduleTable:
    """Read a reference file; a missing column or a cell that is not a number is a UserError naming the line."""
    table = read_csv(csv_path, kind, (*COORDINATES, "diameter_mm"))
    by = next((name for name in ("seriesuid", "path") if name in table.columns), None)
    if by is None:
        raise UserError(f"{printable(csv_path)} is not a {kind}: it needs a seriesuid or a path column to name "
                        "each nodule's scan")
    scans, numbers = [], []
    for record in table.rows:
        if by == "seriesuid":
            scans.append(record.text(by, required=True))
        else:
            cell = Path(record.path(by))
            scans.append(str(cell.resolve() if cell.is_absolute() else
                             Path(os.path.normpath(Path(csv_path).parent / cell)).resolve()))
        row = []
        for column in (*COORDINATES, "diameter_mm"):
            row.append(millimetres_cell(record, column))
        numbers.append(row)
    values = np.array(numbers, dtype=np.float64).reshape(-1, 4)
    return NoduleTable(Path(csv_path), by, scans, values[:, :3], values[:, 3])


def _uid_of_name(name: str) -> str:
    ending = next((e for e in SCAN_FILE_ENDINGS if name.lower().endswith(e)), "")
    return name[:len(name) - len(ending)] if ending else name
