"""Predictor: a run's inputs -> probabilities -> temperature -> threshold -> decision.

This is the one place that turns a PyTorch model's output into what a run reports. `evaluate`, `predict`,
`explain`, `report`, training's own final scoring and the demo go through it, and cross-validation decides its
members' and its ensemble's probabilities with it, so they cannot disagree about a sample (as nnU-Net's
nnUNetPredictor serves its command line and its Python API alike). Its decision rule is stats/decision.py's, which
the predictor of an exported ONNX model (run/onnx_model.py) shares.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from perceiver_med.run.rundir import RunDir
from perceiver_med.stats.decision import Decisions, decide
from perceiver_med.training.config import RunConfig
from perceiver_med.training.engine import Processes, pick_device, predict_probs


class Predictor:
    """A finished run's model with its decision rule: `Predictor(run)` loads and checks the run directory
    (weights against config.json, the fold ensemble of a cross-validated run); `tta` > 1 averages its
    probabilities over that many label-preserving views of each input (run/tta.py).

    `Predictor.of_model(config, model)` wraps a model that is still in memory (training scores its splits
    through it), so a run's own predictions files and a later `predict` are made by the same code.
    """

    def __init__(self, run: Path | str | RunDir, device: str | torch.device = "auto", tta: int = 1):
        self.run = run if isinstance(run, RunDir) else RunDir.open(run)
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.config = self.run.config()
        model = self.run.load_model(self.device, self.config)
        if tta != 1:
            from perceiver_med.run.tta import AugmentedViews, check_views

            model = AugmentedViews(model, self.config.augment, check_views(tta), self.config.train.seed).eval()
        self.model: nn.Module = model

    @classmethod
    def of_model(cls, config: RunConfig, model: nn.Module, device: torch.device,
                 run: RunDir | None = None) -> "Predictor":
        predictor = cls.__new__(cls)
        predictor.run, predictor.config, predictor.model, predictor.device = run, config, model, device
        return predictor

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @property
    def positive(self) -> int:
        return self.config.classes.index(self.config.positive_class)

    def probabilities(self, inputs: torch.Tensor | np.ndarray, processes: Processes | None = None) -> np.ndarray:
        """(N, K) model probabilities in float64, at the run's precision (bf16 autocast where it trained so)."""
        inputs = torch.from_numpy(inputs) if isinstance(inputs, np.ndarray) else inputs
        return predict_probs(self.model.forward, inputs, self.device, processes=processes,
                             precision=self.config.train.precision)

    def decide(self, raw: np.ndarray) -> Decisions:
        return Decisions.of(raw, self.config)

    def predict(self, inputs: torch.Tensor | np.ndarray, processes: Processes | None = None) -> Decisions:
        return self.decide(self.probabilities(inputs, processes))
