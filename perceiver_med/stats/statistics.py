"""Statistics a reviewer can check: decisions and their confusion counts, the per-sample loss, patient-bootstrap
intervals, the decision threshold, calibration and patient-level aggregation. Pure numpy/scipy functions of
labels (N,) and probabilities (N, K).

Every score of a decision (accuracy, sensitivity, PPV, F1...) is read from a confusion matrix that
confusion_counts counts and confusion_scores scores, whether for one split (metrics.py), at the threshold, or
for a thousand bootstrap resamples at once.

Images of one patient are not independent draws: the bootstrap resamples patients, and a patient drawn
twice brings all of its samples twice. Each resample is a vector of per-patient counts, so every metric of
every resample is a weighted sum over the samples, and all resamples are scored at once with matrix products.
"""
from __future__ import annotations

import math

import numpy as np

from perceiver_med.errors import UserError

RESAMPLES = 1000
BINS = 10  # equal-width confidence bins of the reliability diagram and ECE
CHUNK_ELEMENTS = 1 << 22  # resamples x samples scored at once (32 MiB of float64)
TINY = np.finfo(np.float64).tiny
LOSS_FLOOR = 1e-12  # the smallest probability of the true class a loss counts: one sample costs at most 27.6 nats


# ---------------------------------------------------------------- decisions, confusion counts, loss
def decisions(probs: np.ndarray, positive: int, threshold: float | None) -> np.ndarray:
    """Predicted class indices: with two classes and a threshold, `positive` where its probability is at least
    the threshold (else the other class); otherwise the most probable class."""
    probs = np.asarray(probs, dtype=np.float64)
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def confusion_counts(labels: np.ndarray, called: np.ndarray, num_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Confusion matrices (B, K, K), rows the true class, columns the called one: entry [b, i, j] sums row b of
    `weights` (B, N) over the samples of class i called j. Without weights every sample counts once (B = 1).

    The one place where samples become true and false positives and negatives: split metrics, the metrics at
    the threshold and every bootstrap resample (a vector of per-sample draw counts) are counted here.
    """
    index = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(called, dtype=np.int64)
    if weights is None:
        return np.bincount(index, minlength=num_classes ** 2).reshape(1, num_classes, num_classes)
    return (np.asarray(weights, dtype=np.float64) @ np.eye(num_classes ** 2)[index]).reshape(
        -1, num_classes, num_classes)


def confusion_scores(confusion: np.ndarray, positive: int) -> dict[str, np.ndarray]:
    """Scores of confusion matrices (B, K, K), each (B,), nan where a denominator is 0 (or, for balanced accuracy,
    fewer than two classes are present): accuracy; balanced_accuracy, the mean recall over the classes present;
    f1_macro, the mean F1 over all K classes (0 for a class never present nor called); and of class `positive`
    against all others sensitivity, specificity, ppv and npv."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum(axis=(1, 2))
    diagonal = np.diagonal(confusion, axis1=1, axis2=2)
    support, called = confusion.sum(axis=2), confusion.sum(axis=1)
    present = support > 0
    recall = _ratio(diagonal, support)
    classes_present = present.sum(1)
    balanced = np.where(classes_present > 1, np.where(present, recall, 0).sum(1) / np.maximum(classes_present, 1),
                        np.nan)
    f1 = np.nan_to_num(_ratio(2 * diagonal, support + called), nan=0.0)  # scikit-learn's zero_division=0
    tp = diagonal[:, positive]
    fn, fp = support[:, positive] - tp, called[:, positive] - tp
    tn = total - tp - fn - fp
    return {"accuracy": _ratio(diagonal.sum(1), total), "balanced_accuracy": balanced,
            "f1_macro": f1.sum(1) / confusion.shape[1], "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn)}


def sample_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy -log p(true class), p clipped to [LOSS_FLOOR, 1]: never negative, never -0.0 (a
    probability a hair above 1 from float32 rounding costs 0, and 0.0 - log(1) is +0.0 where -log(1) is -0.0)."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    return 0.0 - np.log(np.clip(probs[np.arange(len(labels)), labels], LOSS_FLOOR, 1.0))


def _ratio(numerator, denominator):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


# ---------------------------------------------------------------- the decision threshold
THRESHOLD_CHOICES = "youden, f1, 0.5, sensitivity=X or specificity=X (0 < X <= 1)"


def parse_threshold_rule(text: str) -> str:
    """The canonical spelling of a --threshold rule (any case, spaces ignored); anything else is a UserError."""
    cleaned = str(text).strip().lower().replace(" ", "")
    if cleaned in ("youden", "f1"):
        return cleaned
    name, equals, value = cleaned.partition("=")
    try:
        number = float(value if equals else cleaned)
    except ValueError:
        number = math.nan
    if not equals and number == 0.5:
        return "0.5"
    if equals and name in ("sensitivity", "specificity") and 0 < number <= 1:
        return f"{name}={number:g}"
    raise UserError(f"--threshold must be one of {THRESHOLD_CHOICES}, not {text!r}")


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, rule: str) -> float:
    """The threshold t that `rule` picks on these samples (a sample is called positive when score >= t).

    youden maximises sensitivity + specificity - 1, f1 the positive class's F1, sensitivity=X the specificity
    among thresholds with sensitivity >= X (specificity=X likewise); 0.5 is fixed. Candidates lie midway
    between consecutive distinct scores (and beyond both ends), so t never sits on a score it was chosen from;
    ties go to the candidate nearest 0.5.
    """
    rule = parse_threshold_rule(rule)
    if rule == "0.5":
        return 0.5
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if is_positive.all() or not is_positive.any():
        raise ValueError("choosing a threshold needs samples of both classes")
    distinct = np.unique(scores)
    top = max((distinct[-1] + 1) / 2, np.nextafter(distinct[-1], np.inf))
    cuts = np.concatenate([[distinct[0] / 2 if distinct[0] > 0 else distinct[0]],
                           (distinct[:-1] + distinct[1:]) / 2, [top]])
    positives, negatives = np.sort(scores[is_positive]), np.sort(scores[~is_positive])
    tp = len(positives) - np.searchsorted(positives, cuts, "left")
    fp = len(negatives) - np.searchsorted(negatives, cuts, "left")
    sensitivity, specificity = tp / len(positives), 1 - fp / len(negatives)
    if rule == "youden":
        keys = [sensitivity + specificity - 1]
    elif rule == "f1":
        keys = [2 * tp / (2 * tp + fp + (len(positives) - tp))]
    else:
        name, target = rule.split("=")
        held, other = (sensitivity, specificity) if name == "sensitivity" else (specificity, sensitivity)
        keys = [np.where(held >= float(target) - 1e-12, other, -np.inf), held]
    # rounded, so equal objectives reached by different sums tie; lexsort's last key is its first, best last
    keys = [np.round(key, 12) for key in keys]
    order = np.lexsort([-np.abs(cuts - 0.5)] + keys[::-1])
    return float(cuts[order[-1]])


# ---------------------------------------------------------------- calibration
def brier_terms(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-sample Brier terms: (p_positive - y)^2 with two classes (scikit-learn's brier_score_loss), else the
    sum over classes of (p_k - y_k)^2."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    terms = ((probs - onehot) ** 2).sum(axis=1)
    return terms / 2 if probs.shape[1] == 2 else terms


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(brier_terms(labels, probs).mean())


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((confidence * bins).astype(np.int64), bins - 1)  # [k/B, (k+1)/B), the last bin closed


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = BINS) -> dict:
    """Top-label reliability diagram: per equal-width bin of confidence (the highest probability), the number of
    samples, their mean confidence and their accuracy (None for an empty bin)."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = _bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins)
    mean_confidence = np.bincount(index, confidence, minlength=bins)
    accuracy = np.bincount(index, correct.astype(np.float64), minlength=bins)
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": count.tolist(),
            "confidence": [float(c / n) if n else None for c, n in zip(mean_confidence, count)],
            "accuracy": [float(a / n) if n else None for a, n in zip(accuracy, count)]}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = BINS) -> float:
    """ECE (Guo et al. 2017): sum over confidence bins of (bin size / N) * |accuracy - mean confidence|."""
    table = reliability_bins(labels, probs, bins)
    n = sum(table["count"])
    return float(sum(count / n * abs(acc - conf) for count, acc, conf in
                     zip(table["count"], table["accuracy"], table["confidence"]) if count))


# The temperature a run applies is decided from its validation predictions by calibration_temperature:
TEMPERATURE_BOUNDS = (0.01, 100.0)  # a best T outside these makes near-certain or near-uniform probabilities
MIN_SAMPLES_PER_CLASS = 10  # one parameter, at least 10 samples of each class (the events-per-variable rule)
NLL_MARGIN = 1.92  # nats, summed over the samples: half chi-square(1)'s 95% quantile, the likelihood-ratio test
#                    that a fitted T fits better than T = 1 by more than one free parameter's chance gain


def _temperature_terms(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(probs) (N, K), and the log-probability of each sample's true class (N,). log(probs) equals the logits
    up to a per-row constant, which softmax ignores, so no logits are needed."""
    logs = np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY, None))
    return logs, logs[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]


def _summed_nll(logs: np.ndarray, true: np.ndarray, temperature: float) -> float:
    """sum over samples of -log softmax(log(probs) / T)[true class]."""
    scaled = logs / temperature
    top = scaled.max(axis=1)
    return float((top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)) - true / temperature).sum())


def _nll_slope(logs: np.ndarray, true: np.ndarray, inverse: float) -> float:
    """d mean NLL / d(1/T) = mean(E_q[log p] - log p_true), q = softmax(log(probs) / T): non-decreasing in 1/T,
    since the NLL is convex in 1/T (a log-sum-exp of a linear function, less a linear term)."""
    scaled = logs * inverse
    q = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    return float(((q * logs).sum(axis=1) - true).mean())


def fit_temperature(labels: np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T in `bounds` minimising the mean negative log-likelihood of softmax(log(probs) / T) (Guo
    et al. 2017); exactly a bound when the minimum lies at or beyond it.

    The NLL is convex in 1/T, so its minimum is where its slope in 1/T crosses 0: the slope at both bounds says
    whether it lies between them, and Brent's method finds the crossing to float precision. (A quasi-Newton fit
    stops where the NLL turns flat, well inside a bound it is running towards.) Argmax, hence accuracy, is
    unchanged by any T > 0.
    """
    from scipy.optimize import brentq

    low, high = bounds
    logs, true = _temperature_terms(labels, probs)
    if _nll_slope(logs, true, 1 / high) >= 0:
        return float(high)
    if _nll_slope(logs, true, 1 / low) <= 0:
        return float(low)
    return float(1 / brentq(lambda inverse: _nll_slope(logs, true, inverse), 1 / high, 1 / low, xtol=1e-12))


def calibration_temperature(labels: np.ndarray, probs: np.ndarray,
                            class_names: list[str] | None = None) -> tuple[float, str]:
    """The temperature to apply to predictions like these (validation ones), and why it is 1 ("" when fitted).

    T stays 1, checked in this order, when
      1. every prediction is right (no sample's true class is less probable than another): the NLL keeps
         falling as T -> 0 and no finite T minimises it;
      2. the predictions are no better than chance (the mean of log p_true is not above the mean of every
         class's log p): the NLL is lowest as T -> infinity, where every probability is 1/K;
      3. a class has fewer than MIN_SAMPLES_PER_CLASS samples;
      4. the NLL-minimising T lies at or beyond a bound of TEMPERATURE_BOUNDS;
      5. the fitted T lowers the NLL, summed over the samples, by less than NLL_MARGIN nats.
    Otherwise the fitted T is applied.
    """
    labels = np.asarray(labels, dtype=np.int64)
    logs, true = _temperature_terms(labels, probs)
    if (logs.max(axis=1) <= true).all():
        return 1.0, "the predictions are all right, so no finite temperature fits (the NLL keeps falling as T -> 0)"
    if _nll_slope(logs, true, 0.0) >= 0:
        return 1.0, ("the predictions are no better than chance (the NLL is lowest as T -> infinity, every "
                     "probability 1/K)")
    counts = np.bincount(labels, minlength=logs.shape[1])
    if counts.min() < MIN_SAMPLES_PER_CLASS:
        fewest = int(counts.argmin())
        name, count = class_names[fewest] if class_names is not None else f"class {fewest}", int(counts[fewest])
        return 1.0, (f"{name} has {count} sample{'s' * (count != 1)}, fewer than the "
                     f"{MIN_SAMPLES_PER_CLASS} of each class a fit needs")
    low, high = TEMPERATURE_BOUNDS
    temperature = fit_temperature(labels, probs)
    if temperature in (low, high):
        return 1.0, f"the NLL is lowest at or beyond T = {temperature:g}, a bound of [{low:g}, {high:g}]"
    gain = _summed_nll(logs, true, 1.0) - _summed_nll(logs, true, temperature)
    if gain < NLL_MARGIN:
        return 1.0, (f"the best T, {temperature:.4g}, lowers the summed NLL by {max(gain, 0.0):.3g} nats, less "
                     f"than the {NLL_MARGIN:g} a fitted T must gain")
    return temperature, ""


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T) in float64; T = 1 returns the probabilities untouched."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or probs.size == 0:
        return probs.copy()
    scaled = np.log(np.clip(probs, TINY, None)) / temperature
    scaled = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- patient-level aggregation
def aggregate(labels: np.ndarray, probs: np.ndarray, keys: list, patients: list[str]) -> dict:
    """Mean probability over the samples of each unit (`keys[i]` names sample i's unit: a patient, a knee, a
    series). A unit whose samples carry different labels has no single label and is left out.

    Returns labels (U,), probs (U, K), patients (U,) of the units in order of first appearance, and `mixed`,
    the number of units left out.
    """
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    first: dict = {}
    unit = np.array([first.setdefault(key, len(first)) for key in keys], dtype=np.int64)
    count = np.bincount(unit, minlength=len(first)).astype(np.float64)
    mean = np.stack([np.bincount(unit, probs[:, k], minlength=len(first)) for k in range(probs.shape[1])], 1)
    mean /= count[:, None]
    lowest = np.full(len(first), np.iinfo(np.int64).max)
    highest = np.full(len(first), -1)
    np.minimum.at(lowest, unit, labels)
    np.maximum.at(highest, unit, labels)
    keep = lowest == highest
    owner = np.empty(len(first), dtype=object)
    owner[unit] = np.asarray(patients, dtype=object)
    return {"labels": lowest[keep], "probs": mean[keep], "patients": list(owner[keep]), "mixed": int((~keep).sum())}


# ---------------------------------------------------------------- the patient bootstrap
def patient_counts(patients: list[str], resamples: int = RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """How often each patient is drawn in each resample (resamples, P), all drawn at once, and each sample's
    patient index (N,). Drawing P patients with replacement is one multinomial draw of P over P equal cells."""
    index: dict = {}
    owner = np.array([index.setdefault(p, len(index)) for p in patients], dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(index), np.full(len(index), 1 / len(index)), size=resamples)
    return counts, owner


def _weighted_auc(weights: np.ndarray, is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of sample weights (B, N): the weighted Mann-Whitney statistic, ties counting half."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], is_positive[order]
    negative_weights = weights[:, order] * ~positive
    below = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(negative_weights, axis=1)], axis=1)
    columns = np.flatnonzero(positive)
    left = np.searchsorted(sorted_scores, sorted_scores[columns], "left")
    right = np.searchsorted(sorted_scores, sorted_scores[columns], "right")
    beaten = below[:, left] + 0.5 * (below[:, right] - below[:, left])
    positive_weights = weights[:, order][:, columns]
    pairs = positive_weights.sum(1) * negative_weights.sum(1)
    return _ratio((positive_weights * beaten).sum(1), pairs)


# ---------------------------------------------------------------- ranking metrics that mean something under imbalance
FIXED_SPECIFICITY = 0.95  # where sensitivity is read off the ROC curve (the key sensitivity_at_95_specificity)


def _ranked_counts(weights: np.ndarray, is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives (B, T) when every sample scoring at least each of the T distinct scores,
    from the highest down, is called positive; one row per row of sample weights (B, N)."""
    order = np.argsort(-scores, kind="stable")
    ranked, positive = scores[order], is_positive[order]
    last = np.r_[ranked[1:] != ranked[:-1], True] if len(ranked) else np.zeros(0, bool)  # each tie group's end
    ordered = weights[:, order]
    return np.cumsum(ordered * positive, axis=1)[:, last], np.cumsum(ordered * ~positive, axis=1)[:, last]


def weighted_average_precision(weights: np.ndarray, is_positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's average_precision_score) for each row of sample weights (B, N): the sum
    over distinct thresholds, from the highest down, of the rise in recall times the precision there; nan without
    positives."""
    tp, fp = _ranked_counts(np.asarray(weights, dtype=np.float64), np.asarray(is_positive, bool),
                            np.asarray(scores, dtype=np.float64))
    called = tp + fp
    precision = np.where(called > 0, tp / np.where(called > 0, called, 1), 0.0)
    recall = _ratio(tp, tp[:, -1:])
    rise = np.diff(recall, axis=1, prepend=0.0)
    return (rise * precision).sum(axis=1)


def weighted_sensitivity_at_specificity(weights: np.ndarray, is_positive: np.ndarray, scores: np.ndarray,
                                        specificity: float = FIXED_SPECIFICITY) -> np.ndarray:
    """The highest sensitivity of a threshold whose specificity is at least `specificity` (calling nothing
    positive counts, at sensitivity 0), for each row of sample weights (B, N); nan without both classes."""
    tp, fp = _ranked_counts(np.asarray(weights, dtype=np.float64), np.asarray(is_positive, bool),
                            np.asarray(scores, dtype=np.float64))
    sensitivity, kept = _ratio(tp, tp[:, -1:]), 1 - _ratio(fp, fp[:, -1:])
    best = np.where(kept >= specificity - 1e-12, sensitivity, 0.0).max(axis=1, initial=0.0)
    return np.where(np.isfinite(sensitivity[:, -1]) & np.isfinite(kept[:, -1]), best, np.nan)


def weighted_metrics(weights: np.ndarray, labels: np.ndarray, probs: np.ndarray, positive: int,
                     threshold: float | None = None, bins: int = BINS, calibration_only: bool = False) -> dict:
    """Every metric for each row of sample weights (B, N); weights of ones give the ordinary (point) metrics.

    Keys: loss, ece, brier, and unless `calibration_only` accuracy, balanced_accuracy, roc_auc, f1_macro,
    sensitivity, specificity, average_precision, sensitivity_at_95_specificity, and with a threshold threshold.{accuracy, balanced_accuracy, sensitivity,
    specificity, ppv, npv}. Values (B,), nan where undefined (one class drawn, an empty denominator).
    """
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    n, k = probs.shape
    rows = np.arange(n)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)  # calibration is of the top label
    deviation = np.zeros((n, bins))  # ECE: |sum over a bin of (confidence - correct)|, per bin
    deviation[rows, _bin_index(confidence, bins)] = confidence - (predicted == labels)
    columns = [sample_losses(labels, probs)[:, None], brier_terms(labels, probs)[:, None], deviation]
    sums = weights @ np.concatenate(columns, axis=1)
    total = weights.sum(axis=1)
    result = {"loss": _ratio(sums[:, 0], total), "brier": _ratio(sums[:, 1], total),
              "ece": _ratio(np.abs(sums[:, 2:2 + bins]).sum(1), total)}
    if calibration_only:
        return result
    called = decisions(probs, positive, threshold)  # the run's decisions, as split_metrics makes them
    scores = confusion_scores(confusion_counts(labels, called, k, weights), positive)
    result.update({name: scores[name] for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity",
                                                   "f1_macro")})
    if threshold is not None and k == 2:  # the decisions above are these already; the threshold block adds PPV, NPV
        result.update({f"threshold.{name}": scores[name] for name in ("accuracy", "balanced_accuracy",
                                                                      "sensitivity", "specificity", "ppv", "npv")})
    # of the positive class against the rest: they do not depend on the threshold, and mean something when a class
    # is rare (accuracy does not)
    result["average_precision"] = weighted_average_precision(weights, labels == positive, probs[:, positive])
    result["sensitivity_at_95_specificity"] = weighted_sensitivity_at_specificity(weights, labels == positive,
                                                                                   probs[:, positive])
    if k == 2:
        result["roc_auc"] = _weighted_auc(weights, labels == positive, probs[:, positive])
    else:  # macro one-vs-rest, undefined unless every class is present (as split_metrics)
        per_class = np.stack([_weighted_auc(weights, labels == c, probs[:, c]) for c in range(k)])
        result["roc_auc"] = per_class.mean(axis=0)
    return result


def bootstrap_distribution(labels: np.ndarray, probs: np.ndarray, patients: list[str], positive: int,
                           threshold: float | None = None, resamples: int = RESAMPLES, seed: int = 0,
                           bins: int = BINS, calibration_only: bool = False) -> dict[str, np.ndarray]:
    """weighted_metrics over `resamples` patient resamples: {metric: (resamples,)}, nan where undefined."""
    counts, owner = patient_counts(patients, resamples, seed)
    chunk = max(1, CHUNK_ELEMENTS // max(1, len(owner)))
    parts = [weighted_metrics(counts[start:start + chunk][:, owner], labels, probs, positive, threshold, bins,
                              calibration_only) for start in range(0, resamples, chunk)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile interval of a bootstrap distribution, leaving out resamples where the metric is
    undefined; None when it is undefined in every resample."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_ci(labels: np.ndarray, probs: np.ndarray, patients: list[str], positive: int,
                 threshold: float | None = None, resamples: int = RESAMPLES, seed: int = 0,
                 calibration_only: bool = False) -> dict[str, list[float] | None]:
    """95% percentile intervals of every metric of weighted_metrics, resampling patients (not images); None for
    every metric when there is one patient, whose resamples are all the same sample and say nothing of spread."""
    if len(set(patients)) < 2:
        names = weighted_metrics(np.ones((1, len(labels))), labels, probs, positive, threshold,
                                 calibration_only=calibration_only)
        return dict.fromkeys(names)
    distribution = bootstrap_distribution(labels, probs, patients, positive, threshold, resamples, seed,
                                          calibration_only=calibration_only)
    return {name: percentile_interval(values) for name, values in distribution.items()}
