"""Attention shared by the transformer models (the Perceiver's latent blocks and the ViT)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Linear = nn.Linear  # kept only until vit.py builds nn.Linear itself; the custom bf16 Linear is gone


def fused_attention_is_faster(q: torch.Tensor) -> bool:
    """False for bf16 on a CPU, where torch's fused attention kernel runs ~3x slower than bf16 matmuls and a softmax

    (forward and backward of the reference Perceiver's latent attention, AVX512-BF16 EPYC, torch 2.13; in fp32 the
    fused kernel is the faster one, so everywhere else it is used).
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
    weights = torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1)  # (B, h, Nq, Nk)
    return F.dropout(weights, dropout, training) @ v, weights if return_weights else None


def self_attend(qkv, heads: int, dropout: float, training: bool, return_weights: bool = False):
    """Multi-head self-attention from one fused projection (B, n, 3*h*d) -> (B, n, h*d), weights or None."""
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=heads)
    if not fused_attention_is_faster(q):  # batched matmuls run faster on contiguous heads than on these views
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, weights = attend(q, k, v, dropout, training, return_weights)
    return rearrange(out, "b h n d -> b n (h d)"), weights
