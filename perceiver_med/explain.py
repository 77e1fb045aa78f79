"""Pictures of what a model looked at: rollout for the hybrid, cross-attention over pixels for the Perceiver."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perceiver_med.cache import InputRequest, prepare
from perceiver_med.errors import ScanError, UserError
from perceiver_med.files import refuse_inside
from perceiver_med.io.discover import Skip
from perceiver_med.models import Perceiver, ViTRolloutCNN
from perceiver_med.runs import load_model


def heat_map(model, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1]: where the model's attention went, at input resolution."""
    with torch.no_grad():
        if isinstance(model, ViTRolloutCNN):
            return model.rollout(x)
        if isinstance(model, Perceiver):
            _, attentions = model(x, return_attention=True)
            # mean over iterations, heads and latents: how much each pixel was read
            weights = torch.stack([a.float().mean(dim=(1, 2)) for a in attentions]).mean(0)  # (B, N)
            side = model.image_size // model.patch_size
            grid = weights.reshape(-1, 1, side, side)
            grid = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
            low = grid.amin(dim=(2, 3), keepdim=True)
            high = grid.amax(dim=(2, 3), keepdim=True)
            return (grid - low) / (high - low).clamp_min(1e-12)
    raise UserError(f"explain supports the Perceiver and the ViT+rollout+CNN hybrid, not {type(model).__name__}")


def explain_run(run: Path, scans: list[Path], out: Path) -> tuple[list[Path], list[Skip]]:
    """One overlay PNG per scan: the model input in grey, the heat map in colour, the prediction in the title."""
    from perceiver_med.report import _pyplot, save_figure

    config, model = load_model(run)
    for scan in scans:
        refuse_inside(out / "x.png", scan)
    written, skipped = [], []
    plt = _pyplot()
    for scan in scans:
        if not scan.exists():
            raise UserError(f"{scan} does not exist")
        try:
            array = prepare(InputRequest(scan), config.preprocess)
        except ScanError as exc:
            skipped.append(Skip(scan, str(exc)))
            continue
        x = torch.from_numpy(array)[None]
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)[0]
        heat = heat_map(model, x)[0, 0].numpy()
        picture = np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]
        predicted = int(probs.argmax())
        figure, axis = plt.subplots(figsize=(4, 4.3))
        axis.imshow(picture, cmap="gray", vmin=0, vmax=1)
        axis.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        kind = "rollout" if isinstance(model, ViTRolloutCNN) else "cross-attention"
        axis.set_title(f"{config.classes[predicted]} ({float(probs[predicted]):.3f}) - {kind}", fontsize=9)
        axis.axis("off")
        figure.tight_layout()
        target = out / f"{_stem(scan)}_explain.png"
        if target in written:
            target = out / f"{_stem(scan)}_{len(written)}_explain.png"
        save_figure(figure, target)
        written.append(target)
    return written, skipped


def _stem(scan: Path) -> str:
    """A file-name-safe stem: AKOA names hold several dots (..._LEFT.nii.gz_0.png)."""
    name = scan.name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace(".", "_") or "scan"
