from collections import defaultdict
from pathlib import Path

import pytest

from perceiver_med.errors import UserError
from perceiver_med.io.discover import Scan
from perceiver_med.io.labels import LabelledScan
from perceiver_med.splits import assign_splits, find_problems, read_splits, rows_from_items, write_splits


def _items(patients=30, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    items = []
    for p in range(patients):
        labels = ["left", "right"] if rng.random() < 0.4 else [("left", "right")[p % 2]]
        for label in labels:
            for k in range(int(rng.integers(1, 4))):
                path = Path(f"/data/P{p}_{label}_{k}.png")
                items.append(LabelledScan(Scan(path.name, path, [path], "png", "image"), label, f"P{p}"))
    return items


@pytest.mark.parametrize("seed", range(25))
def test_no_patient_in_two_splits_and_every_class_in_every_split(seed):
    items = _items(patients=12 + seed, seed=seed)
    splits = assign_splits(items, (0.6, 0.2, 0.2), seed=seed)
    where = defaultdict(set)
    for item, split in zip(items, splits):
        where[item.patient_id].add(split)
    assert all(len(s) == 1 for s in where.values())
    for label in ("left", "right"):
        assert {s for item, s in zip(items, splits) if item.label == label} == {"train", "val", "test"}


def test_split_is_deterministic_per_seed_and_close_to_the_ratios():
    items = _items(patients=100)
    first, second = assign_splits(items, seed=3), assign_splits(items, seed=3)
    assert first == second and assign_splits(items, seed=4) != first
    patients = {(item.patient_id, split) for item, split in zip(items, first)}
    train = sum(1 for _, split in patients if split == "train")
    assert 50 <= train <= 70


def test_bad_ratios_and_single_class_are_refused():
    with pytest.raises(UserError, match="sum to 1"):
        assign_splits(_items(), (0.5, 0.2, 0.2))
    one_class = [i for i in _items() if i.label == "left"]
    with pytest.raises(UserError, match="only one class"):
        assign_splits(one_class)


def test_csv_round_trip_and_leakage_check(tmp_path):
    items = _items(patients=10)
    for item in items:  # real files, so the check finds them
        item.scan.path = tmp_path / "data" / item.scan.path.name
        item.scan.path.parent.mkdir(exist_ok=True)
        item.scan.path.write_bytes(b"x")
    rows = rows_from_items(items, assign_splits(items))
    write_splits(rows, tmp_path / "out" / "splits.csv")
    text = (tmp_path / "out" / "splits.csv").read_text()
    assert text.startswith("path,label,patient_id,split\n") and "../data/" in text
    back = read_splits(tmp_path / "out" / "splits.csv")
    assert [(r.path, r.split) for r in back] == [(r.path, r.split) for r in rows]
    assert find_problems(back) == []
    back[0].split = "test" if back[0].split != "test" else "train"
    same_patient = [r for r in back if r.patient_id == back[0].patient_id]
    if len(same_patient) == 1:
        back.append(type(back[0])(back[0].path, back[0].label, back[0].patient_id, "val"))
    back[1].path.unlink()
    problems = find_problems(back)
    assert any("more than one split" in p for p in problems) and any("missing" in p for p in problems)
