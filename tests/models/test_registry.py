"""The model registry: one entry describes a model to build_model, train, its --help and its training stages."""
import json
from dataclasses import dataclass

import pytest
from torch import nn

from perceiver_med.models import (MODELS, ModelOption, ModelSpec, build_model, create_model, default_config,
                                  get_spec, model_names, model_stages, num_classes, register_model)
from perceiver_med.models.registry import unregister_model


def _layout(model):
    return [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]


@pytest.mark.parametrize("name", model_names())
def test_the_constructor_defaults_are_the_model_train_trains(name):
    """build_model({"name": n}) is what `train --model n` builds for a one-channel 64x64 image and two classes."""
    trained = build_model(default_config(name, (1, 64, 64), 2))
    alone = build_model({"name": name})
    assert _layout(alone) == _layout(trained) and alone.num_parameters == trained.num_parameters
    assert create_model(name).num_parameters == trained.num_parameters


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
