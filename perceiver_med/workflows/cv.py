"""Cross-validation (train --cv): one run per fold of a splits file, their out-of-fold predictions scored
together, and the folds as one ensemble that averages their calibrated probabilities.

RUN/fold_<k>/ is an ordinary run that held fold k out as its val split. RUN itself is a run whose model is the
ensemble of the folds: config.json (ensemble = the member folders; its threshold chosen on the out-of-fold
predictions, never on test), splits.csv (every train/val row as train: the ensemble learnt from them all),
metrics.json (out_of_fold and test, with intervals) and predictions_out_of_fold.csv / predictions_test.csv.
`predict`, `evaluate` and `explain` take RUN like any other run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from perceiver_med.training.config import (RUNTIME_OPTIONS, RunConfig, Runtime, canonical_options, check_resume,
                                           trainable_model)
from perceiver_med.inputs.loading import load_split_inputs
from perceiver_med.training.engine import Processes, Reporter, pick_device
from perceiver_med.errors import UserError
from perceiver_med.files import atomic_text, file_sha256
from perceiver_med.run.predictor import Predictor
from perceiver_med.run.rundir import CV_RECORD, RunDir
from perceiver_med.models import DEFAULT_MODEL
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.workflows.train import TrainRequest, TrainResult, refuse_inside_scans, train_run
from perceiver_med.results.evaluation import SplitPredictions, predict_splits
from perceiver_med.results.predictions import write_predictions
from perceiver_med.results.scoring import fit_decision, score_split
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import fold_rows, read_sound_splits, read_splits


@dataclass
class CvResult:
    run: Path
    metrics: dict
    folds: list[TrainResult | None]  # None for a fold finished before a resume
    config: RunConfig

    @property
    def skipped(self) -> list:
        """The scans that could not be prepared (every fold reads the same scans)."""
        return next((fold.skipped for fold in self.folds if fold is not None), [])


def train_cv(request: TrainRequest, reporter: Reporter | None = None, on_prepared=None) -> CvResult:
    """Train every fold of a splits file with a fold column into OUT/fold_<k>, then score the out-of-fold
    predictions and the folds' ensemble on the held-out test split, and write OUT as the ensemble's run.

    On `resume`, folds already finished are kept, an interrupted one resumes, and the model and options are
    those recorded when the cross-validation started; the request's runtime is this machine's."""
    reporter = reporter or Reporter()
    splits, out, resume = request.splits, Path(request.out), request.resume
    if request.fold is not None:
        raise UserError("--cv trains every fold: leave out --fold")
    model_name = trainable_model(request.model)
    options = canonical_options(request.given_options())
    processes = Processes.planned()
    run = RunDir(out)
    with run.lock(enabled=processes.main):
        if not resume and splits is None:
            raise UserError("train --cv needs a splits file with a fold column (split --folds K)")
        run.check_target(resume, cv=True)
        if resume:
            model_name, options, source = _resumed(run, model_name, options, splits)
            rows = read_splits(run.splits_file)
        else:
            source = Path(splits).resolve()
            rows = _cv_rows(source)
            refuse_inside_scans(out, rows)
            model_name = model_name or DEFAULT_MODEL
            if processes.main:
                out.mkdir(parents=True, exist_ok=True)
                run.freeze_splits(rows)
                record = {"model": model_name, "options": options, "splits_file": str(source)}
                atomic_text(run.cv_file, lambda h: json.dump(record, h, indent=2))
        folds = sorted({row.fold for row in rows if row.fold is not None})
        try:
            trained = [_train_fold(run, fold, len(folds), source, model_name, options, request.runtime, reporter,
                                   on_prepared) for fold in folds]
        except BaseException:
            run.discard_unfinished()  # with no fold to resume, a corrected retry starts afresh
            raise
        if not processes.main:
            return CvResult(out, {}, trained, run.fold(folds[0]).config())
        config, metrics = _ensemble(run, rows, folds, str(source), request.runtime.device)
        return CvResult(out, metrics, trained, config)


def _train_fold(run: RunDir, fold: int, count: int, source: Path, model_name: str, options: dict, runtime: Runtime,
                reporter: Reporter, on_prepared) -> TrainResult | None:
    """Fold `fold` into OUT/fold_<k>: kept when finished, resumed from its checkpoint, else trained afresh."""
    member = run.fold(fold)
    if member.metrics_file.is_file():
        reporter.message(f"fold {fold} of {count}: finished earlier, kept")
        return None
    resuming = member.checkpoint_file.is_file()
    if not resuming:  # stopped before its first epoch ended: only the files train_run writes first are there
        member.discard_unfinished()
    reporter.message(f"fold {fold} of {count}" + (": resuming" if resuming else ""))
    # the user's splits file, not OUT's copy: under torchrun every process reads it before OUT's copy exists
    return train_run(TrainRequest(None if resuming else source, member.path, model_name, options, runtime,
                                  resume=resuming, fold=fold), reporter, on_prepared)


def _cv_rows(splits: Path) -> list[Sample]:
    """The splits file's rows as the ensemble sees them: every row of a fold is a training row."""
    rows = read_sound_splits(splits)
    if not any(row.fold is not None for row in rows):
        raise UserError(f"{splits} has no fold column: write one with split --folds K")
    if any(row.fold is None and row.split != "test" for row in rows):
        raise UserError(f"{splits}: every train and val row needs a fold")
    return [row if row.fold is None else replace(row, split="train") for row in rows]


def _resumed(run: RunDir, model_name: str | None, options: dict, splits: Path | None) -> tuple[str, dict, Path]:
    """The model, options and splits file a cross-validation started with; asked options must agree."""
    record_path = run.cv_file
    try:
        record = json.loads(record_path.read_text())
        stored, started_with = dict(record["options"]), str(record["model"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{record_path} is damaged: start the cross-validation again in a new --out") from None
    check_resume(run.path, CV_RECORD, {"model": started_with, **stored},
                 {**({"model": model_name} if model_name else {}), **options})
    if splits is not None and {r.identity for r in _cv_rows(Path(splits))} != {
            r.identity for r in read_splits(run.splits_file)}:
        raise UserError(f"{splits} differs from the splits the cross-validation started with "
                        f"({run.splits_file}): leave it out to resume")
    source = Path(record.get("splits_file") or run.splits_file)
    if not source.is_file():  # moved since: the run's own copy has the same rows and folds
        source = run.splits_file
    # runtime settings are this machine's, never the record's
    return started_with, {k: v for k, v in stored.items() if k not in RUNTIME_OPTIONS}, source


def _ensemble(run: RunDir, rows: list[Sample], folds: list[int], splits_file: str, device: str
              ) -> tuple[RunConfig, dict]:
    """Score the out-of-fold predictions and the ensemble on test; write OUT's config, metrics and predictions.

    Each member's Predictor decides its held-out rows; the ensemble's Predictor (the mean of its members'
    calibrated probabilities, as `predict` and `evaluate` load it later) decides the test split."""
    torch_device = pick_device(device)
    member_runs = [run.fold(fold) for fold in folds]
    members = [Predictor(member, torch_device) for member in member_runs]
    member_config = members[0].config
    classes = member_config.classes
    index = {name: k for k, name in enumerate(classes)}
    out_of_fold: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    per_fold = []
    for fold, member in zip(folds, members):
        held_out = [row for row in fold_rows(rows, fold) if row.split == "val"]
        predicted = predict_splits(member, load_split_inputs(held_out, member.config.preprocess))
        if "val" in predicted.raw:
            raw, calibrated = predicted.raw["val"], predicted.decided(member)["val"].probs
            out_of_fold.update({row.key: (r, c) for row, r, c in zip(predicted.rows["val"], raw, calibrated)})
        try:
            fold_metrics = member.run.metrics()
        except UserError as exc:
            raise UserError(f"{exc}: train that fold again with perceiver-med train --resume --cv --out {run.path} "
                            f"after removing {member.run.path}") from None
        per_fold.append({"fold": fold, **{split: {k: fold_metrics.get(split, {}).get(k)
                                                  for k in ("n", "accuracy", "roc_auc", "loss")}
                                          for split in SPLITS}})
    oof_rows = [row for row in rows if row.key in out_of_fold]
    oof_raw = np.array([out_of_fold[row.key][0] for row in oof_rows])
    oof = np.array([out_of_fold[row.key][1] for row in oof_rows])
    oof_labels = np.array([index[row.label] for row in oof_rows])
    decision = fit_decision({"val": oof_labels}, {"val": oof}, member_config.threshold_rule, classes,
                            member_config.positive_class, calibrate=False, source="out_of_fold")
    decision = replace(decision, temperature_fitted_on="each member's own, on its val fold")
    config = replace(member_config, decision=decision, fold=None, ensemble=[m.path.name for m in member_runs],
                     weights_sha256="", checkpoint_sha256=[], splits_file=splits_file,
                     splits_sha256=file_sha256(run.splits_file))
    ensemble = Predictor.of_members(config, members, run)
    test = [row for row in rows if row.split == "test"]
    tested = (predict_splits(ensemble, load_split_inputs(test, config.preprocess)) if test
              else SplitPredictions({}, {}, {}))
    scored = tested.metrics(config)  # the positive class, threshold, temperature and bootstrap; test where it has one
    test_metrics = {"test": scored.pop("test")} if "test" in scored else {}
    metrics = {**scored,
               "cross_validation": {
                   "folds": len(folds), "members": config.ensemble, "per_fold": per_fold,
                   "ensemble": "mean of the members' calibrated probabilities",
                   "out_of_fold_note": "each member's temperature and best epoch were chosen on its own val fold, "
                                       "and the threshold on all of them: out-of-fold scores are optimistic; "
                                       "test is held out from all of it"},
               # calibration "before" is of the members' uncalibrated probabilities, "after" of the calibrated ones
               "out_of_fold": score_split(oof_labels, oof_raw, oof_rows, config, calibrated=oof),
               **test_metrics}
    with_points = config.preprocess.kind.takes_points
    write_predictions(run.predictions_file("out_of_fold"), oof_rows, ensemble.decide(oof), with_points)
    for split, decided in tested.decided(ensemble).items():
        write_predictions(run.predictions_file(split), tested.rows[split], decided, with_points)
    run.write_metrics(metrics)
    run.write_config(config)  # last: its presence marks a whole run
    return config, metrics
