"""Split metrics with scikit-learn. Each split's loss is the mean per-sample cross-entropy over its own samples."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score


def split_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], positive: int | None = None,
                  threshold: float | None = None) -> dict:
    """labels (N,) ints, probs (N, K) -> loss, accuracy, balanced accuracy, ROC AUC, macro F1, confusion, n.

    The decisions behind accuracy, F1, sensitivity, specificity and the confusion matrix are the run's: with two
    classes and a `threshold`, class `positive` where its probability reaches it; otherwise the most probable class.

    The loss is mean(-log p(true class)) over these N samples: no label smoothing, no class
    weights, and no division by any other split's size. Sensitivity and specificity are those of class
    index `positive` against all others (default with two classes: the second), as is ROC AUC with two classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    if n == 0:
        return {"n": 0}
    picked = np.clip(probs[np.arange(n), labels], 1e-12, None)
    preds = decisions(probs, 1 if positive is None else positive, threshold)
    indices = list(range(len(classes)))
    matrix = confusion_matrix(labels, preds, labels=indices)
    result = {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((preds == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)) if len(set(labels)) > 1 else None,
        "roc_auc": _roc_auc(labels, probs, indices, positive),
        "f1_macro": float(f1_score(labels, preds, labels=indices, average="macro", zero_division=0)),
        "confusion_matrix": matrix.tolist(),
        "n": int(n),
    }
    if len(classes) == 2 or positive is not None:  # the named class against all others
        positive = 1 if positive is None else positive
        is_positive, called_positive = labels == positive, preds == positive
        tp, fn = int((is_positive & called_positive).sum()), int((is_positive & ~called_positive).sum())
        tn, fp = int((~is_positive & ~called_positive).sum()), int((~is_positive & called_positive).sum())
        result["sensitivity"] = float(tp / (tp + fn)) if tp + fn else None
        result["specificity"] = float(tn / (tn + fp)) if tn + fp else None
    return result


def _roc_auc(labels, probs, indices, positive=None):
    if len(set(labels.tolist())) < 2:
        return None  # undefined with one class present
    if len(indices) == 2:
        positive = 1 if positive is None else positive
        return float(roc_auc_score(labels == positive, probs[:, positive]))
    if len(set(labels.tolist())) < len(indices):
        return None
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=indices))


def decisions(probs: np.ndarray, positive: int, threshold: float | None) -> np.ndarray:
    """Predicted class indices: with two classes and a threshold, `positive` where its probability is at least
    the threshold (else the other class); otherwise the most probable class."""
    probs = np.asarray(probs, dtype=np.float64)
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, positive: int, threshold: float) -> dict:
    """Two classes, decisions at `threshold` for class `positive`: accuracy, balanced accuracy, sensitivity,
    specificity, PPV, NPV (None where a denominator is 0) and the confusion matrix (rows true, columns called)."""
    labels = np.asarray(labels, dtype=np.int64)
    called = decisions(probs, positive, threshold)
    is_positive, called_positive = labels == positive, called == positive
    tp, fn = int((is_positive & called_positive).sum()), int((is_positive & ~called_positive).sum())
    tn, fp = int((~is_positive & ~called_positive).sum()), int((~is_positive & called_positive).sum())

    def ratio(a, b):
        return float(a / b) if b else None

    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"value": float(threshold), "accuracy": ratio(tp + tn, len(labels)),
            "balanced_accuracy": (sensitivity + specificity) / 2 if None not in (sensitivity, specificity) else None,
            "sensitivity": sensitivity, "specificity": specificity, "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn),
            "confusion_matrix": np.bincount(labels * 2 + called, minlength=4).reshape(2, 2).tolist()}
