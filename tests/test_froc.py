"""FROC and CPM against a hand-counted case, as the LUNA16 evaluation counts them."""
import numpy as np
import pytest

from perceiver_med.stats.froc import FP_RATES, Reference, froc_curves, froc_list, froc_summary, sensitivity_at

# Three scans. A: nodule N1 at the origin (10 mm: radius 5) and N2 at x=50 (4 mm: radius 2). B: nodule N3 at the
# origin (6 mm: radius 3) and an excluded finding at x=30 of unknown size (-1: LUNA16 takes 10 mm). C: no nodule.
REFERENCE = Reference(scan=np.array([0, 0, 1, 1]),
                      centre=np.array([[0, 0, 0], [50, 0, 0], [0, 0, 0], [30, 0, 0]], float),
                      diameter=np.array([10.0, 4.0, 6.0, -1.0]),
                      excluded=np.array([False, False, False, True]))
CANDIDATES = [  # scan, x, y, score: what each one is
    (0, 1, 0, 0.9),    # hits N1 (1 mm < 5)
    (0, 3, 0, 0.6),    # hits N1 again: a double hit, N1 keeps its best score 0.9
    (0, 52.5, 0, 0.8),  # 2.5 mm from N2, radius 2: a false positive
    (0, 20, 0, 0.3),   # false positive
    (0, 5, 0, 0.95),   # exactly N1's radius away: not within it, a false positive
    (1, 0, 2, 0.4),    # hits N3 (2 mm < 3)
    (1, 31, 0, 0.85),  # hits the excluded finding only: ignored
    (1, 10, 0, 0.4),   # false positive, tied with N3's hit
    (2, 0, 0, 0.4),    # false positive, tied too
    (2, 9, 9, 0.2),    # false positive
]


def _entries(**kwargs):
    table = np.array(CANDIDATES, float)
    points = np.c_[table[:, 1:3], np.zeros(len(table))]
    return froc_list(table[:, 0].astype(int), points, table[:, 3], REFERENCE, num_scans=3, **kwargs)


def test_candidates_are_matched_as_luna16_matches_them():
    entries = _entries()
    assert entries.counts == {"candidates": 10, "scored": 10, "nodules": 3, "found": 2, "false_positives": 6,
                              "on_excluded": 1, "double_hits": 1, "max_marks_per_scan": 100}
    order = np.argsort(-entries.score, kind="stable")
    assert entries.score[order].tolist() == [0.95, 0.9, 0.8, 0.4, 0.4, 0.4, 0.3, 0.2]
    assert entries.found[order].tolist() == [False, True, False, True, False, False, False, False]


def test_froc_and_cpm_equal_the_hand_count():
    # by hand, 3 scans and 3 nodules (N2 missed), thresholds from the top: 0.95 one FP (1/3, 0); 0.9 N1 (1/3, 1/3);
    # 0.8 one FP (2/3, 1/3); 0.4 N3 and two FPs at once (4/3, 2/3); 0.3 (5/3, 2/3); 0.2 (2, 2/3)
    fps, sensitivity, thresholds = froc_curves(_entries())
    assert thresholds.tolist() == [0.95, 0.9, 0.8, 0.4, 0.3, 0.2]
    np.testing.assert_allclose(fps[0], [0, 1 / 3, 1 / 3, 2 / 3, 4 / 3, 5 / 3, 2])
    np.testing.assert_allclose(sensitivity[0], [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    # 1/8 and 1/4 lie on (0, 0)-(1/3, 0); 1/2 on the flat (1/3, 1/3)-(2/3, 1/3); 1 halfway up (2/3, 1/3)-(4/3, 2/3);
    # 2 is the last point; 4 and 8 are beyond it, where the curve stays at its last sensitivity
    hand = [0, 0, 1 / 3, 1 / 2, 2 / 3, 2 / 3, 2 / 3]
    np.testing.assert_allclose(sensitivity_at(_entries())[0], hand)
    summary = froc_summary(_entries(), units=["p1", "p2", "p3"], resamples=50)
    assert summary["fp_rates"] == list(FP_RATES)
    assert summary["sensitivity"] == pytest.approx(hand)
    assert summary["cpm"] == pytest.approx(17 / 42)
    low, high = summary["ci95"]["cpm"]
    assert 0 <= low <= high <= 1 and high - low > 0


def test_a_resample_counts_each_scan_as_often_as_it_was_drawn():
    # scan A twice, B never, C once: 3 scans and 4 nodules (N1 and N2 twice). From the top: 0.95 two FPs (2/3, 0);
    # 0.9 N1 twice (2/3, 1/2); 0.8 two FPs (4/3, 1/2); 0.4 one FP (5/3, 1/2); 0.3 two (7/3, 1/2); 0.2 one (8/3, 1/2)
    drawn = sensitivity_at(_entries(), scan_weights=np.array([[2, 0, 1], [1, 1, 1]]))
    np.testing.assert_allclose(drawn[0], [0, 0, 0, 1 / 2, 1 / 2, 1 / 2, 1 / 2])
    np.testing.assert_allclose(drawn[1], sensitivity_at(_entries())[0])
    assert np.isnan(sensitivity_at(_entries(), scan_weights=np.array([[0, 0, 2]]))).all()  # no nodule drawn


def test_only_the_most_suspicious_marks_of_a_scan_are_scored():
    # at most 2 marks a scan, those above the scan's third-highest score. A (cut 0.8): 0.95 (FP) and 0.9 (N1).
    # B (cut 0.4, tied with the mark after it): 0.85 alone, on the excluded finding, so N3 is missed. C: both.
    entries = _entries(max_marks=2)
    assert {key: entries.counts[key] for key in ("scored", "found", "false_positives", "double_hits")} == \
        {"scored": 2 + 1 + 2, "found": 1, "false_positives": 1 + 0 + 2, "double_hits": 0}
