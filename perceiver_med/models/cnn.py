"""The CNN baseline (also the hybrid's second stage), and the conv stem and deep supervision the transformers share."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from perceiver_med.configs import defaults_from
from perceiver_med.models.layers import check_norm, norm_layers

STEM_WIDTHS = (16, 32, 64)  # the conv stem of the Perceiver and the ViT: three conv-BN-ReLU-maxpool stages, 8x smaller
# Deep supervision of that stem (DeepSupervision) at the weight of the model's own loss: it lets both transformers
# leave their initial plateau on nodule points, and a larger weight is no surer (benchmarks/README.md, "Learning small
# lesions", third round).
DEEP_SUPERVISION = 1.0


class ConvStem(nn.Module):
    """conv3x3-BN-ReLU-maxpool2 stages: (B, C, H, W) -> (B, widths[-1], H / 2**k, W / 2**k) for k stages.

    The Perceiver's tokeniser (Perceiver IO's convolutional preprocessing) and the ViT's (a hybrid ViT). Max pooling
    carries a lesion of a few pixels into its token at full strength, where a linear 8x8 patch embedding mixes it
    into 64 pixels of background. Batch norm puts the features on the scale of the position features they are
    concatenated with; unnormalised, they drown in the byte array's LayerNorm (benchmarks/README.md, "Learning small
    lesions").
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], norm: str = "batch"):
        super().__init__()
        if not widths:
            raise ValueError("a convolutional stem needs at least one stage")
        check_norm(norm)
        layers, previous = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(previous, width, 3, 1, 1, bias=norm == "none"), *norm_layers(norm, width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.body = nn.Sequential(*layers)
        self.out_channels, self.reduction = previous, 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SupervisedOutput(NamedTuple):
    """A training-mode output with deep supervision: the loss is CE(logits) + weight * CE(auxiliary)."""

    logits: torch.Tensor
    auxiliary: torch.Tensor
    weight: float


class DeepSupervision(nn.Module):
    """Deep supervision of a tokeniser's stem (Lee et al. 2015, "Deeply-supervised nets"): an auxiliary linear
    classifier on the global max of the stem's feature map, trained beside the model and never used to predict.

    On small lesions attention starts uniform: the class token (or the latents) sees the mean of hundreds of tokens,
    the lesion's few among them, so the transformer's own loss trains the stem slowly. The auxiliary loss trains the
    stem as the CNN baseline's (the same stem under a global max pool) does, so the tokens carry the lesion's
    features by the time attention has to find them (benchmarks/README.md, "Learning small lesions", third round).
    """

    def __init__(self, channels: int, num_classes: int, weight: float):
        super().__init__()
        if weight <= 0:
            raise ValueError(f"the weight of deep supervision must be positive, not {weight}")
        self.weight = weight
        self.head = nn.Linear(channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float().amax(dim=(2, 3)))


def deep_supervision_head(stem: nn.Module | None, channels: int, num_classes: int, weight: float
                          ) -> DeepSupervision | None:
    """A model's DeepSupervision of its stem, or None for weight 0; a positive weight needs a stem."""
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"deep_supervision must be a finite number, 0 or more, not {weight}")
    if weight > 0 and stem is None:
        raise ValueError("deep_supervision needs a convolutional stem (stem_widths)")
    return DeepSupervision(channels, num_classes, weight) if weight > 0 else None


def with_deep_supervision(module: nn.Module, logits: torch.Tensor, features: torch.Tensor | None,
                          supervision: DeepSupervision | None) -> torch.Tensor | SupervisedOutput:
    """A model's output: its logits; in training with deep supervision, SupervisedOutput(logits, auxiliary, weight)."""
    if supervision is None or not module.training:
        return logits
    return SupervisedOutput(logits, supervision(features), supervision.weight)


def optional_stem(in_channels: int, widths: tuple[int, ...], norm: str, image_size: int, patch_size: int
                  ) -> tuple[ConvStem | None, int, int]:
    """A tokeniser's stem, or None for (); with the channels and the reduction its patches of `patch_size` see.

    A token covers patch_size x reduction input pixels, and image_size must be a multiple of that.
    """
    if patch_size < 1 or in_channels < 1:
        raise ValueError(f"patch_size and in_channels must be 1 or more, not {patch_size} and {in_channels}")
    stem = ConvStem(in_channels, tuple(widths), norm) if widths else None
    channels, reduction = (stem.out_channels, stem.reduction) if stem else (in_channels, 1)
    if image_size % (patch_size * reduction):
        raise ValueError(f"image_size must be a multiple of {patch_size * reduction} (patch size x stem reduction)")
    return stem, channels, reduction


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.skip = nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class ConvNet(nn.Module):
    """A CNN classifier for (B, C, H, W) inputs of any size; its defaults are the CNN baseline `train --model cnn`
    trains (three plain conv stages, global max pooling, batch norm), `block="residual"` makes it ResNet-style.

    Args:
        in_channels: input channels (image channels, plus one for a rollout map in the hybrid).
        num_classes: output logits.
        widths: channels of each stage; every stage after the first halves the resolution.
        dropout: dropout before the head.
        pool: "max" or "mean" over the last feature map. Max keeps a lesion of a few pixels as strong as it is;
            the mean divides it by the map's area (a 4-pixel nodule in a 192x192 grid: by ~500).
        block: "residual" (two conv-BN-ReLU per stage, strided) or "plain" (one conv3x3-ReLU per stage, 2x2 max
            pooling between stages: the CNN baseline).
        norm: normalisation after each convolution of a plain block: "batch", "group" or "none".
        pool_grid: pool each cell of a pool_grid x pool_grid division of the last feature map and concatenate: 1 is
            global pooling; 3 keeps which tile of a 3x3 slice grid a feature came from.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, widths: tuple[int, ...] = (16, 32, 64),
                 dropout: float = 0.0, pool: str = "max", block: str = "plain", pool_grid: int = 1,
                 norm: str = "batch"):
        super().__init__()
        if pool not in ("max", "mean"):
            raise ValueError(f"pool must be max or mean, not {pool!r}")
        if block not in ("residual", "plain"):
            raise ValueError(f"block must be residual or plain, not {block!r}")
        if not widths:
            raise ValueError("widths must name at least one stage")
        if pool_grid < 1:
            raise ValueError("pool_grid must be at least 1")
        check_norm(norm)
        self.pool, self.pool_grid = pool, pool_grid
        cells = pool_grid * pool_grid
        if block == "plain":
            layers, previous = [], in_channels
            for index, width in enumerate(widths):
                layers += ([nn.MaxPool2d(2)] if index else []) + [
                    nn.Conv2d(previous, width, 3, 1, 1, bias=norm == "none"), *norm_layers(norm, width),
                    nn.ReLU(inplace=True)]
                previous = width
            self.stem, self.stages = nn.Identity(), nn.Sequential(*layers)
            self.dropout, self.head = nn.Dropout(dropout), nn.Linear(previous * cells, num_classes)
            return
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, previous = [], widths[0]
        for index, width in enumerate(widths):
            stages.append(ResidualBlock(previous, width, stride=1 if index == 0 else 2))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous * cells, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))  # (B, widths[-1], h, w)
        pool = F.adaptive_max_pool2d if self.pool == "max" else F.adaptive_avg_pool2d
        return pool(features, self.pool_grid).flatten(1)  # (B, widths[-1] * pool_grid**2), channel-major

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass
@defaults_from(ConvNet)
class CNNStageConfig:
    """The CNN baseline's layers as a run stores them, also the hybrid's second stage: global max pooling, so a
    nodule of a few pixels is not averaged away over a 192x192 grid, and batch norm, which lets it fit small hard sets
    (benchmarks/README.md, "Learning small lesions", "Defaults now"). Defaults: ConvNet's."""

    num_classes: int
    widths: list[int]
    dropout: float
    pool: str
    block: str
    norm: str


@dataclass
@defaults_from(ConvNet)
class CNNConfig(CNNStageConfig):
    """train's CNN baseline: the stage on the image's own channels (the hybrid's also reads the rollout map)."""

    in_channels: int

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], num_classes: int) -> "CNNConfig":
        return cls(in_channels=input_shape[0], num_classes=num_classes)
