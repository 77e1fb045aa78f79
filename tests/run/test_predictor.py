"""The run directory and the predictor: one chain from model output to decision, every command through it."""
from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch

from perceiver_med.errors import UserError
from perceiver_med.run.predictor import Predictor
from perceiver_med.stats.decision import decide
from perceiver_med.run.rundir import RunDir
from perceiver_med.training.config import Decision


def test_the_chain_calibrates_then_thresholds_the_positive_class():
    """Oracle by hand: softmax(log p / T), then the positive class where its calibrated probability >= threshold."""
    raw = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    probs, indices = decide(raw, Decision(temperature=2.0, threshold=0.58), positive=1)
    by_hand = np.sqrt(raw) / np.sqrt(raw).sum(axis=1, keepdims=True)  # T = 2: p^(1/2), renormalised
    np.testing.assert_allclose(probs, by_hand, rtol=1e-12)
    assert by_hand[1, 1] < 0.58 < by_hand[2, 1]  # the threshold falls between the two: only the third is called
    assert indices.tolist() == [0, 0, 1]
    _, argmax = decide(raw, Decision(temperature=1.0, threshold=None), positive=1)
    assert argmax.tolist() == [0, 1, 1]  # no threshold: the most probable class


def test_a_finished_run_predicts_through_one_predictor(tiny_run, knee):
    """The run's own predictions files hold what a Predictor of the saved run decides for the same inputs."""
    from perceiver_med.inputs.loading import load_split_inputs

    predictor = Predictor(tiny_run.run, device="cpu")
    rows = [row for row in predictor.run.frozen_rows(predictor.config) if row.split == "test"]
    loaded = load_split_inputs(rows, predictor.config.preprocess)
    decided = predictor.predict(loaded.inputs)
    written = [line.split(",") for line in predictor.run.predictions_file("test").read_text().splitlines()[1:]]
    assert [cells[2] for cells in written] == decided.names
    np.testing.assert_allclose([[float(c) for c in cells[3:]] for cells in written], decided.probs, atol=1e-12)


def _copy(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_a_run_of_another_input_version_is_refused_with_the_reason(tiny_run, tmp_path, run_installed, knee):
    run = _copy(tiny_run.run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    for version, words in ((None, "recorded no input version"), (1, "input version 1")):
        config.pop("input_version", None) if version is None else config.update(input_version=version)
        (run / "config.json").write_text(json.dumps(config))
        code, _, err = run_installed("predict", run, knee / "data", "--out", tmp_path / "p.csv")
        assert code == 2 and words in err and "train the run again" in err and "Traceback" not in err
        assert not (tmp_path / "p.csv").exists()


def test_a_run_still_in_training_is_not_used(tiny_run, tmp_path, run_installed, knee):
    """The lock of a live train process marks its weights as intermediate."""
    run = _copy(tiny_run.run, tmp_path)
    (run / ".lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")  # a process that runs: our parent
    code, _, err = run_installed("evaluate", run)
    assert code == 2 and "still being trained" in err
    (run / ".lock").write_text(f"{socket.gethostname()} 999999999\n")  # its owner is gone: a stale lock
    assert RunDir.open(run).path == run


def test_predict_scores_apart_the_samples_the_run_learnt_from(tiny_run, knee, tmp_path, run_installed):
    """The knee folder holds the run's train, val and test scans: accuracy counts only those it did not train on."""
    from perceiver_med.inputs.splits import read_splits

    rows = read_splits(tiny_run.run / "splits.csv")
    own = sum(row.split in ("train", "val") for row in rows)
    code, out, err = run_installed("predict", tiny_run.run, knee / "data", "--out", tmp_path / "p.csv")
    assert code == 0, err
    text = " ".join(out.split())
    assert f"{own} labelled sample(s) were the run's own" in text
    tested = sum(row.split == "test" for row in rows)
    assert f"on {tested} sample(s) of patients the run did not train on" in text


def test_explain_and_the_report_draw_the_same_evidence(tiny_run, tmp_path):
    """One evidence_for serves both: the same window and the same map for the same input."""
    from perceiver_med.inputs.cache import prepare
    from perceiver_med.inputs.samples import Sample
    from perceiver_med.results.explain import evidence_for, occlusion_window

    predictor = Predictor(tiny_run.run, device="cpu")
    row = predictor.run.frozen_rows(predictor.config)[0]
    array = prepare(Sample(row.path), predictor.config.preprocess)
    evidence = evidence_for(predictor, array)
    assert evidence.window == occlusion_window(predictor.model, max(array.shape[-2:]))
    again = evidence_for(Predictor(tiny_run.run, device="cpu"), array)
    np.testing.assert_array_equal(evidence.map, again.map)
    assert evidence.predicted == predictor.predict(torch.from_numpy(array)[None]).names[0]


def test_a_missing_run_is_one_line():
    with pytest.raises(UserError, match="does not exist"):
        RunDir.open("/nonexistent/run")


def test_evaluate_names_a_splits_file_of_the_wrong_kind(legacy_lung_run, knee, run_installed):
    """A knee splits file on a run trained on points was blamed on 'a 3x3 slice grid needs a volume'."""
    code, _, err = run_installed("evaluate", legacy_lung_run, "--splits", knee / "splits.csv")
    assert code == 2 and "this run is centred on points, and none was given" in err and "split --points" in err


@pytest.fixture
def legacy_lung_run(tmp_path):
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs" / "runs" / "lung-points-perceiver"
    return _copy(source, tmp_path)


def test_a_copy_of_a_training_scan_elsewhere_is_still_the_run_s_own(tiny_run, tmp_path, run_installed):
    """Known by its patient (the OAI id split read from its name), not only by its path."""
    from perceiver_med.inputs.splits import read_splits

    trained = next(row for row in read_splits(tiny_run.run / "splits.csv") if row.split == "train")
    (tmp_path / "copies").mkdir()
    shutil.copy(trained.path, tmp_path / "copies" / trained.path.name)
    code, out, err = run_installed("predict", tiny_run.run, tmp_path / "copies", "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert "1 labelled sample(s) were the run's own (1 of its train patients)" in " ".join(out.split())


def test_a_resume_of_a_run_of_another_input_version_is_refused_before_it_trains(tiny_run, tmp_path, run_installed):
    """It trained on today's inputs, and only evaluate then refused the run."""
    run = _copy(tiny_run.run, tmp_path)
    (run / "metrics.json").unlink()  # as if interrupted
    config = json.loads((run / "config.json").read_text())
    config["input_version"] = 1
    (run / "config.json").write_text(json.dumps(config))
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_installed("train", "--resume", "--out", run)
    assert code == 2 and "input version 1" in err and (run / "checkpoint.pt").read_bytes() == before


class Fixed(torch.nn.Module):
    """Gives the same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_an_ensemble_averages_its_members_probabilities_each_calibrated_by_its_own_temperature(tiny_run):
    """Oracle by hand, p = the positive class's probability: logits (0, ln 3) give 3/4 at T = 1; (0, ln 9) at T = 2
    give the same; (ln 4, 0) give 1/5 at T = 1. The ensemble's p is the mean, 1.7 / 3 = 0.5667 — not the mean of
    the members' uncalibrated p, (0.75 + 0.9 + 0.2) / 3 = 0.6167 — and the ensemble's own threshold decides on it."""
    from dataclasses import replace

    config = Predictor(tiny_run.run, device="cpu").config
    positive = config.classes.index(config.positive_class)

    def member(other: float, pos: float, temperature: float) -> Predictor:
        logits = [pos, other] if positive == 0 else [other, pos]
        return Predictor.of_model(replace(config, decision=Decision(temperature=temperature)), Fixed(logits),
                                  torch.device("cpu"))

    members = [member(0.0, np.log(3), 1.0), member(0.0, np.log(9), 2.0), member(np.log(4), 0.0, 1.0)]
    for threshold, called in ((0.56, True), (0.6, False)):  # 0.6 would call the uncalibrated mean, 0.6167
        ensemble = Predictor.of_members(replace(config, decision=Decision(threshold=threshold)), members)
        decided = ensemble.predict(torch.zeros(2, 1, 4, 4))
        np.testing.assert_allclose(decided.raw[:, positive], [1.7 / 3, 1.7 / 3], atol=1e-7)
        np.testing.assert_allclose(decided.raw.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(decided.probs, decided.raw)  # the ensemble's own temperature is 1
        assert decided.indices.tolist() == [positive if called else 1 - positive] * 2
