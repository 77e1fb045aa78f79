"""Model weights on disk: safetensors files with their SHA-256 and header metadata checked before use."""
from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from perceiver_med.errors import UserError
from perceiver_med.files import atomic_path, file_sha256
from perceiver_med.io.limits import describe


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write the weights (with `metadata` in the file's header) atomically; returns the file's SHA-256."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as temp:
        save_file(state, str(temp), metadata=metadata)
        digest = file_sha256(temp)
    return digest


def load_weights(model: nn.Module, path: Path, sha256: str = "", metadata: dict[str, str] | None = None) -> None:
    """Load weights into `model`, refusing a file whose SHA-256 or header metadata differ from what is expected."""
    if sha256 and file_sha256(path) != sha256:
        raise UserError(f"{path} does not match the SHA-256 recorded in config.json: the file is damaged or "
                        "was replaced")
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            stored = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged or not a safetensors file: {describe(exc)}") from None
    for key, expected in (metadata or {}).items():
        if key in stored and stored[key] != expected:
            raise UserError(f"config.json does not match {path}: its {key} differ from those the weights were "
                            "trained with")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise UserError(f"{path} does not match the model in config.json (foreign or damaged weights)") from None
