"""The model families: Perceiver, ViT + attention rollout + CNN, and a CNN; each one entry of the registry."""
from perceiver_med.models.cnn import ConvNet
from perceiver_med.models.hybrid import ViTRolloutCNN
from perceiver_med.models.perceiver import Perceiver
from perceiver_med.models.registry import (DEFAULT_MODEL, MODELS, ModelOption, ModelSpec, Stage, build_model,
                                           count_parameters, create_model, default_config, get_spec, model_names,
                                           model_stages, num_classes, option_owners, register_model,
                                           token_patch)
from perceiver_med.models.rollout import attention_rollout, rollout_map
from perceiver_med.models.vit import ViT

__all__ = ["Perceiver", "ViT", "ConvNet", "ViTRolloutCNN", "attention_rollout", "rollout_map", "build_model",
           "count_parameters", "default_config", "token_patch", "DEFAULT_MODEL", "MODELS", "ModelOption", "ModelSpec",
           "Stage", "create_model", "get_spec", "model_names", "model_stages", "num_classes", "option_owners",
           "register_model"]
