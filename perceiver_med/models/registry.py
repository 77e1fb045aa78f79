"""build_model(config): rebuild any model from the JSON-able dict a run stores."""
from __future__ import annotations

from torch import nn

from perceiver_med.models.cnn import ConvNet
from perceiver_med.models.hybrid import ViTRolloutCNN
from perceiver_med.models.perceiver import Perceiver
from perceiver_med.models.vit import ViT

MODELS = {"perceiver": Perceiver, "vit": ViT, "cnn": ConvNet, "vit-rollout-cnn": ViTRolloutCNN}


def build_model(config: dict) -> nn.Module:
    """{"name": "perceiver" | "vit" | "cnn" | "vit-rollout-cnn", **keyword arguments} -> model.

    The model's `num_parameters` attribute holds its parameter count.
    """
    config = dict(config)
    name = config.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model = MODELS[name](**config)
    model.num_parameters = count_parameters(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


STEM_WIDTHS = (16, 32, 64)  # the Perceiver's conv stem: three conv-BN-ReLU-maxpool stages, 8x smaller


def cnn_config(num_classes: int) -> dict:
    """The CNN baseline, also the hybrid's second stage: global max pooling, so a nodule of a few pixels is not
    averaged away over a 192x192 grid (mean pooling left the hybrid's CNN at chance on 3-6 pixel nodules)."""
    return {"num_classes": num_classes, "widths": [16, 32, 64], "dropout": 0.0, "pool": "max", "block": "plain"}


def default_config(name: str, input_shape: tuple[int, int, int], num_classes: int) -> dict:
    """Sensible sizes for each model and input kind (64x64 images, 192x192 slice grids)."""
    channels, side, _ = input_shape
    if name == "perceiver":
        # 8x8 patches: on small data sets a pixel-level Perceiver (like perceiver-pytorch, which it matches
        # step for step) sits at chance for hundreds of steps; patch tokens learn within a few epochs.
        patch = 8
        return {"name": name, "in_channels": channels, "image_size": side, "num_classes": num_classes,
                "num_freq_bands": 6, "max_freq": float(side // patch), "num_latents": 64, "latent_dim": 128,
                "cross_heads": 1, "cross_dim_head": 64, "latent_heads": 4, "latent_dim_head": 32,
                "self_per_cross_attn": 2, "num_iterations": 2, "weight_sharing": "after_first",
                "patch_size": patch, "attn_dropout": 0.0, "ff_dropout": 0.0}
    if name == "vit-rollout-cnn":
        # The second stage is the CNN baseline (global max pooling): the old ResNet-style stage with global mean
        # pooling stayed at chance on 3-6 pixel nodules. The ViT keeps linear patches: a conv stem before them,
        # tried, did not make it learn such nodules either (benchmarks/README.md).
        vit = {"in_channels": channels, "image_size": side, "patch_size": 8 if side <= 64 else 16,
               "num_classes": num_classes, "dim": 128, "depth": 4, "heads": 4, "dropout": 0.1}
        return {"name": name, "vit": vit, "cnn": cnn_config(num_classes), "head_fusion": "mean",
                "discard_ratio": 0.0}
    if name == "cnn":
        return {"name": name, "in_channels": channels, **cnn_config(num_classes)}
    raise ValueError(f"no default configuration for {name!r}")
