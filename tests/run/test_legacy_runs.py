"""Runs trained before the redesign (tests/fixtures/legacy_runs, commit 4000073) evaluate, predict and explain to
the numbers that code gave them: the move of every module and the one Predictor changed no result. (Explain's
evidence is that code's, carried through the run's temperature: it is measured on the probabilities shown.)"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from perceiver_med.results.evaluation import evaluate_run
from perceiver_med.run.predictor import Predictor
from perceiver_med.training.config import Runtime

CPU = Runtime(device="cpu")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs"
# run -> (data folder, its splits file, the split its expectations are for)
RUNS = {"knee-perceiver": ("knee", "splits.csv", "all"), "knee-hybrid": ("knee", "splits.csv", "all"),
        "knee-cnn": ("knee", "splits.csv", "all"), "lung-points-perceiver": ("lung", "splits.csv", "all"),
        "knee-cv": ("knee", "splits-cv-ensemble.csv", "test")}
TOLERANCE = 1e-6  # probabilities: the old explain took its softmax in float32, the Predictor in float64
# Float32 arithmetic differs in its last bits between CPU kernel paths (the fixtures were made with AVX512; CI may
# run AVX2): evidence maps are differences of log-probabilities, and two epochs of AdamW carry such differences
# into the weights. A changed random-number order or initialisation differs by orders of magnitude more (0.01-0.1).
EVIDENCE_TOLERANCE = 1e-5  # nats
WEIGHT_TOLERANCE = 1e-4
# metrics added since those runs were made (issue 24: imbalance): present now, absent from the old expectations
ADDED_METRICS = {"average_precision", "sensitivity_at_95_specificity"}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    """A copy of the fixture: nothing a test does can change the files in the repository."""
    root = tmp_path_factory.mktemp("legacy") / "legacy_runs"
    shutil.copytree(FIXTURE, root)
    return root


def _assert_same(got, expected, where="") -> None:
    """Equal structure and text, numbers within TOLERANCE (NaN equal to NaN); of ADDED_METRICS, only those."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) - ADDED_METRICS == set(expected), (
            where, sorted((set(got) - ADDED_METRICS) ^ set(expected)))
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for k, (a, b) in enumerate(zip(got, expected)):
            _assert_same(a, b, f"{where}[{k}]")
    elif isinstance(expected, float) or isinstance(got, float):
        assert got is not None and (math.isnan(expected) and math.isnan(got)
                                    or abs(got - expected) <= TOLERANCE), (where, got, expected)
    else:
        assert got == expected, (where, got, expected)


@pytest.mark.parametrize("name", RUNS)
def test_a_legacy_run_evaluates_to_its_old_numbers(name, legacy):
    data, splits, split = RUNS[name]
    metrics = evaluate_run(legacy / "runs" / name, splits=legacy / "data" / data / splits, split=split, runtime=CPU)
    _assert_same(json.loads(json.dumps(metrics)),
                 json.loads((legacy / "expected" / name / "evaluate_relocatable.json").read_text()))


def _predictions(path: Path) -> dict[tuple, dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    key_columns = [c for c in ("path", "seriesuid", "coordX", "coordY", "coordZ") if c in rows[0]]
    return {tuple(row[c] for c in key_columns): row for row in rows}


@pytest.mark.parametrize("name", RUNS)
def test_a_legacy_run_predicts_its_old_probabilities(name, legacy, tmp_path, monkeypatch):
    from perceiver_med.results.predictions import PredictRequest, predict_run

    monkeypatch.chdir(legacy)  # the expectations were written with paths relative to the fixture root
    data = RUNS[name][0]
    points = Path("data/lung/points.csv") if data == "lung" else None
    predict_run(PredictRequest(Path("runs") / name, Path(f"data/{data}/scans"), tmp_path / "p.csv", points,
                               runtime=CPU))
    got, expected = _predictions(tmp_path / "p.csv"), _predictions(legacy / "expected" / name / "predict.csv")
    assert set(got) == set(expected)
    for key, row in expected.items():
        assert got[key]["pred"] == row["pred"], key
        for column in (c for c in row if c.startswith("prob_")):
            assert abs(float(got[key][column]) - float(row[column])) <= TOLERANCE, (key, column)


@pytest.mark.parametrize("name", ["knee-perceiver", "knee-hybrid", "knee-cnn", "lung-points-perceiver"])
def test_a_legacy_run_explains_with_its_old_evidence(name, legacy):
    """The old code measured evidence on the model's own log-probabilities; explain now measures it on the run's
    calibrated ones. So: the model's own map is the old one (the occlusion itself is unchanged), and the run's map
    is the old one carried through the temperature. Oracle for two classes: a fall f of log sigmoid(m) from the
    decided class's margin m = logit(p) leaves margin m' = logit(p e^-f); calibrated, the fall is
    log sigmoid(m / T) - log sigmoid(m' / T), an increasing function of f (so the max over dark and bright paint,
    and the clamp at 0, carry over)."""
    import torch

    from perceiver_med.results.explain import evidence_for, evidence_map

    def log_sigmoid(margin):
        return -np.logaddexp(0.0, -margin)

    expected = json.loads((legacy / "expected" / name / "explain.json").read_text())
    predictor = Predictor(legacy / "runs" / name, device="cpu")
    temperature = predictor.config.decision.temperature
    assert len(predictor.classes) == 2
    for sample in expected["evidence"]:
        array = np.load(legacy / "expected" / name / f"input_{sample['file']}.npy")
        old = np.load(legacy / "expected" / name / f"evidence_{sample['file']}.npy").astype(np.float64)
        evidence = evidence_for(predictor, array)
        assert evidence.predicted == sample["predicted"] and evidence.window == sample["window"]
        np.testing.assert_allclose(evidence.decided.probs[0], sample["probs"], atol=TOLERANCE)
        decided = int(evidence.decided.indices[0])
        own = evidence_map(predictor.model, torch.from_numpy(array)[None], evidence.window,
                           classes=torch.tensor([decided]))
        np.testing.assert_allclose(own[0, 0].numpy(), old, atol=EVIDENCE_TOLERANCE)
        p = evidence.decided.raw[0, decided]
        painted = p * np.exp(-old)
        margin, painted_margin = np.log(p / (1 - p)), np.log(painted / (1 - painted))
        carried = log_sigmoid(margin / temperature) - log_sigmoid(painted_margin / temperature)
        np.testing.assert_allclose(evidence.map, np.maximum(carried, 0), atol=EVIDENCE_TOLERANCE / temperature)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["knee-perceiver", "knee-hybrid", "knee-cnn", "lung-points-perceiver"])
def test_a_legacy_run_trained_again_learns_the_same_weights(name, legacy, tmp_path):
    """The same command through the new code follows the same trajectory: weights equal tensor by tensor, to the
    last bits where the CPU kernels are the fixtures' own and within WEIGHT_TOLERANCE across kernel paths. (The
    files' bytes differ: safetensors writes its metadata header in no fixed order. Metrics may differ where the
    temperature is now decided differently, so the weights are the oracle.)"""
    from safetensors.torch import load_file

    from perceiver_med.workflows.train import TrainRequest, train

    config = json.loads((legacy / "runs" / name / "config.json").read_text())
    data, splits, _ = RUNS[name]
    model = config["model"]
    options = ({"depth": model["vit"]["depth"], "dim": model["vit"]["dim"]} if model["name"] == "vit-rollout-cnn"
               else {"num_latents": model["num_latents"], "latent_dim": model["latent_dim"],
                     "num_iterations": model["num_iterations"]} if model["name"] == "perceiver" else {})
    train(TrainRequest(legacy / "data" / data / splits, tmp_path / "run", model["name"],
                       {"epochs": config["train"]["epochs"], "seed": 0, **options},
                       Runtime(device="cpu", precision="fp32", workers=1)))
    again, before = load_file(tmp_path / "run" / "model.safetensors"), load_file(
        legacy / "runs" / name / "model.safetensors")
    assert set(again) == set(before)
    for key, tensor in before.items():
        assert (again[key] - tensor).abs().max().item() <= WEIGHT_TOLERANCE, key


def test_a_cross_validation_is_scored_on_test_with_the_splits_file_it_was_trained_from(legacy):
    """Its val rows were training rows of the ensemble; with --split test only the test rows are scored, and none
    of them was a training patient (the old code refused the file as a whole)."""
    metrics = evaluate_run(legacy / "runs" / "knee-cv", splits=legacy / "data" / "knee" / "splits-cv.csv",
                           split="test", runtime=CPU)
    _assert_same(json.loads(json.dumps(metrics)),
                 json.loads((legacy / "expected" / "knee-cv" / "evaluate_relocatable.json").read_text()))
