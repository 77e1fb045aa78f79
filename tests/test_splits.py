import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from perceiver_med.workflows.folders import check_splits_file, split_folder
from perceiver_med.errors import UserError
from perceiver_med.io import discover
from perceiver_med.inputs.labels import label_scans
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import assign_splits, find_problems, read_splits, write_splits


def _items(patients=30, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    items = []
    for p in range(patients):
        labels = ["left", "right"] if rng.random() < 0.4 else [("left", "right")[p % 2]]
        for label in labels:
            for k in range(int(rng.integers(1, 4))):
                path = Path(f"/data/P{p}_{label}_{k}.png")
                items.append(Sample(path, label=label, patient_id=f"P{p}"))
    return items


@pytest.mark.parametrize("seed", range(25))
def test_no_patient_in_two_splits_and_every_class_in_every_split(seed):
    items = _items(patients=12 + seed, seed=seed)
    splits = [item.split for item in assign_splits(items, (0.6, 0.2, 0.2), seed=seed)]
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
    patients = {(item.patient_id, item.split) for item in first}
    train = sum(1 for _, split in patients if split == "train")
    assert 50 <= train <= 70


def test_bad_ratios_and_single_class_are_refused():
    with pytest.raises(UserError, match="sum to 1"):
        assign_splits(_items(), (0.5, 0.2, 0.2))
    one_class = [i for i in _items() if i.label == "left"]
    with pytest.raises(UserError, match="only one class"):
        assign_splits(one_class)


def test_csv_round_trip_and_leakage_check(tmp_path):
    items = [replace(item, path=tmp_path / "data" / item.path.name) for item in _items(patients=10)]
    for item in items:  # real files, so the check finds them
        item.path.parent.mkdir(exist_ok=True)
        item.path.write_bytes(b"x")
    rows = assign_splits(items)
    write_splits(rows, tmp_path / "out" / "splits.csv")
    text = (tmp_path / "out" / "splits.csv").read_text()
    # the CSV sits beside the data, not above it: absolute paths, never ../
    assert text.startswith("path,label,patient_id,split\n") and f"\n{tmp_path / 'data'}/" in text
    back = read_splits(tmp_path / "out" / "splits.csv")
    assert [(r.path, r.split) for r in back] == [(r.path, r.split) for r in rows]
    assert find_problems(back) == []
    back[0] = replace(back[0], split="test" if back[0].split != "test" else "train")
    same_patient = [r for r in back if r.patient_id == back[0].patient_id]
    if len(same_patient) == 1:
        back.append(replace(back[0], split="val"))
    back[1].path.unlink()
    problems = find_problems(back)
    assert any("more than one split" in p for p in problems) and any("missing" in p for p in problems)


# ---------------------------------------------------------------- what `split --check` refuses, as `train` does
def _png(path):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def _check(tmp_path, lines, name="s.csv"):
    for k in range(6):
        _png(tmp_path / "data" / f"s{k}.png")
    path = tmp_path / name
    path.write_text("path,label,patient_id,split,series_uid\n" + "\n".join(lines) + "\n")
    return check_splits_file(path)


BASE = ["data/s0.png,a,P0,train,", "data/s1.png,b,P1,train,", "data/s2.png,a,P2,val,", "data/s3.png,b,P3,test,"]


@pytest.mark.parametrize("lines, message", [
    (BASE + ["data/./s0.png,a,P9,test,"], "scan(s) or series in more than one split, e.g. "),
    (BASE + ["data/s4.png,a,P4,train,1.2.3", "data/s5.png,a,P5,test,1.2.3"],
     "series in more than one split, e.g. 1.2.3"),
    (BASE + ["data/s1.png,b,P1,train,"], "1 scan(s) listed more than once"),
    ([line.replace(",b,", ",a,") for line in BASE], "only one class (a)"),
    ([line.replace(",train,", ",val,") for line in BASE], "no scan in the train split"),
    (BASE + ["data/s4.png,a,,test,"], "s.csv:6: empty patient_id"),
    (BASE + ["../outside.png,a,P4,test,"], "s.csv:6: the path '../outside.png' leads out of the splits file's folder"),
    (BASE + ["data/../../outside.png,a,P4,test,"], "leads out of the splits file's folder"),
])
def test_check_refuses_what_train_cannot_use(tmp_path, lines, message):
    with pytest.raises(UserError, match=re.escape(message)):
        _check(tmp_path, lines)


def test_check_notes_an_empty_test_split_and_accepts_absolute_paths(tmp_path):
    lines = [line.replace(",test,", ",train,") for line in BASE]
    lines[0] = f"{tmp_path / 'data' / 's0.png'},a,P0,train,"
    checked = _check(tmp_path, lines)
    assert checked.notes == ["the test split is empty: no metrics will be measured on it"]
    assert checked.rows[0].path == tmp_path / "data" / "s0.png"


def test_a_folder_is_not_a_splits_file(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a splits file: make one from a folder of scans with"):
        check_splits_file(tmp_path)


def test_splits_beside_the_data_are_written_absolute_and_check_and_train_read_them(tmp_path, run_installed):
    # README: perceiver-med split scans/ --out splits.csv; and the CSV in a sibling folder, out/splits.csv
    for k in range(10):
        _png(tmp_path / "scans" / ("benign", "malignant")[k % 2] / f"c{k}.png")
    code, out, err = run_installed("split", "scans", "--out", "out/splits.csv", cwd=tmp_path)
    assert code == 0, err
    text = (tmp_path / "out" / "splits.csv").read_text()
    assert "../" not in text and f"{tmp_path / 'scans'}/" in text
    rows = check_splits_file(tmp_path / "out" / "splits.csv").rows
    assert {r.path for r in rows} == {p.resolve() for p in (tmp_path / "scans").rglob("*.png")}
    split_folder(tmp_path / "scans", tmp_path / "splits.csv")
    assert (tmp_path / "splits.csv").read_text().splitlines()[1].startswith("scans/")
    assert len(check_splits_file(tmp_path / "splits.csv").rows) == 10


def test_an_empty_patient_id_is_refused_when_splitting(tmp_path, run_installed):
    for k in range(8):
        _png(tmp_path / "data" / f"subj{k}_{('LEFT', 'RIGHT')[k % 2]}.png")
    # "(x?)" matches the empty string at the start of every path: before, every scan became patient ""
    code, out, err = run_installed("split", tmp_path / "data", "--out", tmp_path / "s.csv", "--patient-regex", "(x?)")
    assert code == 2 and "--patient-regex '(x?)' gives no patient id for any scan" in err, err
    assert not (tmp_path / "s.csv").exists()
    labelled = label_scans(discover(tmp_path / "data"), patient_regex=r"subj(\d*)_")
    assert sorted(i.patient_id for i in labelled.samples) == [str(k) for k in range(8)]
    items = labelled.samples
    items[0] = replace(items[0], patient_id="")
    with pytest.raises(UserError, match="empty patient id"):
        assign_splits(items)
