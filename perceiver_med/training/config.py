"""Run settings: dataclasses, stored in every run as config.json, written and read by one generic pair.

`to_dict(config)` gives the JSON form of any config dataclass; `from_dict(cls, data)` rebuilds one and checks it
on the way: each value's type against the dataclass's annotations (nested dataclasses, lists, dicts, Optional;
floats finite), unknown keys refused, then the dataclass's own `check()` (ranges, known names). Every refusal is
one ValueError that starts with the field's dotted path in config.json (`decision.temperature must be ...`).
"""
from __future__ import annotations

import functools
import json
import math
import platform
import types
import typing
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path

from perceiver_med import __version__
from perceiver_med.inputs.augment import AugmentConfig
from perceiver_med.errors import UserError
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.io.limits import voxel_budget
from perceiver_med.models.registry import get_spec, num_classes

LATERALITY_LABELS = {"left", "right", "l", "r"}


# ---------------------------------------------------------------- dataclasses <-> JSON
def to_dict(config):
    """A config dataclass (or a list or dict of them) as JSON values: fields in declaration order, tuples as lists."""
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, dict):
        return {key: to_dict(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(value) for value in config]
    return config


def from_dict(cls: type, data, where: str = ""):
    """The dataclass `cls` from its JSON form, checked: ValueError naming the field (`where` is cls's own path).

    A key the data leaves out takes the field's default; a key the dataclass does not hold is refused, as is a value
    of another type. The built object's `check()`, where it has one, checks ranges and names.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the file'} must be a JSON object, not {_shown(data)}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ValueError(f"{_at(where, unknown[0])} is not a setting this version knows")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = _value(hints[name], data[name], _at(where, name))
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise ValueError(f"{_at(where, name)} is missing")
    try:
        config = cls(**values)
    except (TypeError, ValueError, UserError) as exc:  # the dataclass's own parsing (a window's text)
        raise ValueError(f"{where or cls.__name__}: {exc}") from None
    if hasattr(config, "check"):
        try:
            config.check()
        except ValueError as exc:  # its message starts with the field's name
            raise ValueError(_at(where, str(exc))) from None
    return config


def _value(hint, value, where: str):
    """`value` as the annotation `hint` wants it, or ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]  # the configs' unions are all Optional
        return _value(inner, value, where)
    if is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is typing.Any:
        return value
    if hint is list or origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, not {_shown(value)}")
        item = args[0] if args else typing.Any
        return [_value(item, v, f"{where}[{k}]") for k, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a JSON object, not {_shown(value)}")
        item = args[1] if args else typing.Any
        return {key: _value(item, v, f"{where}.{key}") for key, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, not {_shown(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where} must be a whole number, not {_shown(value)}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, not {_shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be text, not {_shown(value)}")
        return value
    raise TypeError(f"{where}: a config field of type {hint} has no JSON form")


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- the settings
# Settings of where a run runs, not of what it learns: a resume may change them. They live in "train" in config.json.
RUNTIME = {"runtime": True}
# numpy seeds its generators from 32-bit words and torch from 64 bits: a seed is one 32-bit word, in every command.
SEED_RANGE = (0, 2 ** 32 - 1)


def ranged(low: float, high: float, **metadata) -> dict:
    """Field metadata giving a number setting its range, low to high: `check_ranges` holds config.json to it and the
    command line shows it (`value_range`)."""
    return {**metadata, "range": (low, high)}


def value_range(cls: type, name: str) -> tuple[float, float]:
    """(low, high) of a config dataclass field declared with `ranged`."""
    return next(f for f in fields(cls) if f.name == name).metadata["range"]


def check_ranges(config) -> None:
    """ValueError naming the first field outside its `ranged` range."""
    for spec in fields(config):
        if "range" in spec.metadata:
            low, high = spec.metadata["range"]
            value = getattr(config, spec.name)
            if not low <= value <= high:
                raise ValueError(f"{spec.name} must be from {low:,} to {high:,}, not {value}")


SAMPLERS = ("shuffle", "balanced")
RARE_CLASS_RATIO = 4  # a class is rare when the most frequent one has more than this many times its samples


def choose_sampler(train_labels: list[str], asked: str | None, class_weights: str = "none") -> str:
    """The sampler a new run records: as asked; else "balanced" where the rarest class of the training split has
    fewer than 1/RARE_CLASS_RATIO of the most frequent one's samples (LUNA25's 1:10, LUNA16's candidates' 1:500)
    and the loss is not class-weighted already; else "shuffle"."""
    if asked is not None:
        if asked == "balanced" and class_weights == "auto":
            raise UserError("--sampler balanced and --class-weights auto both correct for rare classes: choose one")
        return asked
    counts = Counter(train_labels).values()
    rare = bool(counts) and min(counts) * RARE_CLASS_RATIO < max(counts)
    return "balanced" if rare and class_weights != "auto" else "shuffle"


@dataclass
class TrainConfig:
    """Optimisation settings, and (marked RUNTIME, last) where the training runs.

    Args:
        epochs: maximum epochs (per stage for the hybrid); 0 picks enough for about 600 optimiser steps,
            between 30 and 150 epochs: small sets need many epochs before attention finds the signal.
        batch_size: samples per step (per process under torchrun).
        lr: peak learning rate of AdamW after warm-up.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length; cosine decay afterwards.
        patience: stop after this many epochs without a lower validation loss (0: never); epochs are counted
            only once the training set is fitted (95% training accuracy) or 3/4 of the epochs have run.
        stop_loss: stop a stage once its validation loss (its training loss, measured in evaluation mode, without
            a val split) is at or below this, counted as patience is (0: never); 0.01 means the samples' true
            classes have a mean probability of about 0.99, where more epochs only sharpen what is already decided
            (Lightning's `stopping_threshold`).
        grad_clip: maximum gradient norm.
        seed: seed of weights, shuffling and augmentation.
        class_weights: "none" or "auto" (inverse class frequency in the training loss only).
        sampler: how an epoch draws the training samples: "shuffle" (each once, in a new order) or "balanced" (as
            many draws as the training split has samples, with replacement, each class equally likely), so that a
            rare class is seen as often as a common one; train chooses "balanced" where a class is rare
            (choose_sampler). Runs made before it existed shuffled.
        label_smoothing: training loss only; reported losses never use it.
        num_workers: processes for preprocessing.
        device: "auto", "cpu", "cuda" or "mps".
        precision: "auto" (bf16 autocast on CUDA and on CPUs with native bf16 units), "bf16" or "fp32".
    """

    epochs: int = field(default=0, metadata=ranged(0, 100_000))
    batch_size: int = field(default=16, metadata=ranged(1, 65_536))
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    patience: int = field(default=20, metadata=ranged(0, 100_000))
    stop_loss: float = 0.0
    grad_clip: float = 1.0
    seed: int = field(default=0, metadata=ranged(*SEED_RANGE))
    class_weights: str = "none"
    sampler: str = "shuffle"
    label_smoothing: float = 0.0
    # more processes than cores only wait for each other: prepare_many starts at most one per core
    num_workers: int = field(default=0, metadata=ranged(0, 1024, **RUNTIME))
    device: str = field(default="auto", metadata=RUNTIME)
    precision: str = field(default="auto", metadata=RUNTIME)

    def check(self) -> None:
        for spec in fields(self):  # inf would pass every bound below and end the first step in NaN
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{spec.name} must be a finite number, not {value}")
        for name in ("epochs", "patience", "seed", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, not {self.batch_size}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, not {getattr(self, name)}")
        for name in ("weight_decay", "warmup_epochs", "stop_loss"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")
        for name, choices in (("class_weights", ("none", "auto")), ("sampler", SAMPLERS),
                              ("device", ("auto", "cpu", "cuda", "mps")),
                              ("precision", ("auto", "bf16", "fp32"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be {' or '.join(choices)}, not {getattr(self, name)!r}")
        check_ranges(self)


@dataclass
class Decision:
    """How a run turns the model's probabilities into its outputs, fitted on the validation split after training.

    Args:
        temperature: softmax temperature applied to every probability the run reports (1: none).
        temperature_fitted_on: "val", or why the temperature is the default.
        threshold: for two classes, the positive class is called when its calibrated probability is at least
            this; None (more than two classes): the most probable class.
        rule: the --threshold rule that chose it, or why it is the default.
        chosen_on: "val" when a rule chose it from the validation split, "fixed" for 0.5, "" for a default.
    """

    temperature: float = 1.0
    temperature_fitted_on: str = ""
    threshold: float | None = None
    rule: str = "argmax"
    chosen_on: str = ""

    def check(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number more than 0, not {self.temperature}")
        # choose_threshold puts its top candidate just above the highest score, a hair above 1 when that is 1
        if self.threshold is not None and not 0 <= self.threshold <= math.nextafter(1.0, 2.0):
            raise ValueError(f"threshold must be null or a probability in [0, 1], not {self.threshold}")


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's model and its exact preprocessing, and to check its files.

    Args:
        positive_class: the class sensitivity, specificity and ROC AUC are reported for.
        scan_kinds: "image" and/or "volume": what the model was trained on; predict skips other kinds.
        modality_groups: imaging families seen in training (see MODALITY_GROUPS); empty when unknown.
        splits_file: where the splits came from; the run trains and evaluates on its frozen copy, splits.csv.
        splits_sha256, weights_sha256: SHA-256 of the run's splits.csv and model.safetensors.
        checkpoint_sha256: SHA-256 of the last two checkpoint.pt files written (a resume accepts either).
        threshold_rule: train's --threshold as asked (youden, f1, 0.5, sensitivity=X, specificity=X).
        decision: the temperature and threshold fitted after training.
        fold: the cross-validation fold this run held out as its val split (train --fold), else None.
        ensemble: for a cross-validated run (train --cv), its members' folders (fold_<k>), whose calibrated
            probabilities are averaged; its own decision is then fitted on their out-of-fold predictions.
        input_version: how its inputs were prepared (inputs.cache.INPUT_VERSION when it was trained); a run of
            another version is refused rather than fed inputs it never saw.
    """

    classes: list[str]
    preprocess: PreprocessConfig
    model: dict
    train: TrainConfig
    augment: AugmentConfig
    positive_class: str = ""
    scan_kinds: list[str] = field(default_factory=list)
    modality_groups: list[str] = field(default_factory=list)
    splits_file: str = ""
    splits_sha256: str = ""
    weights_sha256: str = ""
    checkpoint_sha256: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    threshold_rule: str = "0.5"
    decision: Decision = field(default_factory=Decision)
    fold: int | None = None
    ensemble: list[str] = field(default_factory=list)
    input_version: int = 0

    def check(self) -> None:
        from perceiver_med.stats.statistics import parse_threshold_rule

        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or "" in self.classes:
            raise ValueError(f"classes must be two or more distinct names, not {_shown(self.classes)}")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of the classes: "
                             f"{', '.join(self.classes)}")
        if not set(self.scan_kinds) <= {"image", "volume"}:
            raise ValueError(f"scan_kinds must hold \"image\" and/or \"volume\", not {_shown(self.scan_kinds)}")
        try:
            if parse_threshold_rule(self.threshold_rule) != self.threshold_rule:
                raise UserError(f"not {self.threshold_rule!r}")
        except UserError as exc:
            raise ValueError(f"threshold_rule: {exc}") from None
        if self.fold is not None and self.fold < 0:
            raise ValueError(f"fold must be null or 0 or more, not {self.fold}")
        self._check_model()
        tiles = self.preprocess.kind.tiles  # augmentation keeps each tile (a slice) whole, mirroring it in place
        if self.augment.tiles != tiles:
            raise ValueError(f"augment.tiles must be {tiles} for {self.preprocess.input} inputs, not {self.augment.tiles}")

    def _check_model(self) -> None:
        """The model's name is registered and its settings have their config dataclass's types (its weights file
        says whether they are its sizes: RunDir.load_model)."""
        try:
            spec = get_spec(self.model.get("name"))
        except ValueError as exc:
            raise ValueError(f"model.name: {exc}") from None
        names = {f.name for f in fields(spec.config)}
        from_dict(spec.config, {k: v for k, v in self.model.items() if k in names}, "model")
        outputs = num_classes(self.model)
        if outputs != len(self.classes):
            raise ValueError(f"classes: {len(self.classes)} names for a model with {outputs} outputs")

    def to_json(self) -> str:
        return json.dumps({**to_dict(self), "versions": self.versions or versions()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return from_dict(cls, json.loads(text))


# ---------------------------------------------------------------- train's options and --resume
RUNTIME_OPTIONS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("runtime"))


@dataclass(frozen=True)
class Runtime:
    """How this machine does the work, kept apart from what defines a run: a resumed run, an evaluation or a
    prediction may use other values and get the same numbers.

    Args:
        device: "auto" (CUDA, then Apple MPS, then the CPU), "cpu", "cuda" or "mps".
        precision: "auto", "bf16" or "fp32" (training's arithmetic).
        workers: preprocessing processes (0: one per core, up to 8).
        max_voxels: the readers' budget per scan (None: the built-in one); worker processes receive it too.
    """

    device: str = "auto"
    precision: str = "auto"
    workers: int = 0
    max_voxels: int | None = None

    def train_options(self) -> dict:
        """The runtime fields of TrainConfig (RUNTIME_OPTIONS), as a run records them."""
        return {"device": self.device, "precision": self.precision, "num_workers": self.workers}

    def reading(self):
        """A context in which scans are read with this runtime's voxel budget."""
        return voxel_budget(self.max_voxels)


def applies_runtime(function):
    """Runs `function(request, ...)` inside its request's runtime (request.runtime.reading()): a library entry
    function that takes a request reads every scan with the request's voxel budget."""
    @functools.wraps(function)
    def within(request, *args, **kwargs):
        with request.runtime.reading():
            return function(request, *args, **kwargs)
    return within


def canonical_options(options: dict) -> dict:
    """train's options as a run stores them, so a resume compares like with like (--threshold Youden = youden,
    --window -1000,400 = lung)."""
    from perceiver_med.inputs.windows import parse_window
    from perceiver_med.stats.statistics import parse_threshold_rule

    options = dict(options)
    if "threshold" in options:
        options["threshold"] = parse_threshold_rule(options["threshold"])
    if "window" in options:
        options["window"] = parse_window(options["window"])
    return options


def trainable_model(name: str | None) -> str | None:
    """--model as given (any case) -> the registry's name; None stays None (the run's own, or the default)."""
    if name is None:
        return None
    try:
        return get_spec(name, trainable=True).name
    except ValueError as exc:
        raise UserError(f"--model {exc}") from None


def check_resume(run: Path, record: str, stored: dict, asked: dict) -> None:
    """The one conflict check of --resume (single runs and cross-validations): an asked option other than a runtime
    one that differs from what the run stored is refused in one line naming each; `record` names the file."""
    conflicts = [f"--{key.replace('_', '-')} {value} (run: {stored.get(key, 'not given')})"
                 for key, value in asked.items() if key not in RUNTIME_OPTIONS and stored.get(key) != value]
    if conflicts:
        raise UserError(f"--resume continues {run} as its {record} says; drop the options that contradict it: "
                        + ", ".join(conflicts))


def read_run_config(path: Path) -> RunConfig:
    """A run's configuration file (run.rundir names it), checked whole before anything is built from it: one
    UserError line naming the file and the first field refused."""
    try:
        return RunConfig.from_json(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a perceiver-med config") from None
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is refused: {exc}") from None


# distributions whose versions a reader needs to rebuild the environment (recorded in config.json; the report
# shows them beside the versions that wrote it)
VERSIONED = ("torch", "numpy", "scipy", "scikit-learn", "pydicom", "nibabel", "highdicom", "pillow", "matplotlib",
             "safetensors", "einops")


def versions() -> dict:
    """The software a run was made with, for its report (packages by their distribution names)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"perceiver_med": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


# Class names that usually mean "the finding is present": the default positive class.
POSITIVE_NAMES = ("malignant", "tumour", "tumor", "cancer", "positive", "abnormal", "disease", "lesion", "yes",
                  "true", "1")


def pick_positive(classes: list[str], asked: str | None = None) -> str:
    """The positive class: as asked (any case), else a name from POSITIVE_NAMES, else the last in sorted order."""
    if asked is not None:
        matches = [c for c in classes if c.lower() == asked.strip().lower()]
        if not matches:
            raise UserError(f"--positive {asked!r} is not one of the classes: {', '.join(classes)}")
        return matches[0]
    for name in POSITIVE_NAMES:
        matches = [c for c in classes if c.strip().lower() == name]
        if matches:
            return matches[0]
    return sorted(classes)[-1]


def is_laterality(classes: list[str]) -> bool:
    """Labels that name sides: a horizontal flip would swap them, so augmentation must not flip."""
    return bool(classes) and all(c.strip().lower() in LATERALITY_LABELS for c in classes)


def resolve_epochs(epochs: int, steps_per_epoch: int, target_steps: int = 600) -> int:
    """The epoch count to run: as given, or for 0 enough for about `target_steps` steps (30..150 epochs)."""
    if epochs > 0:
        return epochs
    return int(min(150, max(30, -(-target_steps // max(1, steps_per_epoch)))))
