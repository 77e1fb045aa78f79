"""What a run reports about its predictions: the temperature and threshold fitted on the validation split,
then per split the metrics with patient-bootstrap intervals, calibration before and after, and patient-level
results. The glue between a run's rows and probabilities (training, evaluation, cross-validation) and the
statistics of statistics.py.
"""
from __future__ import annotations

import numpy as np

from perceiver_med.inputs.labels import laterality_in_name
from perceiver_med.training.config import Decision, RunConfig, is_laterality
from perceiver_med.stats.metrics import split_metrics, threshold_metrics
from perceiver_med.inputs.samples import Sample
from perceiver_med.stats.decision import calibrate as with_temperature, decide  # fit_decision has a `calibrate` flag
from perceiver_med.stats.statistics import (RESAMPLES, aggregate, bootstrap_ci, brier_score, calibration_temperature,
                                              choose_threshold, expected_calibration_error, reliability_bins)

AGGREGATION_RULE = ("mean of the calibrated probabilities of a unit's samples; units whose samples carry "
                    "different labels are left out (counted in mixed_label_units)")


def fit_decision(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], rule: str, classes: list[str],
                 positive_class: str, *, calibrate: bool = True, source: str = "val") -> Decision:
    """Temperature and threshold from the "val" entries of `labels` and `probs` alone: other splits are never read.

    Without a validation split, or with one class in it, the temperature stays 1 and the threshold 0.5 (two
    classes), and `rule` says why. Otherwise statistics.calibration_temperature decides the temperature from the
    validation predictions (no fit when they are all right, no better than chance or too few of a class; a fit
    only where it is inside its bounds and lowers the NLL by a margin), and `temperature_fitted_on` says "val"
    or why T stays 1. With more than two classes the decision is the most probable class.
    Without `calibrate` the temperature stays 1 (probabilities calibrated already, as a cross-validated run's
    out-of-fold ones); `source` names where the threshold was chosen ("val", "out_of_fold").
    """
    val_labels, val_probs = labels.get("val"), probs.get("val")
    binary = len(classes) == 2
    place = "validation split" if source == "val" else source.replace("_", "-") + " predictions"
    missing = (f"no {place}" if val_labels is None or len(val_labels) == 0 else
               f"one class in the {place}" if len(set(np.asarray(val_labels).tolist())) < 2 else "")
    fitted_on = source if calibrate else ""
    if missing:
        asked = f" (asked: {rule})" if rule != "0.5" and binary else ""  # a fallback never passes for the rule asked
        return Decision(1.0, f"default: {missing}" if calibrate else "", 0.5 if binary else None,
                        f"default: {missing}{asked}", "")
    temperature, why = calibration_temperature(val_labels, val_probs, classes) if calibrate else (1.0, "")
    if why:
        fitted_on = f"default: on the {place}, {why}"
    if not binary:
        return Decision(temperature, fitted_on, None, f"argmax: more than two classes (asked: {rule})", "")
    positive = classes.index(positive_class)
    calibrated = with_temperature(val_probs, temperature)
    threshold = choose_threshold(np.asarray(val_labels) == positive, calibrated[:, positive], rule)
    return Decision(temperature, fitted_on, threshold, rule, "fixed" if rule == "0.5" else source)


def run_summary(config: RunConfig) -> dict:
    """metrics.json's top-level record of how intervals, threshold and temperature were made."""
    decision = config.decision
    return {"bootstrap": {"resamples": RESAMPLES, "seed": config.train.seed, "unit": "patient",
                          "interval": "percentile, resamples where a metric is undefined left out"},
            "threshold": {"rule": decision.rule, "value": decision.threshold, "chosen_on": decision.chosen_on or None,
                          "applies_to": f"calibrated probability of {config.positive_class}"},
            "temperature": decision.temperature, "temperature_fitted_on": decision.temperature_fitted_on or None}


def unit_keys(rows: list[Sample], classes: list[str]) -> dict[str, list | None]:
    """Each sample's patient, knee (patient x laterality) and series. Laterality is the label for left/right
    runs, else a LEFT/RIGHT token in the file name; knee is None unless every sample has one. A series is the
    splits file's series_uid where it has one, else the scan's file or folder."""
    sides = [row.label.strip().lower()[:1] if is_laterality(classes) else (laterality_in_name(row.path.name) or "")[:1]
             for row in rows]
    return {"patient": [row.patient_id for row in rows],
            "knee": None if "" in sides else [(row.patient_id, side) for row, side in zip(rows, sides)],
            "series": [(row.patient_id, row.series_uid or str(row.path)) for row in rows]}


def score_split(labels: np.ndarray, raw_probs: np.ndarray, rows: list[Sample], config: RunConfig,
                resamples: int = RESAMPLES, calibrated: np.ndarray | None = None) -> dict:
    """One split's metrics.json entry from the model's raw probabilities and the split's rows (same order).

    The scores are those of the run's calibrated probabilities (the Predictor's), and calibration is reported
    before and after. `calibrated` gives them where they are not the run's temperature applied to `raw_probs`:
    out-of-fold predictions, each calibrated by its own fold's temperature.
    """
    decision, classes, seed = config.decision, config.classes, config.train.seed
    positive = classes.index(config.positive_class)
    probs = decide(raw_probs, decision, positive)[0] if calibrated is None else calibrated
    patients = [row.patient_id for row in rows]
    result, after = _scored(labels, probs, patients, config, resamples)
    if result["n"] == 0:
        return result
    before = bootstrap_ci(labels, raw_probs, patients, positive, resamples=resamples, seed=seed,
                          calibration_only=True)
    result["calibration"] = {
        "ece": expected_calibration_error(labels, raw_probs), "brier": brier_score(labels, raw_probs),
        "loss": split_metrics(labels, raw_probs, classes, positive)["loss"],
        "ece_after": expected_calibration_error(labels, probs), "brier_after": brier_score(labels, probs),
        "loss_after": result["loss"], "temperature": decision.temperature,
        "reliability": {"before": reliability_bins(labels, raw_probs), "after": reliability_bins(labels, probs)}}
    result["ci95"].update({"calibration.ece": before["ece"], "calibration.brier": before["brier"],
                           "calibration.loss": before["loss"], "calibration.ece_after": after["ece"],
                           "calibration.brier_after": after["brier"]})
    result["patient_level"] = {"rule": AGGREGATION_RULE}
    for unit, keys in unit_keys(rows, classes).items():
        if keys is None:
            result["patient_level"][unit] = None  # laterality unknown for some samples
            continue
        units = aggregate(labels, probs, keys, patients)
        scored, _ = _scored(units["labels"], units["probs"], units["patients"], config, resamples)
        result["patient_level"][unit] = {**scored, "mixed_label_units": units["mixed"]}
    return result


def _scored(labels, probs, patients, config: RunConfig, resamples: int) -> tuple[dict, dict]:
    """split_metrics, the metrics at the threshold, and 95% patient-bootstrap intervals of all of them; second,
    the intervals of ECE and Brier score, which go under other names."""
    positive = config.classes.index(config.positive_class)
    threshold = config.decision.threshold if len(config.classes) == 2 else None
    result = split_metrics(labels, probs, config.classes, positive, threshold)
    if result["n"] == 0:
        return result, {}
    if threshold is not None:
        result["threshold"] = threshold_metrics(labels, probs, positive, threshold)
    intervals = bootstrap_ci(labels, probs, patients, positive, threshold, resamples, config.train.seed)
    calibration = {name: intervals.pop(name) for name in ("ece", "brier")}
    result["ci95"] = intervals
    return result, calibration
