"""Test-time augmentation for classification (predict --tta N, evaluate --tta N): the mean of a model's
probabilities over label-preserving views of each input.

The views are the training augmentation's own kinds, so the model has seen their like: view 0 is the input
itself; view 1 its mirror image when the run trained with mirrors (never for left/right labels, where a mirror
changes the answer); the rest are random warps and intensity changes within the training ranges, without
mirroring. Each sample's views come from a generator seeded by the view alone, so a scan gets the same views
whether it is predicted alone or in a batch, and every call gives the same answer.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from einops import rearrange
from torch import nn

from perceiver_med.inputs.augment import AugmentConfig, augment_batch
from perceiver_med.errors import UserError
from perceiver_med.models import token_patch

MAX_VIEWS = 64


def check_views(views: int) -> int:
    if not 1 <= int(views) <= MAX_VIEWS:
        raise UserError(f"--tta must be between 1 (no augmentation) and {MAX_VIEWS} views, not {views}")
    return int(views)


def mirror(batch: torch.Tensor, tiles: int = 1) -> torch.Tensor:
    """Each tile mirrored left-right about its own centre (the whole image when tiles is 1): slice order kept."""
    pieces = rearrange(batch, "b c (r h) (q w) -> b c r q h w", r=tiles, q=tiles)
    return rearrange(pieces.flip(-1), "b c r q h w -> b c (r h) (q w)")


class AugmentedViews(nn.Module):
    """Wraps a model; forward returns the log of its mean probabilities over `views` views of each input."""

    def __init__(self, model: nn.Module, augment: AugmentConfig, views: int, seed: int = 0):
        super().__init__()
        self.model, self.views, self.seed = model, check_views(views), seed
        self.augment = augment
        self.patch_size = token_patch(model)  # occlusion windows follow the model's token patch

    def view(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """View k of every input of a (B, C, H, W) batch."""
        if k == 0:
            return x
        if k == 1 and self.augment.flip:
            return mirror(x, self.augment.tiles)
        warp = replace(self.augment, flip=False)
        return torch.cat([augment_batch(x[b:b + 1], warp, torch.Generator().manual_seed(self.seed * 1009 + k))
                          for b in range(len(x))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(torch.softmax(self.model(self.view(x, k)).float(), dim=1) for k in range(self.views))
        return (probs / self.views).clamp_min(torch.finfo(torch.float32).tiny).log()
