"""Split metrics. Each split's loss is the mean per-sample cross-entropy over its own samples; every score of a
decision comes from the one confusion count of statistics.py, and ROC AUC from scikit-learn."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from perceiver_med.stats.statistics import (confusion_counts, confusion_scores, decisions, sample_losses,
                                            weighted_average_precision, weighted_sensitivity_at_specificity)


def split_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], positive: int | None = None,
                  threshold: float | None = None) -> dict:
    """labels (N,) ints, probs (N, K) -> loss, accuracy, balanced accuracy, ROC AUC, macro F1, confusion, n; of the
    positive class against the rest also sensitivity, specificity, average precision and the sensitivity at 95%
    specificity (statistics.FIXED_SPECIFICITY).

    The decisions behind accuracy, F1, sensitivity, specificity and the confusion matrix are the run's: with two
    classes and a `threshold`, class `positive` where its probability reaches it; otherwise the most probable class.

    The loss is mean(-log p(true class)) over these N samples (never below 0.0): no label smoothing, no class
    weights, and no division by any other split's size. Sensitivity and specificity are those of class
    index `positive` against all others (default with two classes: the second), as is ROC AUC with two classes.
    Balanced accuracy is None with one class present.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    if n == 0:
        return {"n": 0}
    indices = list(range(len(classes)))
    confusion = confusion_counts(labels, decisions(probs, 1 if positive is None else positive, threshold),
                                 len(classes))
    scores = _point(confusion_scores(confusion, 1 if positive is None else positive))
    result = {
        "loss": float(sample_losses(labels, probs).mean()),
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "roc_auc": _roc_auc(labels, probs, indices, positive),
        "f1_macro": scores["f1_macro"],
        "confusion_matrix": confusion[0].tolist(),
        "n": int(n),
    }
    if len(classes) == 2 or positive is not None:  # the named class against all others
        result.update(sensitivity=scores["sensitivity"], specificity=scores["specificity"])
        is_positive, ones = labels == (1 if positive is None else positive), np.ones((1, n))
        scored = probs[:, 1 if positive is None else positive]
        result.update(average_precision=_number(weighted_average_precision(ones, is_positive, scored)[0]),
                      sensitivity_at_95_specificity=_number(
                          weighted_sensitivity_at_specificity(ones, is_positive, scored)[0]))
    return result


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _point(scores: dict[str, np.ndarray]) -> dict[str, float | None]:
    """The scores of one confusion matrix as floats, None where undefined."""
    return {name: None if np.isnan(value[0]) else float(value[0]) for name, value in scores.items()}


def _roc_auc(labels, probs, indices, positive=None):
    if len(set(labels.tolist())) < 2:
        return None  # undefined with one class present
    if len(indices) == 2:
        positive = 1 if positive is None else positive
        return float(roc_auc_score(labels == positive, probs[:, positive]))
    if len(set(labels.tolist())) < len(indices):
        return None
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=indices))


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, positive: int, threshold: float) -> dict:
    """Two classes, decisions at `threshold` for class `positive`: accuracy, balanced accuracy, sensitivity,
    specificity, PPV, NPV (None where a denominator is 0) and the confusion matrix (rows true, columns called)."""
    labels = np.asarray(labels, dtype=np.int64)
    confusion = confusion_counts(labels, decisions(probs, positive, threshold), 2)
    scores = _point(confusion_scores(confusion, positive))
    return {"value": float(threshold), **{name: scores[name] for name in (
                "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv")},
            "confusion_matrix": confusion[0].tolist()}
