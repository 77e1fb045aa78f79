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

from perceiver_med.training.config import RunConfig, load_run_config
from perceiver_med.inputs.loading import load_split_inputs
from perceiver_med.training.engine import Processes, Reporter, file_sha256, pick_device, predict_probs
from perceiver_med.errors import UserError
from perceiver_med.files import RunLock, atomic_text, holds_files
from perceiver_med.training.train import (CV_FILE, FROZEN_SPLITS, MODEL_NAMES, RUNTIME_OPTIONS, TrainResult, load_model,
                                refuse_inside_scans, sound_rows, train_run, write_split_predictions)
from perceiver_med.results.scoring import apply_decision, fit_decision, run_summary, score_split
from perceiver_med.inputs.splits import SplitRow, fold_rows, read_splits, write_splits
from perceiver_med.results.statistics import parse_threshold_rule
from perceiver_med.inputs.windows import parse_window



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


def train_cv(splits: Path | None, model_name: str | None, out: Path, *, resume: bool = False,
             reporter: Reporter | None = None, on_prepared=None, **options) -> CvResult:
    """Train every fold of a splits file with a fold column into OUT/fold_<k>, then score the out-of-fold
    predictions and the folds' ensemble on the held-out test split, and write OUT as the ensemble's run.

    `options` are train_run's. On `resume`, folds already finished are kept, an interrupted one resumes, and
    the model and options are those recorded when the cross-validation started (device, workers and
    precision may change)."""
    reporter = reporter or Reporter()
    out = Path(out)
    if options.pop("fold", None) is not None:
        raise UserError("--cv trains every fold: leave out --fold")
    if model_name is not None and model_name not in MODEL_NAMES:
        raise UserError(f"--model must be one of {', '.join(MODEL_NAMES)}")
    options = _canonical({k: v for k, v in options.items() if v is not None})
    processes = Processes.planned()
    with RunLock(out, enabled=processes.main):
        if resume:
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
            model_name = model_name or "perceiver"
            if processes.main:
                out.mkdir(parents=True, exist_ok=True)
                write_splits(rows, out / FROZEN_SPLITS)
                record = {"model": model_name, "options": options, "splits_file": str(source)}
                atomic_text(out / CV_FILE, lambda h: json.dump(record, h, indent=2))
        folds = sorted({row.fold for row in rows if row.fold is not None})
        try:
            trained = [_train_fold(out, fold, len(folds), source, model_name, options, reporter, on_prepared)
                       for fold in folds]
        except BaseException:
            if not any((out / f"fold_{f}" / name).exists() for f in folds for name in ("checkpoint.pt",
                                                                                       "metrics.json")):
                for name in (CV_FILE, FROZEN_SPLITS):  # nothing to resume: a corrected retry starts afresh
                    (out / name).unlink(missing_ok=True)
            raise
        if not processes.main:
            return CvResult(out, {}, trained, load_run_config(out / f"fold_{folds[0]}"))
        config, metrics = _ensemble(out, rows, folds, str(source), options.get("device") or "auto")
        return CvResult(out, metrics, trained, config)


def _train_fold(out: Path, fold: int, count: int, source: Path, model_name: str, options: dict,
                reporter: Reporter, on_prepared) -> TrainResult | None:
    """Fold `fold` into OUT/fold_<k>: kept when finished, resumed from its checkpoint, else trained afresh."""
    member = out / f"fold_{fold}"
    if (member / "metrics.json").is_file():
        reporter.message(f"fold {fold} of {count}: finished earlier, kept")
        return None
    resuming = (member / "checkpoint.pt").is_file()
    if not resuming:  # stopped before its first epoch ended: only the files train_run writes first are there
        for name in ("config.json", FROZEN_SPLITS):
            (member / name).unlink(missing_ok=True)
    reporter.message(f"fold {fold} of {count}" + (": resuming" if resuming else ""))
    # the user's splits file, not OUT's copy: under torchrun every process reads it before OUT's copy exists
    return train_run(None if resuming else source, model_name, member, resume=resuming, reporter=reporter,
                     on_prepared=on_prepared, fold=fold, **options)


def _canonical(options: dict) -> dict:
    """Options as train_run stores them, so a resume compares like with like (--threshold Youden = youden)."""
    if "threshold" in options:
        options["threshold"] = parse_threshold_rule(options["threshold"])
    if "window" in options:
        options["window"] = parse_window(options["window"])
    return options


def _cv_rows(splits: Path) -> list[SplitRow]:
    """The splits file's rows as the ensemble sees them: every row of a fold is a training row."""
    rows = sound_rows(splits)
    if not any(row.fold is not None for row in rows):
        raise UserError(f"{splits} has no fold column: write one with split --folds K")
    if any(row.fold is None and row.split != "test" for row in rows):
        raise UserError(f"{splits}: every train and val row needs a fold")
    return [row if row.fold is None else replace(row, split="train") for row in rows]


def _resumed(out: Path, model_name: str | None, options: dict, splits: Path | None) -> tuple[str, dict, Path]:
    """The model, options and splits file a cross-validation started with; asked options must agree."""
    record_path = out / CV_FILE
    if not record_path.is_file():
        raise UserError(f"--resume --cv needs a cross-validation run directory, and {out} has no {CV_FILE}")
    try:
        record = json.loads(record_path.read_text())
        stored, started_with = dict(record["options"]), str(record["model"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{record_path} is damaged: start the cross-validation again in a new --out") from None
    conflicts = [f"--{k.replace('_', '-')} {v} (run: {stored.get(k, 'not given')})" for k, v in options.items()
                 if k not in RUNTIME_OPTIONS and stored.get(k) != v]
    if model_name is not None and model_name != started_with:
        conflicts.insert(0, f"--model {model_name} (run: {started_with})")
    if conflicts:
        raise UserError(f"--resume continues {out} as its {CV_FILE} says; drop the options that contradict it: "
                        + ", ".join(conflicts))
    if splits is not None and {r.identity for r in _cv_rows(Path(splits))} != {
            r.identity for r in read_splits(out / FROZEN_SPLITS)}:
        raise UserError(f"{splits} differs from the splits the cross-validation started with "
                        f"({out / FROZEN_SPLITS}): leave it out to resume")
    source = Path(record.get("splits_file") or out / FROZEN_SPLITS)
    if not source.is_file():  # moved since: the run's own copy has the same rows and folds
        source = out / FROZEN_SPLITS
    runtime = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS}
    return started_with, {**stored, **runtime}, source


def _calibrated(run: Path, rows: list[SplitRow], device: torch.device) -> dict[tuple, np.ndarray]:
    """A member's calibrated probabilities, as its predictions files hold them, by sample, for the rows it can
    prepare."""
    config, model = load_model(run, device)
    loaded = load_split_inputs(rows, config.preprocess)
    raw = predict_probs(model.forward, torch.from_numpy(loaded.inputs), device, precision=config.train.precision)
    probs, _ = apply_decision(raw, config.decision, config.classes.index(config.positive_class))
    return {row.sample_key: p for row, p in zip(loaded.rows, probs)}


def _ensemble(out: Path, rows: list[SplitRow], folds: list[int], splits_file: str, device: str
              ) -> tuple[RunConfig, dict]:
    """Score the out-of-fold predictions and the ensemble on test; write OUT's config, metrics and predictions."""
    torch_device = pick_device(device)
    members = [f"fold_{fold}" for fold in folds]
    member_config = load_run_config(out / members[0])
    classes = member_config.classes
    index = {name: k for k, name in enumerate(classes)}
    test = [row for row in rows if row.split == "test"]
    out_of_fold: dict[tuple, np.ndarray] = {}
    test_probs: list[dict[tuple, np.ndarray]] = []
    per_fold = []
    for fold, member in zip(folds, members):
        held_out = [row for row in fold_rows(rows, fold) if row.split == "val"]
        # one load and one pass per member for its held-out and the test rows (disjoint samples)
        predicted = _calibrated(out / member, held_out + test, torch_device)
        out_of_fold.update({row.sample_key: predicted[row.sample_key] for row in held_out
                            if row.sample_key in predicted})
        if test:
            test_probs.append(predicted)
        fold_metrics = json.loads((out / member / "metrics.json").read_text())
        per_fold.append({"fold": fold, **{split: {k: fold_metrics.get(split, {}).get(k)
                                                  for k in ("n", "accuracy", "roc_auc", "loss")}
                                          for split in ("train", "val", "test")}})
    oof_rows = [row for row in rows if row.sample_key in out_of_fold]
    oof = np.array([out_of_fold[row.sample_key] for row in oof_rows])
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
               "out_of_fold": score_split(oof_labels, oof, oof_rows, config)}
    write_split_predictions(out / "predictions_out_of_fold.csv", oof_rows, oof, config)
    # a test sample counts only where every member could prepare it
    test_rows = [row for row in test if all(row.sample_key in probs for probs in test_probs)]
    if test_rows:
        ensemble = np.mean([[probs[row.sample_key] for row in test_rows] for probs in test_probs], axis=0)
        metrics["test"] = score_split(np.array([index[row.label] for row in test_rows]), ensemble, test_rows, config)
        write_split_predictions(out / "predictions_test.csv", test_rows, ensemble, config)
    atomic_text(out / "metrics.json", lambda h: json.dump(metrics, h, indent=2))
    atomic_text(out / "config.json", lambda h: h.write(config.to_json()))  # last: its presence marks a whole run
    return config, metrics

