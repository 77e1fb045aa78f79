"""Every CSV the tool writes is safe to open in a spreadsheet and to read back; every CSV it reads
fails with one line naming the file and line, never a traceback."""
import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perceiver_med.csvfiles import FORMULA_STARTS, escape_cell, unescape_cell
from perceiver_med.workflows.folders import check_splits_file, inspect_folder
from perceiver_med.errors import UserError
from perceiver_med.io import discover
from perceiver_med.inputs.labels import label_scans
from perceiver_med.inputs.samples import Sample
from perceiver_med.results.predictions import write_predictions
from perceiver_med.run.predictor import Decisions


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def _cells(path):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def _safe(cell):
    return cell[:1] not in FORMULA_STARTS


def _one_line_error(result):
    code, out, err = result
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("value", ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''+x",
                                   "'quoted", "plain", ""])
def test_escaping_is_reversible_and_leaves_no_formula(value):
    written = escape_cell(value)
    assert _safe(written) and unescape_cell(written) == value
    assert escape_cell(0.25) == 0.25  # numbers are left alone


def test_formula_names_and_labels_are_escaped_in_every_csv_and_read_back(tmp_path, run_installed):
    data = tmp_path / "=cmd|' calc'!A0"  # the data folder itself starts every relative path
    for label, patients in (("+benign", "ab"), ("-malignant", "cd")):
        for patient in patients:
            for k in range(2):
                _png(data / label / f"@{patient}{k}.png")
    (tmp_path / "labels.csv").write_text("path,label,patient_id\n" + "".join(
        f"{p.relative_to(tmp_path).as_posix()},{p.parent.name},=P{p.name[1]}\n" for p in sorted(data.rglob("*.png"))))
    splits = tmp_path / "splits.csv"
    code, out, err = run_installed("split", data, "--out", splits, "--labels", tmp_path / "labels.csv")
    assert code == 0, err
    assert all(map(_safe, _cells(splits)))
    assert "'=cmd" in splits.read_text() and "'+benign" in splits.read_text()
    rows = check_splits_file(splits).rows
    assert {r.label for r in rows} == {"+benign", "-malignant"}
    assert {r.patient_id for r in rows} == {"=Pa", "=Pb", "=Pc", "=Pd"}
    assert {r.path for r in rows} == {p.resolve() for p in data.rglob("*.png")}
    inspect_folder(data, tmp_path / "files.csv")
    cells = _cells(tmp_path / "files.csv")
    assert all(map(_safe, cells)) and "'+benign/@a0.png" in cells

    probs = np.array([[0.25, 0.75], [1e-300, 1.0]])
    write_predictions(tmp_path / "p.csv", [Sample(Path("@a.png"), label="-malignant"),
                                           Sample(Path("=b.png"), label="+benign")],
                      Decisions(probs, probs, probs.argmax(axis=1), ["+benign", "-malignant"]))
    with open(tmp_path / "p.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert all(map(_safe, (cell for row in table for cell in row)))
    assert table[0] == ["path", "label", "pred", "prob_+benign", "prob_-malignant"]
    assert [[unescape_cell(c) for c in row[:3]] for row in table[1:]] == [
        ["@a.png", "-malignant", "-malignant"], ["=b.png", "+benign", "-malignant"]]
    assert np.array([[float(c) for c in row[3:]] for row in table[1:]]).tolist() == probs.tolist()


@pytest.mark.skipif(os.name == "nt", reason="Windows file names are UTF-16")
def test_a_file_name_that_is_not_utf8_is_written_escaped_and_found_again(tmp_path, run_installed):
    data = tmp_path / "data"
    for k, side in enumerate(["LEFT", "RIGHT"] * 3):
        _png(data / f"OAI90000{k:02d}_{side}_0.png")
    odd = os.fsencode(data) + b"/\xff_LEFT.png"  # no OAI id: the scan is its own patient, named in those bytes
    os.rename(os.fsencode(data / "OAI9000000_LEFT_0.png"), odd)
    splits = tmp_path / "splits.csv"
    code, out, err = run_installed("split", data, "--out", splits)
    assert code == 0, err
    assert "\\xff_LEFT.png" in splits.read_text(encoding="utf-8")  # valid UTF-8, the byte written as \xff
    rows = check_splits_file(splits).rows
    assert os.fsdecode(odd) in {str(r.path) for r in rows} and "\udcff_LEFT.png" in {r.patient_id for r in rows}
    inspect_folder(data, tmp_path / "files.csv")
    assert "\\xff_LEFT.png" in (tmp_path / "files.csv").read_text(encoding="utf-8")
    even = np.array([[0.5, 0.5]])
    write_predictions(tmp_path / "p.csv", [Sample(Path(os.fsdecode(odd)))],
                      Decisions(even, even, np.array([0]), ["left", "right"]))
    assert "\\xff_LEFT.png" in (tmp_path / "p.csv").read_text(encoding="utf-8")
    # a splits file another tool wrote with the name's raw bytes reads the same
    splits.write_bytes(splits.read_bytes().replace(b"\\xff", b"\xff"))
    assert os.fsdecode(odd) in {str(r.path) for r in check_splits_file(splits).rows}


def _splits_file(tmp_path, lines, encoding="utf-8"):
    for k in range(4):
        _png(tmp_path / f"s{k}.png")
    path = tmp_path / "s.csv"
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


HEADER = "path,label,patient_id,split"
GOOD = ["s0.png,a,P0,train", "s1.png,b,P1,train", "s2.png,a,P2,test", "s3.png,b,P3,val"]


def test_a_splits_file_with_a_byte_order_mark_is_read(tmp_path):
    path = _splits_file(tmp_path, [HEADER, *GOOD], encoding="utf-8-sig")
    assert [r.label for r in check_splits_file(path).rows] == ["a", "b", "a", "b"]


def test_a_latin1_splits_file_is_one_line_naming_file_and_line(tmp_path, run_installed):
    path = _splits_file(tmp_path, [HEADER, *GOOD[:3], "s3.png,bénin,P3,val"], encoding="latin-1")
    err = _one_line_error(run_installed("split", "--check", path))
    assert "s.csv:5: the label 'b\\xe9nin' is not UTF-8" in err


@pytest.mark.parametrize("lines, message", [
    ([HEADER + ",slice", *[g + ",4" for g in GOOD[:2]], GOOD[2] + ",abc", GOOD[3] + ","],
     "s.csv:4: slice must be a whole number >= 0, not 'abc'"),
    ([HEADER, *GOOD[:3], "s3.png,,P3,val"], "s.csv:5: empty label"),
    ([HEADER, *GOOD[:3], "s3.png,b,P3," + "x" * 200_000], "s.csv:5: not a readable CSV (field larger"),
    (["path;label;patient_id;split", *GOOD], "is not a splits file: it needs the columns path,label,"),
])
def test_a_malformed_splits_file_is_a_user_error_naming_file_and_line(tmp_path, lines, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_splits_file(_splits_file(tmp_path, lines))


def test_labels_files_with_a_byte_order_mark_latin1_or_an_empty_label(tmp_path):
    for k in range(4):
        _png(tmp_path / "data" / f"s{k}.png")
    labels = tmp_path / "labels.csv"
    labels.write_bytes("\ufeffpath,label\ns0.png,a\ns1.png,b\ns2.png,a\ns3.png,bénin\n".encode("utf-8"))
    labelled = label_scans(discover(tmp_path / "data"), labels_csv=labels)
    assert labelled.classes == ["a", "b", "bénin"]
    labels.write_bytes("path,label\ns0.png,a\ns1.png,b\ns2.png,a\ns3.png,bénin\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"labels.csv:5: the label .* is not UTF-8"):
        label_scans(discover(tmp_path / "data"), labels_csv=labels)
    labels.write_text("path,label\ns0.png,a\ns1.png, \n")
    with pytest.raises(UserError, match="labels.csv:3: empty label"):
        label_scans(discover(tmp_path / "data"), labels_csv=labels)


def test_every_csv_ends_its_lines_with_a_newline_alone(knee, tiny_run):
    """A `sed 's/,val$/,test/'` on a splits file silently changed nothing when lines ended in \\r\\n."""
    written = [knee / "splits.csv", tiny_run.run / "splits.csv", tiny_run.run / "history.csv",
               tiny_run.run / "predictions_test.csv"]
    for path in written:
        data = path.read_bytes()
        assert b"\r" not in data and data.endswith(b"\n"), path.name
