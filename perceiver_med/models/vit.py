"""Vision Transformer with an explicit-softmax path that returns every layer's attention weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perceiver_med.configs import defaults_from
from perceiver_med.models.cnn import deep_supervision_head, optional_stem, with_deep_supervision
from perceiver_med.models.layers import self_attend


def sincos_embedding(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid + 1, dim) fixed 2D sine-cosine position embedding; row 0 (the CLS token) is zero."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    parts = []
    for coordinate in (ys.flatten(), xs.flatten()):
        angles = coordinate[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    table = torch.cat([table, torch.zeros(len(table), dim - table.shape[1])], dim=1)
    return torch.cat([torch.zeros(1, dim), table])


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, return_attention: bool = False):
        out, weights = self_attend(self.qkv(x), self.heads, self.dropout, self.training, return_attention)
        return self.proj(out), weights


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x, return_attention: bool = False):
        attended, weights = self.attn(self.norm1(x), return_attention)
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class ViT(nn.Module):
    """ViT classifier for (B, C, H, W) images.

    Args:
        in_channels: image channels.
        image_size: side of the square input.
        patch_size: side of a patch, in pixels of the image or of the stem's feature map; image_size must be a
            multiple of patch_size times the stem's reduction.
        num_classes: output logits.
        dim: token width.
        depth: transformer blocks.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to dim.
        dropout: dropout rate.
        stem_widths: channels of a convolutional stem (conv3x3-BN-ReLU-maxpool stages, as in the hybrid ViT of
            Dosovitskiy et al.) whose feature map is cut into patches; () for patches of the image itself.
        stem_norm: the stem's normalisation, "batch" (default), "group" or "none".
        pool: "cls" (the class token) or "mean" (the mean of the patch tokens) feeds the head.
        deep_supervision: weight of the loss of an auxiliary classifier on the stem (DeepSupervision) in training; 0
            for none. It never feeds the predictions, nor the attention that rollout reads.

    `patch_size` as an attribute is the side, in input pixels, of the square one token covers.
    """

    def __init__(self, *, in_channels: int = 1, image_size: int = 64, patch_size: int = 8, num_classes: int = 2,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 stem_widths: tuple[int, ...] = (), stem_norm: str = "batch", pool: str = "cls",
                 deep_supervision: float = 0.0):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be cls or mean, not {pool!r}")
        stem, channels, reduction = optional_stem(in_channels, stem_widths, stem_norm, image_size, patch_size)
        self.image_size, self.patch_size, self.pool = image_size, patch_size * reduction, pool
        self.grid = image_size // self.patch_size
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        if stem is not None:
            self.patch_embed = nn.Sequential(stem, self.patch_embed)
        self.supervision = deep_supervision_head(stem, channels, num_classes, deep_supervision)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # learned, but started from 2D sin-cos (as in MAE): with small random starts a ViT on a few hundred
        # images sits position-blind at chance for a long time, and laterality is all about position
        self.pos_embed = nn.Parameter(sincos_embedding(self.grid, dim)[None])
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, D) patch tokens, and the stem's feature map (None without a stem)."""
        if not isinstance(self.patch_embed, nn.Sequential):
            return self.patch_embed(x).flatten(2).transpose(1, 2), None
        stem, project = self.patch_embed
        features = stem(x)
        return project(features).flatten(2).transpose(1, 2), features

    def forward_features(self, x: torch.Tensor, return_attention: bool = False):
        tokens, _ = self.embed(x)
        return self.encode(tokens, return_attention)

    def encode(self, tokens: torch.Tensor, return_attention: bool = False):
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        attentions = []
        for block in self.blocks:
            tokens, weights = block(tokens, return_attention)
            attentions.append(weights)
        return self.norm(tokens), attentions

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits; with return_attention also each block's weights (B, heads, T, T), T = patches + 1; in training
        with deep supervision, SupervisedOutput(logits, auxiliary logits, weight)."""
        embedded, features = self.embed(x)
        tokens, attentions = self.encode(embedded, return_attention)
        logits = self.forward_head(tokens)
        if return_attention:
            return logits, attentions
        return with_deep_supervision(self, logits, features, self.supervision)


@dataclass
@defaults_from(ViT)
class ViTConfig:
    """The ViT alone, a building block (the hybrid's first stage, whose own defaults are HybridViTConfig's) as a run
    stores it: all its keyword arguments, at ViT's defaults."""

    in_channels: int
    image_size: int
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float
    dropout: float
    stem_widths: list[int]
    stem_norm: str
    pool: str
    deep_supervision: float

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], num_classes: int) -> "ViTConfig":
        return cls(in_channels=input_shape[0], image_size=input_shape[1], num_classes=num_classes)
