"""LUNA25 and LUNA16 as their users download them: phantom chests written in each benchmark's own layout
(synth luna25 / luna16), then split, train, evaluate and predict run on the files and tables unchanged.

Oracles: the table's own columns and cells (every cell a user gave comes back in the predictions, as written), the
nodule at the centre of the middle tile of its grid in every study (feet first too), the same nodule in two studies
giving the same grid, patients and folds as the table and the folders give them.
"""
import csv
import json

import numpy as np
import pytest

from perceiver_med.inputs.points import match_points, read_points
from perceiver_med.synth.luna import (LUNA16_CANDIDATES, LUNA25_COLUMNS, LUNA25_IMAGES, LUNA25_TABLE,
                                      write_image, write_luna16)
from perceiver_med.synth.phantoms import synth

TRAIN = ("--epochs", 1, "--size", 16, "--batch-size", 16, "--num-latents", 8, "--latent-dim", 32, "--quiet",
         "--device", "cpu", "--num-workers", 1)
CLASSES = {"0": "benign", "1": "malignant"}


def _table(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def _files(folder):
    return sorted((p, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def luna25(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna25")
    synth("luna25", root / "LUNA25", 8, None, 4)
    return root / "LUNA25"


def test_the_luna25_phantom_has_the_tables_columns_studies_and_imbalance(luna25):
    columns, rows = _table(luna25 / LUNA25_TABLE)
    assert columns == LUNA25_COLUMNS
    studies = {}
    for row in rows:
        studies.setdefault(row["PatientID"], set()).add(row["SeriesInstanceUID"])
    assert max(len(s) for s in studies.values()) >= 2  # follow-up studies of one patient
    nodule = next(r for r in rows if len(studies[r["PatientID"]]) >= 2)  # one nodule, seen again in a later study
    again = [r for r in rows if r["NoduleID"] == nodule["NoduleID"]]
    assert len({r["AnnotationID"] for r in again}) == len(again) == len(studies[nodule["PatientID"]])
    labels = [row["label"] for row in rows]
    assert set(labels) == {"0", "1"} and 5 <= labels.count("0") / labels.count("1") <= 15
    z = [float(row["CoordZ"]) for row in rows]
    assert max(z) - min(z) > 1000  # table positions far apart, as the real table's -1,618..+1,980 mm
    names = sorted(p.name for p in (luna25 / LUNA25_IMAGES).iterdir())
    assert names == sorted(f"{uid}.mha" for uid in {row["SeriesInstanceUID"] for row in rows})


def test_every_luna25_nodule_is_at_the_centre_of_its_grid_in_every_study(luna25):
    from perceiver_med.inputs.arrays import point_grid
    from perceiver_med.inputs.cache import find_scan
    from perceiver_med.inputs.preprocess import PreprocessConfig
    from perceiver_med.io import discover, read_scan

    from scipy.ndimage import center_of_mass, label

    tile = 32  # 0.75 mm pixels: a 4 mm nodule is 5 pixels across, and the chest wall (a small chest) mostly out
    config = PreprocessConfig(input="point", size=tile, window="-1000,0", fov_mm=24.0, slice_mm=2.0)
    table = read_points(luna25 / LUNA25_TABLE)  # LUNA25's own spellings: SeriesInstanceUID, CoordX.., PatientID
    samples, skipped = match_points(table, discover(luna25 / LUNA25_IMAGES))
    assert not skipped and len(samples) == len(table.samples) == len(_table(luna25 / LUNA25_TABLE)[1])
    _, rows = _table(luna25 / LUNA25_TABLE)
    grids = {}
    for sample, row in zip(samples, rows):
        assert (sample.series_uid, sample.patient_id) == (row["SeriesInstanceUID"], row["PatientID"])
        image = read_scan(find_scan(sample.path, sample.series_uid))
        grid = point_grid(image, sample.point, config)[0]
        middle = grid.reshape(3, tile, 3, tile)[1, :, 1, :]
        parts, _ = label(middle > 0.5)  # lung (-850 HU) is 0.15, a nodule (-100..50 HU) about 0.9
        nodule = parts == parts[tile // 2, tile // 2]
        assert parts[tile // 2, tile // 2] > 0, row["AnnotationID"]
        np.testing.assert_allclose(center_of_mass(nodule), [(tile - 1) / 2] * 2, atol=1.0)
        grids.setdefault(row["NoduleID"], []).append(grid)
    headers = [path.read_bytes()[:600] for path in (luna25 / LUNA25_IMAGES).iterdir()]
    assert any(b"TransformMatrix = 1 0 0 0 1 0 0 0 -1\n" in header for header in headers)  # feet first among them
    seen_twice = [g for g in grids.values() if len(g) > 1]
    assert seen_twice
    for first, *later in seen_twice:  # the same nodule in a follow-up (every second one stored feet first)
        for grid in later:
            assert np.corrcoef(first.ravel(), grid.ravel())[0, 1] > 0.97


def test_a_feet_first_metaimage_holds_the_same_voxels_in_the_same_places(tmp_path):
    from perceiver_med.io import discover, read_scan
    from perceiver_med.synth.nodules import ChestLayout, chest_volume

    volume, _, geometry, nodules = chest_volume(np.random.default_rng(1), ChestLayout(length_mm=(40.0, 50.0)))
    write_image(tmp_path / "head-first.mha", volume, geometry)
    write_image(tmp_path / "feet-first.mha", volume, geometry, feet_first=True)
    head, feet = (read_scan(scan) for scan in discover(tmp_path).scans[::-1])
    assert head.voxels.shape == volume.shape
    np.testing.assert_array_equal(feet.voxels, head.voxels)
    np.testing.assert_allclose(feet.affine, head.affine, atol=1e-6)
    centre = np.round(head.to_voxel(nodules[0].centre)).astype(int)
    assert head.voxels[tuple(centre)] > -400  # the nodule, not lung


def test_luna25_split_train_evaluate_predict_from_the_users_files(luna25, tmp_path, run_cli, run_installed):
    table = luna25 / LUNA25_TABLE
    before = _files(luna25)
    code, out, err = run_cli("split", luna25 / LUNA25_IMAGES, "--points", table, "--classes", "0=benign,1=malignant",
                             "--out", tmp_path / "splits.csv")
    assert code == 0, err
    from perceiver_med.inputs.splits import read_splits

    columns, rows = _table(table)
    split_rows = read_splits(tmp_path / "splits.csv")
    assert len(split_rows) == len(rows)
    split_of = {}
    for row, given in zip(split_rows, rows):
        assert (row.series_uid, row.patient_id, row.label) == (given["SeriesInstanceUID"], given["PatientID"],
                                                               CLASSES[given["label"]])
        assert split_of.setdefault(row.patient_id, row.split) == row.split  # every study of a patient in one split
    code, out, err = run_cli("train", tmp_path / "splits.csv", "--out", tmp_path / "run", *TRAIN)
    assert code == 0, err
    code, out, err = run_cli("evaluate", tmp_path / "run", "--split", "val")
    assert code == 0, err
    # predict through the installed script: the user's table in, the same table with the run's columns out
    code, out, err = run_installed("predict", tmp_path / "run", luna25 / LUNA25_IMAGES, "--points", table,
                                   "--classes", "0=benign,1=malignant", "--out", tmp_path / "predictions.csv")
    assert code == 0, err
    written_columns, written = _table(tmp_path / "predictions.csv")
    assert written_columns == columns + ["pred", "prob_benign", "prob_malignant"]
    for row, given in zip(written, rows):
        assert {c: row[c] for c in columns if c not in ("label", "CoordX", "CoordY", "CoordZ")} == \
               {c: given[c] for c in columns if c not in ("label", "CoordX", "CoordY", "CoordZ")}
        assert [float(row[c]) for c in ("CoordX", "CoordY", "CoordZ")] == \
               [float(given[c]) for c in ("CoordX", "CoordY", "CoordZ")]
        assert row["label"] == CLASSES[given["label"]] and row["pred"] in CLASSES.values()
        assert abs(float(row["prob_benign"]) + float(row["prob_malignant"]) - 1) < 1e-9
    # without --classes the 0/1 labels are not the run's classes: the table's label column is carried as it is
    code, out, err = run_cli("predict", tmp_path / "run", luna25 / LUNA25_IMAGES, "--points", table,
                             "--out", tmp_path / "unnamed.csv")
    assert code == 0, err
    unnamed_columns, unnamed = _table(tmp_path / "unnamed.csv")
    assert unnamed_columns == written_columns and [r["label"] for r in unnamed] == [g["label"] for g in rows]
    assert _files(luna25) == before  # nothing written among the user's files


def test_classes_that_do_not_fit_the_table_are_one_line_errors_or_skips(luna25, tmp_path, run_cli):
    table = luna25 / LUNA25_TABLE
    code, out, err = run_cli("split", luna25 / LUNA25_IMAGES, "--points", table, "--classes", "0=benign",
                             "--out", tmp_path / "s.csv")
    assert code == 2 and "at least two" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("split", luna25 / LUNA25_IMAGES, "--points", table, "--classes", "0=benign,2=malignant",
                             "--out", tmp_path / "s.csv")  # label 1 named by nothing: its rows are skipped
    assert code == 2 and "only one class (benign)" in err and not (tmp_path / "s.csv").exists()
    code, out, err = run_cli("split", luna25 / LUNA25_IMAGES, "--points", table, "--folds-from", "NoduleID",
                             "--ratios", "0.5,0.5,0", "--out", tmp_path / "s.csv")
    assert code == 2 and "leave out --ratios" in err


def test_the_benchmarks_spellings_are_read_as_ours_and_a_doubled_column_is_refused(luna25, tmp_path, run_cli):
    from perceiver_med.errors import UserError

    _, rows = _table(luna25 / LUNA25_TABLE)
    points = read_points(luna25 / LUNA25_TABLE, CLASSES)
    assert [s.label for s in points.samples] == [CLASSES[r["label"]] for r in rows]
    assert [s.point for s in points.samples] == [tuple(float(r[c]) for c in ("CoordX", "CoordY", "CoordZ"))
                                                 for r in rows]
    assert [(s.series_uid, s.patient_id) for s in points.samples] == [(r["SeriesInstanceUID"], r["PatientID"])
                                                                      for r in rows]
    uid = rows[0]["SeriesInstanceUID"]
    (tmp_path / "both.csv").write_text(f"seriesuid,coordX,coordY,coordZ,label,class\n{uid},1,2,3,0,0\n")
    with pytest.raises(UserError, match="has both label and class columns"):
        read_points(tmp_path / "both.csv")
    (tmp_path / "two.csv").write_text(f"seriesuid,coordX,coordY,coordZ,class\n{uid},1,2,3,2\n{uid},1,2,4,1\n")
    two = read_points(tmp_path / "two.csv", CLASSES)
    assert [s.label for s in two.samples] == ["malignant"]
    assert "two.csv:2: class '2' is not one of the values --classes names (0, 1)" in two.skipped[0].reason
    # folds given by a column that splits a patient (StudyDate: a patient's studies differ) are a leak, refused
    code, out, err = run_cli("split", luna25 / LUNA25_IMAGES, "--points", luna25 / LUNA25_TABLE, "--folds-from",
                             "StudyDate", "--out", tmp_path / "s.csv")
    assert code == 2 and "without one fold" in err and not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------- LUNA16: subsets as folds, a candidates table
@pytest.fixture(scope="module")
def luna16(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16") / "LUNA16"
    root.mkdir()
    write_luna16(root, 4, seed=5, subsets=2)  # subset0, subset1: two folds, as LUNA16's ten
    return root


def test_luna16_split_by_its_subsets_then_cross_validation_and_predict(luna16, tmp_path, run_cli):
    from perceiver_med.inputs.splits import read_splits

    candidates = luna16 / "candidates_V2.csv"
    columns, rows = _table(candidates)
    assert columns == LUNA16_CANDIDATES and {r["class"] for r in rows} == {"0", "1"}
    before = _files(luna16)
    code, out, err = run_cli("split", luna16, "--points", candidates, "--folds-from", "folder",
                             "--out", tmp_path / "splits.csv")
    assert code == 0, err
    assert "0 = subset0, 1 = subset1" in " ".join(out.split())
    assert "each of their scans is its own patient" in " ".join(out.split())  # LUNA16 gives no patient ids
    split_rows = read_splits(tmp_path / "splits.csv")
    assert len(split_rows) == len(rows) and not any(row.split == "test" for row in split_rows)
    for row, given in zip(split_rows, rows):
        assert row.path.parent.name == f"subset{row.fold}" and row.series_uid == given["seriesuid"]
        assert row.label == given["class"] and row.split == ("val" if row.fold == 0 else "train")
    code, out, err = run_cli("train", tmp_path / "splits.csv", "--cv", "--out", tmp_path / "run", *TRAIN)
    assert code == 0, err
    assert "predictions_test.csv" not in out and "ensemble on test" not in " ".join(out.split())  # none written
    assert not (tmp_path / "run" / "predictions_test.csv").exists()
    _, out_of_fold = _table(tmp_path / "run" / "predictions_out_of_fold.csv")
    assert len(out_of_fold) == len(rows)  # every candidate scored by the fold that did not train on it
    code, out, err = run_cli("evaluate", tmp_path / "run")  # no test split: the out-of-fold scores are the result
    assert code == 2 and "out-of-fold scores are in its metrics.json" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["out_of_fold"]["n"] == len(rows)
    code, out, err = run_cli("evaluate", tmp_path / "run" / "fold_1", "--split", "val", "--nodules",
                             luna16 / "annotations.csv")  # the fold of subset1, with LUNA16's FROC and CPM
    assert code == 0, err
    assert "CPM" in out
    code, out, err = run_cli("predict", tmp_path / "run", luna16, "--points", candidates,
                             "--out", tmp_path / "predictions.csv")
    assert code == 0, err
    written_columns, written = _table(tmp_path / "predictions.csv")
    assert written_columns == columns + ["pred", "prob_0", "prob_1"]  # the table, and the run's columns
    assert [r["class"] for r in written] == [g["class"] for g in rows]
    # annotations.csv (no label) is a points file too: one prediction per nodule
    code, out, err = run_cli("predict", tmp_path / "run", luna16, "--points", luna16 / "annotations.csv",
                             "--out", tmp_path / "nodules.csv")
    assert code == 0, err
    nodule_columns, nodules = _table(tmp_path / "nodules.csv")
    assert nodule_columns == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "pred", "prob_0", "prob_1"]
    assert len(nodules) == len(_table(luna16 / "annotations.csv")[1])
    assert _files(luna16) == before


def test_synth_of_a_benchmark_takes_no_format_of_its_own(tmp_path, run_cli):
    code, out, err = run_cli("synth", "luna16", tmp_path / "L16", "--format", "nifti")
    assert code == 2 and "leave out --format" in err and not (tmp_path / "L16").exists()
