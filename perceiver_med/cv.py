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

from perceiver_med.config import Decision, RunConfig, load_run_config
from perceiver_med.datasets import load_split_inputs
from perceiver_med.engine import Processes, Reporter, file_sha256, pick_device, predict_probs
from perceiver_med.errors import UserError
from perceiver_med.files import RunLock, atomic_text, holds_files, refuse_inside
from perceiver_med.runs import (FROZEN_SPLITS, MODEL_NAMES, RUNTIME_OPTIONS, TrainResult, load_model,
                                train_run, write_predictions)
from perceiver_med.scoring import apply_decision, run_summary, score_split
from perceiver_med.splits import SplitRow, find_problems, fold_rows, read_splits, write_splits
from perceiver_med.trust import choose_threshold, parse_threshold_rule

CV_FILE = "cv.json"  # how the folds are trained: the model and options, so a resume trains the rest alike


@dataclass
class CvResult:
    run: Path
    metrics: dict
    folds: list[TrainResult | None]  # None for a fold finished before a resume
    config: RunConfig


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
    main_process = Processes.planned().main
    with RunLock(out, enabled=main_process):
        if resume:
            model_name, options, rows = _resumed(out, model_name, options, splits)
        else:
            if splits is None:
                raise UserError("train --cv needs a splits file with a fold column (split --folds K)")
            if holds_files(out):
                raise UserError(f"{out} already holds files: choose a new --out, or add --resume to continue")
            rows = _cv_rows(Path(splits))
            for folder in {row.path if row.path.is_dir() else row.path.parent for row in rows}:
                refuse_inside(out, folder)
            model_name = model_name or "perceiver"
            if main_process:
                out.mkdir(parents=True, exist_ok=True)
                write_splits(rows, out / FROZEN_SPLITS)
                record = {"model": model_name, "options": {k: v for k, v in options.items() if v is not None}}
                atomic_text(out / CV_FILE, lambda h: json.dump(record, h, indent=2))
        folds = sorted({row.fold for row in rows if row.fold is not None})
        trained: list[TrainResult | None] = []
        for fold in folds:
            member = out / f"fold_{fold}"
            if (member / "metrics.json").is_file():
                reporter.message(f"fold {fold} of {len(folds)}: finished earlier, kept")
                trained.append(None)
                continue
            again = (member / "checkpoint.pt").is_file()
            reporter.message(f"fold {fold} of {len(folds)}" + (": resuming" if again else ""))
            trained.append(train_run(None if again else out / FROZEN_SPLITS, model_name, member, resume=again,
                                     reporter=reporter, on_prepared=on_prepared, fold=fold, **options))
        if not main_process:
            return CvResult(out, {}, trained, load_run_config(out / f"fold_{folds[0]}"))
        config, metrics = _ensemble(out, rows, folds, options.get("device") or "auto")
        return CvResult(out, metrics, trained, config)


def _cv_rows(splits: Path) -> list[SplitRow]:
    """The splits file's rows as the ensemble sees them: every row of a fold is a training row."""
    rows = read_splits(splits)
    problems = find_problems(rows)
    if problems:
        raise UserError(f"{splits}: " + "; ".join(problems))
    if not any(row.fold is not None for row in rows):
        raise UserError(f"{splits} has no fold column: write one with split --folds K")
    if any(row.fold is None and row.split != "test" for row in rows):
        raise UserError(f"{splits}: every train and val row needs a fold")
    return [row if row.fold is None else replace(row, split="train") for row in rows]


def _resumed(out: Path, model_name: str | None, options: dict, splits: Path | None):
    record_path = out / CV_FILE
    if not record_path.is_file():
        raise UserError(f"--resume --cv needs a cross-validation run directory, and {out} has no {CV_FILE}")
    record = json.loads(record_path.read_text())
    asked = {k: v for k, v in options.items() if v is not None and k not in RUNTIME_OPTIONS}
    stored = record["options"]
    conflicts = [f"--{k.replace('_', '-')} {v} (run: {stored.get(k, 'default')})" for k, v in asked.items()
                 if stored.get(k) != v]
    if model_name is not None and model_name != record["model"]:
        conflicts.insert(0, f"--model {model_name} (run: {record['model']})")
    if conflicts:
        raise UserError(f"--resume continues {out} as its {CV_FILE} says; drop the options that contradict it: "
                        + ", ".join(conflicts))
    rows = read_splits(out / FROZEN_SPLITS)
    if splits is not None and _keys(_cv_rows(Path(splits))) != _keys(rows):
        raise UserError(f"{splits} differs from the splits the cross-validation started with "
                        f"({out / FROZEN_SPLITS}): leave it out to resume")
    runtime = {k: v for k, v in options.items() if v is not None and k in RUNTIME_OPTIONS}
    return record["model"], {**stored, **runtime}, rows


def _keys(rows: list[SplitRow]) -> set:
    return {(str(r.path), r.label, r.patient_id, r.split, r.series_uid, r.slice, r.point, r.fold) for r in rows}


def _calibrated(run: Path, rows: list[SplitRow], device: torch.device) -> tuple[list[SplitRow], np.ndarray]:
    """A member's calibrated probabilities for `rows` (those it can prepare), as its predictions files hold."""
    config, model = load_model(run, device)
    loaded = load_split_inputs(rows, config.preprocess)
    raw = predict_probs(model.forward, torch.from_numpy(loaded.inputs), device, precision=config.train.precision)
    probs, _ = apply_decision(raw, config.decision, config.classes.index(config.positive_class))
    return loaded.rows, probs


def _ensemble(out: Path, rows: list[SplitRow], folds: list[int], device: str) -> tuple[RunConfig, dict]:
    """Score the out-of-fold predictions and the ensemble on test; write OUT's config, metrics and predictions."""
    torch_device = pick_device(device)
    members = [f"fold_{fold}" for fold in folds]
    first = load_run_config(out / members[0])
    classes, positive = first.classes, first.classes.index(first.positive_class)
    index = {name: k for k, name in enumerate(classes)}
    oof_rows, oof_probs, test_probs, per_fold = [], [], [], []
    test = [row for row in rows if row.split == "test"]
    test_rows = test
    for fold, member in zip(folds, members):
        held = [row for row in fold_rows(rows, fold) if row.split == "val"]
        kept, probs = _calibrated(out / member, held, torch_device)
        oof_rows += kept
        oof_probs.append(probs)
        fold_metrics = json.loads((out / member / "metrics.json").read_text())
        per_fold.append({"fold": fold, **{split: {k: fold_metrics.get(split, {}).get(k)
                                                  for k in ("n", "accuracy", "roc_auc", "loss")}
                                          for split in ("train", "val", "test")}})
        if test:
            test_rows, probs = _calibrated(out / member, test, torch_device)
            test_probs.append(probs)
    oof = np.concatenate(oof_probs)
    oof_labels = np.array([index[row.label] for row in oof_rows])
    rule = first.threshold_rule
    decision = Decision(1.0, "each member on its own val fold", None if len(classes) != 2 else 0.5, rule,
                        "fixed" if rule == "0.5" else "")
    if len(classes) == 2 and parse_threshold_rule(rule) != "0.5":
        if len(set(oof_labels.tolist())) < 2:
            decision = replace(decision, rule=f"default: one class out of fold (asked: {rule})")
        else:
            decision = replace(decision, threshold=choose_threshold(oof_labels == positive, oof[:, positive], rule),
                               chosen_on="out_of_fold")
    config = replace(first, decision=decision, fold=None, ensemble=members, weights_sha256="", checkpoint_sha256=[],
                     splits_sha256=file_sha256(out / FROZEN_SPLITS))
    metrics = {"positive_class": config.positive_class, **run_summary(config),
               "cross_validation": {"folds": len(folds), "members": members, "per_fold": per_fold,
                                    "ensemble": "mean of the members' calibrated probabilities"},
               "out_of_fold": score_split(oof_labels, oof, oof_rows, config)}
    _write(out, "out_of_fold", oof_rows, oof, config)
    if test_probs:
        ensemble = np.mean(test_probs, axis=0)
        labels = np.array([index[row.label] for row in test_rows])
        metrics["test"] = score_split(labels, ensemble, test_rows, config)
        _write(out, "test", test_rows, ensemble, config)
    atomic_text(out / "metrics.json", lambda h: json.dump(metrics, h, indent=2))
    atomic_text(out / "config.json", lambda h: h.write(config.to_json()))  # last: its presence marks a whole run
    return config, metrics


def _write(out: Path, split: str, rows: list[SplitRow], probs: np.ndarray, config: RunConfig) -> None:
    _, preds = apply_decision(probs, config.decision, config.classes.index(config.positive_class))
    points = [row.point for row in rows] if config.preprocess.input == "point" else None
    write_predictions(out / f"predictions_{split}.csv", [str(row.path) for row in rows], [row.label for row in rows],
                      probs, config.classes, preds, points)
