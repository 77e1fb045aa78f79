"""Perceiver (Jaegle et al. 2021) for 2D images: latents cross-attend to every pixel, O(M*N).

The byte array is each pixel's channels plus Fourier features of its position (computed once and
cached). With one channel it is 27 wide, narrower than an attention head, so the cross-attention runs
in the byte array's own space rather than forming keys and values (see CrossAttention): exact, and
the largest saving over a textbook implementation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from perceiver_med.configs import defaults_from
from perceiver_med.models.cnn import (DEEP_SUPERVISION, STEM_WIDTHS, deep_supervision_head, optional_stem,
                                      with_deep_supervision)
from perceiver_med.models.layers import attend, self_attend


def fourier_features(height: int, width: int, num_bands: int, max_freq: float,
                     device=None, dtype=torch.float32) -> torch.Tensor:
    """(H*W, 2*(2*num_bands+1)) features: sin and cos at num_bands frequencies, plus the raw position."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=torch.float32) for n in (height, width)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (H, W, 2)
    scales = torch.linspace(1.0, max_freq / 2, num_bands, device=device, dtype=torch.float32)
    angles = grid[..., None] * scales * math.pi  # (H, W, 2, bands)
    features = torch.cat([angles.sin(), angles.cos(), grid[..., None]], dim=-1)  # (H, W, 2, 2*bands+1)
    return features.reshape(height * width, -1).to(dtype)


class GEGLU(nn.Module):
    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Module):
    """Pre-norm GEGLU MLP."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Dropout(dropout),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(self.norm(x))


class SelfAttention(nn.Module):
    """Pre-norm latent self-attention with one fused QKV projection."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x):
        out, _ = self_attend(self.to_qkv(self.norm(x)), self.heads, self.dropout, self.training)
        return self.to_out(out)


class CrossAttention(nn.Module):
    """Latents (queries) attend to the byte array X = LayerNorm([pixel channels | position features]).

    Scores are q . (x W_k) and the output is softmax(...) (X W_v). When the byte array is narrower than a
    head (D = 27 for one channel and 6 bands, against 64), the same numbers cost less the other way round:
    (q W_k^T) . x and (softmax(...) X) W_v. Attention then runs in D dimensions, and K and V, (B, N, 2*inner)
    per batch, are never formed. Which order is cheaper is decided from the shapes; both are exact.
    """

    def __init__(self, latent_dim: int, context_dim: int, heads: int = 1, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.norm = nn.LayerNorm(latent_dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(latent_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, latent_dim)

    def attends_in_context_space(self, elements: int, queries: int) -> bool:
        """True when projecting queries into the byte array's space costs fewer multiply-adds than K and V."""
        context_dim = self.norm_context.normalized_shape[0]
        per_head = self.dim_head
        keys_values = elements * context_dim * 2 * per_head + 2 * queries * elements * per_head
        queries_side = 2 * queries * context_dim * per_head + 2 * queries * elements * context_dim
        return queries_side < keys_values

    def context_space_attention(self, q, context, return_attention: bool):
        """q (B, h, M, d), the raw byte array (B, N, D) -> (B, h, M, d) = softmax(q K^T / sqrt(d)) V, weights or None.

        With x the byte array normalised without its affine (gamma, beta), K = (x*gamma + beta) W_k^T: the beta
        term adds one constant to all of a query's scores, which softmax ignores, so the scores are
        (q (W_k*gamma)) . x; and since each row of weights sums to 1, weights V = (weights x) (W_v*gamma)^T + W_v beta.
        Attention then runs over x itself, which needs no gradient (the backward pass forms no dK, dV), and gamma
        and beta scale weights, not activations.
        """
        norm = self.norm_context
        x = F.layer_norm(context, norm.normalized_shape, eps=norm.eps)  # (B, N, D)
        # zero columns change no product; fused kernels want head sizes in multiples of 8, and bf16 GEMMs run faster
        pad = -x.shape[-1] % 8
        x = F.pad(x, (0, pad))[:, None].expand(-1, self.heads, -1, -1)  # one byte array for all heads
        w_k, w_v = (w.reshape(self.heads, self.dim_head, -1) for w in self.to_kv.weight.chunk(2, dim=0))  # (h, d, D)
        keys, values = (F.pad(w * norm.weight, (0, pad)) for w in (w_k, w_v))
        out, weights = attend(q @ keys, x, x, self.dropout, self.training, return_attention,
                              scale=self.dim_head ** -0.5)
        return out @ values.transpose(1, 2) + (w_v @ norm.bias)[:, None], weights  # (B, h, M, d)

    def forward(self, latents, context, return_attention: bool = False):
        """latents (B, M, latent_dim), context (B, N, D) -> (B, M, latent_dim), weights (B, heads, M, N) or None."""
        q = rearrange(self.to_q(self.norm(latents)), "b m (h d) -> b h m d", h=self.heads)
        if not self.attends_in_context_space(context.shape[1], latents.shape[1]):
            context = self.norm_context(context)
            k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.to_kv(context).chunk(2, -1))
            out, weights = attend(q, k, v, self.dropout, self.training, return_attention)
        else:
            out, weights = self.context_space_attention(q, context, return_attention)
        return self.to_out(rearrange(out, "b h m d -> b m (h d)")), weights


class PerceiverLayer(nn.Module):
    """One iteration: cross-attention + feed-forward, then `self_per_cross_attn` latent blocks."""

    def __init__(self, latent_dim, context_dim, cross_heads, cross_dim_head, latent_heads,
                 latent_dim_head, self_per_cross_attn, attn_dropout, ff_dropout):
        super().__init__()
        self.cross_attn = CrossAttention(latent_dim, context_dim, cross_heads, cross_dim_head, attn_dropout)
        self.cross_ff = FeedForward(latent_dim, dropout=ff_dropout)
        self.self_attns = nn.ModuleList([
            nn.ModuleList([SelfAttention(latent_dim, latent_heads, latent_dim_head, attn_dropout),
                           FeedForward(latent_dim, dropout=ff_dropout)])
            for _ in range(self_per_cross_attn)])

    def forward(self, latents, context, return_attention=False):
        attended, weights = self.cross_attn(latents, context, return_attention)
        latents = latents + attended
        latents = latents + self.cross_ff(latents)
        for attn, ff in self.self_attns:
            latents = latents + attn(latents)
            latents = latents + ff(latents)
        return latents, weights


def default_max_freq(image_size: int, stem_widths, patch_size: int) -> float:
    """The highest Fourier frequency when none is given: the elements per side of the byte array."""
    return float(image_size // 2 ** len(stem_widths) // max(1, patch_size))


class Perceiver(nn.Module):
    """Perceiver classifier for (B, C, H, W) images. Its defaults are the Perceiver `train` trains on a one-channel
    64x64 image with two classes.

    Args:
        in_channels: image channels C.
        image_size: side of the (square) input; used for the position features.
        num_classes: output logits.
        num_freq_bands: Fourier frequency bands per axis.
        max_freq: highest frequency; None: the elements per side of the byte array (default_max_freq).
        num_latents, latent_dim: the latent array.
        cross_heads, cross_dim_head: cross-attention heads.
        latent_heads, latent_dim_head: latent self-attention heads.
        self_per_cross_attn: latent blocks after each cross-attention.
        num_iterations: cross-attend + process repetitions.
        weight_sharing: "after_first" (iterations 2.. share weights), "all", or "none".
        patch_size: 1 for pixels; p > 1 feeds p x p patches (C*p*p values per element) of the image, or of the
            stem's feature map when there is a stem.
        stem_widths: channels of a convolutional stem (conv3x3-BN-ReLU-maxpool per stage, Perceiver IO's conv
            preprocessing) that turns the image into the byte array; () for none. Each stage halves the side.
        stem_norm: the stem's normalisation, "batch" (default), "group" or "none".
        attn_dropout, ff_dropout: dropout rates.
        deep_supervision: weight of the loss of an auxiliary classifier on the stem (DeepSupervision) in training; 0
            for none. It never feeds the predictions.

    `patch_size` as an attribute is the side, in input pixels, of the square one element of the byte array covers.
    """

    def __init__(self, *, in_channels: int = 1, image_size: int = 64, num_classes: int = 2,
                 num_freq_bands: int = 6, max_freq: float | None = None, num_latents: int = 64,
                 latent_dim: int = 128, cross_heads: int = 1, cross_dim_head: int = 64, latent_heads: int = 4,
                 latent_dim_head: int = 32, self_per_cross_attn: int = 2, num_iterations: int = 2,
                 weight_sharing: str = "after_first", patch_size: int = 1,
                 stem_widths: tuple[int, ...] = STEM_WIDTHS, stem_norm: str = "batch", attn_dropout: float = 0.0,
                 ff_dropout: float = 0.0, deep_supervision: float = DEEP_SUPERVISION):
        super().__init__()
        if weight_sharing not in ("after_first", "all", "none"):
            raise ValueError("weight_sharing must be after_first, all or none")
        self.stem, channels, reduction = optional_stem(in_channels, stem_widths, stem_norm, image_size, patch_size)
        self.supervision = deep_supervision_head(self.stem, channels, num_classes, deep_supervision)
        self.image_size, self.element_patch, self.patch_size = image_size, patch_size, patch_size * reduction
        self.num_freq_bands = num_freq_bands
        self.max_freq = float(max_freq if max_freq is not None else default_max_freq(image_size, stem_widths,
                                                                                      patch_size))
        self.num_iterations = num_iterations
        pixel_dim = channels * patch_size * patch_size
        position_dim = 2 * (2 * num_freq_bands + 1)
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))

        def layer():
            return PerceiverLayer(latent_dim, pixel_dim + position_dim, cross_heads, cross_dim_head, latent_heads,
                                  latent_dim_head, self_per_cross_attn, attn_dropout, ff_dropout)

        distinct = {"none": num_iterations, "after_first": min(num_iterations, 2), "all": 1}[weight_sharing]
        self.layers = nn.ModuleList([layer() for _ in range(distinct)])
        self.norm = nn.LayerNorm(latent_dim)
        self.head = nn.Linear(latent_dim, num_classes)
        self._positions: tuple | None = None

    def positions(self, height: int, width: int, device, dtype) -> torch.Tensor:
        key = (height, width, device, dtype)
        if self._positions is None or self._positions[0] != key:
            self._positions = (key, fourier_features(height, width, self.num_freq_bands, self.max_freq, device,
                                                     dtype))
        return self._positions[1]

    def _layer(self, iteration: int) -> PerceiverLayer:
        return self.layers[min(iteration, len(self.layers) - 1)]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stem is None else self.stem(x)

    def _elements(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels or stem features -> (B, N, C*p*p) elements, p x p patches in row-major order."""
        p = self.element_patch
        return rearrange(features, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)

    def forward_features(self, x: torch.Tensor, return_attention: bool = False):
        return self._attend(x, self._stem(x), return_attention)

    def _attend(self, x: torch.Tensor, features: torch.Tensor, return_attention: bool):
        batch, _, height, width = x.shape
        pixels = self._elements(features)
        positions = self.positions(height // self.patch_size, width // self.patch_size, x.device, pixels.dtype)
        context = torch.cat([pixels, positions.expand(batch, -1, -1)], dim=-1)  # the byte array (B, N, D)
        latents = self.latents.expand(batch, -1, -1)
        attentions = []
        for iteration in range(self.num_iterations):
            latents, weights = self._layer(iteration)(latents, context, return_attention)
            attentions.append(weights)
        return latents, attentions

    def forward_head(self, latents: torch.Tensor) -> torch.Tensor:
        # fp32 logits under bf16 autocast too: 8 significant bits would tie the probabilities that AUC ranks
        with torch.autocast(latents.device.type, enabled=False):
            return self.head(self.norm(latents.float().mean(dim=1)))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, classes); with return_attention, also the cross-attention per iteration (B, h, M, N); in
        training with deep supervision, SupervisedOutput(logits, auxiliary logits, weight)."""
        features = self._stem(x)
        latents, attentions = self._attend(x, features, return_attention)
        logits = self.forward_head(latents)
        if return_attention:
            return logits, attentions
        return with_deep_supervision(self, logits, features, self.supervision)


@dataclass
@defaults_from(Perceiver)
class PerceiverConfig:
    """train's Perceiver as a run stores it; defaults: Perceiver's. A conv stem makes the byte array (24x24 elements
    for a grid, 8x8 for a 64x64 image): its max pooling carries a 3-6 pixel nodule into one element at full
    strength, where linear 8x8 patches would mix it into 64 pixels of background (benchmarks/README.md, "Learning
    small lesions"). max_freq is stored as the number it comes to."""

    in_channels: int
    image_size: int
    num_classes: int
    num_freq_bands: int
    max_freq: float | None
    num_latents: int
    latent_dim: int
    cross_heads: int
    cross_dim_head: int
    latent_heads: int
    latent_dim_head: int
    self_per_cross_attn: int
    num_iterations: int
    weight_sharing: str
    patch_size: int
    stem_widths: list[int]
    attn_dropout: float
    ff_dropout: float
    deep_supervision: float

    def __post_init__(self):
        if self.max_freq is None:
            self.max_freq = default_max_freq(self.image_size, self.stem_widths, self.patch_size)

    @classmethod
    def for_input(cls, input_shape: tuple[int, int, int], num_classes: int) -> "PerceiverConfig":
        return cls(in_channels=input_shape[0], image_size=input_shape[1], num_classes=num_classes)
