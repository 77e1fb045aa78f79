import csv

import numpy as np
import pytest

from perceiver_med import __version__


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_version_and_help(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out
    code, out, _ = run_cli("--help")
    assert code == 0 and "split" in out and "synth" in out


@pytest.mark.parametrize("fmt", ["dicom", "png", "nifti"])
def test_synth_knee_split_inspect_without_touching_the_input(tmp_path, run_cli, fmt):
    data = tmp_path / "knee"
    code, out, err = run_cli("synth", "knee", data, "--patients", 12, "--format", fmt, "--seed", 1)
    assert code == 0, err
    before = _tree(data)
    code, out, err = run_cli("split", data, "--out", tmp_path / "splits.csv")
    assert code == 0, err
    assert "labels from laterality" in out and "PHANTOM" not in out + err
    rows = list(csv.DictReader(open(tmp_path / "splits.csv")))
    assert {r["label"] for r in rows} == {"left", "right"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert rows[0]["patient_id"].startswith("OAI")
    code, out, err = run_cli("split", "--check", tmp_path / "splits.csv")
    assert code == 0 and "ok" in out
    code, out, err = run_cli("inspect", data, "--out", tmp_path / "files.csv")
    assert code == 0 and "PHANTOM" not in out + err
    files = list(csv.DictReader(open(tmp_path / "files.csv")))
    assert list(files[0]) == ["file", "scan", "status", "reason", "kind", "modality", "shape"]
    assert len(files) == len([p for p in data.rglob("*") if p.is_file()])
    assert _tree(data) == before


def test_synth_lung_dicom_shuffled_series_give_grids(tmp_path, run_cli):
    data = tmp_path / "lung"
    assert run_cli("synth", "lung", data, "--patients", 4)[0] == 0
    code, out, err = run_cli("split", data, "--out", tmp_path / "s.csv")
    assert code == 0 and "labels from folder" in out
    series = sorted((data / "benign").iterdir())[0]
    code, out, err = run_cli("preview", series, "--input", "grid", "--out", tmp_path / "prev")
    assert code == 0, err
    grid = np.load(tmp_path / "prev.npy")
    assert grid.shape == (1, 192, 192) and grid.dtype == np.float32 and (tmp_path / "prev.png").exists()
    code, out, err = run_cli("prepare", tmp_path / "s.csv")
    assert code == 0 and "4 scan(s) ready as grid" in out


def test_synth_is_deterministic_per_seed(tmp_path, run_cli):
    for name in ("a", "b"):
        run_cli("synth", "knee", tmp_path / name, "--patients", 3, "--seed", 5)
    a, b = sorted((tmp_path / "a").iterdir()), sorted((tmp_path / "b").iterdir())
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_split_check_finds_leakage(tmp_path, run_cli):
    run_cli("synth", "knee", tmp_path / "k", "--patients", 10)
    run_cli("split", tmp_path / "k", "--out", tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    header, first = lines[0], lines[1].split(",")
    twin = lines[2].split(",")
    twin[2], twin[3] = first[2], "test" if first[3] != "test" else "train"
    (tmp_path / "s.csv").write_text("\n".join([header, ",".join(first), ",".join(twin)]) + "\n")
    code, out, err = run_cli("split", "--check", tmp_path / "s.csv")
    assert code == 2 and "more than one split" in err


def _one_line_error(result):
    code, out, err = result
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_get_one_line_and_exit_code_2(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    assert "does not exist" in _one_line_error(run_cli("inspect", tmp_path / "missing"))
    assert "empty" in _one_line_error(run_cli("split", tmp_path / "empty", "--out", tmp_path / "s.csv"))
    run_cli("synth", "knee", tmp_path / "k", "--patients", 4)
    assert "sum to 1" in _one_line_error(run_cli("split", tmp_path / "k", "--out", tmp_path / "s.csv",
                                                 "--ratios", "0.5,0.2,0.2"))
    assert "inside the input folder" in _one_line_error(run_cli("split", tmp_path / "k", "--out",
                                                                tmp_path / "k" / "s.csv"))
    (tmp_path / "one").mkdir()
    for p in list((tmp_path / "k").glob("*LEFT*"))[:3]:
        (tmp_path / "one" / p.name).write_bytes(p.read_bytes())
    assert "only one class" in _one_line_error(run_cli("split", tmp_path / "one", "--out", tmp_path / "s.csv"))
    (tmp_path / "labels.csv").write_text("path,label\nk/nothere.png,left\n")
    assert "do not exist" in _one_line_error(run_cli("split", tmp_path / "k", "--out", tmp_path / "s.csv",
                                                     "--labels", tmp_path / "labels.csv"))
    assert not (tmp_path / "s.csv").exists()
    assert "not empty" in _one_line_error(run_cli("synth", "knee", tmp_path / "k"))


def test_preview_of_a_too_short_volume_names_the_scan(tmp_path, run_cli):
    from tests.conftest import index_volume, write_series

    write_series(tmp_path / "short", index_volume(slices=4))
    err = _one_line_error(run_cli("preview", tmp_path / "short", "--input", "grid", "--out", tmp_path / "p"))
    assert "short" in err and "only 4 slices" in err
    assert run_cli("preview", tmp_path / "short", "--input", "grid", "--grid-pad", "--out", tmp_path / "p")[0] == 0
