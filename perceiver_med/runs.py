"""Library functions behind `train`, `evaluate` and `predict`: a splits file or scan folder -> a run directory."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perceiver_med.cache import InputRequest, prepare_many
from perceiver_med.config import RunConfig, TrainConfig, is_laterality, load_run_config, versions
from perceiver_med.datasets import AugmentConfig, LoadedInputs, detect_input, load_split_inputs
from perceiver_med.engine import (SPLITS, Processes, Reporter, evaluate_forward, fit, load_weights, pick_device,
                                  predict_probs)
from perceiver_med.errors import UserError
from perceiver_med.files import atomic_text, refuse_inside
from perceiver_med.io import discover
from perceiver_med.io.discover import Skip
from perceiver_med.io.labels import folder_label
from perceiver_med.models import build_model, default_config
from perceiver_med.preprocess import PreprocessConfig
from perceiver_med.splits import find_problems, read_splits

MODEL_NAMES = ("perceiver", "vit-rollout-cnn")


@dataclass
class TrainResult:
    run: Path
    metrics: dict
    skipped: list[Skip]
    num_parameters: int
    config: RunConfig


def _tensors(loaded: LoadedInputs, classes: list[str]) -> dict:
    """{split: (inputs, label indices)}; labels the run does not know are a user error."""
    unknown = sorted({row.label for row in loaded.rows} - set(classes))
    if unknown:
        raise UserError(f"labels {unknown} are not among the run's classes {classes}")
    index = {name: k for k, name in enumerate(classes)}
    data = {}
    for split in SPLITS:
        picked = [k for k, row in enumerate(loaded.rows) if row.split == split]
        labels = torch.tensor([index[loaded.rows[k].label] for k in picked], dtype=torch.long)
        data[split] = (torch.from_numpy(loaded.inputs[picked]), labels)
    return data


def _check_output(out: Path, rows, resume: bool) -> None:
    if resume:
        if not (out / "config.json").is_file():
            raise UserError(f"--resume needs an existing run directory, and {out} has no config.json")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files: choose a new --out, or add --resume to continue that run")
    folders = {row.path if row.path.is_dir() else row.path.parent for row in rows}
    for folder in folders:
        refuse_inside(out, folder)


def train_run(splits: Path, model_name: str, out: Path, *, input: str = "auto", size: int | None = None,
              channels: int = 1, grid_pad: bool = False, train: TrainConfig | None = None, flip: bool | None = None,
              model_options: dict | None = None, resume: bool = False, reporter: Reporter | None = None,
              on_prepared: Callable[[], None] | None = None) -> TrainResult:
    """Train a model on a splits file and write the complete run directory."""
    reporter = reporter or Reporter()
    train = train or TrainConfig()
    if model_name not in MODEL_NAMES:
        raise UserError(f"--model must be one of {', '.join(MODEL_NAMES)}")
    out = Path(out)
    rows = read_splits(splits)
    problems = find_problems(rows)
    if problems:
        raise UserError(f"{splits}: " + "; ".join(problems))
    _check_output(out, rows, resume)
    if resume:
        config = load_run_config(out)
        train = config.train
    else:
        if input not in ("auto", "image", "grid"):
            raise UserError("--input must be auto, image or grid")
        chosen = detect_input(rows) if input == "auto" else input
        preprocess = PreprocessConfig(input=chosen, size=size or 64, channels=channels, grid_pad=grid_pad)
        classes = sorted({row.label for row in rows})
        if len(classes) < 2:
            raise UserError(f"the splits file has one class ({classes[0]}): a classifier needs two")
        augment = AugmentConfig(flip=(not is_laterality(classes)) if flip is None else flip)
        model_cfg = default_config(model_name, preprocess.output_shape, len(classes))
        model_cfg = _override(model_cfg, model_options or {})
        config = RunConfig(classes, preprocess, model_cfg, train, augment, str(Path(splits).resolve()), versions())
    device = pick_device(train.device)
    processes = Processes.start(device)
    loaded = load_split_inputs(rows, config.preprocess, train.num_workers, on_done=on_prepared)
    data = _tensors(loaded, config.classes)
    if len(data["train"][1]) == 0:
        raise UserError("the splits file has no readable training scans")
    torch.manual_seed(train.seed)
    model = build_model(config.model)
    if processes.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_text(out / "config.json", lambda h: h.write(config.to_json()))
    reporter.message(f"{config.model['name']}: {model.num_parameters:,} parameters, input "
                     f"{config.preprocess.input} {config.preprocess.output_shape}, {len(loaded.rows)} scans, "
                     f"device {device}" + (f" x {processes.world} processes" if processes.world > 1 else "")
                     + ("" if config.augment.flip else ", no horizontal flip (laterality labels)"))
    state = fit(model, model_name, data, config.classes, train, config.augment, out, device, processes, reporter,
                resume)
    model.eval()
    metrics, probs = evaluate_forward(model.forward, data, config.classes, device, processes=processes)
    if model_name == "vit-rollout-cnn":
        metrics["vit"], _ = evaluate_forward(model.vit.forward, data, config.classes, device, processes=processes)
    if processes.main:
        _write_outputs(out, loaded, data, probs, metrics, config, state.history)
    return TrainResult(out, metrics, loaded.skipped, model.num_parameters, config)


def _override(model_cfg: dict, options: dict) -> dict:
    model_cfg = dict(model_cfg)
    for key, value in options.items():
        if value is None:
            continue
        target = model_cfg["vit"] if model_cfg["name"] == "vit-rollout-cnn" and key in model_cfg["vit"] else model_cfg
        target[key] = value
    return model_cfg


def _write_outputs(out: Path, loaded, data, probs, metrics, config: RunConfig, history) -> None:
    from perceiver_med.report import save_confusion, save_curves

    atomic_text(out / "metrics.json", lambda h: json.dump(metrics, h, indent=2))
    for split, split_probs in probs.items():
        split_rows = [row for row in loaded.rows if row.split == split]
        write_predictions(out / f"predictions_{split}.csv", [str(r.path) for r in split_rows],
                          [r.label for r in split_rows], split_probs, config.classes)
        save_confusion(metrics[split]["confusion_matrix"], config.classes, split, out / f"confusion_{split}.png")
    write_history(out / "history.csv", history)
    save_curves(history, out / "curves.png")


def write_predictions(path: Path, paths: list[str], labels: list[str] | None, probs: np.ndarray,
                      classes: list[str]) -> None:
    """path[,label],pred,prob_<class>...; probabilities at full float precision (repr round-trips)."""
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(["path"] + (["label"] if labels is not None else []) + ["pred"] +
                        [f"prob_{c}" for c in classes])
        for k, p in enumerate(paths):
            row = [p] + ([labels[k]] if labels is not None else []) + [classes[int(np.argmax(probs[k]))]]
            writer.writerow(row + [repr(float(v)) for v in probs[k]])

    atomic_text(path, write)


def write_history(path: Path, history: list[dict]) -> None:
    columns = ["stage", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]

    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)

    atomic_text(path, write)


# ---------------------------------------------------------------- using a finished run
def load_model(run: Path, device: torch.device | None = None):
    """The run's config and its best model, in eval mode."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    config = load_run_config(run)
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{run} has no model.safetensors (was training interrupted before its first epoch?)")
    try:
        model = build_model(config.model)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{run}/config.json describes no model this version can build: {exc}") from None
    load_weights(model, weights)
    return config, model.to(device or torch.device("cpu")).eval()


def evaluate_run(run: Path, splits: Path | None = None, split: str = "all", device: str = "auto",
                 workers: int = 0) -> dict:
    """Metrics of a saved run on the chosen splits (the splits file it was trained on by default)."""
    torch_device = pick_device(device)
    config, model = load_model(run, torch_device)
    splits = Path(splits) if splits else Path(config.splits_file)
    if split not in (*SPLITS, "all"):
        raise UserError("--split must be train, val, test or all")
    rows = [row for row in read_splits(splits) if split == "all" or row.split == split]
    if not rows:
        raise UserError(f"{splits} has no {split} scans")
    loaded = load_split_inputs(rows, config.preprocess, workers)
    metrics, _ = evaluate_forward(model.forward, _tensors(loaded, config.classes), config.classes, torch_device)
    return metrics


@dataclass
class Prediction:
    path: Path
    label: str | None
    probs: np.ndarray


def predict_run(run: Path, scans: Path, out: Path, device: str = "auto", workers: int = 0,
                on_done: Callable[[], None] | None = None) -> tuple[list[Prediction], list[Skip], list[str]]:
    """Predict every scan in a folder (or one file); writes path[,label],pred,prob_<class>..."""
    torch_device = pick_device(device)
    config, model = load_model(run, torch_device)
    refuse_inside(out, scans)
    found = discover(scans)
    if not found.scans:
        raise UserError(f"no readable scans in {scans} ({len(found.skipped)} file(s) skipped)")
    requests = [InputRequest(scan.path, scan.series_uid) for scan in found.scans]
    arrays, reasons = prepare_many(requests, config.preprocess, workers, on_done=on_done)
    skipped = list(found.skipped) + [Skip(s.path, r) for s, r, a in zip(found.scans, reasons, arrays) if a is None]
    kept = [(scan, a) for scan, a in zip(found.scans, arrays) if a is not None]
    if not kept:
        raise UserError(f"no scan in {scans} could be prepared ({skipped[0].reason})")
    inputs = torch.from_numpy(np.stack([a for _, a in kept]))
    probs = predict_probs(model.forward, inputs, torch_device)
    labels = [_known(folder_label(scan, found.root), config.classes) for scan, _ in kept]
    known = labels if all(label is not None for label in labels) else None
    write_predictions(out, [str(scan.path) for scan, _ in kept], known, probs, config.classes)
    predictions = [Prediction(scan.path, label, p) for (scan, _), label, p in zip(kept, labels, probs)]
    return predictions, skipped, config.classes


def _known(label: str | None, classes: list[str]) -> str | None:
    return label if label in classes else None


def with_epochs(train: TrainConfig, **changes) -> TrainConfig:
    return replace(train, **{k: v for k, v in changes.items() if v is not None})
