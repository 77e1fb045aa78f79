"""Intervals, threshold, calibration and patient-level results against hand-computed and enumerable cases."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from perceiver_med.training.config import Decision, RunConfig
from perceiver_med.errors import UserError
from perceiver_med.stats.metrics import split_metrics, threshold_metrics
from perceiver_med.results.scoring import fit_decision
from perceiver_med.stats.statistics import (aggregate, apply_temperature, bootstrap_ci, bootstrap_distribution, brier_score,
                                 choose_threshold, expected_calibration_error, fit_temperature, parse_threshold_rule,
                                 patient_counts, reliability_bins, weighted_metrics)


def _binary(p_positive):
    p_positive = np.asarray(p_positive, dtype=np.float64)
    return np.stack([1 - p_positive, p_positive], axis=1)


# ---------------------------------------------------------------- the patient bootstrap
def test_a_patient_with_three_images_counts_once_per_draw():
    # patient A: one image, right; patient B: three images, all wrong. Drawing 2 patients with replacement
    # gives AA (p 1/4, accuracy 1), AB (1/2, accuracy 1/4: four images, one right) or BB (1/4, accuracy 0).
    labels = np.array([1, 1, 1, 1])
    probs = _binary([0.9, 0.2, 0.3, 0.4])
    distribution = bootstrap_distribution(labels, probs, ["A", "B", "B", "B"], positive=1, resamples=4000, seed=1)
    accuracy = distribution["accuracy"]
    values, counts = np.unique(accuracy, return_counts=True)
    # resampling images instead would also give 1/2 and 3/4 (and 1/4 far more often)
    np.testing.assert_allclose(values, [0, 0.25, 1])
    np.testing.assert_allclose(counts / len(accuracy), [0.25, 0.5, 0.25], atol=0.03)
    interval = bootstrap_ci(labels, probs, ["A", "B", "B", "B"], positive=1, resamples=4000, seed=1)["accuracy"]
    assert interval == [0.0, 1.0]


def test_every_image_of_a_patient_gets_the_patients_draw_count():
    counts, owner = patient_counts(["A", "B", "B", "B", "C"], resamples=500, seed=3)
    weights = counts[:, owner]
    assert (counts.sum(axis=1) == 3).all()  # three patients drawn per resample
    assert (weights[:, 1] == weights[:, 2]).all() and (weights[:, 2] == weights[:, 3]).all()
    # every patient is left out of about (2/3)^3 = 30% of resamples
    np.testing.assert_allclose((counts == 0).mean(axis=0), (2 / 3) ** 3, atol=0.06)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_each_resample_scores_what_its_explicit_sample_list_scores(num_classes):
    """The vectorised weighted metrics against scikit-learn on the resample written out image by image."""
    rng = np.random.default_rng(num_classes)
    patients = [f"P{k}" for k in rng.integers(0, 7, 40)]
    labels = rng.integers(0, num_classes, 40)
    probs = rng.dirichlet(np.ones(num_classes), 40)
    probs[:6] = probs[6:12]  # tied scores count half in ROC AUC
    positive, threshold = num_classes - 1, 0.37
    counts, owner = patient_counts(patients, resamples=25, seed=5)
    scored = weighted_metrics(counts[:, owner], labels, probs, positive, threshold)
    for b in range(25):
        picked = np.repeat(np.arange(40), counts[b, owner])
        expected = split_metrics(labels[picked], probs[picked], [str(k) for k in range(num_classes)], positive,
                                 threshold)
        expected["ece"] = expected_calibration_error(labels[picked], probs[picked])
        expected["brier"] = brier_score(labels[picked], probs[picked])
        if num_classes == 2:
            at = threshold_metrics(labels[picked], probs[picked], positive, threshold)
            expected.update({f"threshold.{k}": at[k] for k in ("accuracy", "balanced_accuracy", "sensitivity",
                                                                "specificity", "ppv", "npv")})
        for name, value in expected.items():
            if name in ("confusion_matrix", "n"):
                continue
            got = scored[name][b]
            assert (np.isnan(got) if value is None else got == pytest.approx(value, abs=1e-12)), (name, b)


def test_one_patient_has_no_interval():
    """Every resample of one patient is that patient: a zero-width interval would claim a certainty it lacks."""
    labels, probs = np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    intervals = bootstrap_ci(labels, probs, ["P"] * 4, 1, 0.5)
    assert intervals and all(value is None for value in intervals.values())
    assert bootstrap_ci(labels, probs, ["P", "P", "Q", "Q"], 1, 0.5)["loss"] is not None


def test_bootstrap_of_a_thousand_resamples_is_reproducible_from_its_seed():
    rng = np.random.default_rng(0)
    labels, probs = rng.integers(0, 2, 45), rng.dirichlet([1, 1], 45)
    patients = [f"P{k // 3}" for k in range(45)]
    first = bootstrap_ci(labels, probs, patients, 1, 0.5, seed=7)
    assert first == bootstrap_ci(labels, probs, patients, 1, 0.5, seed=7)
    assert first != bootstrap_ci(labels, probs, patients, 1, 0.5, seed=8)


# ---------------------------------------------------------------- calibration
def test_ece_and_brier_of_a_hand_made_case():
    # top-label confidence and correctness: 0.9 right, 0.95 right (one bin), 0.8 wrong, 0.7 right, 0.55 wrong
    labels = np.array([1, 1, 0, 0, 1])
    probs = _binary([0.9, 0.95, 0.8, 0.3, 0.45])
    ece = (2 * abs(1 - 0.925) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 5
    assert expected_calibration_error(labels, probs) == pytest.approx(ece)
    brier = np.mean([(0.9 - 1) ** 2, (0.95 - 1) ** 2, 0.8 ** 2, 0.3 ** 2, (0.45 - 1) ** 2])
    assert brier_score(labels, probs) == pytest.approx(brier)
    assert brier_score(labels, probs) == pytest.approx(brier_score_loss(labels, probs[:, 1]))
    bins = reliability_bins(labels, probs)
    assert bins["count"] == [0, 0, 0, 0, 0, 1, 0, 1, 1, 2] and bins["accuracy"][9] == 1.0
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert brier_score(np.array([0, 1]), three) == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.81 + 0.64)) / 2)


def _overconfident(n, seed):
    """Labels drawn from softmax(z): the truth; the model reports softmax(3 z), far too sure of itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 3))
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in truth])
    model = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return labels, model


def test_temperature_scaling_repairs_an_overconfident_model():
    val_labels, val_probs = _overconfident(3000, 0)
    test_labels, test_probs = _overconfident(3000, 1)
    temperature = fit_temperature(val_labels, val_probs)
    assert temperature == pytest.approx(3, rel=0.1)  # the over-confidence that was put in
    calibrated = apply_temperature(test_probs, temperature)
    before, after = expected_calibration_error(test_labels, test_probs), expected_calibration_error(
        test_labels, calibrated)
    assert before > 0.1 and after < before / 3
    assert brier_score(test_labels, calibrated) < brier_score(test_labels, test_probs)
    assert (calibrated.argmax(1) == test_probs.argmax(1)).all()  # accuracy is untouched


def test_fitted_temperature_minimises_the_validation_loss():
    labels, probs = _overconfident(500, 2)
    fitted = fit_temperature(labels, probs)
    grid = np.linspace(0.5, 8, 3001)
    losses = [-np.log(apply_temperature(probs, t)[np.arange(len(labels)), labels]).mean() for t in grid]
    assert fitted == pytest.approx(grid[int(np.argmin(losses))], abs=0.01)


def test_an_already_calibrated_model_keeps_a_temperature_near_one():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet([2, 2], 4000)
    labels = (rng.random(4000) < probs[:, 1]).astype(int)
    assert fit_temperature(labels, probs) == pytest.approx(1, abs=0.1)
    np.testing.assert_array_equal(apply_temperature(probs, 1.0), probs)


# ---------------------------------------------------------------- the threshold
# positives score 0.9, 0.7, 0.4; negatives 0.6, 0.2, 0.1
SCORES = np.array([0.9, 0.7, 0.4, 0.6, 0.2, 0.1])
POSITIVE = np.array([True, True, True, False, False, False])


@pytest.mark.parametrize("rule, expected", [
    ("youden", 0.65),  # J = 2/3 at 0.65 and at 0.3; 0.65 is nearer 0.5
    ("f1", 0.3),  # F1 6/7 (tp 3, fp 1) beats 4/5 (tp 2, fn 1)
    ("sensitivity=1", 0.3),  # the highest threshold that still finds every positive
    ("sensitivity=0.6", 0.65),
    ("specificity=1", 0.65),  # the lowest threshold that calls no negative positive
    ("0.5", 0.5),
])
def test_threshold_rules_on_a_hand_made_validation_set(rule, expected):
    assert choose_threshold(POSITIVE, SCORES, rule) == pytest.approx(expected)


def test_threshold_is_chosen_on_val_and_never_sees_test():
    rng = np.random.default_rng(0)
    labels = {split: rng.integers(0, 2, 30) for split in ("train", "val", "test")}
    probs = {split: rng.dirichlet([1, 1], 30) for split in ("train", "val", "test")}
    chosen = fit_decision(labels, probs, "youden", ["benign", "malignant"], "malignant")
    assert chosen.chosen_on == "val" and chosen.temperature_fitted_on == "val"
    other_test = {**labels, "test": 1 - labels["test"]}
    other_probs = {**probs, "test": probs["test"][::-1]}
    assert fit_decision(other_test, other_probs, "youden", ["benign", "malignant"], "malignant") == chosen
    assert fit_decision(labels, probs, "youden", ["benign", "malignant"], "malignant") == fit_decision(
        {"val": labels["val"]}, {"val": probs["val"]}, "youden", ["benign", "malignant"], "malignant")
    # and the validation split does matter, so the checks above can fail
    assert fit_decision({**labels, "val": 1 - labels["val"]}, probs, "youden", ["benign", "malignant"],
                        "malignant") != chosen


def test_without_a_usable_validation_split_the_defaults_say_why():
    probs = {"test": np.array([[0.2, 0.8], [0.9, 0.1]])}
    missing = fit_decision({"test": np.array([1, 0])}, probs, "youden", ["a", "b"], "b")
    assert (missing.threshold, missing.temperature, missing.rule) == (0.5, 1.0,
                                                                    "default: no validation split (asked: youden)")
    one_class = fit_decision({"val": np.array([1, 1])}, {"val": probs["test"]}, "f1", ["a", "b"], "b")
    assert one_class.rule == "default: one class in the validation split (asked: f1)" and one_class.threshold == 0.5
    fixed = fit_decision({"test": np.array([1, 0])}, probs, "0.5", ["a", "b"], "b")
    assert fixed.rule == "default: no validation split"


def test_a_temperature_that_runs_to_its_bound_is_not_applied():
    """Separable validation predictions drive T to 0 (every probability 0 or 1), chance-level ones drive it up
    (every probability 1/2): neither is a calibration, so T stays 1 and the reason is recorded."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    separable = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    assert fit_temperature(labels, separable) == pytest.approx(0.01)
    found = fit_decision({"val": labels}, {"val": separable}, "youden", ["a", "b"], "b")
    assert found.temperature == 1.0 and "all right" in found.temperature_fitted_on
    # the threshold is chosen on the uncalibrated predictions: midway between 0.3 and 0.6
    assert found.threshold == pytest.approx(0.45)
    backwards = separable[:, ::-1].copy()
    assert fit_temperature(labels, backwards) == pytest.approx(100.0)
    assert "no better than chance" in fit_decision({"val": labels}, {"val": backwards}, "0.5", ["a", "b"],
                                                   "b").temperature_fitted_on


@pytest.mark.parametrize("text, canonical", [("youden", "youden"), ("F1", "f1"), ("0.5", "0.5"), ("0.50", "0.5"),
                                             ("Sensitivity=0.90", "sensitivity=0.9"),
                                             ("specificity = 1", "specificity=1")])
def test_threshold_rules_are_read_in_any_spelling(text, canonical):
    assert parse_threshold_rule(text) == canonical


@pytest.mark.parametrize("text", ["0.3", "sensitivity", "sensitivity=0", "sensitivity=1.5", "recall=0.9", "max"])
def test_other_threshold_rules_are_refused(text):
    with pytest.raises(UserError, match="--threshold must be one of"):
        parse_threshold_rule(text)


# ---------------------------------------------------------------- patient-level aggregation
def test_units_get_the_mean_probability_and_mixed_units_are_left_out():
    labels = np.array([1, 1, 1, 0, 0, 1])
    probs = _binary([0.2, 0.4, 0.9, 0.3, 0.1, 0.8])
    keys = ["A", "A", "A", "B", "C", "C"]  # C holds a 0 and a 1
    units = aggregate(labels, probs, keys, keys)
    np.testing.assert_allclose(units["probs"][:, 1], [0.5, 0.3])
    assert units["labels"].tolist() == [1, 0] and units["patients"] == ["A", "B"] and units["mixed"] == 1


def test_runs_written_before_thresholds_keep_argmax_and_no_temperature(tiny_run):
    data = json.loads((tiny_run.run / "config.json").read_text())
    for key in ("decision", "threshold_rule"):
        data.pop(key)
    config = RunConfig.from_json(json.dumps(data))
    assert config.decision == Decision() and config.decision.threshold is None and config.threshold_rule == "0.5"


# ---------------------------------------------------------------- end to end
def _inside(value, interval):
    return interval is None or (value is not None and interval[0] - 1e-12 <= value <= interval[1] + 1e-12)


def test_metrics_json_carries_intervals_threshold_and_calibration(tiny_run):
    run = tiny_run.run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["bootstrap"]["resamples"] == 1000 and metrics["bootstrap"]["unit"] == "patient"
    assert metrics["threshold"]["value"] == 0.5 and metrics["threshold"]["chosen_on"] == "fixed"
    config = json.loads((run / "config.json").read_text())
    assert config["decision"]["temperature"] == metrics["temperature"] > 0
    assert config["decision"]["threshold"] == 0.5 and config["threshold_rule"] == "0.5"
    for split in ("train", "val", "test"):
        scores = metrics[split]
        assert {"loss", "accuracy", "roc_auc", "sensitivity", "calibration.ece_after",
                "threshold.ppv"} <= set(scores["ci95"])
        for name, interval in scores["ci95"].items():
            group, _, key = name.rpartition(".")
            point = (scores[group] if group else scores)[key]
            assert _inside(point, interval), (split, name, point, interval)
        assert {"ece", "brier", "ece_after", "brier_after"} <= set(scores["calibration"])
        patients = scores["patient_level"]["patient"]
        assert patients["n"] + patients["mixed_label_units"] == len({r["patient_id"] for r in _split_rows(run, split)})
        knees = scores["patient_level"]["knee"]  # laterality labels: a knee is a patient and a side
        assert knees["mixed_label_units"] == 0 and knees["n"] == len(
            {(r["patient_id"], r["label"]) for r in _split_rows(run, split)})
        assert (run / f"reliability_{split}.png").is_file()
        rows = list(csv.DictReader(open(run / f"predictions_{split}.csv")))
        positive = np.array([float(r["prob_right"]) for r in rows])
        assert [r["pred"] for r in rows] == ["right" if p >= 0.5 else "left" for p in positive]


def _split_rows(run, split):
    return [r for r in csv.DictReader(open(run / "splits.csv")) if r["split"] == split]


def test_a_chosen_threshold_is_reproduced_from_the_validation_predictions_alone(knee, tmp_path):
    from perceiver_med.results.evaluation import evaluate_run
    from perceiver_med.results.predictions import PredictRequest, predict_run
    from perceiver_med.workflows.train import TrainRequest, train
    from tests.conftest import CPU, CPU_FP32, TINY_PERCEIVER_RUN

    # 5 epochs, not the tiny run's 2: a model still at chance has a flat likelihood in the temperature, and a refit
    # on such probabilities stops anywhere
    result = train(TrainRequest(knee / "splits.csv", tmp_path / "run", "perceiver",
                                {**TINY_PERCEIVER_RUN, "epochs": 5, "threshold": "Youden"}, CPU_FP32))
    metrics = json.loads((result.run / "metrics.json").read_text())
    assert metrics["threshold"]["rule"] == "youden" and metrics["threshold"]["chosen_on"] == "val"
    val = list(csv.DictReader(open(result.run / "predictions_val.csv")))  # calibrated probabilities
    val_probs = np.array([[float(r["prob_left"]), float(r["prob_right"])] for r in val])
    is_right = np.array([r["label"] == "right" for r in val])
    assert metrics["threshold"]["value"] == pytest.approx(choose_threshold(is_right, val_probs[:, 1], "youden"))
    # the temperature was decided on these predictions before calibration: decided again after it, it is 1 (a
    # fitted T is the optimum already; a T left at 1 is left there for the same reason)
    again = fit_decision({"val": is_right.astype(int)}, {"val": val_probs}, "youden", ["left", "right"], "right")
    assert again.temperature == 1.0
    if metrics["temperature_fitted_on"] == "val":
        assert fit_temperature(is_right.astype(int), val_probs) == pytest.approx(1, abs=0.02)
    test = list(csv.DictReader(open(result.run / "predictions_test.csv")))
    assert [r["pred"] for r in test] == ["right" if float(r["prob_right"]) >= metrics["threshold"]["value"]
                                         else "left" for r in test]
    # the headline scores count the decisions the predictions file shows, not the most probable class
    for split in ("val", "test"):
        rows = list(csv.DictReader(open(result.run / f"predictions_{split}.csv")))
        assert metrics[split]["accuracy"] == pytest.approx(np.mean([r["pred"] == r["label"] for r in rows]))
        assert metrics[split]["accuracy"] == metrics[split]["threshold"]["accuracy"]
    again = evaluate_run(result.run, runtime=CPU)
    assert again["test"]["threshold"] == metrics["test"]["threshold"]
    assert again["test"]["ci95"] == metrics["test"]["ci95"]
    # predict applies the same temperature and threshold: its test scans get the test file's rows exactly
    predict_run(PredictRequest(result.run, knee / "data", tmp_path / "predicted.csv", runtime=CPU))
    predicted = {str(Path(r["path"]).resolve()): r for r in csv.DictReader(open(tmp_path / "predicted.csv"))}
    for row in test:
        assert predicted[row["path"]]["pred"] == row["pred"]
        assert float(predicted[row["path"]]["prob_right"]) == pytest.approx(float(row["prob_right"]), abs=1e-6)


def test_a_bad_threshold_is_one_line_and_writes_nothing(run_installed, knee, tmp_path):
    code, out, err = run_installed("train", knee / "splits.csv", "--out", tmp_path / "r", "--threshold", "sens=0.9")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--threshold must be one of" in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
    code, out, _ = run_installed("train", "--help", env={"COLUMNS": "200"})
    assert code == 0 and "youden, f1, 0.5, sensitivity=X or specificity=X" in " ".join(out.split())
    assert "specificity=X (two classes) [default: (0.5)]" in " ".join(out.split())


def test_the_trust_table_fits_80_columns_and_shows_every_interval(tiny_run):
    from rich.console import Console

    from perceiver_med.results.display import trust_table

    metrics = json.loads((tiny_run.run / "metrics.json").read_text())
    console = Console(width=80, record=True, color_system=None)
    console.print(trust_table(metrics))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    for split in ("train", "val", "test"):
        scores = metrics[split]
        for name in ("accuracy", "roc_auc"):
            interval = scores["ci95"][name]
            assert f"{scores[name]:.3f}" in text
            assert interval is None or f"[{interval[0]:.3f}, {interval[1]:.3f}]" in text, (split, name)
        assert f"{scores['calibration']['ece']:.3f} -> {scores['calibration']['ece_after']:.3f}" in text
