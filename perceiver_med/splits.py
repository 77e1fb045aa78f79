"""Patient-grouped, label-stratified train/val/test splits, their CSV, and a leakage check.

The knee project this tool grew from split images, so slices of one knee reached both train
and test. Here the unit of assignment is the patient: every scan of a patient goes to one split.
"""
from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.errors import UserError
from perceiver_med.io.labels import LabelledScan

SPLITS = ("train", "val", "test")


def check_ratios(ratios: tuple[float, float, float]) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise UserError(f"split ratios must be three non-negative numbers that sum to 1, got {ratios}")


def assign_splits(items: list[LabelledScan], ratios=(0.6, 0.2, 0.2), seed: int = 0) -> list[str]:
    """The split of each item. Patients are stratified by the set of labels they carry."""
    check_ratios(tuple(ratios))
    classes = sorted({item.label for item in items})
    if len(classes) < 2:
        raise UserError(f"only one class ({classes[0] if classes else 'none'}): a classifier needs at least two")
    patient_labels: dict[str, set[str]] = defaultdict(set)
    for item in items:
        patient_labels[item.patient_id].add(item.label)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient in sorted(patient_labels):
        strata["+".join(sorted(patient_labels[patient]))].append(patient)
    rng = np.random.default_rng(seed)
    patient_split: dict[str, int] = {}
    for name in sorted(strata):
        patients = strata[name]
        rng.shuffle(patients)
        counts = _allocate(len(patients), ratios, rng)
        start = 0
        for split, count in enumerate(counts):
            for patient in patients[start:start + count]:
                patient_split[patient] = split
            start += count
    _cover_every_class(patient_split, patient_labels, classes, ratios, rng)
    return [SPLITS[patient_split[item.patient_id]] for item in items]


def _allocate(n: int, ratios, rng) -> list[int]:
    """Split n patients by ratios (largest remainder, ties broken at random)."""
    exact = np.array(ratios, float) * n
    counts = np.floor(exact).astype(int)
    remainder = exact - counts
    order = sorted(range(3), key=lambda k: (-remainder[k], rng.random()))
    for k in order[: n - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def _cover_every_class(patient_split, patient_labels, classes, ratios, rng) -> None:
    """Move patients so each class with >= 3 patients appears in every split with a non-zero ratio."""
    for label in classes:
        holders = sorted(p for p, labels in patient_labels.items() if label in labels)
        if len(holders) < 3:
            continue
        for split in (k for k in range(3) if ratios[k] > 0):
            if any(patient_split[p] == split for p in holders):
                continue
            per_split = Counter(patient_split[p] for p in holders)
            donor_split = max(per_split, key=lambda k: (per_split[k], -k))
            if per_split[donor_split] < 2:
                continue
            # prefer a donor carrying this label only, so other classes are not disturbed
            donors = [p for p in holders if patient_split[p] == donor_split]
            donors.sort(key=lambda p: (len(patient_labels[p]), rng.random()))
            patient_split[donors[0]] = split


@dataclass
class SplitRow:
    path: Path  # absolute
    label: str
    patient_id: str
    split: str
    series_uid: str = ""
    slice: int | None = None


def rows_from_items(items: list[LabelledScan], splits: list[str]) -> list[SplitRow]:
    return [SplitRow(item.scan.path.resolve(), item.label, item.patient_id, split, item.scan.series_uid, item.slice)
            for item, split in zip(items, splits)]


def write_splits(rows: list[SplitRow], out: Path) -> None:
    """Write splits.csv atomically; paths relative to the CSV's folder."""
    paths = Counter(row.path for row in rows)
    with_series = any(paths[row.path] > 1 for row in rows)
    with_slice = any(row.slice is not None for row in rows)
    columns = ["path", "label", "patient_id", "split"] + (["series_uid"] if with_series else []) + (
        ["slice"] if with_slice else [])
    out_dir = out.resolve().parent

    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            values = [_relative(row.path, out_dir), row.label, row.patient_id, row.split]
            if with_series:
                values.append(row.series_uid)
            if with_slice:
                values.append("" if row.slice is None else row.slice)
            writer.writerow(values)

    from perceiver_med.files import atomic_text

    atomic_text(out, write)


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def read_splits(csv_path: Path) -> list[SplitRow]:
    """Read a splits CSV; paths resolved against the CSV's folder. Raises UserError on a malformed file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"splits file {csv_path} does not exist")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        needed = {"path", "label", "patient_id", "split"}
        if not needed <= columns:
            raise UserError(f"{csv_path} is not a splits file: it needs the columns {','.join(sorted(needed))}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            if raw["split"] not in SPLITS:
                raise UserError(f"{csv_path}:{line}: split must be train, val or test, not {raw['split']!r}")
            path = Path(raw["path"])
            slice_ = raw.get("slice")
            rows.append(SplitRow(path if path.is_absolute() else (csv_path.parent / path).resolve(),
                                 raw["label"], raw["patient_id"], raw["split"], raw.get("series_uid") or "",
                                 int(float(slice_)) if slice_ not in (None, "") else None))
    if not rows:
        raise UserError(f"{csv_path} lists no scans")
    return rows


def find_problems(rows: list[SplitRow]) -> list[str]:
    """Leakage (a patient in two splits) and missing files; an empty list means the file is sound."""
    problems = []
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of[row.patient_id].add(row.split)
    leaking = sorted(p for p, s in splits_of.items() if len(s) > 1)
    if leaking:
        problems.append(f"{len(leaking)} patient(s) in more than one split, e.g. patient {leaking[0]} in "
                        f"{', '.join(sorted(splits_of[leaking[0]]))}")
    missing = [row.path for row in rows if not row.path.exists()]
    if missing:
        problems.append(f"{len(missing)} file(s) missing, e.g. {missing[0]}")
    return problems


def count_table(rows: list[SplitRow]) -> dict[str, dict[str, tuple[int, int]]]:
    """{split: {label: (scans, patients)}}."""
    scans = Counter((row.split, row.label) for row in rows)
    patients = defaultdict(set)
    for row in rows:
        patients[(row.split, row.label)].add(row.patient_id)
    labels = sorted({row.label for row in rows})
    return {split: {label: (scans[(split, label)], len(patients[(split, label)])) for label in labels}
            for split in SPLITS}
