"""FROC and CPM of scored candidate points against a nodule reference, as the LUNA16 evaluation counts them
(noduleCADEvaluationLUNA16.py, by the LUNA16 organisers; Setio et al., Medical Image Analysis 2017).

A candidate hits a nodule when its squared distance to the nodule's centre is below the square of the nodule's
radius (diameter_mm / 2; a negative diameter, as annotations_excluded.csv writes for findings never measured,
counts as UNKNOWN_DIAMETER_MM). Each reference nodule is counted once, with the score of its highest-scoring hit,
and a nodule without a hit is missed: it counts in the sensitivity's denominator at every threshold. A candidate
hitting no nodule is a false positive, unless it hits an excluded finding: then it is not counted at all. Only
each scan's MAX_MARKS_PER_SCAN highest-scoring candidates are scored.

The FROC curve joins (0, 0) and, at each distinct score from the highest down, (false positives per scan,
sensitivity) of the candidates scoring at least that; between those points it is linear, beyond the last one
flat. The CPM is the mean sensitivity at FP_RATES false positives per scan read off it. Pure numpy: scans are
integer indices, the caller knows what they name.

Candidates of one scan are not independent, nor are the scans of one patient: the bootstrap resamples units
(patients) carrying all their scans, so a resample is a vector of per-scan draw counts, and every FROC of every
resample is the same weighted count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_med.stats.statistics import CHUNK_ELEMENTS, RESAMPLES, patient_counts, percentile_interval

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # false positives per scan where the CPM reads sensitivity
MAX_MARKS_PER_SCAN = 100  # LUNA16 scores a scan's 100 most suspicious marks only
UNKNOWN_DIAMETER_MM = 10.0  # LUNA16's diameter for a finding recorded with a negative one


@dataclass(frozen=True)
class Reference:
    """The nodules of the scans evaluated: each with its scan's index, centre (mm), diameter (mm), and whether it is
    an excluded finding (hits on it are ignored, and it is never counted as a nodule)."""

    scan: np.ndarray  # (M,) int
    centre: np.ndarray  # (M, 3) float
    diameter: np.ndarray  # (M,) float
    excluded: np.ndarray  # (M,) bool


@dataclass(frozen=True)
class FrocList:
    """LUNA16's FROC list: one entry per found nodule (its best hit's score) and per false-positive mark, with its
    scan; the nodules of each scan, found or not; and counts of how the candidates were taken."""

    score: np.ndarray  # (E,)
    found: np.ndarray  # (E,) bool: True for a nodule's best hit, False for a false positive
    scan: np.ndarray  # (E,) int
    nodules_per_scan: np.ndarray  # (S,) included nodules of each scan
    counts: dict[str, int]


def froc_list(scan: np.ndarray, point: np.ndarray, score: np.ndarray, reference: Reference, num_scans: int,
              max_marks: int = MAX_MARKS_PER_SCAN) -> FrocList:
    """Match the candidates (scan index (N,), point (N, 3) in mm, score (N,)) of `num_scans` scans to the reference.

    Of a scan with more than `max_marks` candidates, those scoring above its (max_marks + 1)-th highest score are
    kept (ties at that score are all dropped, as LUNA16 drops them).
    """
    scan, score = np.asarray(scan, dtype=np.int64), np.asarray(score, dtype=np.float64)
    point = np.asarray(point, dtype=np.float64).reshape(-1, 3)
    radius = np.where(reference.diameter < 0, UNKNOWN_DIAMETER_MM, reference.diameter) / 2
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    counts = dict.fromkeys(("candidates", "scored", "nodules", "found", "false_positives", "on_excluded",
                            "double_hits"), 0)
    counts["candidates"] = len(score)
    nodules_per_scan = np.bincount(reference.scan[~reference.excluded], minlength=num_scans)
    for index in range(num_scans):
        mine = np.flatnonzero(scan == index)
        if len(mine) > max_marks:
            cut = np.sort(score[mine])[::-1][max_marks]
            mine = mine[score[mine] > cut]
        nodules = np.flatnonzero(reference.scan == index)
        squared = ((point[mine, None, :] - reference.centre[None, nodules, :]) ** 2).sum(axis=2)  # (n, m)
        hits = squared < radius[nodules] ** 2
        included = ~reference.excluded[nodules]
        on_nodule, on_excluded = hits[:, included].any(axis=1), hits[:, ~included].any(axis=1)
        found = hits[:, included].any(axis=0)
        best = np.where(hits[:, included], score[mine, None], -np.inf).max(axis=0, initial=-np.inf)[found]
        false = ~on_nodule & ~on_excluded
        entries.append((np.concatenate([best, score[mine][false]]),
                        np.concatenate([np.ones(len(best), bool), np.zeros(int(false.sum()), bool)]),
                        np.full(len(best) + int(false.sum()), index)))
        counts["scored"] += len(mine)
        counts["nodules"] += int(included.sum())
        counts["found"] += int(found.sum())
        counts["false_positives"] += int(false.sum())
        counts["on_excluded"] += int((~on_nodule & on_excluded).sum())
        counts["double_hits"] += int(np.maximum(hits[:, included].sum(axis=0) - 1, 0).sum())
    counts["max_marks_per_scan"] = max_marks
    scores, found, owners = (zip(*entries) if entries else ([np.zeros(0)], [np.zeros(0, bool)], [np.zeros(0, int)]))
    return FrocList(np.concatenate(scores).astype(np.float64), np.concatenate(found).astype(bool),
                    np.concatenate(owners).astype(np.int64), nodules_per_scan, counts)


def froc_curves(entries: FrocList, scan_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """(false positives per scan (B, T + 1), sensitivity (B, T + 1), thresholds (T,)) at (0, 0) and each of the T
    distinct scores from the highest down, for each row of per-scan weights (B, S) (default: every scan once).
    A row without nodules has nan sensitivities; without scans, nan false-positive rates."""
    weights = np.ones((1, len(entries.nodules_per_scan))) if scan_weights is None else \
        np.asarray(scan_weights, dtype=np.float64)
    order = np.argsort(-entries.score, kind="stable")
    score, found, owner = entries.score[order], entries.found[order], entries.scan[order]
    per_entry = weights[:, owner]  # (B, E)
    true_positives = np.cumsum(per_entry * found, axis=1)
    false_positives = np.cumsum(per_entry * ~found, axis=1)
    last = np.r_[score[1:] != score[:-1], True] if len(score) else np.zeros(0, bool)  # each tie group's end
    zero = np.zeros((len(weights), 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        scans, nodules = weights.sum(axis=1, keepdims=True), weights @ entries.nodules_per_scan[:, None]
        fps = np.concatenate([zero, false_positives[:, last]], axis=1) / np.where(scans > 0, scans, np.nan)
        sensitivity = np.concatenate([zero, true_positives[:, last]], axis=1) / np.where(nodules > 0, nodules,
                                                                                         np.nan)
    return fps, sensitivity, score[last]


def sensitivity_at(entries: FrocList, rates=FP_RATES, scan_weights: np.ndarray | None = None) -> np.ndarray:
    """Sensitivity at each of `rates` false positives per scan (B, len(rates)), read off the FROC curve by linear
    interpolation (numpy's interp, as LUNA16 reads it: at a rate the curve reaches with several sensitivities,
    the highest; beyond its last point, the last sensitivity)."""
    fps, sensitivity, _ = froc_curves(entries, scan_weights)
    rows = [np.interp(rates, x, y) if np.isfinite(x).all() and np.isfinite(y).all()
            else np.full(len(rates), np.nan) for x, y in zip(fps, sensitivity)]
    return np.array(rows).reshape(len(fps), len(rates))


def froc_summary(entries: FrocList, units: list, resamples: int = RESAMPLES, seed: int = 0,
                 curve_points: int = 200) -> dict:
    """CPM and the sensitivity at each of FP_RATES, with 95% percentile intervals from `resamples` draws of the
    units (`units[s]` owns scan s: a patient), the counts of froc_list, and the curve at `curve_points`
    log-spaced rates from the first to the last of FP_RATES (with each rate's interval) for a figure.

    Values are None where undefined (no nodule in the scans); intervals None with fewer than two units."""
    grid = np.geomspace(FP_RATES[0], FP_RATES[-1], curve_points)
    point = sensitivity_at(entries, (*FP_RATES, *grid))[0]
    defined = bool(entries.nodules_per_scan.sum())
    band = [None] * len(point)
    if len(set(units)) > 1 and defined:
        counts, owner = patient_counts(list(units), resamples, seed)
        chunk = max(1, CHUNK_ELEMENTS // max(1, len(entries.score)))  # (resamples, entries) scored at once
        drawn = np.concatenate([sensitivity_at(entries, (*FP_RATES, *grid), counts[start:start + chunk][:, owner])
                                for start in range(0, resamples, chunk)])
        band = [percentile_interval(column) for column in drawn.T]
        cpm_band = percentile_interval(drawn[:, :len(FP_RATES)].mean(axis=1))
    else:
        cpm_band = None
    value = (lambda v: float(v) if defined else None)  # noqa: E731
    rates = len(FP_RATES)
    return {"cpm": value(point[:rates].mean()),
            "fp_rates": list(FP_RATES),
            "sensitivity": [value(v) for v in point[:rates]],
            "ci95": {"cpm": cpm_band, "sensitivity": band[:rates]},
            "scans": int(len(entries.nodules_per_scan)), **entries.counts,
            "curve": {"fp_per_scan": grid.tolist(), "sensitivity": [value(v) for v in point[rates:]],
                      "ci95": band[rates:]}}
