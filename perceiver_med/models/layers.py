"""Layers shared by the transformer models.

`Linear` is `nn.Linear` with one difference, in one case: bf16 autocast on a CPU without native bf16
matrix units (no AVX512-BF16 / AMX, e.g. AVX2-only EPYC or Core parts). There torch falls back to its
own bf16 GEMM, which runs at about 1 GFLOP/s when neither operand is transposed, as in the backward pass's
grad_input = grad_output @ weight, and at about 16 GFLOP/s when one is (measured on the project's 2-core
EPYC; `benchmarks/bench_models.py` reports both). The backward below hands that GEMM the weight
transposed, a copy the size of the weight, so every matmul of a training step takes the fast path. The
arithmetic is unchanged: bf16 inputs, the same GEMM kernel family, the same results up to summation order.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _FallbackBF16Linear(torch.autograd.Function):
    """y = x W^T + b in bf16, with a backward laid out for torch's fallback bf16 GEMM."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        flat_grad, flat_x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (flat_grad @ weight.t().contiguous().t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = flat_grad.t() @ flat_x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) that stays fast under CPU bf16 autocast without bf16 units."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not torch.is_autocast_enabled("cpu")
                or torch.get_autocast_dtype("cpu") != torch.bfloat16 or cpu_has_native_bf16()):
            return F.linear(x, self.weight, self.bias)
        bias = self.bias.bfloat16() if self.bias is not None else None
        with torch.autocast("cpu", enabled=False):
            return _FallbackBF16Linear.apply(x.bfloat16(), self.weight.bfloat16(), bias)
