"""The one confusion count, the per-sample loss and the calibration rule, against scikit-learn and brute force."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, precision_score,
                             recall_score)

from perceiver_med.stats.metrics import split_metrics, threshold_metrics
from perceiver_med.results.scoring import fit_decision
from perceiver_med.stats.statistics import (MIN_SAMPLES_PER_CLASS, NLL_MARGIN, TEMPERATURE_BOUNDS, apply_temperature,
                                              confusion_counts, confusion_scores, fit_temperature, sample_losses,
                                              weighted_metrics)


def _binary(p_positive):
    p_positive = np.asarray(p_positive, dtype=np.float64)
    return np.stack([1 - p_positive, p_positive], axis=1)


# ---------------------------------------------------------------- confusion counts
@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_confusion_scores_are_scikit_learns(num_classes):
    rng = np.random.default_rng(num_classes)
    labels, called = rng.integers(0, num_classes, 50), rng.integers(0, num_classes, 50)
    positive, indices = num_classes - 1, list(range(num_classes))
    confusion = confusion_counts(labels, called, num_classes)
    np.testing.assert_array_equal(confusion[0], confusion_matrix(labels, called, labels=indices))
    scores = {name: value[0] for name, value in confusion_scores(confusion, positive).items()}
    is_positive, called_positive = labels == positive, called == positive
    expected = {"accuracy": accuracy_score(labels, called),
                "balanced_accuracy": balanced_accuracy_score(labels, called),
                "f1_macro": f1_score(labels, called, labels=indices, average="macro", zero_division=0),
                "sensitivity": recall_score(is_positive, called_positive),
                "specificity": recall_score(~is_positive, ~called_positive),
                "ppv": precision_score(is_positive, called_positive),
                "npv": precision_score(~is_positive, ~called_positive)}
    assert scores == pytest.approx(expected, abs=1e-12)


def test_weights_count_a_sample_as_often_as_it_is_drawn():
    labels, called = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0])
    weights = np.array([[1, 1, 1, 1], [2, 0, 3, 0], [0, 0, 0, 0]])
    counted = confusion_counts(labels, called, 2, weights)
    np.testing.assert_array_equal(counted, [[[1, 1], [1, 1]], [[2, 0], [0, 3]], [[0, 0], [0, 0]]])
    scores = confusion_scores(counted, positive=1)
    np.testing.assert_allclose(scores["accuracy"][:2], [0.5, 1.0])
    assert np.isnan(scores["accuracy"][2]) and np.isnan(scores["sensitivity"][2])  # nothing drawn: undefined


def test_metrics_and_threshold_metrics_read_the_same_counts():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = _binary([0.1, 0.45, 0.7, 0.2, 0.5, 0.6, 0.9])
    # at 0.5: called 0 0 1 | 0 1 1 1 -> tn 2, fp 1, fn 1, tp 3
    split, at = split_metrics(labels, probs, ["a", "b"], 1, 0.5), threshold_metrics(labels, probs, 1, 0.5)
    assert split["confusion_matrix"] == at["confusion_matrix"] == [[2, 1], [1, 3]]
    assert (at["sensitivity"], at["specificity"], at["ppv"], at["npv"]) == pytest.approx((3 / 4, 2 / 3, 3 / 4, 2 / 3))
    assert split["accuracy"] == at["accuracy"] == pytest.approx(5 / 7)
    assert split["balanced_accuracy"] == at["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)


# ---------------------------------------------------------------- the loss
def test_confident_correct_predictions_cost_exactly_zero_never_minus_zero():
    labels = np.array([0, 1, 1])
    # float32 softmax rounding can report a probability a hair above 1
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.1920929e-07, 1.0000001]])
    losses = sample_losses(labels, probs)
    assert (losses == 0).all() and all(math.copysign(1, value) == 1 for value in losses)
    loss = split_metrics(labels, probs, ["a", "b"])["loss"]
    assert loss == 0.0 and math.copysign(1, loss) == 1 and json.dumps({"loss": loss}) == '{"loss": 0.0}'
    weighted = weighted_metrics(np.array([[1, 1, 1], [0, 2, 1]]), labels, probs, 1)["loss"]
    assert all(value == 0 and math.copysign(1, value) == 1 for value in weighted)
    assert -np.log(probs[[0, 1], [0, 1]])[0] == 0 and math.copysign(1, -np.log(1.0)) == -1  # what it guards against


# ---------------------------------------------------------------- the calibration rule
GRID = np.exp(np.arange(np.log(0.002), np.log(200), 5e-4))  # every T from 0.002 to 200, 0.05% apart


def _brute_force(labels, probs):
    """The NLL-minimising T on GRID and the summed NLL it saves over T = 1, by evaluating every T."""
    temperatures = np.concatenate([[1.0], GRID])
    summed = []
    for start in range(0, len(temperatures), 1000):
        logs = np.log(probs)[None] / temperatures[start:start + 1000, None, None]  # (T, N, K)
        top = logs.max(axis=2, keepdims=True)
        log_q = logs - top - np.log(np.exp(logs - top).sum(axis=2, keepdims=True))
        summed.append(-log_q[:, np.arange(len(labels)), labels].sum(axis=1))
    summed = np.concatenate(summed)
    best = int(np.argmin(summed[1:]))
    return GRID[best], summed[0] - summed[1 + best]


def _overconfident(n, sharpen, seed, minority=None):
    """Binary labels drawn from sigmoid(z); the model reports sigmoid(sharpen * z). `minority` samples of class 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, 20 * n)
    labels = (rng.random(20 * n) < 1 / (1 + np.exp(-logits))).astype(int)
    if minority is None:
        picked = np.arange(n)
    else:
        picked = np.concatenate([np.flatnonzero(labels == 0)[:n - minority], np.flatnonzero(labels == 1)[:minority]])
    return labels[picked], _binary(1 / (1 + np.exp(-sharpen * logits[picked])))


def _decide(labels, probs):
    return fit_decision({"val": labels}, {"val": probs}, "0.5", ["benign", "malignant"], "malignant")


@pytest.mark.parametrize("seed", [0, 1])
def test_an_overconfident_model_gets_the_brute_force_temperature(seed):
    labels, probs = _overconfident(300, 3.0, seed)
    best, gain = _brute_force(labels, probs)
    assert gain > NLL_MARGIN and 2 < best < 4  # the test's premise: a clear, interior optimum
    decision = _decide(labels, probs)
    assert decision.temperature_fitted_on == "val"
    assert decision.temperature == pytest.approx(best, rel=1e-3)
    assert fit_temperature(labels, probs) == decision.temperature
    # calibrated by it, the same predictions need no further temperature
    again = _decide(labels, apply_temperature(probs, decision.temperature))
    assert again.temperature == 1.0 and "lowers the summed NLL by" in again.temperature_fitted_on


def test_perfectly_separated_validation_keeps_t_1_and_says_why():
    # the knee demo: 43/43 right, most of them near-certain; the NLL falls all the way to T -> 0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 43)
    confidence = np.where(rng.random(43) < 0.8, 1 - rng.uniform(1e-6, 1e-3, 43), rng.uniform(0.6, 0.9, 43))
    probs = _binary(np.where(labels == 1, confidence, 1 - confidence))
    rows = np.arange(43)
    losses = [-np.log(apply_temperature(probs, t)[rows, labels]).sum() for t in (1.0, 0.657, 0.1, 0.01)]
    assert np.all(np.diff(losses) < 0)  # every smaller T fits better: no finite optimum
    assert fit_temperature(labels, probs) == TEMPERATURE_BOUNDS[0]  # the fit runs all the way to its bound
    decision = _decide(labels, probs)
    assert decision.temperature == 1.0
    assert decision.temperature_fitted_on == ("default: on the validation split, the predictions are all right, so "
                                              "no finite temperature fits (the NLL keeps falling as T -> 0)")


@pytest.mark.parametrize("minority", [MIN_SAMPLES_PER_CLASS - 1, MIN_SAMPLES_PER_CLASS])
def test_a_class_with_too_few_samples_keeps_t_1(minority):
    labels, probs = _overconfident(200, 3.0, 5, minority=minority)
    assert (labels == 1).sum() == minority
    best, gain = _brute_force(labels, probs)
    assert gain > NLL_MARGIN and TEMPERATURE_BOUNDS[0] < best < TEMPERATURE_BOUNDS[1]  # a fit would be accepted
    decision = _decide(labels, probs)
    if minority < MIN_SAMPLES_PER_CLASS:
        assert decision.temperature == 1.0
        assert decision.temperature_fitted_on == (f"default: on the validation split, malignant has {minority} "
                                                  f"samples, fewer than the {MIN_SAMPLES_PER_CLASS} of each class "
                                                  "a fit needs")
    else:
        assert decision.temperature_fitted_on == "val" and decision.temperature == pytest.approx(best, rel=1e-3)


def test_a_fit_that_gains_less_than_the_margin_keeps_t_1():
    """Models calibrated already: a fitted T mostly gains next to nothing, and now and then (about 1 in 20, the
    likelihood-ratio test's false alarms) more than the margin; brute force says which, the rule must agree."""
    outcomes = set()
    for seed in range(6):
        labels, probs = _overconfident(60, 1.0, seed)
        best, gain = _brute_force(labels, probs)
        decision = _decide(labels, probs)
        if gain < NLL_MARGIN:
            assert decision.temperature == 1.0, seed
            assert decision.temperature_fitted_on == (
                f"default: on the validation split, the best T, {fit_temperature(labels, probs):.4g}, lowers the "
                f"summed NLL by {gain:.3g} nats, less than the {NLL_MARGIN:g} a fitted T must gain"), seed
        else:
            assert decision.temperature == pytest.approx(best, rel=1e-3) and decision.temperature_fitted_on == "val"
        assert fit_temperature(labels, probs) == pytest.approx(best, rel=1e-3)
        outcomes.add(decision.temperature == 1.0)
    assert outcomes == {True, False}  # both sides of the margin were tried


def test_an_optimum_beyond_a_bound_keeps_t_1():
    # 40 barely-right predictions and one barely-wrong: the NLL is lowest near T = 0.005, below the bound 0.01
    labels = np.array([0] * 20 + [1] * 21)
    probs = _binary([0.49] * 20 + [0.51] * 20 + [0.4999])
    best, gain = _brute_force(labels, probs)
    assert best < TEMPERATURE_BOUNDS[0] and gain > NLL_MARGIN
    assert fit_temperature(labels, probs) == TEMPERATURE_BOUNDS[0]
    decision = _decide(labels, probs)
    assert decision.temperature == 1.0 and "the NLL is lowest at or beyond T = 0.01" in decision.temperature_fitted_on


def test_predictions_no_better_than_chance_keep_t_1():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 90)
    probs = rng.dirichlet([1, 1, 1], 90)
    probs[np.arange(90), labels] = probs.min(axis=1) / 2  # the true class is always the least probable
    probs /= probs.sum(axis=1, keepdims=True)
    best, _ = _brute_force(labels, probs)
    assert best == GRID[-1]  # the larger T, the better: every probability tends to 1/3
    decision = fit_decision({"val": labels}, {"val": probs}, "0.5", ["a", "b", "c"], "c")
    assert decision.temperature == 1.0 and "no better than chance" in decision.temperature_fitted_on
