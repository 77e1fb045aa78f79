"""Cross-validation folds, one fold's run, and a cross-validated run as an ensemble, against oracles read from
the files themselves (each member's own predictions, the splits file's columns)."""
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from perceiver_med.errors import UserError
from perceiver_med.inputs.splits import find_problems, read_splits
from perceiver_med.stats.statistics import choose_threshold
from perceiver_med.workflows.train import TrainRequest, train
from tests.conftest import CPU, TINY_PERCEIVER_RUN


def _rows(path: Path) -> list[dict]:
    """A CSV's rows, with scan paths made absolute as the splits reader resolves them."""
    rows = list(csv.DictReader(open(path)))
    for row in rows:
        row["path"] = str((Path(path).parent / row["path"]).resolve())
    return rows


@pytest.fixture(scope="module")
def folded(knee, tmp_path_factory):
    from perceiver_med.workflows.folders import split_folder

    root = tmp_path_factory.mktemp("folded")
    split_folder(knee / "data", root / "splits.csv", seed=0, folds=3)
    return root / "splits.csv"


def test_folds_group_patients_hold_test_out_and_make_fold_zero_the_val_split(knee, folded):
    plain, rows = _rows(knee / "splits.csv"), _rows(folded)
    # the same seed holds out the same test scans as a split without folds
    assert sorted(r["path"] for r in rows if r["split"] == "test") == sorted(
        r["path"] for r in plain if r["split"] == "test")
    folds_of = defaultdict(set)
    for row in rows:
        if row["split"] == "test":
            assert row["fold"] == ""
        else:
            folds_of[row["patient_id"]].add(row["fold"])
            assert row["split"] == ("val" if row["fold"] == "0" else "train")
    assert all(len(folds) == 1 for folds in folds_of.values())  # no patient in two folds
    assert {f for folds in folds_of.values() for f in folds} == {"0", "1", "2"}
    for fold in "012":  # stratified: both sides in every fold
        assert {r["label"] for r in rows if r["fold"] == fold} == {"left", "right"}


def test_a_patient_in_two_folds_and_a_test_row_with_a_fold_are_refused(folded, tmp_path):
    rows = _rows(folded)
    patient = next(r["patient_id"] for r in rows if r["fold"] == "1")
    edited = [dict(r) for r in rows]
    first = next(r for r in edited if r["patient_id"] == patient and r["fold"] == "1")
    first["fold"] = "2"
    bad = tmp_path / "two.csv"
    _write(bad, edited)
    problems = find_problems(read_splits(bad))
    assert any("without one fold" in p and patient in p for p in problems), problems
    test_row = next(r for r in rows if r["split"] == "test")
    _write(bad, [{**r, "fold": "1"} if r is test_row else r for r in rows])
    with pytest.raises(UserError, match="test row has no fold"):
        read_splits(bad)


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def cv_run(folded, tmp_path_factory):
    return train(TrainRequest(folded, tmp_path_factory.mktemp("cv") / "run", "perceiver",
                              {**TINY_PERCEIVER_RUN, "threshold": "youden"}, CPU, cv=True))


def test_each_fold_holds_its_own_rows_out_as_val(cv_run, folded):
    rows = _rows(folded)
    for fold in "012":
        frozen = _rows(cv_run.run / f"fold_{fold}" / "splits.csv")
        assert sorted(r["path"] for r in frozen if r["split"] == "val") == sorted(
            r["path"] for r in rows if r["fold"] == fold)
        assert json.loads((cv_run.run / f"fold_{fold}" / "config.json").read_text())["fold"] == int(fold)


def test_out_of_fold_and_ensemble_predictions_are_the_members_own(cv_run, folded):
    run = cv_run.run
    oof = _rows(run / "predictions_out_of_fold.csv")
    # every train/val scan exactly once, with the probabilities its fold's member wrote for its val split
    assert sorted(r["path"] for r in oof) == sorted(r["path"] for r in _rows(folded) if r["split"] != "test")
    members = {}
    for fold in "012":
        members.update({r["path"]: float(r["prob_right"]) for r in _rows(run / f"fold_{fold}" / "predictions_val.csv")})
    for row in oof:
        assert float(row["prob_right"]) == pytest.approx(members[row["path"]], abs=1e-6)
    # the ensemble on test: the mean of the members' calibrated test probabilities
    tests = [{r["path"]: float(r["prob_right"]) for r in _rows(run / f"fold_{f}" / "predictions_test.csv")}
             for f in "012"]
    ensemble = _rows(run / "predictions_test.csv")
    for row in ensemble:
        assert float(row["prob_right"]) == pytest.approx(np.mean([t[row["path"]] for t in tests]), abs=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    # the threshold comes from the out-of-fold predictions, never from test
    threshold = metrics["threshold"]["value"]
    assert metrics["threshold"]["chosen_on"] == "out_of_fold"
    assert threshold == pytest.approx(choose_threshold(np.array([r["label"] == "right" for r in oof]),
                                                       np.array([float(r["prob_right"]) for r in oof]), "youden"))
    for split, rows in (("out_of_fold", oof), ("test", ensemble)):
        assert [r["pred"] for r in rows] == ["right" if float(r["prob_right"]) >= threshold else "left" for r in rows]
        assert metrics[split]["accuracy"] == pytest.approx(np.mean([r["pred"] == r["label"] for r in rows]))
        assert metrics[split]["n"] == len(rows) and "ci95" in metrics[split]
    assert metrics["cross_validation"]["folds"] == 3


def test_predict_and_evaluate_on_a_cross_validated_run_use_the_ensemble(cv_run, knee, tmp_path):
    from perceiver_med.results.evaluation import evaluate_run
    from perceiver_med.results.predictions import PredictRequest, predict_run

    predict_run(PredictRequest(cv_run.run, knee / "data", tmp_path / "predicted.csv", runtime=CPU))
    predicted = {r["path"]: r for r in _rows(tmp_path / "predicted.csv")}
    for row in _rows(cv_run.run / "predictions_test.csv"):
        assert predicted[row["path"]]["pred"] == row["pred"]
        assert float(predicted[row["path"]]["prob_right"]) == pytest.approx(float(row["prob_right"]), abs=1e-6)
    assert set(evaluate_run(cv_run.run, runtime=CPU)) & {"train", "val", "test"} == {"test"}
    again = evaluate_run(cv_run.run, split="test", runtime=CPU)
    metrics = json.loads((cv_run.run / "metrics.json").read_text())
    assert again["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert again["test"]["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-6)
    # nothing is written inside the cross-validation, beside its folds either
    with pytest.raises(UserError, match="is inside the run directory"):
        predict_run(PredictRequest(cv_run.run / "fold_0", knee / "data", cv_run.run / "p.csv", runtime=CPU))
    assert not (cv_run.run / "p.csv").exists()


def test_a_stopped_cross_validation_resumes_with_its_own_options(cv_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cv_run.run, run)
    kept = (run / "fold_0" / "model.safetensors").read_bytes()
    shutil.rmtree(run / "fold_1")  # stopped before this fold began
    for path in (run / "fold_2").iterdir():  # killed before the first epoch of this one ended
        if path.name not in ("config.json", "splits.csv"):
            path.unlink()
    (run / "config.json").unlink()
    with pytest.raises(UserError, match="--lr"):
        train(TrainRequest(None, run, options={"lr": 0.5}, resume=True, cv=True))
    # the same options in another spelling are the same options
    result = train(TrainRequest(None, run, options={"threshold": "YOUDEN"}, runtime=CPU, resume=True, cv=True))
    assert (run / "fold_0" / "model.safetensors").read_bytes() == kept and result.folds[0] is None
    assert json.loads((run / "fold_2" / "config.json").read_text())["train"]["epochs"] == TINY_PERCEIVER_RUN["epochs"]
    assert (run / "config.json").is_file() and "test" in result.metrics


def test_a_refused_option_leaves_nothing_to_block_the_corrected_command(folded, tmp_path):
    with pytest.raises(UserError, match="--threshold"):
        train(TrainRequest(folded, tmp_path / "run", "perceiver", {**TINY_PERCEIVER_RUN, "threshold": "bogus"}, CPU,
                           cv=True))
    with pytest.raises(UserError, match="not perceiver"):  # refused inside the first fold
        train(TrainRequest(folded, tmp_path / "run", "perceiver", {**TINY_PERCEIVER_RUN, "depth": 2}, CPU, cv=True))
    from perceiver_med.run.rundir import holds_files

    assert not holds_files(tmp_path / "run")  # what makes train refuse an --out


def test_cross_validation_mistakes_are_one_line(run_installed, knee, folded, tmp_path):
    for args, message in [((knee / "splits.csv", "--cv"), "no fold column"),
                          ((folded, "--fold", "7"), "--fold 7 is not a fold"),
                          ((folded, "--cv", "--fold", "1"), "leave out --fold")]:
        code, out, err = run_installed("train", *args, "--out", tmp_path / "r", "--epochs", "1")
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)
        assert not (tmp_path / "r").exists()


def test_out_of_fold_calibration_before_is_of_the_uncalibrated_probabilities(cv_run):
    """Each fold's member calibrates its own predictions: 'before' must be the members' raw probabilities, not the
    calibrated ones a second time (that printed an out-of-fold loss of 0.000 and ECE 5e-07 'before')."""
    from perceiver_med.inputs.samples import Sample
    from perceiver_med.results.scoring import score_split
    from perceiver_med.run.rundir import RunDir

    config = RunDir.open(cv_run.run).config()
    labels = np.array([0, 1, 1, 0])
    raw = np.array([[0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    calibrated = np.array([[0.9, 0.1], [0.1, 0.9], [0.3, 0.7], [0.4, 0.6]])  # as if each had its own T
    rows = [Sample(Path(f"/x/{k}.png"), label=config.classes[label], patient_id=f"P{k}", split="val")
            for k, label in enumerate(labels)]
    scored = score_split(labels, raw, rows, config, calibrated=calibrated)
    nll = lambda p: float(np.mean(-np.log(p[np.arange(4), labels])))  # noqa: E731
    assert scored["calibration"]["loss"] == pytest.approx(nll(raw))
    assert scored["calibration"]["loss_after"] == pytest.approx(nll(calibrated)) == pytest.approx(scored["loss"])


def test_resume_of_a_finished_cross_validation_says_it_is_complete(cv_run):
    with pytest.raises(UserError, match="is complete"):
        train(TrainRequest(None, cv_run.run, resume=True, cv=True))
