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
import torch

from perceiver_med.training.config import (RUNTIME_OPTIONS, RunConfig, Runtime, canonical_options, check_resume,
                                           trainable_model)
from perceiver_med.inputs.loading import load_split_inputs
from perceiver_med.training.engine import Processes, Reporter, pick_device
from perceiver_med.files import file_sha256
from perceiver_med.errors import UserError
from perceiver_med.files import atomic_text
from perceiver_med.run.rundir import holds_files
from perceiver_med.run.predictor import Decisions, Predictor
from perceiver_med.run.rundir import (CHECKPOINT, CONFIG, CV_RECORD, FROZEN_SPLITS, METRICS, RunDir, fold_name,
                                      load_run_config,
                                      predictions_name)
from perceiver_med.models import DEFAULT_MODEL
from perceiver_med.models.ensemble import mean_of_members
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.workflows.train import TrainRequest, TrainResult, refuse_inside_scans, train_run
from perceiver_med.results.predictions import write_predictions
from perceiver_med.results.scoring import fit_decision, run_summary, score_split
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import fold_rows, read_sound_splits, read_splits, write_splits



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
    with RunDir(out).lock(enabled=processes.main):
        if resume:
            if RunDir(out).config_file.is_file():  # written last, once the ensemble is scored
                raise UserError(f"{out} is complete (every fold and the ensemble): there is nothing to resume; "
                                "evaluate or predict with it, or train a new cross-validation in another --out")
            model_name, options, source = _resumed(out, model_name, options, splits)
            rows = read_splits(out / FROZEN_SPLITS)
        else:
            if splits is None:
                raise UserError("train --cv needs a splits file with a fold column (split --folds K)")
            if holds_files(out):
                raise UserError(f"{out} already holds files: choose a new --out, or add --resume to continue")
            source = Path(splits).resolve()
            rows = _cv_rows(source)
            refuse_inside_scans(out, rows)
            model_name = model_name or DEFAULT_MODEL
            if processes.main:
                out.mkdir(parents=True, exist_ok=True)
                write_splits(rows, out / FROZEN_SPLITS)
                record = {"model": model_name, "options": options, "splits_file": str(source)}
                atomic_text(out / CV_RECORD, lambda h: json.dump(record, h, indent=2))
        folds = sorted({row.fold for row in rows if row.fold is not None})
        try:
            trained = [_train_fold(out, fold, len(folds), source, model_name, options, request.runtime, reporter,
                                   on_prepared) for fold in folds]
        except BaseException:
            if not any((out / fold_name(f) / name).exists() for f in folds for name in (CHECKPOINT, METRICS)):
                for name in (CV_RECORD, FROZEN_SPLITS):  # nothing to resume: a corrected retry starts afresh
                    (out / name).unlink(missing_ok=True)
            raise
        if not processes.main:
            return CvResult(out, {}, trained, load_run_config(out / fold_name(folds[0])))
        config, metrics = _ensemble(out, rows, folds, str(source), request.runtime.device)
        return CvResult(out, metrics, trained, config)


def _train_fold(out: Path, fold: int, count: int, source: Path, model_name: str, options: dict, runtime: Runtime,
                reporter: Reporter, on_prepared) -> TrainResult | None:
    """Fold `fold` into OUT/fold_<k>: kept when finished, resumed from its checkpoint, else trained afresh."""
    member = out / fold_name(fold)
    if (member / METRICS).is_file():
        reporter.message(f"fold {fold} of {count}: finished earlier, kept")
        return None
    resuming = (member / CHECKPOINT).is_file()
    if not resuming:  # stopped before its first epoch ended: only the files train_run writes first are there
        for name in (CONFIG, FROZEN_SPLITS):
            (member / name).unlink(missing_ok=True)
    reporter.message(f"fold {fold} of {count}" + (": resuming" if resuming else ""))
    # the user's splits file, not OUT's copy: under torchrun every process reads it before OUT's copy exists
    return train_run(TrainRequest(None if resuming else source, member, model_name, options, runtime,
                                  resume=resuming, fold=fold), reporter, on_prepared)


def _cv_rows(splits: Path) -> list[Sample]:
    """The splits file's rows as the ensemble sees them: every row of a fold is a training row."""
    rows = read_sound_splits(splits)
    if not any(row.fold is not None for row in rows):
        raise UserError(f"{splits} has no fold column: write one with split --folds K")
    if any(row.fold is None and row.split != "test" for row in rows):
        raise UserError(f"{splits}: every train and val row needs a fold")
    return [row if row.fold is None else replace(row, split="train") for row in rows]


def _resumed(out: Path, model_name: str | None, options: dict, splits: Path | None) -> tuple[str, dict, Path]:
    """The model, options and splits file a cross-validation started with; asked options must agree."""
    record_path = out / CV_RECORD
    if not record_path.is_file():
        raise UserError(f"--resume --cv needs a cross-validation run directory, and {out} has no {CV_RECORD}")
    try:
        record = json.loads(record_path.read_text())
        stored, started_with = dict(record["options"]), str(record["model"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{record_path} is damaged: start the cross-validation again in a new --out") from None
    check_resume(out, CV_RECORD, {"model": started_with, **stored},
                 {**({"model": model_name} if model_name else {}), **options})
    if splits is not None and {r.identity for r in _cv_rows(Path(splits))} != {
            r.identity for r in read_splits(out / FROZEN_SPLITS)}:
        raise UserError(f"{splits} differs from the splits the cross-validation started with "
                        f"({out / FROZEN_SPLITS}): leave it out to resume")
    source = Path(record.get("splits_file") or out / FROZEN_SPLITS)
    if not source.is_file():  # moved since: the run's own copy has the same rows and folds
        source = out / FROZEN_SPLITS
    # runtime settings are this machine's, never the record's
    return started_with, {k: v for k, v in stored.items() if k not in RUNTIME_OPTIONS}, source


def _member_probabilities(run: Path, rows: list[Sample], device: torch.device
                          ) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """A member's (uncalibrated, calibrated) probabilities by sample, for the rows it can prepare; the calibrated
    ones are what its predictions files hold."""
    predictor = Predictor(run, device)
    loaded = load_split_inputs(rows, predictor.config.preprocess)
    decided = predictor.predict(loaded.inputs)
    return {row.key: (raw, probs) for row, raw, probs in zip(loaded.samples, decided.raw, decided.probs)}


def _ensemble(out: Path, rows: list[Sample], folds: list[int], splits_file: str, device: str
              ) -> tuple[RunConfig, dict]:
    """Score the out-of-fold predictions and the ensemble on test; write OUT's config, metrics and predictions."""
    torch_device = pick_device(device)
    members = [fold_name(fold) for fold in folds]
    member_config = load_run_config(out / members[0])
    classes = member_config.classes
    index = {name: k for k, name in enumerate(classes)}
    test = [row for row in rows if row.split == "test"]
    out_of_fold: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    test_probs: list[dict[tuple, np.ndarray]] = []
    per_fold = []
    for fold, member in zip(folds, members):
        held_out = [row for row in fold_rows(rows, fold) if row.split == "val"]
        # one load and one pass per member for its held-out and the test rows (disjoint samples)
        predicted = _member_probabilities(out / member, held_out + test, torch_device)
        out_of_fold.update({row.key: predicted[row.key] for row in held_out if row.key in predicted})
        if test:
            test_probs.append({key: calibrated for key, (_, calibrated) in predicted.items()})
        try:
            fold_metrics = json.loads((out / member / METRICS).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{out / member / METRICS} cannot be read ({exc}): train that fold again with "
                            f"perceiver-med train --resume --cv --out {out} after removing {out / member}") from None
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
    config = replace(member_config, decision=decision, fold=None, ensemble=members, weights_sha256="",
                     checkpoint_sha256=[], splits_file=splits_file, splits_sha256=file_sha256(out / FROZEN_SPLITS))
    metrics = {"positive_class": config.positive_class, **run_summary(config),
               "cross_validation": {
                   "folds": len(folds), "members": members, "per_fold": per_fold,
                   "ensemble": "mean of the members' calibrated probabilities",
                   "out_of_fold_note": "each member's temperature and best epoch were chosen on its own val fold, "
                                       "and the threshold on all of them: out-of-fold scores are optimistic; "
                                       "test is held out from all of it"},
               # calibration "before" is of the members' uncalibrated probabilities, "after" of the calibrated ones
               "out_of_fold": score_split(oof_labels, oof_raw, oof_rows, config, calibrated=oof)}
    with_points = config.preprocess.kind.takes_points
    write_predictions(out / predictions_name("out_of_fold"), oof_rows, Decisions.of(oof, config), with_points)
    # a test sample counts only where every member could prepare it
    test_rows = [row for row in test if all(row.key in probs for probs in test_probs)]
    if test_rows:
        ensemble = mean_of_members([np.array([probs[row.key] for row in test_rows]) for probs in test_probs])
        metrics["test"] = score_split(np.array([index[row.label] for row in test_rows]), ensemble, test_rows, config)
        write_predictions(out / predictions_name("test"), test_rows, Decisions.of(ensemble, config), with_points)
    atomic_text(out / METRICS, lambda h: json.dump(metrics, h, indent=2))
    atomic_text(out / CONFIG, lambda h: h.write(config.to_json()))  # last: its presence marks a whole run
    return config, metrics

