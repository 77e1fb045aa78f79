"""A run's decision rule: model probabilities -> temperature -> threshold -> decided class.

This is the one owner of the chain. The PyTorch predictor (run/predictor.py) and the ONNX predictor
(run/onnx_model.py) both decide through it, so a run and its exported model cannot disagree about a sample; it
sits below the models so that a predictor that never imports them can use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from perceiver_med.stats.statistics import apply_temperature, decisions


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


def calibrate(raw: np.ndarray, temperature: float) -> np.ndarray:
    """(N, K) model probabilities -> calibrated ones, softmax(log(raw) / T) in float64 (statistics.apply_temperature).
    Every temperature a run reports by, fitted or applied, goes through here."""
    return apply_temperature(raw, temperature)


def decide(raw: np.ndarray, decision: Decision, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """The chain itself: (N, K) model probabilities -> the run's calibrated probabilities and its predicted class
    indices (the threshold on the positive class for two classes, else the most probable class)."""
    probs = calibrate(raw, decision.temperature)
    return probs, decisions(probs, positive, decision.threshold)


class DecisionRule(Protocol):
    """What deciding needs of a run: its classes, its positive class and its Decision (a run's RunConfig, or the
    metadata of an exported model)."""

    classes: list[str]
    positive_class: str
    decision: Decision


@dataclass
class Decisions:
    """What a run says of N samples."""

    raw: np.ndarray  # (N, K) the model's probabilities (for TTA the mean over views; for an ensemble the mean of
    # its members' calibrated probabilities)
    probs: np.ndarray  # (N, K) calibrated with the run's temperature: what every output reports
    indices: np.ndarray  # (N,) the decided class of each sample
    classes: list[str]

    @property
    def names(self) -> list[str]:
        return [self.classes[int(k)] for k in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def of(cls, raw: np.ndarray, rule: DecisionRule) -> "Decisions":
        """What a run with this rule decides for model probabilities `raw` (its temperature and threshold)."""
        probs, indices = decide(raw, rule.decision, rule.classes.index(rule.positive_class))
        return cls(raw, probs, indices, rule.classes)
