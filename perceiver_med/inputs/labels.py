"""Labels and patient ids for discovered scans: class folders, a CSV, or laterality. Each labelled scan is a
Sample (with its slice where a labels CSV names one)."""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_med.csvfiles import printable, read_csv
from perceiver_med.errors import UserError
from perceiver_med.io.discover import Discovery, Scan, Skip
from perceiver_med.inputs.samples import Sample

LABEL_SOURCES = ("auto", "folder", "csv", "laterality")
# OAI participant ids (seven digits, e.g. OAI9062645) as they appear in AKOA file names.
DEFAULT_PATIENT_PATTERNS = (r"OAI\d{7}",)
_LATERALITY_TOKEN = re.compile(r"(?<![a-z])(left|right)(?![a-z])", re.IGNORECASE)
_LATERALITY_TAG = {"L": "left", "R": "right"}


@dataclass
class LabelledSet:
    samples: list[Sample]  # their paths resolved, in the order of the scans discovered
    skipped: list[Skip]
    label_source: str
    patient_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({sample.label for sample in self.samples})


def laterality_of(scan: Scan) -> str | None:
    """'left'/'right' from DICOM (Image)Laterality, else a LEFT/RIGHT token in the file name."""
    if scan.laterality in _LATERALITY_TAG:
        return _LATERALITY_TAG[scan.laterality]
    return laterality_in_name(scan.files[0].name)


def laterality_in_name(name: str) -> str | None:
    """'left'/'right' from the one LEFT/RIGHT token of a file name (AKOA/OAI names carry one); None for no token,
    or for both. The one reading of a side from a name: labels here, knees in a run's patient-level scores."""
    tokens = {m.lower() for m in _LATERALITY_TOKEN.findall(name)}
    return tokens.pop() if len(tokens) == 1 else None


def folder_label(scan: Scan, root: Path) -> str | None:
    try:
        parts = scan.path.relative_to(root).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


def read_labels_csv(csv_path: Path, data_root: Path) -> dict[Path, dict]:
    """path,label[,patient_id][,slice] -> {resolved path: {"label", "patient_id", "slice"}}.

    Paths relative to the CSV or to DATA; a line with an empty label or a bad slice is refused.
    """
    table = read_csv(csv_path, "labels file", ("path", "label"))
    found_rows, missing = {}, []
    for record in table.rows:
        written = record.path()
        candidates = [Path(written)] if Path(written).is_absolute() else [
            table.source.parent / written, data_root / written]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            missing.append(written)
            continue
        found_rows[found.resolve()] = {"label": record.text("label", required=True),
                                       "patient_id": record.text("patient_id", any_bytes=True),
                                       "slice": record.integer("slice")}
    if missing:
        raise UserError(f"{printable(csv_path)} names {len(missing)} file(s) that do not exist, "
                        f"e.g. {printable(missing[0])!r}")
    return found_rows


def _pick_source(discovery: Discovery, label_from: str, labels_csv: Path | None, pattern) -> tuple[str, list[str]]:
    """The label source and any note about the choice."""
    if label_from != "auto":
        if label_from == "csv" and labels_csv is None:
            raise UserError("--label-from csv needs --labels CSV")
        return label_from, []
    if labels_csv is not None:
        return "csv", []
    scans, root = discovery.scans, discovery.root
    folders = {folder_label(scan, root) for scan in scans}
    class_folders = None not in folders and len(folders) >= 2
    lateral = all(laterality_of(scan) for scan in scans)
    if class_folders and lateral:
        # Folders called left/right agree with the tags; folders of one patient each (a PACS export,
        # the DICOM knee phantoms) name patients, not classes. Otherwise the folders are what the
        # user sorted the scans by (benign/ and malignant/ mammograms carry laterality too).
        if {f.lower() for f in folders} <= {"left", "right"} or _one_patient_per_folder(scans, root, pattern):
            return "laterality", []
        return "folder", [f"labels from the class folders ({', '.join(sorted(folders))}); the scans' laterality "
                          "was ignored (--label-from laterality to use it)"]
    if class_folders:
        return "folder", []
    if lateral:
        return "laterality", []
    named = sorted(f for f in folders if f is not None)
    if len(named) == 1:
        raise UserError(f"cannot tell the labels: only one class folder ({named[0]}) was found and a classifier "
                        "needs two: put each class in its own folder DATA/<label>/..., or pass --labels CSV")
    raise UserError("cannot tell the labels: put scans in class folders DATA/<label>/..., "
                    "or pass --labels CSV, or --label-from laterality")


def _one_patient_per_folder(scans: list[Scan], root: Path, pattern) -> bool:
    patients: dict[str, set[str]] = defaultdict(set)
    for scan in scans:
        patients[folder_label(scan, root)].add(_patient_id(scan, root, None, pattern)[0])
    return all(len(ids) == 1 for ids in patients.values())


def label_scans(discovery: Discovery, label_from: str = "auto", labels_csv: Path | None = None,
                patient_regex: str | None = None) -> LabelledSet:
    """A labelled sample of every scan, with its patient id; scans without a label are skipped with the reason."""
    if label_from not in LABEL_SOURCES:
        raise UserError(f"--label-from must be one of {', '.join(LABEL_SOURCES)}")
    if not discovery.scans:
        raise UserError(f"no readable scans in {discovery.root} ({len(discovery.skipped)} file(s) skipped)")
    pattern = _compile(patient_regex)
    source, notes = _pick_source(discovery, label_from, labels_csv, pattern)
    table = read_labels_csv(labels_csv, discovery.root) if source == "csv" else {}
    samples, skipped, patient_sources, first_id = [], [], set(), ""
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
        if label != printable(label):  # a class folder named in bytes that are not UTF-8
            raise UserError(f"the class folder name '{printable(label)}' is not UTF-8 text: rename the folder")
        patient, how = _patient_id(scan, discovery.root, row, pattern)
        patient_sources.add(how)
        samples.append(Sample(scan.path.resolve(), series_uid=scan.series_uid, slice=(row or {}).get("slice"),
                              label=label.strip(), patient_id=patient))
        first_id = first_id or scan.id
    if patient_regex and samples and "regex" not in patient_sources and patient_sources != {"csv"}:
        raise UserError(f"--patient-regex {patient_regex!r} gives no patient id for any scan path "
                        f"(e.g. {printable(first_id)}); `perceiver-med inspect` lists the paths")
    if "scan" in patient_sources:
        notes.append("no patient id for some scans (no PatientID, patient_id column or --patient-regex match): "
                     "each of those scans is its own patient")
    return LabelledSet(samples, skipped, source, "+".join(sorted(patient_sources)), notes)


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


def known_patient(scan: Scan, root: Path) -> str:
    """The patient id `split` gives a scan by default where the files tell it (an OAI id in its path, DICOM
    PatientID); "" where split would fall back to the scan's own name."""
    patient, how = _patient_id(scan, root, None, _compile(None))
    return patient if how != "scan" else ""


def _patient_id(scan: Scan, root: Path, row: dict | None, pattern) -> tuple[str, str]:
    if row and row.get("patient_id"):
        return row["patient_id"], "csv"
    regexes, explicit = pattern
    try:
        text = scan.path.relative_to(root).as_posix()
    except ValueError:
        text = scan.path.as_posix()
    found = next((found for found in (_regex_id(r, text) for r in regexes) if found), "")
    if explicit and found:
        return found, "regex"
    if scan.patient_id.strip():
        return scan.patient_id.strip(), "dicom"
    if found:
        return found, "regex"
    return scan.id, "scan"


def _regex_id(regex: re.Pattern, text: str) -> str:
    """The first non-empty match (its first group if it has one): an empty match is no patient id."""
    for match in regex.finditer(text):
        found = (match.group(1) if match.groups() else match.group(0)) or ""
        if found.strip():
            return found.strip()
    return ""
