"""The quick start in one call: synth -> split -> train -> evaluate -> predict -> explain, for phantom knee
radiographs (laterality) or for nodule points in phantom chest CTs (benign or malignant)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from perceiver_med.workflows.folders import split_folder
from perceiver_med.training.engine import Reporter
from perceiver_med.errors import UserError
from perceiver_med.results.explain import ExplainRequest, explain_run
from perceiver_med.results.evaluation import evaluate_run
from perceiver_med.results.predictions import PredictRequest, predict_run
from perceiver_med.training.config import Runtime
from perceiver_med.workflows.train import TrainRequest, train_run
from perceiver_med.synth.phantoms import synth


KINDS = ("knee", "lung")


# Knee laterality is fitted within a few epochs; on nodule points the Perceiver can sit at chance for tens of epochs
# before it starts to learn, so the lung demo takes train's own epoch count (about 600 steps) and its patience
# (benchmarks/README.md, "History", "Lung demo").
DEFAULT_EPOCHS = {"knee": 40, "lung": 0}
# Both stop a stage once the validation split is decided (mean probability of the true class about 0.99): the knee
# Perceiver gets there in 3-5 epochs, and further epochs only sharpen it (benchmarks/README.md, "Demo time").
STOP_LOSS = 0.01


# fp32 on the CPU: the demo gives the same numbers on every machine, with or without bf16 units
DEMO_RUNTIME = Runtime(device="cpu", precision="fp32")


@dataclass(frozen=True)
class DemoRequest:
    """The demo to run: `kind` "knee" (laterality of phantom radiographs) or "lung" (nodule points in phantom
    chest CTs), written into the new folder `out`; `epochs` None: DEFAULT_EPOCHS of the kind (0: train's
    default)."""

    out: Path
    kind: str = "knee"
    patients: int = 60
    epochs: int | None = None
    seed: int = 0


def run_demo(request: DemoRequest, reporter: Reporter | None = None, say: Callable[[str], None] = print) -> dict:
    """Run the whole pipeline on phantom knees (or, for `kind` "lung", on nodule points); returns the test
    metrics."""
    out, kind, patients, epochs, seed = Path(request.out), request.kind, request.patients, request.epochs, request.seed
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files: pass a new --out")
    epochs = DEFAULT_EPOCHS[kind] if epochs is None else epochs
    if kind == "lung":
        return _lung_demo(out, patients, epochs, seed, reporter, say)
    started = time.perf_counter()
    data, _ = synth("knee", out / "knee", patients, "png", seed)
    say(f"1. phantom knee radiographs (PNG, AKOA-style names): {data}")
    split_folder(data, out / "splits.csv", seed=seed)
    say(f"2. patient-grouped splits: {out / 'splits.csv'}")
    result, test = _train_and_evaluate(out, epochs, seed, reporter, say, "on the radiographs")
    unseen, _ = synth("knee", out / "unseen", max(4, patients // 8), "png", seed + 1000,
                      first=patients)
    predicted = predict_run(PredictRequest(out / "run", unseen, out / "predictions.csv", runtime=DEMO_RUNTIME))
    correct = sum(pred in sample.path.name.lower() for sample, pred in zip(predicted.samples, predicted.decided.names))
    say(f"5. predictions for {len(predicted.samples)} unseen scans: {out / 'predictions.csv'} "
        f"({correct}/{len(predicted.samples)} match the LEFT/RIGHT in their names)")
    examples = sorted(unseen.iterdir())[:4]
    written, _ = explain_run(ExplainRequest(out / "run", examples, out / "explain"))
    say(f"6. evidence overlays (what each prediction rests on): {out / 'explain'} ({len(written)} PNGs)")
    say(f"done in {time.perf_counter() - started:.0f} s")
    return {"test": test, "train_metrics": result.metrics, "unseen_correct": correct, "unseen": len(predicted.samples)}


def _train_and_evaluate(out: Path, epochs: int, seed: int, reporter: Reporter | None, say: Callable[[str], None],
                        what: str):
    """Steps 3 and 4 of either demo: train the Perceiver on OUT/splits.csv, then score the saved weights."""
    result = train_run(TrainRequest(out / "splits.csv", out / "run", options={"epochs": epochs, "seed": seed,
                                                                              "stop_loss": STOP_LOSS},
                                    runtime=DEMO_RUNTIME), reporter)
    say(f"3. trained Perceiver {what}: {out / 'run'}")
    test = evaluate_run(out / "run", split="test", runtime=DEMO_RUNTIME)["test"]
    say(f"4. evaluated again from the saved weights: test accuracy {test['accuracy']:.4f}, "
        f"loss {test['loss']:.4f}, ROC AUC {test['roc_auc']:.4f}")
    return result, test


def _lung_demo(out: Path, patients: int, epochs: int, seed: int, reporter: Reporter | None,
               say: Callable[[str], None]) -> dict:
    """The CT nodule path: chest CTs with several labelled nodules each, one sample per point."""
    started = time.perf_counter()
    data, _ = synth("lung", out / "lung", patients, "dicom", seed, points=True)
    say(f"1. phantom chest CTs (DICOM series, shuffled files) with 1-4 nodules each: {data / 'scans'}; "
        f"their centres (LUNA16 style, patient mm): {data / 'points.csv'}")
    split_folder(data / "scans", out / "splits.csv", seed=seed, points_csv=data / "points.csv")
    say(f"2. patient-grouped splits, one row per nodule point: {out / 'splits.csv'}")
    result, test = _train_and_evaluate(out, epochs, seed, reporter, say, "on 3x3 grids around each point")
    unseen, _ = synth("lung", out / "unseen", max(4, patients // 8), "dicom", seed + 1000, points=True,
                      first=patients)
    predicted = predict_run(PredictRequest(out / "run", unseen / "scans", out / "predictions.csv",
                                           points=unseen / "points.csv", runtime=DEMO_RUNTIME))
    correct = sum(pred == sample.label for sample, pred in zip(predicted.samples, predicted.decided.names))
    say(f"5. predictions for {len(predicted.samples)} nodules of unseen patients: {out / 'predictions.csv'} "
        f"({correct}/{len(predicted.samples)} match the labels in their points file)")
    example = sorted(p for p in (unseen / "scans").iterdir() if p.is_dir())[0]
    written, _ = explain_run(ExplainRequest(out / "run", [example], out / "explain", points=unseen / "points.csv"))
    say(f"6. evidence overlays, one per nodule of {example.name}: {out / 'explain'} ({len(written)} PNGs)")
    say(f"done in {time.perf_counter() - started:.0f} s")
    return {"test": test, "train_metrics": result.metrics, "unseen_correct": correct, "unseen": len(predicted.samples)}
