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


STEM_WIDTHS = (16, 32, 64)  # the conv stem of the Perceiver and the ViT: three conv-BN-ReLU-maxpool stages, 8x smaller
# Deep supervision of that stem (models.cnn.DeepSupervision) at the weight of the model's own loss: on nodule points
# a Perceiver fold and the hybrid's ViT sat at chance for 60 epochs without it, and with it left chance at epoch ~45
# and ~52. Weight 3 was no surer: it rescued one fold and lost another (benchmarks/README.md, "Learning small
# lesions", third round).
DEEP_SUPERVISION = 1.0


def cnn_config(num_classes: int) -> dict:
    """The CNN baseline, also the hybrid's second stage: global max pooling, so a nodule of a few pixels is not
    averaged away over a 192x192 grid (mean pooling left the hybrid's CNN at chance on 3-6 pixel nodules), and
    batch norm, with which it fitted 16 hard-set volumes by epoch 22 where it sat at loss 0.68 for 65 without."""
    return {"num_classes": num_classes, "widths": [16, 32, 64], "dropout": 0.0, "pool": "max", "block": "plain",
            "norm": "batch"}


def default_config(name: str, input_shape: tuple[int, int, int], num_classes: int) -> dict:
    """Sensible sizes for each model and input kind (64x64 images, 192x192 slice grids)."""
    channels, side, _ = input_shape
    if name == "perceiver":
        # A conv stem makes the byte array (24x24 elements for a grid, 8x8 for a 64x64 image): its max pooling
        # carries a 3-6 pixel nodule into one element at full strength, where linear 8x8 patches mixed it into 64
        # pixels of background and the Perceiver stayed at chance (benchmarks/README.md, "Learning small lesions").
        side_elements = side // 2 ** len(STEM_WIDTHS)
        return {"name": name, "in_channels": channels, "image_size": side, "num_classes": num_classes,
                "num_freq_bands": 6, "max_freq": float(side_elements), "num_latents": 64, "latent_dim": 128,
                "cross_heads": 1, "cross_dim_head": 64, "latent_heads": 4, "latent_dim_head": 32,
                "self_per_cross_attn": 2, "num_iterations": 2, "weight_sharing": "after_first",
                "patch_size": 1, "stem_widths": list(STEM_WIDTHS), "attn_dropout": 0.0, "ff_dropout": 0.0,
                "deep_supervision": DEEP_SUPERVISION}
    if name == "vit-rollout-cnn":
        # The ViT reads the tokens of a conv stem (the hybrid ViT of Dosovitskiy et al.): 8x8 or 16x16 linear
        # patches left it at chance on 3-6 pixel nodules. One more stage for grids keeps 12x12 tokens (8x8 for a
        # 64x64 image), so the rollout map stays a map. The second stage is the CNN baseline (global max pooling):
        # a ResNet-style stage with global mean pooling stayed at chance on such nodules; its weights on the rollout
        # channel start at zero (ViTRolloutCNN's zero_rollout), and its logits add to the ViT's (residual): the
        # CNN stage deciding alone lost test nodules its ViT had right.
        widths = [*STEM_WIDTHS, 128] if side > 96 else list(STEM_WIDTHS)
        vit = {"in_channels": channels, "image_size": side, "patch_size": 1, "stem_widths": widths,
               "num_classes": num_classes, "dim": 128, "depth": 4, "heads": 4, "dropout": 0.1,
               "deep_supervision": DEEP_SUPERVISION}
        return {"name": name, "vit": vit, "cnn": cnn_config(num_classes), "head_fusion": "mean",
                "discard_ratio": 0.0, "zero_rollout": True, "residual": True}
    if name == "cnn":
        return {"name": name, "in_channels": channels, **cnn_config(num_classes)}
    raise ValueError(f"no default configuration for {name!r}")


def token_patch(model) -> int | None:
    """Input pixels per token of a model, or of the ViT of a hybrid (None when it has no tokens: the CNN)."""
    return getattr(model, "patch_size", None) or getattr(getattr(model, "vit", None), "patch_size", None)
