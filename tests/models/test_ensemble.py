"""A cross-validated run's ensemble: one mean of the members' calibrated probabilities, whoever asks for it."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from perceiver_med.models.ensemble import Ensemble, mean_of_members


class Fixed(nn.Module):
    """Gives the same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_the_ensemble_model_and_cross_validation_average_alike():
    """Oracle by hand: softmax([0, ln 3]) = (1/4, 3/4) at T = 1; at T = 2 softmax([0, ln 9] / 2) is the same;
    softmax([ln 4, 0]) = (4/5, 1/5) at T = 1. The mean is (0.25 + 0.25 + 0.8, 0.75 + 0.75 + 0.2) / 3."""
    members = [Fixed([0.0, np.log(3)]), Fixed([0.0, np.log(9)]), Fixed([np.log(4), 0.0])]
    by_hand = np.array([1.3, 1.7]) / 3
    with torch.no_grad():
        model = Ensemble(members, [1.0, 2.0, 1.0])
        probs = torch.softmax(model(torch.zeros(2, 1, 4, 4)), dim=1).double().numpy()
    np.testing.assert_allclose(probs, [by_hand, by_hand], atol=1e-6)
    # what cross-validation averages: each member's calibrated probabilities as float64 arrays
    calibrated = [np.array([[0.25, 0.75]]), np.array([[0.25, 0.75]]), np.array([[0.8, 0.2]])]
    np.testing.assert_allclose(mean_of_members(calibrated), [by_hand], rtol=1e-15)
    assert np.array_equal(mean_of_members(calibrated), np.mean(calibrated, axis=0))
