"""The flow of files, scans and patients into the splits, and the record `split` can leave beside its CSV.

A run keeps the splits it trained on, not what discovery found and skipped. `write_flow_record` writes that
(SPLITS.flow.json beside SPLITS.csv, counts and reasons only); the report reads it when it still describes
the run's splits, and otherwise says what is not known.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from perceiver_med.files import file_sha256
from perceiver_med.errors import UserError
from perceiver_med.files import atomic_text
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import SPLITS, read_splits

FLOW_SUFFIX = ".flow.json"
FLOW_VERSION = 1


def flow_record_path(splits: Path) -> Path:
    return Path(splits).with_suffix(FLOW_SUFFIX)


def write_flow_record(splits: Path, discovery, labelled) -> Path:
    """Beside a splits file `split` has just written: how many files discovery saw, how many it skipped and
    why, how many scans it found and how many of those could not be labelled (and why). Counts only."""
    splits = Path(splits)
    files_read = sum(len(scan.files) for scan in discovery.scans)
    record = {"version": FLOW_VERSION, "splits_sha256": file_sha256(splits),
              "files_found": files_read + len(discovery.skipped), "files_skipped": len(discovery.skipped),
              "skipped_reasons": dict(Counter(skip.reason for skip in discovery.skipped).most_common()),
              "scans_found": len(discovery.scans), "scans_unlabelled": len(labelled.skipped),
              "unlabelled_reasons": dict(Counter(skip.reason for skip in labelled.skipped).most_common()),
              "label_source": labelled.label_source, "patient_source": labelled.patient_source}
    target = flow_record_path(splits)
    atomic_text(target, lambda handle: json.dump(record, handle, indent=2))
    return target


def _row_key(row: Sample) -> tuple:
    """A row's sample, label and patient, not its split: a fold of a cross-validation re-assigns splits."""
    return row.key + (row.label, row.patient_id)


def read_flow_record(splits_file: str, rows: list[Sample]) -> tuple[dict | None, str]:
    """The flow record beside the run's original splits file, with a note; None (and why) unless that file is
    unchanged since the record was written and lists exactly the run's rows."""
    if not splits_file:
        return None, "the run does not name the splits file it came from"
    splits = Path(splits_file)
    path = flow_record_path(splits)
    if not path.is_file():
        return None, (f"no {path.name} beside the splits file: the run records the scans it used, not the files "
                      "discovery found or skipped")
    try:
        record = json.loads(path.read_text())
        current = file_sha256(splits)
        same_rows = {_row_key(r) for r in read_splits(splits)} == {_row_key(r) for r in rows}
    except (OSError, ValueError, UserError) as exc:  # a damaged record only loses its boxes of the diagram
        return None, f"{path.name} could not be read ({type(exc).__name__})"
    if record.get("splits_sha256") != current or not same_rows:
        return None, f"{path.name} describes another version of the splits file, so it is not used"
    return record, f"from {path.name}, written by split beside the splits file"


@dataclass
class SplitCounts:
    samples: int = 0
    scans: int = 0
    patients: int = 0
    per_class: dict = field(default_factory=dict)  # {label: (samples, patients)}


def split_counts(rows: list[Sample]) -> dict[str, SplitCounts]:
    """{split and "all": samples (rows), distinct scans, distinct patients, and per class samples and patients}."""
    counts = {}
    classes = sorted({row.label for row in rows})
    for split in (*SPLITS, "all"):
        picked = [row for row in rows if split in ("all", row.split)]
        per_class = {label: (sum(row.label == label for row in picked),
                             len({row.patient_id for row in picked if row.label == label})) for label in classes}
        counts[split] = SplitCounts(len(picked), len({(row.path, row.series_uid) for row in picked}),
                                    len({row.patient_id for row in picked}), per_class)
    return counts


def patients_in_two_splits(rows: list[Sample]) -> int:
    seen: dict[str, set] = {}
    for row in rows:
        seen.setdefault(row.patient_id, set()).add(row.split)
    return sum(len(splits) > 1 for splits in seen.values())
