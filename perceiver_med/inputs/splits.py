"""Patient-grouped, label-stratified train/val/test splits, their CSV (one sample a row), and a leakage check.

The knee project this tool grew from split images, so slices of one knee reached both train
and test. Here the unit of assignment is the patient: every scan of a patient goes to one split.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from perceiver_med.csvfiles import CsvRow, printable, read_csv, write_csv
from perceiver_med.errors import UserError
from perceiver_med.inputs.samples import Sample

SPLITS = ("train", "val", "test")


def check_ratios(ratios: tuple[float, float, float]) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise UserError(f"split ratios must be three non-negative numbers that sum to 1, got {ratios}")


def assign_splits(samples: list[Sample], ratios=(0.6, 0.2, 0.2), seed: int = 0) -> list[Sample]:
    """The samples, each with its split. Patients are stratified by the set of labels they carry."""
    check_ratios(tuple(ratios))
    if any(not sample.patient_id for sample in samples):
        raise UserError("some scans have an empty patient id: every scan needs one, or a patient could "
                        "sit in two splits")
    classes = sorted({sample.label for sample in samples})
    if len(classes) < 2:
        raise UserError(f"only one class ({classes[0] if classes else 'none'}): a classifier needs at least two")
    patient_labels: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        patient_labels[sample.patient_id].add(sample.label)
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
    return [replace(sample, split=SPLITS[patient_split[sample.patient_id]]) for sample in samples]


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


POINT_COLUMNS = ["coordX", "coordY", "coordZ", "diameter_mm", "point_id"]


def assign_folds(rows: list[Sample], folds: int, seed: int = 0) -> list[Sample]:
    """The rows, every train/val row with a fold 0..folds-1: patient-grouped, stratified by label
    (scikit-learn's StratifiedGroupKFold); test rows stay held out, without a fold. A row's split becomes val
    in fold 0 and train elsewhere, so the file trains fold 0 when no fold is asked for."""
    from sklearn.model_selection import StratifiedGroupKFold

    pool = [k for k, row in enumerate(rows) if row.split != "test"]
    patients = sorted({rows[k].patient_id for k in pool})
    if folds < 2 or folds > len(patients):
        raise UserError(f"--folds must be between 2 and the number of train/val patients ({len(patients)}), "
                        f"not {folds}")
    labels = [rows[k].label for k in pool]
    # a class with fewer patients than folds leaves some folds without it: allowed, and said by split_notes
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        assigned = splitter.split(np.zeros(len(pool)), labels, [rows[k].patient_id for k in pool])
        fold_of = {pool[k]: fold for fold, (_, held) in enumerate(assigned) for k in held}
    return [replace(row, fold=fold_of[k], split="val" if fold_of[k] == 0 else "train") if k in fold_of else row
            for k, row in enumerate(rows)]


def given_folds(rows: list[Sample], values: list[str], source: str) -> tuple[list[Sample], list[str]]:
    """The rows in the cross-validation folds a data set gives (LUNA16's subset0..subset9), one value per row:
    every row is in a fold, none in test (the folds are the evaluation); the folds are the values in natural order
    (subset2 before subset10), fold 0 is the val split. Also returns the values, fold k's at k. A patient whose rows
    sit in two folds is refused afterwards, by find_problems, as a leak. `source` names the values in messages."""
    missing = sum(not value for value in values)
    if missing:
        raise UserError(f"{missing} of the {len(values)} samples have no fold in {source}: a given fold assignment "
                        "must place every sample")
    names = sorted(set(values), key=lambda value: [int(part) if part.isdigit() else part
                                                   for part in re.split(r"(\d+)", value)])
    if len(names) < 2:
        raise UserError(f"{source} gives one fold ({names[0]!r}): cross-validation needs at least two")
    fold_of = {name: k for k, name in enumerate(names)}
    return [replace(row, fold=fold_of[value], split="val" if fold_of[value] == 0 else "train")
            for row, value in zip(rows, values)], names


def sample_noun(rows: list[Sample]) -> str:
    """What a splits file's rows are, for messages: "points" (point-centred grids, one or more a scan) or "scans"."""
    return "points" if any(row.point is not None for row in rows) else "scans"


def fold_rows(rows: list[Sample], fold: int) -> list[Sample]:
    """The rows as fold `fold` trains on them: its own rows are val, the other folds' train, test stays."""
    folds = sorted({row.fold for row in rows if row.fold is not None})
    if not folds:
        raise UserError("--fold needs a splits file with a fold column (split --folds K)")
    if fold not in folds:
        raise UserError(f"--fold {fold} is not a fold of this splits file (folds {folds[0]}..{folds[-1]})")
    return [replace(row, split=row.split if row.fold is None else "val" if row.fold == fold else "train")
            for row in rows]


def write_splits(rows: list[Sample], out: Path) -> None:
    """Write splits.csv atomically.

    A scan inside the CSV's folder is written relative to it, so the folder can move as a whole;
    any other scan is written absolute, since a relative path may not climb out with `..`.
    """
    paths = Counter(row.path for row in rows)
    # a series folder holding other scans (a series spread over sub-folders is named by their common folder)
    # is ambiguous without its UID, like a folder holding two series
    folders = {parent for row in rows for parent in Path(row.path).parents}
    with_series = any(paths[row.path] > 1 or (row.series_uid and row.path in folders) for row in rows)
    with_slice = any(row.slice is not None for row in rows)
    with_point = any(row.point is not None for row in rows)
    with_series = with_series or (with_point and any(row.series_uid for row in rows))
    with_fold = any(row.fold is not None for row in rows)
    columns = ["path", "label", "patient_id", "split"] + (["series_uid"] if with_series else []) + (
        ["slice"] if with_slice else []) + (POINT_COLUMNS if with_point else []) + (["fold"] if with_fold else [])
    out_dir = Path(out).resolve().parent

    def values(row: Sample) -> list:
        cells = [_path_cell(row.path, out_dir), row.label, row.patient_id, row.split]
        if with_series:
            cells.append(row.series_uid)
        if with_slice:
            cells.append("" if row.slice is None else row.slice)
        if with_point:  # floats, written as their repr: the point round-trips exactly
            cells += list(row.point) if row.point is not None else ["", "", ""]
            cells += ["" if row.diameter_mm is None else row.diameter_mm, row.point_id]
        if with_fold:
            cells.append("" if row.fold is None else row.fold)
        return cells

    write_csv(out, columns, map(values, rows))


def _path_cell(path: Path, folder: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def read_splits(csv_path: Path) -> list[Sample]:
    """Read a splits CSV; paths resolved against the CSV's folder. Raises UserError on a malformed file."""
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise UserError(f"{printable(csv_path)} is a folder, not a splits file: make one from a folder of scans with "
                        f"`perceiver-med split {printable(csv_path)} --out splits.csv`")
    try:
        table = read_csv(csv_path, "splits file", ("path", "label", "patient_id", "split"))
    except UserError as exc:
        if not _is_points_file(csv_path):
            raise
        raise UserError(f"{printable(csv_path)} is a points file, not a splits file: make a splits file with "
                        f"`perceiver-med split SCANS --points {printable(csv_path)} --out splits.csv`") from exc
    rows = [_split_row(record) for record in table.rows]
    if not rows:
        raise UserError(f"{printable(csv_path)} lists no scans")
    return rows


def _is_points_file(path: Path) -> bool:
    from perceiver_med.inputs.points import COLUMNS, COORDINATES

    try:
        columns = set(read_csv(path, "points file", ()).columns)
    except UserError:
        return False
    return all(columns & set(COLUMNS[name]) for name in COORDINATES) and "split" not in columns


def _split_row(record: CsvRow) -> Sample:
    split = record.text("split")
    if split not in SPLITS:
        raise record.error(f"split must be train, val or test, not {split!r}")
    patient = record.text("patient_id", any_bytes=True)
    if not patient:
        raise record.error("empty patient_id: every scan needs one, or a patient could sit in two splits")
    fold = record.integer("fold")
    if fold is not None and split == "test":
        raise record.error("a test row has no fold: test patients are held out of cross-validation")
    point, diameter, point_id = _point_cells(record)
    return Sample(_scan_path(record), series_uid=record.text("series_uid"), slice=record.integer("slice"),
                  point=point, diameter_mm=diameter, point_id=point_id, label=record.text("label", required=True),
                  patient_id=patient, split=split, fold=fold)


def _point_cells(record: CsvRow) -> tuple:
    """(point, diameter_mm, point_id) of a splits row; (None, None, "") when it has no point."""
    texts = [record.text(name) for name in POINT_COLUMNS[:3]]
    if not any(texts):
        return None, None, ""
    try:
        point = tuple(float(text) for text in texts)
        diameter = float(record.text("diameter_mm")) if record.text("diameter_mm") else None
    except ValueError:
        raise record.error("coordX, coordY, coordZ and diameter_mm must be numbers in mm") from None
    if not all(np.isfinite(point)):
        raise record.error("coordX, coordY and coordZ must be finite numbers in mm")
    return point, diameter, record.text("point_id")


def _scan_path(record: CsvRow) -> Path:
    """Absolute paths are taken as written; relative ones stay inside the splits file's folder."""
    path = Path(record.path())
    if path.is_absolute():
        return path.resolve()
    if Path(os.path.normpath(path)).parts[:1] == ("..",):
        raise record.error(f"the path '{printable(path)}' leads out of the splits file's folder: "
                           "write it as an absolute path")
    return (record.source.parent / path).resolve()


def read_sound_splits(csv_path: Path) -> list[Sample]:
    """A splits file's rows, refused (one UserError naming every problem) where `train` would refuse them: what
    train, cross-validation, evaluate and `split --check` read a user's splits file with."""
    rows = read_splits(csv_path)
    problems = find_problems(rows)
    if problems:
        raise UserError(f"{printable(csv_path)}: " + "; ".join(problems))
    return rows


def find_problems(rows: list[Sample]) -> list[str]:
    """What `train` refuses: leakage, repeated scans, missing files, fewer than two classes, no training
    scans. An empty list means the file is sound."""
    problems = []
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of[row.patient_id].add(row.split)
    leaking = sorted(p for p, s in splits_of.items() if len(s) > 1)
    if leaking:
        problems.append(f"{len(leaking)} patient(s) in more than one split, e.g. patient {printable(leaking[0])} in "
                        f"{', '.join(sorted(splits_of[leaking[0]]))}")
    # the same image under two patient ids: its file, or its DICOM series (one series is one patient)
    splits_of_image: dict[tuple, set[str]] = defaultdict(set)
    for row in rows:
        splits_of_image[("file", row.path, row.series_uid)].add(row.split)
        if row.series_uid:
            splits_of_image[("series", row.series_uid)].add(row.split)
    shared = [key for key, s in splits_of_image.items() if len(s) > 1]
    if shared:
        problems.append(f"{len(shared)} scan(s) or series in more than one split, e.g. "
                        f"{printable(shared[0][1])} in {', '.join(sorted(splits_of_image[shared[0]]))}")
    folds_of: dict[str, set] = defaultdict(set)
    for row in rows:
        if row.split != "test":
            folds_of[row.patient_id].add(row.fold)
    if any(row.fold is not None for row in rows):
        split_up = sorted(p for p, f in folds_of.items() if len(f) > 1 or None in f)
        if split_up:
            problems.append(f"{len(split_up)} train/val patient(s) without one fold, e.g. patient "
                            f"{printable(split_up[0])} in folds "
                            f"{', '.join('none' if f is None else str(f) for f in sorted(folds_of[split_up[0]], key=str))}")
    repeated = [key for key, n in Counter(row.key for row in rows).items() if n > 1]
    if repeated:
        problems.append(f"{len(repeated)} scan(s) listed more than once, e.g. {printable(repeated[0][0])}")
    classes = sorted({row.label for row in rows})
    if len(classes) < 2:
        problems.append(f"only one class ({classes[0] if classes else 'none'}): a classifier needs at least two")
    if not any(row.split == "train" for row in rows):
        problems.append("no scan in the train split")
    missing = [row.path for row in rows if not row.path.exists()]
    if missing:
        problems.append(f"{len(missing)} file(s) missing, e.g. {printable(missing[0])}")
    return problems


def split_notes(rows: list[Sample], splits=("val", "test")) -> list[str]:
    """Warnings that do not stop training: an empty validation or test split."""
    return [f"the {split} split is empty: no metrics will be measured on it"
            for split in splits if not any(row.split == split for row in rows)]


def fold_notes(rows: list[Sample]) -> list[str]:
    """Warnings about cross-validation folds that lack a class (too few patients of it for the folds)."""
    classes = sorted({row.label for row in rows})
    folds = sorted({row.fold for row in rows if row.fold is not None})
    notes = []
    for fold in folds:
        missing = sorted(set(classes) - {row.label for row in rows if row.fold == fold})
        if missing:
            notes.append(f"fold {fold} has no {', '.join(missing)} scans: its validation scores are one-sided")
    return notes


def count_table(rows: list[Sample], by_fold: bool = False) -> dict[str, dict[str, tuple[int, int]]]:
    """{split: {label: (scans, patients)}}, or {"fold k": ...} over the rows that have a fold."""
    def group(row: Sample) -> str | None:
        return (None if row.fold is None else f"fold {row.fold}") if by_fold else row.split

    scans = Counter((group(row), row.label) for row in rows)
    patients = defaultdict(set)
    for row in rows:
        patients[(group(row), row.label)].add(row.patient_id)
    labels = sorted({row.label for row in rows})
    groups = [f"fold {k}" for k in sorted({r.fold for r in rows if r.fold is not None})] if by_fold else SPLITS
    return {name: {label: (scans[(name, label)], len(patients[(name, label)])) for label in labels}
            for name in groups}
