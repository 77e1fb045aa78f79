"""Library functions behind `train`, `evaluate` and `predict`: a splits file or scan folder -> a run directory."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from perceiver_med.inputs.cache import InputRequest, prepare_many
from perceiver_med.training.config import RunConfig, TrainConfig, is_laterality, load_run_config, pick_positive, versions
from perceiver_med.inputs.loading import (AugmentConfig, LoadedInputs, describe_scans, load_split_inputs,
                                    preprocess_config, scan_mismatch)
from perceiver_med.training.engine import (SPLITS, Processes, Reporter, evaluate_forward, file_sha256, fit, load_weights,
                                  pick_device, predict_probs)
from perceiver_med.errors import UserError
from perceiver_med.files import (RunLock, atomic_text, check_new_output, holds_files, refuse_inside,
                                 remove_stale_temporaries)
from perceiver_med.io import discover
from perceiver_med.io.discover import Skip
from perceiver_med.io.labels import folder_label
from perceiver_med.models import build_model, default_config
from perceiver_med.results.scoring import apply_decision, fit_decision, run_summary, score_split
from perceiver_med.inputs.preprocess import GRID_TILES
from perceiver_med.inputs.splits import SplitRow, find_problems, fold_rows, read_splits, write_splits
from perceiver_med.results.statistics import parse_threshold_rule
from perceiver_med.inputs.windows import parse_window

MODEL_NAMES = ("perceiver", "vit-rollout-cnn", "cnn")
# The architecture options each model takes (train --num-latents ...); anything else is refused by name.
MODEL_OPTIONS = {"perceiver": ("num_latents", "latent_dim", "num_iterations", "deep_supervision"),
                 "vit-rollout-cnn": ("depth", "dim", "deep_supervision"),
                 "cnn": ()}
MODEL_OPTION_NAMES = {name for names in MODEL_OPTIONS.values() for name in names}
FROZEN_SPLITS = "splits.csv"
CV_FILE = "cv.json"  # a cross-validation's model and options (cv.py), so a resume trains the rest alike


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


def sound_rows(splits: Path) -> list[SplitRow]:
    """A splits file's rows, refused (UserError naming every problem) where train would refuse them."""
    rows = read_splits(splits)
    problems = find_problems(rows)
    if problems:
        raise UserError(f"{splits}: " + "; ".join(problems))
    return rows


def _row_set(rows: list[SplitRow]) -> set:
    return {row.identity for row in rows}


def frozen_rows(run: Path, config: RunConfig) -> list[SplitRow]:
    """The splits a run was trained on: its own copy, refused if it changed since it was written."""
    frozen = Path(run) / FROZEN_SPLITS
    if not frozen.is_file():  # runs written before the copy existed
        return sound_rows(Path(config.splits_file))
    if config.splits_sha256 and file_sha256(frozen) != config.splits_sha256:
        raise UserError(f"{frozen} was changed after training (its SHA-256 differs from config.json)")
    return read_splits(frozen)


def _check_output(out: Path, rows, resume: bool) -> None:
    if resume:
        if (out / CV_FILE).is_file() and not (out / "checkpoint.pt").is_file():
            raise UserError(f"{out} is a cross-validation: continue it with perceiver-med train --resume --cv "
                            f"--out {out}")
        if not (out / "config.json").is_file():
            raise UserError(f"--resume needs an existing run directory, and {out} has no config.json")
    elif holds_files(out):
        raise UserError(f"{out} already holds files: choose a new --out, or add --resume to continue that run")
    refuse_inside_scans(out, rows)


def refuse_inside_scans(out: Path, rows: list[SplitRow]) -> None:
    """An output inside a folder of the scans would write into the user's data."""
    for folder in {row.path if row.path.is_dir() else row.path.parent for row in rows}:
        refuse_inside(out, folder)


# Options that may change when a run is resumed (where it runs, not what it learns).
RUNTIME_OPTIONS = ("device", "num_workers", "precision")
OTHER_OPTIONS = ("input", "size", "channels", "grid_pad", "flip", "positive", "threshold", "fov_mm", "slice_mm",
                 "window", "fold")


def _stored_options(config: RunConfig) -> dict:
    """The run's settings under the names of train's options, to compare with what a resume asks for."""
    model = config.model["vit"] if config.model["name"] == "vit-rollout-cnn" else config.model
    stored = {"model": config.model["name"], "input": config.preprocess.input, "size": config.preprocess.size,
              "channels": config.preprocess.channels, "grid_pad": config.preprocess.grid_pad,
              "fov_mm": config.preprocess.fov_mm, "slice_mm": config.preprocess.slice_mm,
              "window": config.preprocess.window,
              "flip": config.augment.flip, "positive": config.positive_class, "threshold": config.threshold_rule,
              "fold": config.fold, **asdict(config.train)}
    stored.update({k: model[k] for k in MODEL_OPTION_NAMES if k in model})
    if "deep_supervision" in MODEL_OPTIONS.get(config.model["name"], ()):
        stored.setdefault("deep_supervision", 0.0)  # runs from before the option had none
    return stored


def _resume_config(out: Path, asked: dict) -> RunConfig:
    """config.json is the truth on --resume: an option that contradicts it is an error that names it."""
    config = load_run_config(out)
    stored = _stored_options(config)
    conflicts = [f"--{key.replace('_', '-')} {value} (run: {stored[key]})" for key, value in asked.items()
                 if key not in RUNTIME_OPTIONS and key in stored and value != stored[key]]
    if conflicts:
        raise UserError(f"--resume continues {out} as its config.json says; drop the options that contradict it: "
                        + ", ".join(conflicts))
    config.train = replace(config.train, **{k: v for k, v in asked.items() if k in RUNTIME_OPTIONS})
    return config


def _new_config(rows: list[SplitRow], splits: Path, model_name: str, asked: dict) -> RunConfig:
    model_options = {k: v for k, v in asked.items() if k in MODEL_OPTION_NAMES}
    for key in model_options:
        if key not in MODEL_OPTIONS[model_name]:
            takers = [name for name, keys in MODEL_OPTIONS.items() if key in keys]
            raise UserError(f"--{key.replace('_', '-')} is an option of {' and '.join(takers)}, not {model_name}")
    train = TrainConfig(**{k: v for k, v in asked.items() if k in TrainConfig.__dataclass_fields__})
    scans = describe_scans(rows)
    with_points = sum(row.point is not None for row in rows)
    if with_points not in (0, len(rows)):
        raise UserError(f"{with_points} of the {len(rows)} rows of the splits file have a point: give every row "
                        "a point, or none")
    input = asked.get("input", "point" if with_points else scans.input)
    if (input == "point") != bool(with_points):
        raise UserError("--input point needs a splits file with points (split --points CSV)" if with_points == 0
                        else "the splits file has points: train them with --input point (the default)")
    preprocess = preprocess_config(input, asked.get("size"), asked.get("channels"), asked.get("grid_pad"),
                                   asked.get("fov_mm"), asked.get("slice_mm"), asked.get("window"))
    classes = sorted({row.label for row in rows})
    if len(classes) < 2:
        raise UserError(f"the splits file has one class ({classes[0]}): a classifier needs two")
    augment = AugmentConfig(flip=asked.get("flip", not is_laterality(classes)),
                            tiles=GRID_TILES if preprocess.input in ("grid", "point") else 1)
    model_cfg = default_config(model_name, preprocess.output_shape, len(classes))
    (model_cfg["vit"] if model_name == "vit-rollout-cnn" else model_cfg).update(model_options)
    try:
        build_model(model_cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"these model options do not make a {model_name}: {exc}") from None
    return RunConfig(classes, preprocess, model_cfg, train, augment,
                     positive_class=pick_positive(classes, asked.get("positive")), scan_kinds=scans.kinds,
                     modality_groups=scans.modality_groups, splits_file=str(Path(splits).resolve()),
                     versions=versions(), threshold_rule=asked.get("threshold", "0.5"), fold=asked.get("fold"))


def weights_metadata(config: RunConfig) -> dict[str, str]:
    """Stored inside model.safetensors, so a config.json edited afterwards (classes, input size) is caught."""
    return {"classes": json.dumps(config.classes), "input_shape": json.dumps(list(config.preprocess.output_shape)),
            "model": json.dumps(config.model, sort_keys=True)}


def train_run(splits: Path | None, model_name: str | None, out: Path, *, resume: bool = False,
              reporter: Reporter | None = None, on_prepared: Callable[[int, int], None] | None = None,
              **options) -> TrainResult:
    """Train a model on a splits file and write the complete run directory.

    `options` are train's options by name (TrainConfig fields, input, size, channels, grid_pad, flip,
    positive, threshold, and the model options of MODEL_OPTIONS); None means not given. On `resume`,
    config.json is the truth, an option that contradicts it is refused, and `splits` may be None. After
    training, a temperature and the threshold are fitted on the validation split alone, then every split is scored.
    """
    reporter = reporter or Reporter()
    asked = {k: v for k, v in options.items() if v is not None}
    unknown = set(asked) - set(TrainConfig.__dataclass_fields__) - set(OTHER_OPTIONS) - MODEL_OPTION_NAMES
    if unknown:
        raise TypeError(f"train_run got unknown options {sorted(unknown)}")
    if "threshold" in asked:
        asked["threshold"] = parse_threshold_rule(asked["threshold"])
    if "window" in asked:
        asked["window"] = parse_window(asked["window"])  # canonical, to compare with a resumed run's
    out = Path(out)
    if model_name is not None and model_name not in MODEL_NAMES:
        raise UserError(f"--model must be one of {', '.join(MODEL_NAMES)}")
    if splits is None and not resume:
        raise UserError("train needs a splits file (or --resume --out RUN to continue a run)")
    rows = sound_rows(splits) if splits is not None else []
    if rows and asked.get("fold") is not None:
        rows = fold_rows(rows, asked["fold"])
    main_process = Processes.planned().main  # under torchrun, rank 0 alone owns the run directory
    with RunLock(out, enabled=main_process):
        _check_output(out, rows, resume)
        if main_process:
            remove_stale_temporaries(out)
        if resume:
            if not (out / "checkpoint.pt").is_file():
                raise UserError(f"{out} has no checkpoint.pt to resume from (training stopped before its first "
                                "epoch ended): start a new run")
            config = _resume_config(out, {**asked, **({"model": model_name} if model_name else {})})
            if config.checkpoint_sha256 and file_sha256(out / "checkpoint.pt") not in config.checkpoint_sha256:
                raise UserError(f"{out / 'checkpoint.pt'} does not match the SHA-256 recorded in config.json: the "
                                "file is damaged or was replaced, so the run cannot be resumed")
            frozen = frozen_rows(out, config)
            if rows and _row_set(rows) != _row_set(frozen):
                raise UserError(f"{splits} differs from the splits the run was started with ({out / FROZEN_SPLITS}):"
                                " leave out the splits file to resume, or start a new run")
            rows = frozen
        else:
            config = _new_config(rows, splits, model_name or "perceiver", asked)
        try:
            return _train(rows, config, out, resume, reporter, on_prepared)
        except BaseException:
            if not resume and not (out / "checkpoint.pt").exists():  # nothing to resume: leave nothing behind
                for name in ("config.json", FROZEN_SPLITS):
                    (out / name).unlink(missing_ok=True)
            raise


def _train(rows, config: RunConfig, out: Path, resume: bool, reporter: Reporter, on_prepared) -> TrainResult:
    train = config.train
    device = pick_device(train.device)
    planned = Processes.planned()
    # each process prepares its share of the scans before the process group exists (no fork after threads
    # or CUDA start); after the group's barrier every process reads all of them from the cache
    share = rows[planned.rank::planned.world]
    if planned.world > 1:
        load_split_inputs(share, config.preprocess, train.num_workers, on_done=on_prepared, must_keep=False)
    processes = Processes.start(device)
    try:
        processes.barrier()
        loaded = load_split_inputs(rows, config.preprocess, train.num_workers,
                                   on_done=on_prepared if planned.world == 1 else None)
        data = _tensors(loaded, config.classes)
        if len(data["train"][1]) == 0:
            raise UserError("the splits file has no readable training scans")
        torch.manual_seed(train.seed)
        model = build_model(config.model)
        if processes.main and not resume:
            out.mkdir(parents=True, exist_ok=True)
            write_splits(rows, out / FROZEN_SPLITS)
            config.splits_sha256 = file_sha256(out / FROZEN_SPLITS)
            _write_config(out, config)
        reporter.message(f"{config.model['name']}: {model.num_parameters:,} parameters, input "
                         f"{config.preprocess.input} {config.preprocess.output_shape}, {len(loaded.rows)} "
                         f"{'points' if config.preprocess.input == 'point' else 'scans'}, "
                         f"device {device}" + (f" x {processes.world} processes" if processes.world > 1 else "")
                         + ("" if config.augment.flip else ", no horizontal flip"))

        def on_saved(name: str, digest: str) -> None:
            if name == "model.safetensors":
                config.weights_sha256 = digest
            else:  # the previous digest is kept too: a kill between the two writes leaves a resumable run
                config.checkpoint_sha256 = [digest, *config.checkpoint_sha256[:1]]
            _write_config(out, config)

        state = fit(model, config.model["name"], data, config.classes, train, config.augment, out, device,
                    processes, reporter, resume, weights_metadata(config), on_saved if processes.main else None)
        model.eval()
        positive = config.classes.index(config.positive_class)
        _, probs = evaluate_forward(model.forward, data, config.classes, device, processes=processes,
                                    positive=positive, precision=train.precision)
        labels = {split: split_labels.numpy() for split, (_, split_labels) in data.items()}
        # fixed from the validation split alone, before any other split is scored
        seen = [split for split in ("val",) if split in probs]
        config.decision = fit_decision({s: labels[s] for s in seen}, {s: probs[s] for s in seen},
                                       config.threshold_rule, config.classes, config.positive_class)
        if processes.main:
            _write_config(out, config)
        metrics = _score(loaded.rows, labels, probs, config)
        if config.model["name"] == "vit-rollout-cnn":  # stage one alone, as the model gives it (no calibration)
            metrics["vit"], _ = evaluate_forward(model.vit.forward, data, config.classes, device,
                                                 processes=processes, positive=positive, precision=train.precision)
        if processes.main:
            _write_outputs(out, loaded, probs, metrics, config, state.history)
        return TrainResult(out, metrics, loaded.skipped, model.num_parameters, config)
    finally:
        processes.close()


def _score(rows: list[SplitRow], labels: dict, probs: dict, config: RunConfig) -> dict:
    """metrics.json: the run's positive class, threshold, temperature and bootstrap, and each split's scores."""
    scored = {split: score_split(labels[split], probs[split], [row for row in rows if row.split == split], config)
              for split in SPLITS if split in probs}
    return {"positive_class": config.positive_class, **run_summary(config), **scored}


def _write_config(out: Path, config: RunConfig) -> None:
    atomic_text(out / "config.json", lambda h: h.write(config.to_json()))


def _write_outputs(out: Path, loaded, probs, metrics, config: RunConfig, history) -> None:
    from perceiver_med.results.display import save_confusion, save_curves, save_reliability

    atomic_text(out / "metrics.json", lambda h: json.dump(metrics, h, indent=2))
    for split, raw_probs in probs.items():
        write_split_predictions(out / f"predictions_{split}.csv", [row for row in loaded.rows if row.split == split],
                                raw_probs, config)
        save_confusion(metrics[split]["confusion_matrix"], config.classes, split, out / f"confusion_{split}.png")
        save_reliability(metrics[split]["calibration"]["reliability"], config.decision.temperature, split,
                         out / f"reliability_{split}.png")
    write_history(out / "history.csv", history)
    save_curves(history, out / "curves.png")


def write_split_predictions(path: Path, rows: list[SplitRow], raw_probs: np.ndarray, config: RunConfig) -> None:
    """predictions_<split>.csv of splits rows: the run's calibrated probabilities and decisions, and for a run
    trained on points each row's point."""
    probs, preds = apply_decision(raw_probs, config.decision, config.classes.index(config.positive_class))
    write_predictions(path, [str(row.path) for row in rows], [row.label for row in rows], probs, config.classes,
                      preds, [row.point for row in rows] if config.preprocess.input == "point" else None)


def write_predictions(path: Path, paths: list[str], labels: list[str] | None, probs: np.ndarray,
                      classes: list[str], preds: np.ndarray | None = None, points: list | None = None) -> None:
    """path[,coordX,coordY,coordZ][,label],pred,prob_<class>...; probabilities at full float precision (repr
    round-trips).

    `preds` are class indices (the run's threshold decisions); by default the most probable class. `points`
    (LPS mm, one per row) tell the samples of a run trained on points apart.
    """
    from perceiver_med.csvfiles import write_csv

    columns = ["path"] + (["coordX", "coordY", "coordZ"] if points else []) + (
        ["label"] if labels is not None else []) + ["pred"] + [f"prob_{c}" for c in classes]
    preds = np.asarray(probs).argmax(axis=1) if preds is None else preds

    def row(k: int, scan: str) -> list:
        # floats, not text: the csv module writes their repr, and a probability is never escaped
        return ([scan] + (list(points[k]) if points else []) + ([labels[k]] if labels is not None else [])
                + [classes[int(preds[k])]] + [float(v) for v in probs[k]])

    write_csv(path, columns, (row(k, scan) for k, scan in enumerate(paths)))


def write_history(path: Path, history: list[dict]) -> None:
    columns = ["stage", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]

    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)

    atomic_text(path, write)


# ---------------------------------------------------------------- using a finished run
def load_model(run: Path, device: torch.device | None = None, tta: int = 1):
    """The run's config and its best model, in eval mode; weights checked against config.json. With `tta` > 1
    the model averages its probabilities over that many label-preserving views of each input (tta.py)."""
    if tta != 1:
        from perceiver_med.run.tta import AugmentedViews, check_views

        check_views(tta)
        config, model = load_model(run, device)
        return config, AugmentedViews(model, config.augment, tta, config.train.seed).eval()
    run = Path(run)
    if run.is_file():
        raise UserError(f"{run} is a file: give the run directory that holds it")
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    config = load_run_config(run)
    if config.ensemble:
        return config, _load_ensemble(run, config, device)
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{run} has no model.safetensors (training stopped before its first epoch ended)")
    if len(config.classes) != _num_classes(config.model) or config.positive_class not in config.classes:
        raise UserError(f"{run}/config.json is inconsistent: {len(config.classes)} class names for a model with "
                        f"{_num_classes(config.model)} outputs")
    try:
        model = build_model(config.model)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{run}/config.json describes no model this version can build: {exc}") from None
    load_weights(model, weights, config.weights_sha256, weights_metadata(config))
    return config, model.to(device or torch.device("cpu")).eval()


def _load_ensemble(run: Path, config: RunConfig, device: torch.device | None):
    """A cross-validated run's members (its own sub-folders), each checked as a run, as one model."""
    from perceiver_med.models.ensemble import Ensemble

    members = []
    for name in config.ensemble:
        if Path(name).name != name or name.startswith("."):
            raise UserError(f"{run}/config.json names an ensemble member outside the run: {name!r}")
        member, model = load_model(run / name, device)
        if member.classes != config.classes or member.ensemble:
            raise UserError(f"{run / name} is not a member of this run (its classes or kind differ)")
        members.append((member.decision.temperature, model))
    return Ensemble([m for _, m in members], [t for t, _ in members]).to(device or torch.device("cpu")).eval()


def _num_classes(model: dict):
    return model["vit"]["num_classes"] if model.get("name") == "vit-rollout-cnn" else model.get("num_classes")


def evaluate_run(run: Path, splits: Path | None = None, split: str = "all", device: str = "auto",
                 workers: int = 0, tta: int = 1) -> dict:
    """Metrics of a saved run on the chosen splits (the run's frozen copy of its splits by default), with the
    run's own temperature and threshold, as metrics.json has them; with `tta` > 1, of the mean probabilities
    over that many label-preserving views of each scan (see tta.py).

    Another splits file may be given; scans or patients the run trained on are refused in its val/test rows.
    A cross-validated run (an ensemble) is scored on its test split unless a split is named.
    """
    if split not in (*SPLITS, "all"):
        raise UserError("--split must be train, val, test or all")
    torch_device = pick_device(device)
    config, model = load_model(run, torch_device, tta)
    trained_on = frozen_rows(run, config)
    rows = trained_on if splits is None else sound_rows(Path(splits))
    if splits is not None:
        _refuse_training_scans(rows, trained_on)
    if config.ensemble and split == "all" and splits is None:
        split = "test"  # the folds' own scans trained most of the ensemble: only the held-out test scores it
    rows = [row for row in rows if split == "all" or row.split == split]
    if not rows:
        raise UserError(f"{splits or Path(run) / FROZEN_SPLITS} has no {split} scans")
    loaded = load_split_inputs(rows, config.preprocess, workers)
    data = _tensors(loaded, config.classes)
    _, probs = evaluate_forward(model.forward, data, config.classes, torch_device,
                                positive=config.classes.index(config.positive_class),
                                precision=config.train.precision)
    return _score(loaded.rows, {split: labels.numpy() for split, (_, labels) in data.items()}, probs, config)


def _refuse_training_scans(rows: list[SplitRow], trained_on: list[SplitRow]) -> None:
    train_patients = {r.patient_id for r in trained_on if r.split == "train"}
    train_paths = {(r.path, r.series_uid) for r in trained_on if r.split == "train"}
    leaked = [r for r in rows if r.split != "train"
              and (r.patient_id in train_patients or (r.path, r.series_uid) in train_paths)]
    if leaked:
        raise UserError(f"{len(leaked)} {leaked[0].split} scan(s) of that splits file were training scans or "
                        f"patients of this run (e.g. patient {leaked[0].patient_id}): their scores would be leaked")


@dataclass
class Prediction:
    path: Path
    label: str | None
    probs: np.ndarray  # calibrated with the run's temperature
    pred: str = ""  # the run's decision: its threshold for two classes, else the most probable class
    point: tuple[float, float, float] | None = None  # LPS mm, for a run trained on points


def predict_run(run: Path, scans: Path, out: Path, device: str = "auto", workers: int = 0,
                on_done: Callable[[int, int], None] | None = None, overwrite: bool = False,
                points: Path | None = None, tta: int = 1) -> tuple[list[Prediction], list[Skip], list[str]]:
    """Predict every scan in a folder (or one file); writes path[,label],pred,prob_<class>...

    Probabilities are calibrated with the run's temperature, and `pred` applies its threshold; with `tta` > 1
    they are the mean over that many label-preserving views of each scan (see tta.py). A run trained on points
    predicts the rows of `points` instead, one output row per point (see point_runs).
    """
    from perceiver_med.run.point_runs import check_point_run, prepare_points, write_point_predictions

    torch_device = pick_device(device)
    config, model = load_model(run, torch_device, tta)
    refuse_inside(out, scans)
    check_new_output(out, overwrite)
    check_point_run(config, points)
    if points is not None:
        prepared = prepare_points(Path(points), Path(scans), config, workers, on_done)
        raw = predict_probs(model.forward, torch.from_numpy(prepared.inputs), torch_device,
                            precision=config.train.precision)
        probs, preds = apply_decision(raw, config.decision, config.classes.index(config.positive_class))
        write_point_predictions(out, prepared, probs, preds, config.classes)
        return ([Prediction(s.scan.path, _known(s.row.label, config.classes), p, config.classes[int(k)], s.row.point)
                 for s, p, k in zip(prepared.samples, probs, preds)], prepared.skipped, config.classes)
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
    inputs = torch.from_numpy(np.stack([a for _, a in kept]))
    raw = predict_probs(model.forward, inputs, torch_device, precision=config.train.precision)
    probs, preds = apply_decision(raw, config.decision, config.classes.index(config.positive_class))
    labels = [_known(folder_label(scan, found.root), config.classes) for scan, _ in kept]
    known = labels if all(label is not None for label in labels) else None
    write_predictions(out, [str(scan.path) for scan, _ in kept], known, probs, config.classes, preds)
    predictions = [Prediction(scan.path, label, p, config.classes[int(k)])
                   for (scan, _), label, p, k in zip(kept, labels, probs, preds)]
    return predictions, skipped, config.classes


def _known(label: str | None, classes: list[str]) -> str | None:
    return label if label in classes else None
