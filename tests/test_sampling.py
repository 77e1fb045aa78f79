"""The training sampler: counts of samples drawn per class over an epoch, and the choice a run records."""
import json

import pytest
import torch

from perceiver_med.errors import UserError
from perceiver_med.training.config import choose_sampler
from perceiver_med.training.engine import epoch_order
from tests.conftest import CPU


def test_a_balanced_epoch_draws_each_class_about_equally_often():
    labels = torch.tensor([0] * 900 + [1] * 100)  # 1:9
    shuffled = epoch_order(labels, "shuffle", 2, seed=5)
    assert sorted(shuffled.tolist()) == list(range(1000))  # each sample once: the classes stay 900:100
    balanced = epoch_order(labels, "balanced", 2, seed=5)
    drawn = torch.bincount(labels[balanced], minlength=2).tolist()
    assert len(balanced) == 1000 and abs(drawn[1] - 500) < 80, drawn  # binomial(1000, 1/2): 80 is 5 sd
    assert torch.equal(balanced, epoch_order(labels, "balanced", 2, seed=5))  # the seed decides the draw
    absent = epoch_order(torch.tensor([0] * 30 + [2] * 10), "balanced", 3, seed=1)  # a class with no sample
    assert abs(int((absent >= 30).sum()) - 20) <= 12


def test_a_rare_class_chooses_the_balanced_sampler_unless_told_otherwise():
    assert choose_sampler(["benign"] * 50 + ["malignant"] * 5, None) == "balanced"  # 1:10, as LUNA25
    assert choose_sampler(["benign"] * 40 + ["malignant"] * 10, None) == "shuffle"  # 1:4 is not rare
    assert choose_sampler(["benign"] * 50 + ["malignant"] * 5, None, "auto") == "shuffle"  # weighted loss already
    assert choose_sampler(["benign"] * 50 + ["malignant"] * 5, "shuffle") == "shuffle"
    with pytest.raises(UserError, match="choose one"):
        choose_sampler(["a", "b"], "balanced", "auto")


def test_a_run_on_a_rare_class_records_its_balanced_sampler(knee, tmp_path):
    from perceiver_med.inputs.splits import read_splits, write_splits
    from perceiver_med.workflows.train import TrainRequest, train

    rows = read_splits(knee / "splits.csv")
    kept, lefts = [], 0
    for row in rows:  # keep a single left knee in the training split: right outnumbers it more than 4 to 1
        lefts += row.split == "train" and row.label == "left"
        if not (row.split == "train" and row.label == "left" and lefts > 1):
            kept.append(row)
    write_splits(kept, tmp_path / "rare.csv")
    result = train(TrainRequest(tmp_path / "rare.csv", tmp_path / "run", "perceiver",
                                dict(size=16, epochs=1, batch_size=8, num_latents=4, latent_dim=16), CPU))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["sampler"] == "balanced"
    assert result.config.train.sampler == "balanced"
