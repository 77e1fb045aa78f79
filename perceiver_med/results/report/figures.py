"""The report's figures as PNG files in one folder: ROC curves, FROC curves of a point run given a nodule
reference, confusion matrices, reliability diagrams, the training curves, and occlusion-evidence overlays of the
most confident test errors.

Confusion matrices and reliability diagrams are drawn by perceiver_med.results.display from metrics.json, so the
figures show exactly the numbers the tables do. No figure title names a file: paths may hold patient ids.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_med.results.display import REPORTED_SPLITS
from perceiver_med.results.predictions import PredictionsFile
from perceiver_med.results.report.run_record import RunRecord
from perceiver_med.run.rundir import CURVES

GALLERY_SIZE = 6


@dataclass
class Figure:
    file: str  # name inside the images folder
    caption: str


def operating_point(values: dict | None) -> tuple[float, float] | None:
    """(1 - specificity, sensitivity) of the run's decisions on one split, as scoring counted them at the run's
    threshold in metrics.json: the ROC dot is the run's own decision by construction, never recomputed. None
    without a threshold (more than two classes) or where the split lacks a class."""
    at = (values or {}).get("threshold") or {}
    if at.get("specificity") is None or at.get("sensitivity") is None:
        return None
    return 1.0 - at["specificity"], at["sensitivity"]


def roc_figure(record: RunRecord, folder: Path) -> Figure | None:
    """ROC curves of the positive class (against all others) for each split, with the run's operating point."""
    from perceiver_med.results.display import save_figure

    figure = roc_plot(record)
    if figure is None:
        return None
    save_figure(figure, folder / "roc.png")
    return Figure("roc.png", f"ROC curves of {record.config.positive_class} against the other classes, from the "
                             "run's predictions_<split>.csv (calibrated probabilities); a dot marks the run's "
                             "decisions at its threshold (metrics.json).")


def roc_plot(record: RunRecord):
    """The matplotlib figure of roc_figure, or None when no split has both classes."""
    from sklearn.metrics import roc_curve

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from perceiver_med.results.display import PLAIN

    positive = record.config.positive_class
    figure, axis = plt.subplots(figsize=(5.2, 5.2))
    axis.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    drawn = dotted = False
    for split in REPORTED_SPLITS:
        predictions = record.predictions.get(split)
        if not predictions:
            continue
        truth = np.array([sample.label == positive for sample in predictions.samples])
        if truth.all() or not truth.any():
            continue  # ROC needs both classes
        scores = predictions.probs[:, predictions.classes.index(positive)]
        fpr, tpr, _ = roc_curve(truth, scores)
        auc = record.metrics.get(split, {}).get("roc_auc")
        line, = axis.plot(fpr, tpr, "--" if split == "val" else "-", linewidth=2.2 if split == "test" else 1.2,
                          label=f"{split} (n={len(predictions)}" + (f", AUC {auc:.3f})" if auc is not None else ")"))
        point = operating_point(record.metrics.get(split))
        if point is not None:
            axis.plot([point[0]], [point[1]], "o", color=line.get_color(), markersize=7)
            dotted = True
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axis.set_xlabel(f"1 - specificity ({positive} against the rest)", **PLAIN)
    axis.set_ylabel("sensitivity", **PLAIN)
    axis.set_title("ROC curves; dots: the run's threshold" if dotted else "ROC curves", **PLAIN)
    axis.grid(alpha=0.3)
    for text in axis.legend(loc="lower right").get_texts():
        text.set_parse_math(False)
    figure.tight_layout()
    return figure


def split_figures(record: RunRecord, folder: Path) -> dict[str, list[Figure]]:
    """{split: [confusion matrix at the run's decisions, reliability diagram before and after temperature]}."""
    from perceiver_med.results.display import save_confusion, save_reliability

    figures: dict[str, list[Figure]] = {}
    for split in REPORTED_SPLITS:
        values = record.metrics.get(split) or {}
        if not values.get("n"):
            continue
        at = values.get("threshold")
        matrix = at["confusion_matrix"] if at else values["confusion_matrix"]
        rule = f"at threshold {at['value']:.4g}" if at else "most probable class"
        save_confusion(matrix, record.config.classes, f"{split}, {rule}", folder / f"confusion_{split}.png")
        figures[split] = [Figure(f"confusion_{split}.png", f"{split}: confusion matrix ({rule}); rows true, "
                                                           "columns predicted")]
        calibration = values.get("calibration")
        if calibration:
            save_reliability(calibration["reliability"], record.config.decision.temperature, split,
                             folder / f"reliability_{split}.png")
            figures[split].append(Figure(f"reliability_{split}.png",
                                         f"{split}: reliability before and after temperature scaling"))
    return figures


def curves_figure(record: RunRecord, folder: Path) -> Figure | None:
    source = record.run / CURVES
    if not source.is_file():
        return None
    shutil.copyfile(source, folder / CURVES)
    return Figure(CURVES, f"loss and accuracy per epoch (the run's {CURVES})")


def _wrong(predictions: PredictionsFile) -> list[int]:
    """Indices of wrong predictions with a known label."""
    return [k for k, (sample, pred) in enumerate(zip(predictions.samples, predictions.names))
            if sample.label and pred != sample.label]


def confident_errors(predictions: PredictionsFile, limit: int = GALLERY_SIZE) -> list[int]:
    """Indices of wrong predictions with a known label, most confident (highest p of the call) first."""
    return sorted(_wrong(predictions), key=lambda k: -predictions.probability(k, predictions.names[k]))[:limit]


def _rows_of_predictions(record: RunRecord, split: str) -> list:
    """The splits row behind each prediction: predictions follow the split's rows in order, skipping any row
    that was unreadable at training time, so one walk pairs them (repeated paths included: a point run's
    predictions carry each sample's point)."""
    rows = [row for row in record.rows if row.split == split]
    paired, start = [], 0
    for sample in record.predictions[split].samples:
        found = next((k for k in range(start, len(rows))
                      if (rows[k].path, rows[k].point) == (sample.path, sample.point)), None)
        paired.append(None if found is None else rows[found])
        start = start if found is None else found + 1
    return paired


def froc_results(record: RunRecord, reference) -> dict[str, dict]:
    """{split: FROC entry} of a point run's predictions_<split>.csv (calibrated probabilities of the positive
    class) against a nodule reference (results.detection.NoduleReference), as evaluate --nodules counts them."""
    from perceiver_med.results.detection import split_froc

    results = {}
    for split, predictions in record.predictions.items():
        paired = [(row, k) for k, row in enumerate(_rows_of_predictions(record, split)) if row is not None]
        if not paired or paired[0][0].point is None:
            continue
        scores = predictions.probs[[k for _, k in paired], predictions.classes.index(record.config.positive_class)]
        results[split] = split_froc([row for row, _ in paired], scores, reference, seed=record.config.train.seed)
    return results


def froc_figure(froc: dict[str, dict], folder: Path) -> Figure | None:
    """FROC curves (sensitivity against false positives per scan, log scale from 1/8 to 8) of each split, with
    their 95% bands and dots at the rates the CPM averages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from perceiver_med.results.display import PLAIN, save_figure

    drawn = {split: entry for split, entry in froc.items() if entry["cpm"] is not None}
    if not drawn:
        return None
    figure, axis = plt.subplots(figsize=(5.6, 4.6))
    for split, entry in drawn.items():
        curve = entry["curve"]
        line, = axis.plot(curve["fp_per_scan"], curve["sensitivity"], "--" if split == "val" else "-",
                          linewidth=2.2 if split == "test" else 1.2,
                          label=f"{split} (CPM {entry['cpm']:.3f}, {entry['nodules']} nodules, {entry['scans']} scans)")
        band = [(x, *interval) for x, interval in zip(curve["fp_per_scan"], curve["ci95"]) if interval]
        if band:
            xs, lows, highs = zip(*band)
            axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.12)
        axis.plot(entry["fp_rates"], entry["sensitivity"], "o", color=line.get_color(), markersize=4)
    axis.set_xscale("log", base=2)
    rates = next(iter(drawn.values()))["fp_rates"]
    axis.set_xticks(rates, [f"{rate:g}" for rate in rates])
    axis.set_xlim(rates[0], rates[-1])
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("average false positives per scan")
    axis.set_ylabel("sensitivity (nodules hit)")
    axis.set_title("FROC; bands: 95% patient-bootstrap intervals", **PLAIN)
    axis.grid(alpha=0.3, which="both")
    for text in axis.legend(loc="lower right", fontsize=8).get_texts():
        text.set_parse_math(False)
    figure.tight_layout()
    save_figure(figure, folder / "froc.png")
    return Figure("froc.png", "FROC curves of the candidates of each split against the nodule reference, from the "
                              "run's predictions_<split>.csv; dots at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives "
                              "per scan, whose mean sensitivity is the CPM.")


def gallery(record: RunRecord, folder: Path, split: str = "test") -> tuple[list[Figure], str]:
    """Occlusion-evidence overlays of the most confident errors of `split`, and a sentence about them."""

    from perceiver_med.inputs.cache import prepare
    from perceiver_med.errors import ScanError
    from perceiver_med.results.explain import EVIDENCE_FLOOR, EVIDENCE_TOP, evidence_figure, evidence_for, picture_of
    from perceiver_med.results.display import save_figure
    from perceiver_med.run.predictor import Predictor

    predictions = record.predictions.get(split)
    if not predictions:
        return [], f"The run has no predictions_{split}.csv, so there is no failure analysis."
    picked = confident_errors(predictions)
    if not picked:
        return [], f"No errors: every {split} prediction with a known label is correct."
    predictor = Predictor(record.run, device="cpu")
    rows = _rows_of_predictions(record, split)
    figures, unreadable = [], 0
    for rank, k in enumerate(picked, 1):
        row = rows[k]
        try:
            if row is None:
                raise ScanError("not in the splits file")
            array = prepare(row, predictor.config.preprocess)
        except (ScanError, OSError):
            unreadable += 1
            continue
        # the run's decision and the evidence for it, exactly as explain draws them
        evidence = evidence_for(predictor, array)
        title = (f"{split} error {rank}: true {predictions.samples[k].label}, predicted {evidence.predicted} "
                 f"(p = {evidence.probability:.3f})")
        figure = evidence_figure(picture_of(array), evidence, title)
        name = f"error_{rank}.png"
        save_figure(figure, folder / name)
        scale = (f"in nats on the scale every overlay shares (nothing coloured below {EVIDENCE_FLOOR:g}, the top "
                 f"colour from {EVIDENCE_TOP:g})" + ("" if evidence.matters else ": no patch reaches the floor"))
        figures.append(Figure(name, f"{title}; line {predictions.lines[k]} of predictions_{split}.csv. Colour: how "
                                    f"much log p({evidence.predicted}) falls when a "
                                    f"{evidence.window}\u00d7{evidence.window} patch is painted dark or bright "
                                    f"(occlusion evidence, perceiver_med.results.explain), {scale}."))
    wrong = len(_wrong(predictions))
    sentence = (f"{wrong} of {len(predictions)} {split} predictions are wrong; the {len(figures)} most confident "
                "are shown with the evidence the model used" + (f" ({unreadable} could not be read again)"
                                                                if unreadable else "") + ".")
    return figures, sentence
