"""Labels and patient ids for discovered scans: class folders, a CSV, or laterality."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_med.errors import UserError
from perceiver_med.io.discover import Discovery, Scan, Skip

LABEL_SOURCES = ("auto", "folder", "csv", "laterality")
# OAI participant ids (seven digits, e.g. OAI9062645) as they appear in AKOA file names.
DEFAULT_PATIENT_PATTERNS = (r"OAI\d{7}",)
_LATERALITY_TOKEN = re.compile(r"(?<![a-z])(left|right)(?![a-z])", re.IGNORECASE)
_LATERALITY_TAG = {"L": "left", "R": "right"}


@dataclass
class LabelledScan:
    scan: Scan
    label: str
    patient_id: str
    slice: int | None = None


@dataclass
class LabelledSet:
    items: list[LabelledScan]
    skipped: list[Skip]
    label_source: str
    patient_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})


def laterality_of(scan: Scan) -> str | None:
    """'left'/'right' from DICOM (Image)Laterality, else a LEFT/RIGHT token in the file name."""
    if scan.laterality in _LATERALITY_TAG:
        return _LATERALITY_TAG[scan.laterality]
    tokens = {m.lower() for m in _LATERALITY_TOKEN.findall(scan.files[0].name)}
    return tokens.pop() if len(tokens) == 1 else None


def folder_label(scan: Scan, root: Path) -> str | None:
    try:
        parts = scan.path.relative_to(root).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


def read_labels_csv(csv_path: Path, data_root: Path) -> dict[Path, dict]:
    """path,label[,patient_id][,slice] -> {resolved path: row}. Paths relative to the CSV or to DATA."""
    if not csv_path.is_file():
        raise UserError(f"labels file {csv_path} does not exist")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        if not {"path", "label"} <= columns:
            raise UserError(f"{csv_path} needs the columns path,label (found: {','.join(sorted(columns))})")
        rows = list(reader)
    table, missing = {}, []
    for row in rows:
        candidates = [Path(row["path"])] if Path(row["path"]).is_absolute() else [
            csv_path.parent / row["path"], data_root / row["path"]]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            missing.append(row["path"])
            continue
        table[found.resolve()] = row
    if missing:
        raise UserError(f"{csv_path} names {len(missing)} file(s) that do not exist, e.g. {missing[0]!r}")
    return table


def _pick_source(discovery: Discovery, label_from: str, labels_csv: Path | None) -> str:
    if label_from != "auto":
        if label_from == "csv" and labels_csv is None:
            raise UserError("--label-from csv needs --labels CSV")
        return label_from
    if labels_csv is not None:
        return "csv"
    if discovery.scans and all(laterality_of(scan) for scan in discovery.scans):
        return "laterality"
    folders = {folder_label(scan, discovery.root) for scan in discovery.scans}
    if None not in folders and len(folders) >= 2:
        return "folder"
    raise UserError("cannot tell the labels: put scans in class folders DATA/<label>/..., "
                    "or pass --labels CSV, or --label-from laterality")


def label_scans(discovery: Discovery, label_from: str = "auto", labels_csv: Path | None = None,
                patient_regex: str | None = None) -> LabelledSet:
    """Attach a label and a patient id to every scan; scans without a label are skipped with the reason."""
    if label_from not in LABEL_SOURCES:
        raise UserError(f"--label-from must be one of {', '.join(LABEL_SOURCES)}")
    if not discovery.scans:
        raise UserError(f"no readable scans in {discovery.root} ({len(discovery.skipped)} file(s) skipped)")
    source = _pick_source(discovery, label_from, labels_csv)
    table = read_labels_csv(labels_csv, discovery.root) if source == "csv" else {}
    pattern = _compile(patient_regex)
    items, skipped, patient_sources = [], [], set()
    for scan in discovery.scans:
        row = _csv_row(scan, table) if source == "csv" else None
        if source == "csv":
            label = (row or {}).get("label") or None
        elif source == "laterality":
            label = laterality_of(scan)
        else:
            label = folder_label(scan, discovery.root)
        if not label:
            skipped.append(Skip(scan.path, f"no label ({_reason(source)})"))
            continue
        patient, how = _patient_id(scan, discovery.root, row, pattern)
        patient_sources.add(how)
        slice_ = (row or {}).get("slice")
        items.append(LabelledScan(scan, label.strip(), patient,
                                  int(float(slice_)) if slice_ not in (None, "") else None))
    notes = []
    if "scan" in patient_sources:
        notes.append("no patient id for some scans (no PatientID, patient_id column or --patient-regex match): "
                     "each of those scans is its own patient")
    return LabelledSet(items, skipped, source, "+".join(sorted(patient_sources)), notes)


def _reason(source: str) -> str:
    return {"csv": "not in the labels CSV", "laterality": "no laterality tag and no LEFT/RIGHT in the name",
            "folder": "not inside a class folder"}[source]


def _csv_row(scan: Scan, table: dict[Path, dict]) -> dict | None:
    for candidate in (scan.path, *scan.files):
        row = table.get(candidate.resolve())
        if row is not None:
            return row
    return None


def _compile(patient_regex: str | None):
    patterns = [patient_regex] if patient_regex else list(DEFAULT_PATIENT_PATTERNS)
    try:
        return [re.compile(p) for p in patterns], bool(patient_regex)
    except re.error as exc:
        raise UserError(f"--patient-regex is not a valid regular expression: {exc}") from None


def _patient_id(scan: Scan, root: Path, row: dict | None, pattern) -> tuple[str, str]:
    if row and row.get("patient_id"):
        return row["patient_id"].strip(), "csv"
    regexes, explicit = pattern
    try:
        text = scan.path.relative_to(root).as_posix()
    except ValueError:
        text = scan.path.as_posix()
    match = next((m for m in (r.search(text) for r in regexes) if m), None)
    if explicit and match:
        return (match.group(1) if match.groups() else match.group(0)), "regex"
    if scan.patient_id:
        return scan.patient_id, "dicom"
    if match:
        return (match.group(1) if match.groups() else match.group(0)), "regex"
    return scan.id, "scan"
