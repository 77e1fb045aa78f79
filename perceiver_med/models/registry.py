"""The model registry: each model is one ModelSpec, and nothing outside models/ tests a model's name.

A spec carries the name, the config dataclass (the keyword arguments a run stores, with their types; defaults:
the constructor's, derived for an input shape and class count), the command-line options `train` takes for it, how
to build it and its training stages. A run stores its model as {"name": ..., **keyword arguments} in config.json;
`build_model` rebuilds it from that dict through the config dataclass: a key the dict leaves out takes the default,
so `build_model({"name": "cnn"})`, like `ConvNet()`, is the CNN `train --model cnn` trains on a one-channel 64x64
input with two classes, and a key the dataclass does not declare is refused. Adding a model is one module (its
nn.Module and config dataclass) and one `register_model(ModelSpec(...))` call (timm's `@register_model` /
`create_model(name, **kwargs)`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from perceiver_med.configs import from_dict, to_dict
from perceiver_med.io.limits import over_memory
from perceiver_med.models.cnn import CNNConfig, ConvNet
from perceiver_med.models.hybrid import HybridConfig, ViTRolloutCNN
from perceiver_med.models.perceiver import Perceiver, PerceiverConfig
from perceiver_med.models.vit import ViT, ViTConfig


# ---------------------------------------------------------------- stages and options
def _module_alone(module: nn.Module, x):
    return module(x)


@dataclass
class Stage:
    """One fit: `module` trains; call(m, batch) gives the stage's logits, where m is the module or, under DDP, its
    wrapper (the hybrid's CNN stage: the whole hybrid's logits). `frozen` stays in eval mode without gradients."""

    name: str
    module: nn.Module
    call: Callable[[nn.Module, Any], Any] = _module_alone
    frozen: nn.Module | None = None
    starts_trained: bool = False  # its starting weights are a model already (the residual hybrid: its ViT)

    def forward(self, x):
        return self.call(self.module, x)


@dataclass(frozen=True)
class ModelOption:
    """A keyword argument `train` offers as --<name> (underscores as dashes); `part` names the sub-config that holds
    it ("vit": the hybrid's ViT), None the model's own keywords. Its default is the config dataclass's. Its range,
    `minimum` to `maximum` (None: unbounded), holds on the command line (shown in --help) and in config.json."""

    name: str
    help: str
    type: type = int
    minimum: float | None = 1
    metavar: str = "N"
    part: str | None = None
    maximum: float | None = None

    def check(self, value) -> None:
        """ValueError naming the option when `value` is outside its range."""
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            span = (f"from {low:g} to {high:g}" if low is not None and high is not None else
                    f"{low:g} or more" if low is not None else f"{high:g} or less")
            raise ValueError(f"{self.name} must be {span}, not {value}")


# A model in training holds its weights, their gradients and AdamW's two moments: 4 float32 values per parameter.
TRAINING_BYTES_PER_PARAMETER = 16


@dataclass(frozen=True)
class ModelSpec:
    """A model as the registry knows it.

    Args:
        name: what --model and config.json's model["name"] call it.
        model: the nn.Module class, built from the config's keyword arguments.
        config: the config dataclass: the keyword arguments a run stores, at the constructor's defaults, a
            `for_input(input_shape, num_classes)` classmethod, and derived values (None fields) filled in its
            __post_init__.
        options: the keyword arguments `train` takes as command-line options.
        stages: the model's training stages, in order (None: one stage, named after the model).
        input_part: the sub-config that holds in_channels, image_size and num_classes, if not the model's own.
        trains: offered by `train` (False: a building block that build_model still rebuilds).
        summary: one line for --help.
    """

    name: str
    model: type[nn.Module]
    config: type
    options: tuple[ModelOption, ...] = ()
    stages: Callable[[nn.Module], list[Stage]] | None = None
    trains: bool = True
    summary: str = ""
    input_part: str | None = None  # the sub-config holding in_channels, image_size and num_classes ("vit")

    def defaults(self, input_shape: tuple[int, int, int], num_classes: int, **options) -> dict:
        """The stored dict {"name": ..., **keyword arguments} `train` writes, with `options` (ModelOption names)
        set in their parts; refused (ValueError) where the model would refuse it."""
        known = {option.name: option for option in self.options}
        for key in options:
            if key not in known:
                raise ValueError(f"{self.name} takes no option {key!r}")
        config = to_dict(self.config.for_input(input_shape, num_classes))
        for key, value in options.items():
            (config[known[key].part] if known[key].part else config)[key] = value
        stored = {"name": self.name, **config}
        build_model(stored)  # the model's own checks, now rather than at the first batch
        return stored

    def build(self, kwargs: dict) -> nn.Module:
        """The model of stored keyword arguments; ValueError for an option out of its range, or a model too big for
        this machine (counted on the meta device, where building allocates nothing)."""
        values = self.option_values(kwargs)
        for option in self.options:
            option.check(values[option.name])
        arguments = complete(self.config, kwargs)
        state = torch.random.get_rng_state()  # the probe draws nothing from the generator the weights come from
        with torch.device("meta"):
            probe = self.model(**arguments)
        torch.random.set_rng_state(state)
        problem = over_memory(count_parameters(probe) * TRAINING_BYTES_PER_PARAMETER,
                              f"a {self.name} of {count_parameters(probe):,} parameters in training")
        if problem:
            raise ValueError(problem)
        return self.model(**arguments)

    def option_values(self, stored: dict) -> dict:
        """The values of this model's options in a stored dict (keys it lacks at their defaults)."""
        completed = complete(self.config, {k: v for k, v in stored.items() if k != "name"})
        return {option.name: (completed[option.part] if option.part else completed)[option.name]
                for option in self.options}

    def training_stages(self, model: nn.Module) -> list[Stage]:
        return self.stages(model) if self.stages else [Stage(self.name, model)]


def complete(config_type: type, kwargs: dict) -> dict:
    """kwargs read through the config dataclass (configs.from_dict): the keys it leaves out at their defaults, each
    value checked against its field's type; ValueError naming a key the dataclass does not declare."""
    return to_dict(from_dict(config_type, kwargs))


def _hybrid_stages(model: ViTRolloutCNN) -> list[Stage]:
    """The ViT first, then the whole hybrid with the CNN the only part training."""
    return [Stage("vit", model.vit),
            Stage("cnn", model.cnn, model.stage_two, model.vit, starts_trained=model.residual)]


DEEP_SUPERVISION_OPTION = ("weight of the deep supervision of the conv stem in training (the ViT's in the hybrid); 0 "
                           "turns it off")

# ---------------------------------------------------------------- the registry
MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"a model named {spec.name!r} is registered already")
    MODELS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    MODELS.pop(name, None)


register_model(ModelSpec(
    "perceiver", Perceiver, PerceiverConfig, summary="Perceiver: latents cross-attend to a conv stem's map",
    options=(ModelOption("num_latents", "latents", maximum=4096),
             ModelOption("latent_dim", "latent width", maximum=4096),
             ModelOption("num_iterations", "iterations of cross-attention and latent blocks", maximum=64),
             ModelOption("deep_supervision", DEEP_SUPERVISION_OPTION, float, 0.0, "W"))))
register_model(ModelSpec(
    "vit-rollout-cnn", ViTRolloutCNN, HybridConfig, stages=_hybrid_stages, input_part="vit",
    summary="a ViT, then a CNN on the image and the ViT's attention rollout",
    options=(ModelOption("depth", "ViT blocks", part="vit", maximum=64),
             ModelOption("dim", "ViT width", part="vit", maximum=4096),
             ModelOption("deep_supervision", DEEP_SUPERVISION_OPTION, float, 0.0, "W", part="vit"))))
register_model(ModelSpec("cnn", ConvNet, CNNConfig, summary="a plain three-stage CNN with global max pooling"))
register_model(ModelSpec("vit", ViT, ViTConfig, trains=False, summary="a ViT alone (the hybrid's first stage)"))

DEFAULT_MODEL = "perceiver"


def model_names() -> tuple[str, ...]:
    """The models `train` offers, in registration order."""
    return tuple(name for name, spec in MODELS.items() if spec.trains)


def get_spec(name: str | None, trainable: bool = False) -> ModelSpec:
    """The spec of a model name (any case); ValueError naming the choices, and the nearest one, otherwise."""
    choices = model_names() if trainable else tuple(MODELS)
    key = name.strip().lower() if isinstance(name, str) else ""
    if key in choices:
        return MODELS[key]
    near = difflib.get_close_matches(key, choices, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ValueError(f"{name!r} is not a model: {hint}choose {', '.join(choices)}")


def build_model(config: dict) -> nn.Module:
    """{"name": <a registered model>, **keyword arguments} -> model; keys left out take train's defaults.

    The model's `num_parameters` attribute holds its parameter count.
    """
    config = dict(config)
    model = get_spec(config.pop("name", None)).build(config)
    model.num_parameters = count_parameters(model)
    return model


def create_model(name: str, input_shape: tuple[int, int, int] = (1, 64, 64), num_classes: int = 2,
                 **options) -> nn.Module:
    """The model `train --model NAME` trains for an input shape and class count, with its options."""
    return build_model(default_config(name, input_shape, num_classes, **options))


def default_config(name: str, input_shape: tuple[int, int, int], num_classes: int, **options) -> dict:
    """The stored dict `train` writes for a model, an input shape (C, H, W) and a class count, with options."""
    return get_spec(name).defaults(input_shape, num_classes, **options)


def model_stages(model: nn.Module, name: str) -> list[Stage]:
    """A model's training stages, as its spec declares them."""
    return get_spec(name).training_stages(model)


def num_classes(config: dict) -> int:
    """The outputs of a stored model dict."""
    spec = get_spec(config.get("name"))
    completed = complete(spec.config, {k: v for k, v in config.items() if k != "name"})
    return int((completed[spec.input_part] if spec.input_part else completed).get("num_classes", 2))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def token_patch(model) -> int | None:
    """Input pixels per token of a model, or of the ViT of a hybrid (None when it has no tokens: the CNN)."""
    return getattr(model, "patch_size", None) or getattr(getattr(model, "vit", None), "patch_size", None)


def option_owners() -> dict[str, list[str]]:
    """Each model option `train` offers -> the models that take it, in registration order."""
    owners: dict[str, list[str]] = {}
    for name in model_names():
        for option in MODELS[name].options:
            owners.setdefault(option.name, []).append(name)
    return owners
