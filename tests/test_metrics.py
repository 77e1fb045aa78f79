"""Split metrics against hand-computed cases."""
import numpy as np
import pytest

from perceiver_med.stats.metrics import split_metrics


def test_sensitivity_and_specificity_follow_the_named_positive_class():
    # labels: 0 0 1 1 1 ; predicted: 0 1 1 1 0 (argmax of the rows below)
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    second = split_metrics(labels, probs, ["benign", "malignant"], positive=1)
    assert second["sensitivity"] == pytest.approx(2 / 3) and second["specificity"] == pytest.approx(1 / 2)
    first = split_metrics(labels, probs, ["benign", "malignant"], positive=0)
    assert first["sensitivity"] == pytest.approx(1 / 2) and first["specificity"] == pytest.approx(2 / 3)
    assert first["roc_auc"] == pytest.approx(second["roc_auc"])  # AUC is symmetric in the two classes


def test_three_classes_report_the_positive_class_against_the_rest():
    labels = np.array([0, 1, 2, 2, 1, 0])
    preds = np.array([0, 2, 2, 1, 1, 0])
    probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
    metrics = split_metrics(labels, probs, ["a", "b", "c"], positive=2)
    # class c: one of its two scans found (tp 1, fn 1); of the four others one was called c (fp 1, tn 3)
    assert metrics["sensitivity"] == pytest.approx(1 / 2) and metrics["specificity"] == pytest.approx(3 / 4)
