"""The model registry: one entry describes a model to build_model, train, its --help and its training stages."""
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from perceiver_med.models import (MODELS, ConvNet, ModelOption, ModelSpec, Perceiver, ViT, ViTRolloutCNN, build_model,
                                  count_parameters, create_model, default_config, get_spec, model_names, model_stages,
                                  num_classes, register_model)
from perceiver_med.models.registry import unregister_model


def _layout(model):
    return [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]


# Each registered model's class as a library user calls it, given only the input: (channels, side, classes) ->
# the constructor's keyword arguments.
CONSTRUCTED = {
    "perceiver": (Perceiver, lambda c, s, k: dict(in_channels=c, image_size=s, num_classes=k)),
    "cnn": (ConvNet, lambda c, s, k: dict(in_channels=c, num_classes=k)),
    "vit-rollout-cnn": (ViTRolloutCNN, lambda c, s, k: dict(vit=dict(in_channels=c, image_size=s, num_classes=k))),
    "vit": (ViT, lambda c, s, k: dict(in_channels=c, image_size=s, num_classes=k)),
}


def test_every_registered_model_is_checked_against_its_constructor():
    assert set(CONSTRUCTED) == set(MODELS)


@pytest.mark.parametrize("channels,side,classes", [(1, 64, 2), (3, 128, 3)], ids=["defaults", "grid"])
@pytest.mark.parametrize("name", list(CONSTRUCTED))
def test_the_constructor_defaults_are_the_model_train_trains(name, channels, side, classes):
    """`Model(<input size>)` is `create_model(name, input)`, what `train --model name` builds: from the same seed the
    same weights (zero_rollout and residual start some at zero), and with them the same outputs (pooling, position
    frequencies, the residual sum hold no weights)."""
    model_class, arguments = CONSTRUCTED[name]
    config = default_config(name, (channels, side, side), classes)
    torch.manual_seed(0)  # as train seeds it, after the config is made
    trained = build_model(config).eval()
    assert _layout(create_model(name, (channels, side, side), classes)) == _layout(trained)
    torch.manual_seed(0)
    alone = model_class(**arguments(channels, side, classes)).eval()
    assert _layout(alone) == _layout(trained) and count_parameters(alone) == trained.num_parameters
    assert all(torch.equal(tensor, alone.state_dict()[key]) for key, tensor in trained.state_dict().items())
    x = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(alone(x), trained(x))


def test_the_default_parameter_counts_are_train_s():
    """Hand-recorded counts of train's models for a one-channel 64x64 image and two classes (the constructors'
    defaults gave 6,943,598, 307,506 and 1,118,020 while they differed from train's)."""
    assert (count_parameters(Perceiver()), count_parameters(ConvNet()), count_parameters(ViTRolloutCNN())) == (
        1_540_956, 23_538, 857_590)


def test_a_key_the_config_does_not_declare_is_refused_with_its_name():
    """config.json's model dict reaches a constructor only through the config dataclass: an undeclared argument,
    at the top or in a part, is an error naming it (the model's own arguments a run does not store among them)."""
    with pytest.raises(ValueError, match="^num_latent is not a setting"):
        build_model({"name": "perceiver", "num_latent": 8})
    with pytest.raises(ValueError, match=r"^vit\.pool is not a setting"):
        build_model({"name": "vit-rollout-cnn", "vit": {"pool": "mean"}})
    with pytest.raises(ValueError, match=r"^cnn\.pool_grid is not a setting"):
        build_model({"name": "vit-rollout-cnn", "cnn": {"pool_grid": 3}})
    with pytest.raises(ValueError, match="widths must be a list"):
        build_model({"name": "cnn", "widths": 16})


def test_the_stored_format_is_unchanged():
    """config.json's model dict, as train has written it: hand-written oracles."""
    assert default_config("cnn", (3, 64, 64), 2) == {
        "name": "cnn", "in_channels": 3, "num_classes": 2, "widths": [16, 32, 64], "dropout": 0.0, "pool": "max",
        "block": "plain", "norm": "batch"}
    perceiver = default_config("perceiver", (1, 192, 192), 2)
    assert list(perceiver)[:6] == ["name", "in_channels", "image_size", "num_classes", "num_freq_bands", "max_freq"]
    assert perceiver["max_freq"] == 24.0 and perceiver["stem_widths"] == [16, 32, 64]
    hybrid = default_config("vit-rollout-cnn", (1, 192, 192), 3)
    assert list(hybrid) == ["name", "vit", "cnn", "head_fusion", "discard_ratio", "zero_rollout", "residual"]
    assert hybrid["vit"]["stem_widths"] == [16, 32, 64, 128] and hybrid["cnn"]["num_classes"] == 3
    assert json.loads(json.dumps(hybrid)) == hybrid and num_classes(hybrid) == 3


def test_options_land_where_their_model_keeps_them_and_bad_ones_are_refused():
    hybrid = default_config("vit-rollout-cnn", (1, 64, 64), 2, depth=2, dim=32)
    assert hybrid["vit"]["depth"] == 2 and hybrid["vit"]["dim"] == 32 and "depth" not in hybrid
    assert get_spec("vit-rollout-cnn").option_values(hybrid)["depth"] == 2
    with pytest.raises(ValueError, match="takes no option 'depth'"):
        default_config("perceiver", (1, 64, 64), 2, depth=2)
    with pytest.raises(ValueError, match="deep_supervision"):  # the model's own check, where the config is made
        default_config("perceiver", (1, 64, 64), 2, deep_supervision=-1.0)


def test_a_misspelt_name_is_refused_with_the_nearest_one():
    with pytest.raises(ValueError, match="did you mean 'perceiver'"):
        get_spec("perciever", trainable=True)
    with pytest.raises(ValueError, match="choose perceiver, vit-rollout-cnn, cnn"):
        get_spec("vit", trainable=True)  # a building block, not offered by train
    assert get_spec("CNN").name == "cnn"


def test_the_hybrid_declares_its_two_stages():
    model = build_model(default_config("vit-rollout-cnn", (1, 32, 32), 2, depth=1, dim=32))
    stages = model_stages(model, "vit-rollout-cnn")
    assert [s.name for s in stages] == ["vit", "cnn"] and stages[0].module is model.vit
    assert stages[1].module is model.cnn and stages[1].frozen is model.vit and stages[1].starts_trained
    assert [s.name for s in model_stages(build_model({"name": "cnn"}), "cnn")] == ["cnn"]


# ---------------------------------------------------------------- adding a model: one module, one entry
class PooledLinear(nn.Module):
    """A model in the shape of a new module: typed keyword arguments with train's defaults, checked."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, grid: int = 4):
        super().__init__()
        if grid < 1:
            raise ValueError("grid must be at least 1")
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.head = nn.Linear(in_channels * grid * grid, num_classes)

    def forward(self, x):
        return self.head(self.pool(x).flatten(1))


@dataclass
class PooledLinearConfig:
    """Its config: the defaults train uses, and the input-dependent values."""

    in_channels: int = 1
    num_classes: int = 2
    grid: int = 4

    @classmethod
    def for_input(cls, input_shape, num_classes):
        return cls(in_channels=input_shape[0], num_classes=num_classes)


@pytest.fixture
def pooled_linear():
    spec = register_model(ModelSpec("pooled-linear", PooledLinear, PooledLinearConfig,
                                    options=(ModelOption("grid", "pooling grid side"),), summary="a test model"))
    yield spec
    unregister_model(spec.name)


def test_a_registered_model_trains_through_the_library_with_no_other_edit(pooled_linear, knee, tmp_path):
    from perceiver_med.training.config import Runtime
    from perceiver_med.workflows.train import TrainRequest, train

    assert "pooled-linear" in model_names()
    result = train(TrainRequest(knee / "splits.csv", tmp_path / "run", "pooled-linear",
                                dict(size=32, epochs=2, batch_size=8, patience=0, grid=2), Runtime(device="cpu")))
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert stored == {"name": "pooled-linear", "in_channels": 1, "num_classes": 2, "grid": 2}
    assert result.num_parameters == 1 * 2 * 2 * 2 + 2 and result.metrics["test"]["n"] > 0
    (tmp_path / "run" / "metrics.json").unlink()  # as if interrupted: a finished run is not resumed at all
    with pytest.raises(Exception, match="--grid"):  # a resume refuses an option that contradicts the run
        train(TrainRequest(None, tmp_path / "run", options={"grid": 3}, resume=True))
    with pytest.raises(Exception, match="--grid is an option of pooled-linear, not cnn"):
        train(TrainRequest(knee / "splits.csv", tmp_path / "other", "cnn", {"grid": 3}))
    assert "pooled-linear" in MODELS
