"""ViT + attention rollout + CNN: the ViT's rollout map is stacked onto the input for a CNN, whose logits add to
the ViT's."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from perceiver_med.configs import defaults_from, to_dict
from perceiver_med.models.cnn import DEEP_SUPERVISION, STEM_WIDTHS, CNNStageConfig, ConvNet
from perceiver_med.models.layers import batch_statistics
from perceiver_med.models.rollout import attention_rollout, rollout_map
from perceiver_med.models.vit import ViT


@dataclass
@defaults_from(ViT)
class HybridViTConfig:
    """The hybrid's ViT as a run stores it: ViT's defaults, except that it reads the tokens of a conv stem (the
    hybrid ViT of Dosovitskiy et al.), which carry a 3-6 pixel nodule at full strength where linear patches dilute
    it (benchmarks/README.md, "Learning small lesions"), with deep supervision of that stem and dropout. One more
    stage for sides over 96 (grids) keeps 12x12 tokens (8x8 for a 64x64 image), so the rollout map stays a map
    (stem_widths None: chosen so)."""

    in_channels: int
    image_size: int
    patch_size: int = 1
    stem_widths: list[int] | None = None
    num_classes: int
    dim: int
    depth: int
    heads: int
    dropout: float = 0.1
    deep_supervision: float = DEEP_SUPERVISION

    def __post_init__(self):
        if self.stem_widths is None:
            self.stem_widths = [*STEM_WIDTHS, 128] if self.image_size > 96 else list(STEM_WIDTHS)


def hybrid_vit_arguments(vit: dict | None) -> dict:
    """The ViT's keyword arguments of a hybrid: those given, the others HybridViTConfig's defaults (keys it does not
    declare, such as `pool`, pass to the ViT as given)."""
    given = dict(vit or {})
    declared = {f.name for f in fields(HybridViTConfig)}
    return {**given, **to_dict(HybridViTConfig(**{k: v for k, v in given.items() if k in declared}))}


class ViTRolloutCNN(nn.Module):
    """Stage 1: `vit` classifies the input. Stage 2: `cnn` reads [input, rollout map of the frozen ViT] and classifies
    it (residual False) or corrects the ViT's logits (residual True). Its defaults are the hybrid `train` trains on a
    one-channel 64x64 image with two classes.

    Args:
        vit: keyword arguments of the ViT; those left out take HybridViTConfig's defaults (a conv stem, deep
            supervision), not the plain ViT's.
        cnn: keyword arguments of the ConvNet (the CNN baseline by default; its in_channels is set to image
            channels + 1, its num_classes defaults to the ViT's).
        head_fusion, discard_ratio: attention rollout options.
        zero_rollout: start the CNN's first weights on the rollout channel at zero, so that the second stage starts
            as the CNN baseline on the image and takes up the rollout as far as it helps: the rollout of a ViT still
            at chance is noise that random weights there pass on (benchmarks/README.md, "Learning small lesions",
            third round).
        residual: the hybrid's logits are the frozen ViT's plus the CNN's, and the CNN's head starts at zero: the
            second stage starts as the trained ViT and learns a correction to it, so it keeps what the ViT knows
            (benchmarks/README.md, "Learning small lesions", fourth round).
    """

    def __init__(self, *, vit: dict | None = None, cnn: dict | None = None, head_fusion: str = "mean",
                 discard_ratio: float = 0.0, zero_rollout: bool = True, residual: bool = True):
        super().__init__()
        vit = hybrid_vit_arguments(vit)
        self.vit = ViT(**vit)
        cnn = dict(cnn or {})
        cnn["in_channels"] = vit.get("in_channels", 1) + 1
        cnn.setdefault("num_classes", vit.get("num_classes", 2))
        self.cnn = ConvNet(**cnn)
        self.head_fusion, self.discard_ratio, self.residual = head_fusion, discard_ratio, residual
        if residual:
            nn.init.zeros_(self.cnn.head.weight)
            nn.init.zeros_(self.cnn.head.bias)
        if zero_rollout:
            first = next(m for m in self.cnn.modules() if isinstance(m, nn.Conv2d))
            with torch.no_grad():
                first.weight[:, -1].zero_()

    @torch.no_grad()
    def vit_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ViT's logits and its (B, 1, H, W) rollout map, max 1 per image; computed without gradients."""
        logits, attentions = self.vit(x, return_attention=True)
        weights = attention_rollout(attentions, self.head_fusion, self.discard_ratio)
        return logits, rollout_map(weights, x.shape[-2:]).to(x.dtype)

    def rollout(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) rollout map of the ViT, max 1 per image; computed without gradients."""
        return self.vit_outputs(x)[1]

    def stage_two(self, cnn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The hybrid's logits with `cnn` as its second stage (self.cnn, or the wrapper that trains it).

        With residual, while the CNN stage trains, the frozen ViT normalises with the statistics of the batch, as in
        its own training: its running statistics describe un-augmented inputs (engine.recompute_batch_norm), and on
        augmented ones they would give errors the CNN stage learns to correct although evaluation never makes them
        (benchmarks/README.md, "Learning small lesions", fourth round).
        """
        # self.cnn's mode, not cnn's: fit switches the CNN itself between train and eval, never its DDP wrapper
        with batch_statistics(self.vit, self.residual and self.cnn.training):
            logits, rollout = self.vit_outputs(x)
        corrections = cnn(torch.cat([x, rollout], dim=1))
        return corrections + logits.to(corrections.dtype) if self.residual else corrections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_two(self.cnn, x)


@dataclass
class HybridCNNConfig(CNNStageConfig):
    """The hybrid's CNN stage as a run stores it: the CNN baseline's layers (CNNStageConfig), with as many outputs as
    the ViT has (num_classes None: the ViT's, filled in by HybridConfig)."""

    num_classes: int | None = None


@dataclass
@defaults_from(ViTRolloutCNN)
class HybridConfig:
    """train's ViT + rollout + CNN as a run stores it; defaults: ViTRolloutCNN's. The second stage is the CNN
    baseline (global max pooling, which keeps a small nodule's response); its weights on the rollout channel start at
    zero (zero_rollout), and its logits add to the ViT's (residual), so it corrects the ViT rather than replacing it.
    `vit` and `cnn` given in part are completed from HybridViTConfig and HybridCNNConfig."""

    vit: HybridViTConfig | None
    cnn: HybridCNNConfig | None
    head_fusion: str
    discard_ratio: float
    zero_rollout: bool
    residual: bool

    def __post_init__(self):
        self.vit = self.vit or HybridViTConfig()
        self.cnn = self.cnn or HybridCNNConfig()
        if self.cnn.num_classes is None:
            self.cnn.num_classes = self.vit.num_classes

    def check(self) -> None:
        if self.cnn.num_classes != self.vit.num_classes:
            raise ValueError(f"cnn.num_classes must be the ViT's, {self.vit.num_classes}, not {self.cnn.num_classes}")

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], num_classes: int) -> "HybridConfig":
        return cls(vit=HybridViTConfig(in_channels=input_shape[0], image_size=input_shape[1], num_classes=num_classes))
