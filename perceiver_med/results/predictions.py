"""Predictions CSV files and `predict`: every scan of a folder (or every row of a points file) through a run's
Predictor, one row per sample: path[,coordX,coordY,coordZ][,label],pred,prob_<class>... Probabilities are the
run's calibrated ones at full float precision (repr round-trips), `pred` its decision."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from perceiver_med.csvfiles import write_csv
from perceiver_med.errors import UserError
from perceiver_med.run.rundir import check_new_output
from perceiver_med.files import refuse_inside
from perceiver_med.inputs.cache import InputRequest, prepare_many
from perceiver_med.inputs.loading import scan_mismatch
from perceiver_med.inputs.points import COORDINATES
from perceiver_med.inputs.splits import SplitRow
from perceiver_med.io import discover
from perceiver_med.io.discover import Skip
from perceiver_med.io.labels import folder_label, known_patient, laterality_of
from perceiver_med.run.point_runs import PreparedPoints, check_point_run, prepare_points
from perceiver_med.run.predictor import Decisions, Predictor
from perceiver_med.training.config import Runtime, applies_runtime, is_laterality


def write_predictions(path: Path, paths: list[str], labels: list[str] | None, decided: Decisions,
                      points: list | None = None) -> None:
    """path[,coordX,coordY,coordZ][,label],pred,prob_<class>...; `points` (LPS mm, one per row) tell the samples
    of a run trained on points apart."""
    columns = ["path"] + (list(COORDINATES) if points else []) + (
        ["label"] if labels is not None else []) + ["pred"] + [f"prob_{c}" for c in decided.classes]
    names = decided.names

    def row(k: int, scan: str) -> list:
        # floats, not text: the csv module writes their repr, and a probability is never escaped
        return ([scan] + (list(points[k]) if points else []) + ([labels[k]] if labels is not None else [])
                + [names[k]] + [float(v) for v in decided.probs[k]])

    write_csv(path, columns, (row(k, scan) for k, scan in enumerate(paths)))


def write_split_predictions(path: Path, rows: list[SplitRow], decided: Decisions, with_points: bool) -> None:
    """predictions_<split>.csv of splits rows, with each row's point for a run trained on points."""
    write_predictions(path, [str(row.path) for row in rows], [row.label for row in rows], decided,
                      [row.point for row in rows] if with_points else None)


def write_point_predictions(out: Path, prepared: PreparedPoints, decided: Decisions) -> None:
    """One row per point: its scan and coordinates as the points file wrote them, [label,] pred, prob_<class>."""
    labels = [s.row.label for s in prepared.samples]
    with_label = all(label in decided.classes for label in labels)
    columns = [prepared.by, *COORDINATES] + (["label"] if with_label else []) + ["pred"] + [
        f"prob_{c}" for c in decided.classes]
    names = decided.names

    def row(k: int) -> list:
        cells = prepared.samples[k].row.cells
        # the coordinates as numbers: their repr is the value given, and a number is never formula-escaped
        return ([cells.get(prepared.by, ""), *prepared.samples[k].row.point]
                + ([labels[k]] if with_label else []) + [names[k]] + [float(v) for v in decided.probs[k]])

    write_csv(out, columns, (row(k) for k in range(len(prepared.samples))))


@dataclass
class Prediction:
    path: Path
    label: str | None
    probs: np.ndarray  # calibrated with the run's temperature
    pred: str = ""  # the run's decision: its threshold for two classes, else the most probable class
    point: tuple[float, float, float] | None = None  # LPS mm, for a run trained on points
    seen: str = ""  # "train" or "val" where the run learnt from this sample or its patient, "test", or "" (unseen)


@dataclass(frozen=True)
class PredictRequest:
    """Every scan under `scans` (a folder or one file), or for a run trained on points every row of the points
    CSV `points`, through the run in `run`; `out` is the predictions CSV to write (a new file unless
    `overwrite`); `tta` > 1 averages that many label-preserving views of each sample."""

    run: Path
    scans: Path
    out: Path
    points: Path | None = None
    tta: int = 1
    overwrite: bool = False
    runtime: Runtime = field(default_factory=Runtime)


@dataclass
class PredictResult:
    predictions: list[Prediction]
    skipped: list[Skip]  # files or points rows not predicted, with their reasons
    classes: list[str]
    positive_class: str
    threshold: float | None  # the run's decision threshold on the positive class (None: the most probable class)
    label_source: str  # where the true labels beside the predictions come from, for messages


@applies_runtime
def predict_run(request: PredictRequest, on_done: Callable[[int, int], None] | None = None) -> PredictResult:
    """Predict every scan in a folder (or one file), or for a run trained on points every row of `points`;
    writes `out` and returns the predictions, the skipped files or rows with their reasons, and the run's
    decision rule."""
    run, scans, out, points, overwrite = request.run, request.scans, request.out, request.points, request.overwrite
    predictor = Predictor(run, request.runtime.device, request.tta)
    workers = request.runtime.workers
    config = predictor.config

    def result(predictions: list[Prediction], skipped: list[Skip]) -> PredictResult:
        source = ("points file" if points is not None else
                  "class folders or laterality" if is_laterality(config.classes) else "class folders")
        return PredictResult(predictions, skipped, config.classes, config.positive_class, config.decision.threshold,
                             source)

    refuse_inside(out, scans)
    check_new_output(out, overwrite)
    check_point_run(config, points)
    run_splits = predictor.run.trained_on(config)
    if points is not None:
        prepared = prepare_points(Path(points), Path(scans), config, workers, on_done)
        decided = predictor.predict(prepared.inputs)
        write_point_predictions(out, prepared, decided)
        return result([Prediction(s.scan.path, _known(s.row.label, config.classes), p, name, s.row.point,
                                  run_splits.split_of(s.scan.path, s.scan.series_uid, s.row.point,
                                                      s.row.patient_id or s.scan.patient_id))
                       for s, p, name in zip(prepared.samples, decided.probs, decided.names)], prepared.skipped)
    found = discover(scans)
    if not found.scans:
        raise UserError(f"no readable scans in {scans} ({len(found.skipped)} file(s) skipped)")
    skipped = list(found.skipped)
    usable = []
    for scan in found.scans:
        reason = scan_mismatch(scan, config)
        if reason:
            skipped.append(Skip(scan.path, reason))
        else:
            usable.append(scan)
    if not usable:
        raise UserError(f"no scan in {scans} suits this run ({skipped[-1].reason})")
    requests = [InputRequest(scan.path, scan.series_uid) for scan in usable]
    arrays, reasons = prepare_many(requests, config.preprocess, workers, on_done=on_done)
    skipped += [Skip(s.path, r) for s, r, a in zip(usable, reasons, arrays) if a is None]
    kept = [(scan, a) for scan, a in zip(usable, arrays) if a is not None]
    if not kept:
        raise UserError(f"no scan in {scans} could be prepared ({skipped[-1].reason})")
    decided = predictor.predict(np.stack([a for _, a in kept]))
    labels = [known_label(scan, found.root, config.classes) for scan, _ in kept]
    known = labels if all(label is not None for label in labels) else None
    write_predictions(out, [str(scan.path) for scan, _ in kept], known, decided)
    predictions = [Prediction(scan.path, label, p, name,
                              seen=run_splits.split_of(scan.path, scan.series_uid, None, known_patient(scan, found.root)))
                   for (scan, _), label, p, name in zip(kept, labels, decided.probs, decided.names)]
    return result(predictions, skipped)


def _known(label: str | None, classes: list[str]) -> str | None:
    return label if label in classes else None


def known_label(scan, root: Path, classes: list[str]) -> str | None:
    """A scan's true label where the files tell it: the class folder holding it under `root`, else for left/right
    runs its laterality (DICOM, or LEFT/RIGHT in the file name). Labels the run does not know are None."""
    label = _known(folder_label(scan, root), classes)
    if label is None and is_laterality(classes):
        label = _known(laterality_of(scan), classes)
    return label
