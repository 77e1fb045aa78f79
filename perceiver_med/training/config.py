"""Run configuration: dataclasses <-> JSON, stored in every run as config.json."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perceiver_med import __version__
from perceiver_med.inputs.loading import AugmentConfig
from perceiver_med.errors import UserError
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.models.registry import get_spec

LATERALITY_LABELS = {"left", "right", "l", "r"}


@dataclass
class TrainConfig:
    """Optimisation settings.

    Args:
        epochs: maximum epochs (per stage for the hybrid); 0 picks enough for about 600 optimiser steps,
            between 30 and 150 epochs: small sets need many epochs before attention finds the signal.
        batch_size: samples per step (per process under torchrun).
        lr: peak learning rate of AdamW after warm-up.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length; cosine decay afterwards.
        patience: stop after this many epochs without a lower validation loss (0: never); epochs are counted
            only once the training set is fitted (95% training accuracy) or 3/4 of the epochs have run.
        grad_clip: maximum gradient norm.
        seed: seed of weights, shuffling and augmentation.
        num_workers: processes for preprocessing.
        class_weights: "none" or "auto" (inverse class frequency in the training loss only).
        label_smoothing: training loss only; reported losses never use it.
        device: "auto", "cpu", "cuda" or "mps".
        precision: "auto" (bf16 autocast on CUDA and on CPUs with native bf16 units), "bf16" or "fp32".
    """

    epochs: int = 0
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    patience: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0
    class_weights: str = "none"
    label_smoothing: float = 0.0
    device: str = "auto"
    precision: str = "auto"


@dataclass
class Decision:
    """How a run turns the model's probabilities into its outputs, fitted on the validation split after training.

    Args:
        temperature: softmax temperature applied to every probability the run reports (1: none).
        temperature_fitted_on: "val", or why the temperature is the default.
        threshold: for two classes, the positive class is called when its calibrated probability is at least
            this; None (runs written before thresholds existed, more than two classes): the most probable class.
        rule: the --threshold rule that chose it, or why it is the default.
        chosen_on: "val" when a rule chose it from the validation split, "fixed" for 0.5, "" for a default.
    """

    temperature: float = 1.0
    temperature_fitted_on: str = ""
    threshold: float | None = None
    rule: str = "argmax"
    chosen_on: str = ""


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
        decision: the temperature and threshold fitted after training (defaults for older runs: none, argmax).
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
    versions: dict = field(default_factory=dict)
    threshold_rule: str = "0.5"
    decision: Decision = field(default_factory=Decision)
    fold: int | None = None
    ensemble: list[str] = field(default_factory=list)
    input_version: int = 0

    def to_json(self) -> str:
        data = {"classes": self.classes, "positive_class": self.positive_class,
                "preprocess": self.preprocess.to_dict(), "model": self.model, "train": asdict(self.train),
                "augment": asdict(self.augment), "scan_kinds": self.scan_kinds,
                "modality_groups": self.modality_groups, "splits_file": self.splits_file,
                "splits_sha256": self.splits_sha256, "weights_sha256": self.weights_sha256,
                "checkpoint_sha256": self.checkpoint_sha256, "threshold_rule": self.threshold_rule,
                "decision": asdict(self.decision), "fold": self.fold, "ensemble": self.ensemble,
                "input_version": self.input_version,
                "versions": self.versions or versions()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        data = json.loads(text)
        classes = [str(c) for c in data["classes"]]
        return cls(classes=classes, preprocess=PreprocessConfig.from_dict(data["preprocess"]),
                   model=dict(data["model"]), train=TrainConfig(**data["train"]),
                   augment=AugmentConfig(**data["augment"]),
                   positive_class=str(data.get("positive_class") or classes[-1]),
                   scan_kinds=list(data.get("scan_kinds", [])), modality_groups=list(data.get("modality_groups", [])),
                   splits_file=data.get("splits_file", ""), splits_sha256=data.get("splits_sha256", ""),
                   weights_sha256=data.get("weights_sha256", ""),
                   checkpoint_sha256=list(data.get("checkpoint_sha256", [])), versions=data.get("versions", {}),
                   threshold_rule=str(data.get("threshold_rule", "0.5")),
                   decision=Decision(**data.get("decision", {})),
                   fold=None if data.get("fold") is None else int(data["fold"]),
                   ensemble=[str(member) for member in data.get("ensemble", [])],
                   input_version=int(data.get("input_version") or 0))


# ---------------------------------------------------------------- train's options and --resume
# Settings of where a run runs, not of what it learns: a resume may change them.
RUNTIME_OPTIONS = ("device", "num_workers", "precision")


def canonical_options(options: dict) -> dict:
    """train's options as a run stores them, so a resume compares like with like (--threshold Youden = youden,
    --window -1000,400 = lung)."""
    from perceiver_med.inputs.windows import parse_window
    from perceiver_med.results.statistics import parse_threshold_rule

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


def load_run_config(run: Path) -> RunConfig:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise UserError(f"{run} is not a run directory (no config.json)")
    try:
        return RunConfig.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged or not a perceiver-med config: {exc}") from None


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
