"""Attention rollout (Abnar & Zuidema 2020): how much each patch flows into the CLS token."""
from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_FUSIONS = ("mean", "max", "min")


def attention_rollout(attentions: list[torch.Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Roll attention out through the layers.

    Args:
        attentions: one (B, heads, T, T) tensor per layer, token 0 being CLS.
        head_fusion: how heads are fused: mean, max or min.
        discard_ratio: fraction of the lowest weights of each fused map set to zero (CLS-to-CLS kept).

    Returns:
        (B, T-1): the CLS row of the rolled-out matrix over the patches, scaled to a maximum of 1.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}")
    batch, _, tokens, _ = attentions[0].shape
    identity = torch.eye(tokens, device=attentions[0].device, dtype=torch.float32)
    result = identity.expand(batch, tokens, tokens)
    for layer in attentions:
        layer = layer.float()
        fused = {"mean": layer.mean(1), "max": layer.amax(1), "min": layer.amin(1)}[head_fusion]  # (B, T, T)
        if discard_ratio > 0:
            flat = fused.reshape(batch, -1).clone()
            count = int(flat.shape[1] * discard_ratio)
            if count:
                ranked = flat.clone()
                ranked[:, 0] = float("inf")  # the CLS-to-CLS entry is never discarded
                lowest = ranked.topk(count, dim=1, largest=False).indices
                flat.scatter_(1, lowest, 0.0)
            fused = flat.view(batch, tokens, tokens)
        mixed = (fused + identity) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    mask = result[:, 0, 1:]
    return mask / mask.amax(dim=1, keepdim=True).clamp_min(1e-12)


def rollout_map(rollout: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """(B, P) patch weights on a square patch grid -> (B, 1, H, W) map at input resolution, max 1."""
    side = int(round(rollout.shape[1] ** 0.5))
    grid = rollout.reshape(-1, 1, side, side)
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    upsampled = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return upsampled / upsampled.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
