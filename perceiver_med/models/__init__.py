"""The model families: Perceiver, and ViT + attention rollout + CNN."""
from perceiver_med.models.cnn import ConvNet
from perceiver_med.models.hybrid import ViTRolloutCNN
from perceiver_med.models.perceiver import Perceiver
from perceiver_med.models.registry import build_model, count_parameters, default_config, token_patch
from perceiver_med.models.rollout import attention_rollout, rollout_map
from perceiver_med.models.vit import ViT

__all__ = ["Perceiver", "ViT", "ConvNet", "ViTRolloutCNN", "attention_rollout", "rollout_map", "build_model",
           "count_parameters", "default_config", "token_patch"]
