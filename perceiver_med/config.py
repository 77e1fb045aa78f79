"""Run configuration: dataclasses <-> JSON, stored in every run as config.json."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perceiver_med import __version__
from perceiver_med.datasets import AugmentConfig
from perceiver_med.errors import UserError
from perceiver_med.preprocess import PreprocessConfig

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
        patience: stop after this many epochs without a lower validation loss (0: never).
        grad_clip: maximum gradient norm.
        seed: seed of weights, shuffling and augmentation.
        num_workers: processes for preprocessing.
        class_weights: "none" or "auto" (inverse class frequency in the training loss only).
        label_smoothing: training loss only; reported losses never use it.
        device: "auto", "cpu", "cuda" or "mps".
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


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's model and its exact preprocessing."""

    classes: list[str]
    preprocess: PreprocessConfig
    model: dict
    train: TrainConfig
    augment: AugmentConfig
    splits_file: str = ""
    versions: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"classes": self.classes, "preprocess": self.preprocess.to_dict(), "model": self.model,
                "train": asdict(self.train), "augment": asdict(self.augment), "splits_file": self.splits_file,
                "versions": self.versions or versions()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        data = json.loads(text)
        return cls(classes=list(data["classes"]), preprocess=PreprocessConfig.from_dict(data["preprocess"]),
                   model=dict(data["model"]), train=TrainConfig(**data["train"]),
                   augment=AugmentConfig(**data["augment"]), splits_file=data.get("splits_file", ""),
                   versions=data.get("versions", {}))


def load_run_config(run: Path) -> RunConfig:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise UserError(f"{run} is not a run directory (no config.json)")
    try:
        return RunConfig.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged or not a perceiver-med config: {exc}") from None


def versions() -> dict:
    import numpy
    import torch

    return {"perceiver_med": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def is_laterality(classes: list[str]) -> bool:
    """Labels that name sides: a horizontal flip would swap them, so augmentation must not flip."""
    return bool(classes) and all(c.strip().lower() in LATERALITY_LABELS for c in classes)


def resolve_epochs(epochs: int, steps_per_epoch: int, target_steps: int = 600) -> int:
    """The epoch count to run: as given, or for 0 enough for about `target_steps` steps (30..150 epochs)."""
    if epochs > 0:
        return epochs
    return int(min(150, max(30, -(-target_steps // max(1, steps_per_epoch)))))
