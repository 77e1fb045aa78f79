"""What a prediction rests on: occlusion evidence maps drawn over the model input.

Attention is not evidence. A trained Perceiver may read a place most when it is empty: on phantom knees its
mean cross-attention sits where the *other* side's fibula would be, and on a task decided by one bright dot
it looks away from the dot when the dot is there (benchmarks/README.md, "History", "What the demo run's
evidence rests on"). So the overlays show evidence measured on the prediction itself: how much the run's
calibrated log p(decided class) falls when one patch of the input is painted dark or bright. The model-free map
is registered with the picture by construction and means the same for every model.

Every overlay shares one absolute scale in nats (EVIDENCE_FLOOR to EVIDENCE_TOP): a patch is coloured only where
painting it over lowers p(decided class) by at least about 5%, so a prediction that rests on nothing (an
untrained run, or p = 1.000 that no patch moves) shows an uncoloured picture and says so, and 9 nats of evidence
look stronger than 0.5.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perceiver_med.csvfiles import printable
from perceiver_med.errors import UserError
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.loading import load_inputs, suited_samples
from perceiver_med.io.discover import Skip, discover_each
from perceiver_med.models import token_patch
from perceiver_med.results.predictions import known_label
from perceiver_med.run.predictor import Decisions, Predictor
from perceiver_med.run.rundir import check_new_output
from perceiver_med.training.config import Runtime, applies_runtime

FILL_QUANTILES = (0.02, 0.98)  # "dark" and "bright" paint, taken from the image itself
# The colour scale of every overlay, in nats of log p(decided class). Below the floor a patch lowers p by less
# than 5% (e^-0.05 = 0.95) and is not coloured; at the top p falls 150-fold (e^-5), and larger falls keep its colour.
EVIDENCE_FLOOR = 0.05
EVIDENCE_TOP = 5.0


def occlusion_window(model, side: int) -> int:
    """The side of an occluded patch: the model's token patch, but no more than 16 x 16 windows per image."""
    patch = token_patch(model) or 8
    return max(int(patch), -(-side // 16))


def evidence_map(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, window: int | None = None,
                 batch_size: int = 64, classes: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, H, W), in nats: the fall of log p(class) when a window of the input is painted over; the class is
    `classes[b]` (the run's decision), by default the most probable one. `model` maps inputs (N, C, H, W) to
    logits or log-probabilities (N, K); `window` defaults to the occlusion_window of `model`.

    Each window is painted once with the image's dark value and once with its bright one, and the larger
    fall is kept: a place can be evidence by what is there (a bone) or by what is not (no bone where the other
    class has one). Windows tile the input from its top-left corner; every pixel of a window gets its value.
    """
    batch, _, height, width = x.shape
    window = window or occlusion_window(model, max(height, width))
    rows, cols = -(-height // window), -(-width // window)
    evidence = torch.zeros(batch, rows * cols, dtype=torch.float64)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(x).double(), dim=1)
        predicted = log_probs.argmax(dim=1) if classes is None else classes
        for b in range(batch):
            image = x[b]
            fills = torch.quantile(image.float().flatten(), torch.tensor(FILL_QUANTILES)).to(image.dtype)
            places = [(r, c, fill) for r in range(rows) for c in range(cols) for fill in fills]
            falls = []
            for start in range(0, len(places), batch_size):
                painted = image.expand(len(places[start:start + batch_size]), -1, -1, -1).clone()
                for k, (r, c, fill) in enumerate(places[start:start + batch_size]):
                    painted[k, :, r * window:(r + 1) * window, c * window:(c + 1) * window] = fill
                scores = torch.log_softmax(model(painted).double(), dim=1)[:, predicted[b]]
                falls.append(log_probs[b, predicted[b]] - scores)
            evidence[b] = torch.cat(falls).view(rows * cols, len(fills)).amax(dim=1).clamp_min(0)
    grid = evidence.view(batch, 1, rows, cols)
    return grid.repeat_interleave(window, dim=2).repeat_interleave(window, dim=3)[..., :height, :width]


@dataclass
class Evidence:
    """One sample as a run decides it, and the occlusion evidence for that decision."""

    decided: Decisions  # of this one sample
    window: int  # the side of an occluded patch, in input pixels
    map: np.ndarray  # (H, W) nats: the fall of calibrated log p(decided class) when the patch holding a pixel is
    # painted over

    @property
    def largest(self) -> float:
        """The largest fall of any patch, in nats."""
        return float(self.map.max()) if self.map.size else 0.0

    @property
    def matters(self) -> bool:
        """Whether any patch reaches the floor of the colour scale."""
        return self.largest >= EVIDENCE_FLOOR

    @property
    def predicted(self) -> str:
        return self.decided.names[0]

    @property
    def probability(self) -> float:
        """The run's calibrated probability of the class it decided."""
        return float(self.decided.probs[0, self.decided.indices[0]])


def evidence_for(predictor: Predictor, array: np.ndarray) -> Evidence:
    """The run's decision on one model input (C, H, W) and the evidence for it: what `explain` draws and the
    report's error gallery shows, computed once for both. Falls are measured on the probabilities the run
    reports (its temperature applied, through the predictor), the same that give the shown p."""
    x = torch.from_numpy(array)[None]
    decided = predictor.predict(x)
    window = occlusion_window(predictor.model, max(x.shape[-2:]))
    heat = evidence_map(_calibrated_log_probs(predictor), x, window, classes=torch.from_numpy(decided.indices))
    return Evidence(decided, window, heat[0, 0].numpy())


def _calibrated_log_probs(predictor: Predictor) -> Callable[[torch.Tensor], torch.Tensor]:
    def log_probs(inputs: torch.Tensor) -> torch.Tensor:
        probs = predictor.predict(inputs).probs
        return torch.from_numpy(np.log(np.clip(probs, np.finfo(np.float64).tiny, None)))
    return log_probs


def heat_label(predicted: str) -> str:
    return f"fall of log p({predicted}), nats (none below {EVIDENCE_FLOOR:g})"


def evidence_figure(picture: np.ndarray, evidence: Evidence, title: str):
    """The overlay of one model input's picture ((H, W) or (H, W, 3)) and its evidence, on the absolute scale
    every overlay shares (explain's PNGs, the report's error gallery); when no patch reaches the floor it says so
    under the picture."""
    from perceiver_med.results.display import overlay_figure

    note = "" if evidence.matters else (
        f"no patch matters: painting any one over lowers p({evidence.predicted}) by less than "
        f"{EVIDENCE_FLOOR:g} nats (largest {evidence.largest:.2g})")
    return overlay_figure(picture, evidence.map, title, heat_label(evidence.predicted),
                          (EVIDENCE_FLOOR, EVIDENCE_TOP), note)


def picture_of(array: np.ndarray) -> np.ndarray:
    """A model input (C, H, W) as the picture under its overlay: grey (H, W), or (H, W, 3) for three channels."""
    return np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]


@dataclass(frozen=True)
class ExplainRequest:
    """Overlays of the evidence for each prediction of the run in `run` on `scans` (files or series folders), or
    on each row of the points CSV `points` for a run trained on points, written into the folder `out`. True
    labels come from `labels` ({scan path: label}) where given. Explanations run on the CPU; the runtime gives the
    voxel budget."""

    run: Path
    scans: list[Path]
    out: Path
    points: Path | None = None
    labels: Mapping[Path, str] | None = None
    overwrite: bool = False
    runtime: Runtime = field(default_factory=Runtime)


@applies_runtime
def explain_run(request: ExplainRequest) -> tuple[list[Path], list[Skip]]:
    """One overlay PNG per scan: the model input in grey, its occlusion evidence in colour where it reaches
    EVIDENCE_FLOOR (on the scale every overlay shares).

    The title names the file, the true label where known, the prediction and its probability, and is stored in
    the PNG's Title; its Description says what the colours measure, and when no patch reaches the floor. True
    labels come from `labels` ({scan path: label}), else from a class folder holding the scan (as `predict` reads
    them), else, for left/right runs, from DICOM laterality or a LEFT/RIGHT token in the file name. Labels the run does not know are not shown.
    A run trained on points needs `points` (a points CSV) and writes one overlay per point, labelled by the file.
    """
    run, scans, out, labels = request.run, request.scans, request.out, request.labels
    overwrite, points = request.overwrite, request.points
    from perceiver_med.run.point_runs import check_point_run

    predictor = Predictor(run, device="cpu")
    config = predictor.config
    # the folder of overlays: not inside an input folder or a run directory, and writable
    check_new_output(out / "overlay.png", overwrite=True, inputs=tuple(scans))
    check_point_run(config, points)
    if points is not None:
        return _explain_points(predictor, scans, Path(points), out, overwrite)
    given = {Path(path).resolve(): label for path, label in (labels or {}).items()}
    found = discover_each([Path(scan) for scan in scans])

    def sample_of(scan) -> Sample:
        truth = given.get(scan.path.resolve()) or known_label(scan, scan.path.parent.parent, config.classes)
        return Sample.of(scan, label=truth)

    usable, skipped = suited_samples(found, config, sample_of)
    loaded = load_inputs(usable, config.preprocess, skipped=skipped)
    written = []
    for sample, array in zip(loaded.samples, loaded.inputs):
        target = out / f"{_stem(sample.path)}_explain.png"
        if target in written:
            target = out / f"{_stem(sample.path)}_{len(written)}_explain.png"
        _overlay(predictor, array, printable(sample.path.name), sample.label, target, overwrite)
        written.append(target)
    return written, loaded.skipped


def _overlay(predictor: Predictor, array: np.ndarray, name: str, truth: str | None, target: Path,
             overwrite: bool) -> None:
    """Write one overlay PNG of a model input: the picture in grey, its occlusion evidence in colour."""
    from perceiver_med.results.display import save_figure

    evidence = evidence_for(predictor, array)
    predicted, window = evidence.predicted, evidence.window
    truth = truth if truth in predictor.classes else None
    title = "\n".join([*textwrap.wrap(name, 52),
                       (f"true {truth}, " if truth else "") + f"predicted {predicted} (p = {evidence.probability:.3f})",
                       *textwrap.wrap(f"evidence: fall of log p({predicted}) when one {window}x{window} patch "
                                      "is painted dark or bright", 52)])
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists: choose another --out, or add --overwrite")
    figure = evidence_figure(picture_of(array), evidence, title)
    description = f"colour: {heat_label(predicted)}, from {EVIDENCE_FLOOR:g} to {EVIDENCE_TOP:g} on a log scale" + (
        "" if evidence.matters else f"; no patch reaches {EVIDENCE_FLOOR:g} (largest {evidence.largest:.2g})")
    save_figure(figure, target, {"Title": title, "Description": description})


def _explain_points(predictor: Predictor, scans: list[Path], points: Path, out: Path, overwrite: bool
                    ) -> tuple[list[Path], list[Skip]]:
    """One overlay per usable row of a points file, named after the scan and the row's line."""
    from perceiver_med.inputs.points import NOT_FOUND
    from perceiver_med.run.point_runs import prepare_points

    prepared = prepare_points(points, scans, predictor.config)
    written = []
    for sample, array in zip(prepared.samples, prepared.inputs):
        x, y, z = sample.point
        name = f"{printable(sample.path.name)} line {sample.point_id} ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS"
        target = out / f"{_stem(sample.path)}_line{sample.point_id}_explain.png"
        _overlay(predictor, array, name, sample.label or None, target, overwrite)
        written.append(target)
    # explain is given a few scans: rows of other scans were not asked for, so they are not skips
    return written, [skip for skip in prepared.skipped if NOT_FOUND not in skip.reason]


def _stem(scan: Path) -> str:
    """A file-name-safe stem: AKOA names hold several dots (..._LEFT.nii.gz_0.png)."""
    name = scan.name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace(".", "_") or "scan"
