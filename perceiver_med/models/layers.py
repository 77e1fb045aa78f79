"""Layers shared by the models: attention (the Perceiver's latent blocks and the ViT) and normalisation."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

NORMS = ("batch", "group", "none")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")


def norm_layers(norm: str, width: int) -> list[nn.Module]:
    """The normalisation after a convolution of `width` channels, as a list to splice into nn.Sequential.

    "group" (one group per 8 channels) is the same in training and evaluation, with no running statistics.
    """
    check_norm(norm)
    if norm == "batch":
        return [nn.BatchNorm2d(width)]
    return [nn.GroupNorm(max(1, width // 8), width)] if norm == "group" else []


def batch_norms(module: nn.Module) -> list[nn.Module]:
    """Every batch norm inside `module`."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def batch_statistics(module: nn.Module, enabled: bool = True):
    """Within the block, the batch norms of `module` normalise with the batch's statistics and update nothing;
    their modes are restored afterwards. enabled=False changes nothing."""
    norms = batch_norms(module) if enabled else []
    saved = [(m.training, m.track_running_stats) for m in norms]
    for norm in norms:
        norm.training, norm.track_running_stats = True, False
    try:
        yield
    finally:
        for norm, (training, tracking) in zip(norms, saved):
            norm.training, norm.track_running_stats = training, tracking


# Where attention is explicit, the batch is cut into slices of at most this many scores (16 MB in bf16): glibc maps
# every block over 32 MB afresh from the kernel, page by zero-filled page, on every call (benchmarks/README.md,
# "Models", "CPU with bf16 units").
SCORES_PER_SLICE = 2 ** 23


def fused_attention_is_faster(q: torch.Tensor) -> bool:
    """True unless q is bf16 on a CPU, or CPU bf16 autocast is on.

    There torch's fused kernel is slower than bf16 matmuls and a softmax; in fp32 it is the faster one
    (benchmarks/README.md, "Models", "CPU with bf16 units").
    """
    if q.device.type != "cpu":
        return True
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return not (q.dtype == torch.bfloat16 or autocast_bf16)


def attend(q, k, v, dropout: float, training: bool, return_weights: bool, scale: float | None = None):
    """Attention over (B, h, n, d) tensors -> output, weights (when asked for) or None."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if not return_weights and fused_attention_is_faster(q):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout if training else 0.0, scale=scale), None
    step = max(1, SCORES_PER_SLICE // (math.prod(q.shape[1:-1]) * k.shape[-2]))
    if return_weights or step >= len(q):
        out, weights = softmax_attention(q, k, v, dropout, training, scale)
        return out, weights if return_weights else None
    return torch.cat([softmax_attention(q[i:i + step], k[i:i + step], v[i:i + step], dropout, training, scale)[0]
                      for i in range(0, len(q), step)]), None


def softmax_attention(q, k, v, dropout: float, training: bool, scale: float):
    """The textbook formula, with its weights (B, h, Nq, Nk)."""
    weights = torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1)
    return F.dropout(weights, dropout, training) @ v, weights


def self_attend(qkv, heads: int, dropout: float, training: bool, return_weights: bool = False):
    """Multi-head self-attention from one fused projection (B, n, 3*h*d) -> (B, n, h*d), weights or None."""
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=heads)
    if not fused_attention_is_faster(q):  # batched matmuls run faster on contiguous heads than on these views
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, weights = attend(q, k, v, dropout, training, return_weights)
    return rearrange(out, "b h n d -> b n (h d)"), weights
