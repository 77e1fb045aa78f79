"""The library function behind `train`: a splits file -> a complete run directory (written through RunDir's
file names; its splits scored through the run's Predictor, as `evaluate` and `predict` score them later)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from perceiver_med.training.config import (RUNTIME_OPTIONS, RunConfig, Runtime, TrainConfig, canonical_options,
                                           check_resume, choose_sampler, is_laterality, pick_positive,
                                           trainable_model, versions)
from perceiver_med.inputs.cache import INPUT_VERSION
from perceiver_med.inputs.loading import describe_scans, load_split_inputs, preprocess_config
from perceiver_med.inputs.augment import AugmentConfig
from perceiver_med.training.engine import Processes, Reporter, fit, pick_device
from perceiver_med.files import file_sha256
from perceiver_med.csvfiles import write_csv
from perceiver_med.errors import Interrupted, UserError
from perceiver_med.files import atomic_text, refuse_inside
from perceiver_med.run.rundir import holds_files, remove_stale_temporaries
from perceiver_med.io.discover import Skip
from perceiver_med.models import DEFAULT_MODEL, build_model, default_config, get_spec, model_stages, option_owners
from perceiver_med.results.evaluation import score_rows
from perceiver_med.stats.metrics import split_metrics
from perceiver_med.results.predictions import write_predictions
from perceiver_med.results.scoring import fit_decision
from perceiver_med.run.predictor import Predictor
from perceiver_med.inputs.kinds import choose_kind
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import fold_rows, write_splits
from perceiver_med.run.rundir import (CHECKPOINT, CONFIG, CURVES, FROZEN_SPLITS, HISTORY, METRICS, WEIGHTS, RunDir,
                                      load_run_config,
                                      confusion_name, reliability_name, sound_rows, weights_metadata)

if TYPE_CHECKING:
    from perceiver_med.workflows.cv import CvResult


@dataclass
class TrainRequest:
    """What `train` is asked to do.

    Args:
        splits: the splits CSV (None only to resume, which reads the run's frozen copy).
        out: the run directory to create, or to continue with `resume`.
        model: the model family (any case; None: the run's own on resume, else the default).
        options: train's run-defining options by name (TrainConfig's optimisation fields, input, size, channels,
            grid_pad, fov_mm, slice_mm, window, flip, positive, threshold, and the model's registry options);
            None means not given.
        runtime: where and how this machine trains (device, precision, workers, voxel budget); never compared
            with a resumed run's record.
        resume: continue the interrupted run in `out` (config.json, or cv.json for a cross-validation, is the truth).
        cv: train every fold of the splits file and make `out` their ensemble (workflows/cv.py).
        fold: train one cross-validation fold: its rows are val, the other folds' rows train.
    """

    splits: Path | None
    out: Path
    model: str | None = None
    options: dict = field(default_factory=dict)
    runtime: Runtime = Runtime()
    resume: bool = False
    cv: bool = False
    fold: int | None = None

    def given_options(self) -> dict:
        """The options given (None left out), fold among them; runtime settings belong in `runtime`."""
        given = {k: v for k, v in self.options.items() if v is not None}
        misplaced = set(given) & set(RUNTIME_OPTIONS)
        if misplaced:
            raise TypeError(f"{sorted(misplaced)} are runtime settings: give them in TrainRequest.runtime")
        unknown = set(given) - set(TrainConfig.__dataclass_fields__) - set(OTHER_OPTIONS) - set(option_owners())
        if unknown or "fold" in given:
            raise TypeError(f"TrainRequest got unknown options {sorted(unknown | ({'fold'} & set(given)))}")
        return {**given, **({"fold": self.fold} if self.fold is not None else {})}


def train(request: TrainRequest, reporter: Reporter | None = None,
          on_prepared: Callable[[int, int], None] | None = None) -> TrainResult | CvResult:
    """Train what `request` asks: one run (train_run) or, with `cv`, a cross-validation (train_cv), reading scans
    with its runtime's voxel budget. Ctrl-C becomes Interrupted, whose message says what is kept and the command
    that continues the run (RunDir.resume_command)."""
    from perceiver_med.workflows.cv import train_cv

    try:
        with request.runtime.reading():
            return (train_cv if request.cv else train_run)(request, reporter, on_prepared)
    except KeyboardInterrupt:
        command = RunDir(request.out).resume_command()
        if command is None:
            raise Interrupted("interrupted before the first epoch ended: nothing to resume") from None
        kept = "finished folds and the last completed epoch are kept" if request.cv else \
            "the last completed epoch is kept"
        # the command on a line of its own, so a narrow terminal does not break it where it is copied from
        raise Interrupted(f"interrupted; {kept}. Continue with:\n    {command}") from None


@dataclass
class TrainResult:
    run: Path
    metrics: dict
    skipped: list[Skip]
    num_parameters: int
    config: RunConfig
    earlier_stages: list[str] = field(default_factory=list)  # stages before the last: metrics[name] scores each alone


def _row_set(rows: list[Sample]) -> set:
    return {row.identity for row in rows}


def _check_output(out: Path, rows, resume: bool) -> None:
    if resume:
        if RunDir(out).cv_file.is_file() and not RunDir(out).checkpoint_file.is_file():
            raise UserError(f"{out} is a cross-validation: continue it with perceiver-med train --resume --cv "
                            f"--out {out}")
        if not RunDir(out).config_file.is_file():
            raise UserError(f"--resume needs an existing run directory, and {out} has no {CONFIG}")
        if RunDir(out).metrics_file.is_file():
            raise UserError(f"{out} is complete (training finished and wrote {METRICS}): there is nothing to "
                            "resume; evaluate or predict with it, or train a new run in another --out")
    elif holds_files(out):
        raise UserError(f"{out} already holds files: choose a new --out, or add --resume to continue that run")
    refuse_inside_scans(out, rows)


def refuse_inside_scans(out: Path, rows: list[Sample]) -> None:
    """An output inside a folder of the scans would write into the user's data."""
    for folder in {row.path if row.path.is_dir() else row.path.parent for row in rows}:
        refuse_inside(out, folder)


OTHER_OPTIONS = ("input", "size", "channels", "grid_pad", "flip", "positive", "threshold", "fov_mm", "slice_mm",
                 "window", "fold")


def _stored_options(config: RunConfig) -> dict:
    """The run's settings under the names of train's options, to compare with what a resume asks for."""
    spec = get_spec(config.model["name"])
    return {"model": spec.name, "input": config.preprocess.input, "size": config.preprocess.size,
              "channels": config.preprocess.channels, "grid_pad": config.preprocess.grid_pad,
              "fov_mm": config.preprocess.fov_mm, "slice_mm": config.preprocess.slice_mm,
              "window": config.preprocess.window,
              "flip": config.augment.flip, "positive": config.positive_class, "threshold": config.threshold_rule,
              "fold": config.fold, **asdict(config.train), **spec.option_values(config.model)}


def _resume_config(out: Path, asked: dict) -> RunConfig:
    """config.json is the truth on --resume: an option that contradicts it is an error that names it."""
    config = load_run_config(out)
    check_resume(out, CONFIG, _stored_options(config), asked)
    config.train = replace(config.train, **{k: v for k, v in asked.items() if k in RUNTIME_OPTIONS})
    return config


def _new_config(rows: list[Sample], splits: Path, model_name: str, asked: dict) -> RunConfig:
    owners = option_owners()
    model_options = {k: v for k, v in asked.items() if k in owners}
    for key in model_options:
        if model_name not in owners[key]:
            raise UserError(f"--{key.replace('_', '-')} is an option of {' and '.join(owners[key])}, not {model_name}")
    sampler = choose_sampler([row.label for row in rows if row.split == "train"], asked.get("sampler"),
                             asked.get("class_weights", "none"))
    train = TrainConfig(**{**{k: v for k, v in asked.items() if k in TrainConfig.__dataclass_fields__},
                           "sampler": sampler})
    try:
        train.check()  # the ranges config.json is read with, before any scan is read or memory is taken
    except ValueError as exc:
        raise UserError(f"--{str(exc).replace('_', '-')}") from None
    scans = describe_scans(rows)
    with_points = sum(row.point is not None for row in rows)
    if with_points not in (0, len(rows)):
        raise UserError(f"{with_points} of the {len(rows)} rows of the splits file have a point: give every row "
                        "a point, or none")
    kind = choose_kind(asked.get("input"), bool(with_points), scans.kinds)
    preprocess = preprocess_config(kind.name, asked.get("size"), asked.get("channels"), asked.get("grid_pad"),
                                   asked.get("fov_mm"), asked.get("slice_mm"), asked.get("window"))
    classes = sorted({row.label for row in rows})
    if len(classes) < 2:
        raise UserError(f"the splits file has one class ({classes[0]}): a classifier needs two")
    augment = AugmentConfig(flip=asked.get("flip", not is_laterality(classes)),
                            tiles=kind.tiles)
    try:
        model_cfg = default_config(model_name, preprocess.output_shape, len(classes), **model_options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"these model options do not make a {model_name}: {exc}") from None
    return RunConfig(classes, preprocess, model_cfg, train, augment,
                     positive_class=pick_positive(classes, asked.get("positive")), scan_kinds=scans.kinds,
                     modality_groups=scans.modality_groups, splits_file=str(Path(splits).resolve()),
                     versions=versions(), threshold_rule=asked.get("threshold", "0.5"), fold=asked.get("fold"),
                     input_version=INPUT_VERSION)


def train_run(request: TrainRequest, reporter: Reporter | None = None,
              on_prepared: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train a model on a splits file and write the complete run directory.

    On `resume`, config.json is the truth, an option that contradicts it is refused, and `splits` may be None.
    After training, a temperature and the threshold are fitted on the validation split alone, then every split is
    scored.
    """
    reporter = reporter or Reporter()
    splits, model_name, out, resume = request.splits, request.model, request.out, request.resume
    asked = {**canonical_options(request.given_options()), **request.runtime.train_options()}
    model_name = trainable_model(model_name)
    out = Path(out)
    if splits is None and not resume:
        raise UserError("train needs a splits file (or --resume --out RUN to continue a run)")
    rows = sound_rows(splits) if splits is not None else []
    if rows and asked.get("fold") is not None:
        rows = fold_rows(rows, asked["fold"])
    main_process = Processes.planned().main  # under torchrun, rank 0 alone owns the run directory
    with RunDir(out).lock(enabled=main_process):
        _check_output(out, rows, resume)
        if main_process:
            remove_stale_temporaries(out)
        if resume:
            if not RunDir(out).checkpoint_file.is_file():
                raise UserError(f"{out} has no {CHECKPOINT} to resume from (training stopped before its first "
                                "epoch ended): start a new run")
            config = _resume_config(out, {**asked, **({"model": model_name} if model_name else {})})
            if config.checkpoint_sha256 and file_sha256(out / CHECKPOINT) not in config.checkpoint_sha256:
                raise UserError(f"{out / CHECKPOINT} does not match the SHA-256 recorded in config.json: the "
                                "file is damaged or was replaced, so the run cannot be resumed")
            frozen = RunDir(out).frozen_rows(config)
            if rows and _row_set(rows) != _row_set(frozen):
                raise UserError(f"{splits} differs from the splits the run was started with ({out / FROZEN_SPLITS}):"
                                " leave out the splits file to resume, or start a new run")
            rows = frozen
        else:
            config = _new_config(rows, splits, model_name or DEFAULT_MODEL, asked)
        try:
            return _train(rows, config, out, resume, reporter, on_prepared)
        except BaseException:
            if not resume and not (out / CHECKPOINT).exists():  # nothing to resume: leave nothing behind
                for name in (CONFIG, FROZEN_SPLITS):
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
        data = loaded.by_split(config.classes)
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
                         f"{config.preprocess.input} {config.preprocess.output_shape}, {len(loaded.samples)} "
                         f"{config.preprocess.kind.noun}s, "
                         f"device {device}" + (f" x {processes.world} processes" if processes.world > 1 else "")
                         + ("" if config.augment.flip else ", no horizontal flip"))
        if train.sampler == "balanced":
            counts = torch.bincount(data["train"][1], minlength=len(config.classes)).tolist()
            reporter.message("balanced sampler: each class drawn equally often (training split: " + ", ".join(
                f"{n} {name}" for name, n in zip(config.classes, counts)) + ")")

        def on_saved(name: str, digest: str) -> None:
            if name == WEIGHTS:
                config.weights_sha256 = digest
            else:  # the previous digest is kept too: a kill between the two writes leaves a resumable run
                config.checkpoint_sha256 = [digest, *config.checkpoint_sha256[:1]]
            _write_config(out, config)

        state = fit(model, config.model["name"], data, config.classes, train, config.augment, RunDir(out).fit_files, device,
                    processes, reporter, resume, weights_metadata(config), on_saved if processes.main else None)
        model.eval()
        predictor = Predictor.of_model(config, model, device)
        probs = {split: predictor.probabilities(inputs, processes) for split, (inputs, labels) in data.items()
                 if len(labels)}
        labels = {split: split_labels.numpy() for split, (_, split_labels) in data.items()}
        # fixed from the validation split alone, before any other split is scored
        seen = [split for split in ("val",) if split in probs]
        config.decision = fit_decision({s: labels[s] for s in seen}, {s: probs[s] for s in seen},
                                       config.threshold_rule, config.classes, config.positive_class)
        if processes.main:
            _write_config(out, config)
        metrics = score_rows(loaded.samples, labels, probs, config)
        earlier = model_stages(model, config.model["name"])[:-1]
        for stage in earlier:  # an earlier stage alone, as the model gives it (no calibration)
            alone = Predictor.of_model(config, stage.module, device)
            metrics[stage.name] = {split: split_metrics(labels[split], alone.probabilities(inputs, processes),
                                                        config.classes, predictor.positive)
                                   for split, (inputs, _) in data.items() if split in probs}
        if processes.main:
            _write_outputs(out, loaded, {split: predictor.decide(raw) for split, raw in probs.items()}, metrics,
                           config, state.history)
        return TrainResult(out, metrics, loaded.skipped, model.num_parameters, config,
                           [stage.name for stage in earlier])
    finally:
        processes.close()


def _write_config(out: Path, config: RunConfig) -> None:
    atomic_text(out / CONFIG, lambda h: h.write(config.to_json()))


def _write_outputs(out: Path, loaded, decided: dict, metrics, config: RunConfig, history) -> None:
    from perceiver_med.results.display import save_confusion, save_curves, save_reliability

    atomic_text(out / METRICS, lambda h: json.dump(metrics, h, indent=2))
    for split, split_decided in decided.items():
        write_predictions(RunDir(out).predictions_file(split), [s for s in loaded.samples if s.split == split],
                          split_decided, config.preprocess.kind.takes_points)
        save_confusion(metrics[split]["confusion_matrix"], config.classes, split, out / confusion_name(split))
        save_reliability(metrics[split]["calibration"]["reliability"], config.decision.temperature, split,
                         out / reliability_name(split))
    write_history(out / HISTORY, history)
    save_curves(history, out / CURVES)


def write_history(path: Path, history: list[dict]) -> None:
    columns = ["stage", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]

    write_csv(path, columns, ([row.get(column, "") for column in columns] for row in history))
