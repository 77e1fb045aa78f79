"""The folds of a cross-validated run as one model (train --cv)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from perceiver_med.models.registry import token_patch

Probabilities = TypeVar("Probabilities", np.ndarray, torch.Tensor)


def mean_of_members(member_probs: Sequence[Probabilities]) -> Probabilities:
    """An ensemble's probabilities (N, K): the plain mean of its members' calibrated probabilities, each (N, K).

    Arrays or tensors alike: `Ensemble` (what predict, evaluate and explain load) and cross-validation's own
    scores of the ensemble average with this one function, so they cannot disagree about a sample.
    """
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    return sum(member_probs[1:], member_probs[0]) / len(member_probs)


class Ensemble(nn.Module):
    """Returns the log of the mean of the members' calibrated probabilities, softmax(logits / T_k).

    Being log-probabilities already, softmax of the output is that mean itself, so `predict_probs`, `evaluate`
    and occlusion evidence use an ensemble exactly as they use one model.
    """

    def __init__(self, members: list[nn.Module], temperatures: list[float]):
        super().__init__()
        if not members or len(members) != len(temperatures):
            raise ValueError("an ensemble needs one temperature per member, and at least one member")
        self.members = nn.ModuleList(members)
        self.temperatures = [float(t) for t in temperatures]
        self.patch_size = token_patch(members[0])  # occlusion windows follow the members' token patch

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = mean_of_members([torch.softmax(member(x).float() / t, dim=1)
                                 for member, t in zip(self.members, self.temperatures)])
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
