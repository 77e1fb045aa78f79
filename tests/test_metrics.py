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


def test_average_precision_and_sensitivity_at_fixed_specificity_by_hand():
    # ranked: 0.9 positive (precision 1, recall 1/2), 0.8 negative, 0.4 positive (precision 2/3, recall 1):
    # AP = 1/2 * 1 + 1/2 * 2/3; specificity 0.95 of 4 negatives allows no false positive: threshold 0.9, sens. 1/2
    labels = np.array([1, 0, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.1])
    metrics = split_metrics(labels, np.c_[1 - scores, scores], ["benign", "malignant"])
    assert metrics["average_precision"] == pytest.approx(5 / 6)
    assert metrics["sensitivity_at_95_specificity"] == pytest.approx(1 / 2)
    one_class = split_metrics(np.zeros(3, int), np.full((3, 2), 0.5), ["benign", "malignant"])
    assert one_class["average_precision"] is None and one_class["sensitivity_at_95_specificity"] is None


def test_ranking_metrics_of_every_resample_agree_with_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_curve

    from perceiver_med.stats.statistics import weighted_average_precision, weighted_sensitivity_at_specificity

    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.1  # rare positives, as candidates are
    scores = np.round(rng.random(300) * 0.6 + labels * 0.3, 2)  # rounded: many ties
    weights = np.vstack([np.ones(300), rng.multinomial(300, np.full(300, 1 / 300), size=4)])
    got_ap = weighted_average_precision(weights, labels, scores)
    got_sens = weighted_sensitivity_at_specificity(weights, labels, scores, 0.9)
    for row, ap, sens in zip(weights, got_ap, got_sens):
        assert ap == pytest.approx(average_precision_score(labels, scores, sample_weight=row))
        fpr, tpr, _ = roc_curve(labels, scores, sample_weight=row, drop_intermediate=False)
        assert sens == pytest.approx(tpr[fpr <= 0.1 + 1e-12].max())
