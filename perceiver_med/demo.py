"""The quick start in one call: synth knee -> split -> train -> evaluate -> predict -> explain."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from perceiver_med.dataset_ops import split_folder
from perceiver_med.engine import Reporter
from perceiver_med.errors import UserError
from perceiver_med.explain import explain_run
from perceiver_med.runs import evaluate_run, predict_run, train_run
from perceiver_med.synth import synth


def run_demo(out: Path, patients: int = 60, epochs: int = 40, seed: int = 0, reporter: Reporter | None = None,
             say: Callable[[str], None] = print) -> dict:
    """Run the whole pipeline on phantom knees; returns the test metrics."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files: pass a new --out")
    started = time.perf_counter()
    data, _ = synth("knee", out / "knee", patients, "png", seed)
    say(f"1. phantom knee radiographs (PNG, AKOA-style names): {data}")
    split_folder(data, out / "splits.csv", seed=seed)
    say(f"2. patient-grouped splits: {out / 'splits.csv'}")
    # fp32: the demo gives the same numbers on every CPU, with or without bf16 units
    result = train_run(out / "splits.csv", "perceiver", out / "run", epochs=epochs, seed=seed, device="cpu",
                       precision="fp32", reporter=reporter)
    say(f"3. trained Perceiver: {out / 'run'} (config.json, model.safetensors, metrics.json, curves.png)")
    test = evaluate_run(out / "run", split="test", device="cpu")["test"]
    say(f"4. evaluated again from the saved weights: test accuracy {test['accuracy']:.4f}, "
        f"loss {test['loss']:.4f}, ROC AUC {test['roc_auc']:.4f}")
    unseen, _ = synth("knee", out / "unseen", max(4, patients // 8), "png", seed + 1000)
    predictions, _, classes = predict_run(out / "run", unseen, out / "predictions.csv", device="cpu")
    correct = sum(p.pred in p.path.name.lower() for p in predictions)
    say(f"5. predictions for {len(predictions)} unseen scans: {out / 'predictions.csv'} "
        f"({correct}/{len(predictions)} match the LEFT/RIGHT in their names)")
    examples = sorted(unseen.iterdir())[:4]
    written, _ = explain_run(out / "run", examples, out / "explain")
    say(f"6. evidence overlays (what each prediction rests on): {out / 'explain'} ({len(written)} PNGs)")
    say(f"done in {time.perf_counter() - started:.0f} s")
    return {"test": test, "train_metrics": result.metrics, "unseen_correct": correct, "unseen": len(predictions)}
