"""ViT + attention rollout + CNN: the ViT's rollout map is stacked onto the input for a CNN, whose logits add to
the ViT's."""
from __future__ import annotations

import torch
from torch import nn

from perceiver_med.models.cnn import ConvNet
from perceiver_med.models.layers import batch_statistics
from perceiver_med.models.rollout import attention_rollout, rollout_map
from perceiver_med.models.vit import ViT


class ViTRolloutCNN(nn.Module):
    """Stage 1: `vit` classifies the input. Stage 2: `cnn` reads [input, rollout map of the frozen ViT] and classifies
    it (residual False) or corrects the ViT's logits (residual True, the default of `train`).

    Args:
        vit: keyword arguments of the ViT.
        cnn: keyword arguments of the ConvNet (its in_channels is set to image channels + 1).
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
                 discard_ratio: float = 0.0, zero_rollout: bool = False, residual: bool = False):
        super().__init__()
        vit = dict(vit or {})
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
