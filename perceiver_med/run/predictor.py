"""Predictor: a run's inputs -> probabilities -> temperature -> threshold -> decision; for a cross-validated run,
the mean of its members' calibrated probabilities, then the ensemble's own threshold.

This is the one place that turns a PyTorch model's output into what a run reports. `evaluate`, `predict`,
`explain`, `report`, training's own final scoring and the demo go through it, and cross-validation decides its
members' and its ensemble's probabilities with it, so they cannot disagree about a sample (as nnU-Net's
nnUNetPredictor serves its command line and its Python API alike). Its decision rule is stats/decision.py's, which
the predictor of an exported ONNX model (run/onnx_model.py) shares.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from perceiver_med.models import token_patch
from perceiver_med.run.rundir import RunDir
from perceiver_med.stats.decision import Decisions
from perceiver_med.training.config import RunConfig
from perceiver_med.training.engine import Processes, pick_device, predict_probs


def mean_of_members(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """An ensemble's probabilities (N, K): the plain mean of its members' calibrated probabilities, each (N, K)."""
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    return sum(member_probs[1:], member_probs[0]) / len(member_probs)


class Predictor:
    """A finished run's model with its decision rule: `Predictor(run)` loads and checks the run directory
    (weights against config.json); `tta` > 1 averages its probabilities over that many label-preserving views of
    each input (run/tta.py). A cross-validated run is its members' Predictors (`members`; `model` is None): each
    member calibrates its own probabilities (with its views, under TTA) by its own temperature, and the run's
    probabilities are their mean.

    `Predictor.of_model(config, model)` wraps a model that is still in memory (training scores its splits
    through it), and `Predictor.of_members(config, members)` an ensemble whose config is not yet written
    (cross-validation scores its test split through it), so a run's own predictions files and a later `predict`
    are made by the same code.
    """

    def __init__(self, run: Path | str | RunDir, device: str | torch.device = "auto", tta: int = 1):
        self.run = run if isinstance(run, RunDir) else RunDir.open(run)
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.config = self.run.config()
        self.members = [Predictor(member, self.device, tta) for member in self.run.members(self.config)]
        self.model: nn.Module | None = None
        if not self.members:
            model = self.run.load_model(self.device, self.config)
            if tta != 1:
                from perceiver_med.run.tta import AugmentedViews, check_views

                model = AugmentedViews(model, self.config.augment, check_views(tta), self.config.train.seed).eval()
            self.model = model

    @classmethod
    def of_model(cls, config: RunConfig, model: nn.Module, device: torch.device,
                 run: RunDir | None = None) -> "Predictor":
        predictor = cls.__new__(cls)
        predictor.run, predictor.config, predictor.model, predictor.device = run, config, model, device
        predictor.members = []
        return predictor

    @classmethod
    def of_members(cls, config: RunConfig, members: list["Predictor"], run: RunDir | None = None) -> "Predictor":
        if not members:
            raise ValueError("an ensemble needs at least one member")
        predictor = cls.__new__(cls)
        predictor.run, predictor.config, predictor.model, predictor.device = run, config, None, members[0].device
        predictor.members = list(members)
        return predictor

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def positive(self) -> int:
        return self.config.classes.index(self.config.positive_class)

    def network(self) -> nn.Module:
        """The run as one PyTorch network whose softmax is `probabilities` (fp32, without TTA): its model, or for
        a cross-validated run its members averaged as `probabilities` averages them (ONNX export traces this)."""
        if not self.members:
            return self.model
        return _MemberMean([member.network() for member in self.members],
                           [member.config.decision.temperature for member in self.members]).eval()

    @property
    def patch_size(self) -> int | None:
        """The token patch of its model (an ensemble's: its first member's), which occlusion windows follow."""
        return self.members[0].patch_size if self.members else token_patch(self.model)

    def probabilities(self, inputs: torch.Tensor | np.ndarray, processes: Processes | None = None) -> np.ndarray:
        """(N, K) in float64, what the run's decision applies to: its model's probabilities at the run's precision
        (bf16 autocast where it trained so); for a cross-validated run the mean of its members' calibrated ones."""
        inputs = torch.from_numpy(inputs) if isinstance(inputs, np.ndarray) else inputs
        if self.members:
            return mean_of_members([member.predict(inputs, processes).probs for member in self.members])
        return predict_probs(self.model.forward, inputs, self.device, processes=processes,
                             precision=self.config.train.precision)

    def decide(self, raw: np.ndarray) -> Decisions:
        return Decisions.of(raw, self.config)

    def predict(self, inputs: torch.Tensor | np.ndarray, processes: Processes | None = None) -> Decisions:
        return self.decide(self.probabilities(inputs, processes))


class _MemberMean(nn.Module):
    """A fold ensemble as one network: the log of the mean of its members' calibrated probabilities, so that a
    softmax of its output is that mean, as Predictor.probabilities gives it."""

    def __init__(self, members: list[nn.Module], temperatures: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperatures = [float(t) for t in temperatures]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = mean_of_members([torch.softmax(member(x).float() / t, dim=1)
                                 for member, t in zip(self.members, self.temperatures)])
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
