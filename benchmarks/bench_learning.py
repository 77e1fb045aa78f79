"""Learning benchmark: test accuracy and seconds of each model family at its defaults, over lesion sizes and seeds.

    python benchmarks/bench_learning.py --json learning.json [--sizes large medium small] [--seeds 0 1 2]
        [--models cnn perceiver vit-rollout-cnn] [--patients 120] [--epochs 0]

For each lesion size and seed: a lung phantom set (DICOM series, shuffled files) whose benign and malignant
nodules share size and contrast and differ only in shape (smooth or spiculated), a patient-grouped split
0.6/0.2/0.2 (72/24/24 of 120 patients), and one `train` per model on those same splits, through the same
library call as `perceiver-med train SPLITS --model NAME` with every training option at its default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# radii in mm at 0.7 mm pixels: large 10-14 px, medium 6-9 px, small 3-6 px (the hard set)
SIZES = {"large": (7.0, 9.8), "medium": (4.2, 6.3), "small": (2.1, 4.2)}
SPREAD_MM = {"large": 2.0, "medium": 2.0, "small": 3.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["cnn", "perceiver", "vit-rollout-cnn"])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=0, help="0: the default (about 600 steps, 30..150 epochs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        os.environ["PERCEIVER_MED_CACHE"] = str(temp / "cache")
        import torch

        from perceiver_med.workflows.folders import split_folder
        from perceiver_med.training.config import Runtime
        from perceiver_med.workflows.train import TrainRequest, train
        from perceiver_med.synth.phantoms import LungDifficulty, synth

        # a stopped benchmark goes on where it was: runs already in --json are kept, not repeated
        previous = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        earlier = previous.get("results", [])
        kept = {"superseded": previous["superseded"]} if "superseded" in previous else {}  # rows of older defaults
        results = list(earlier)
        done = {(r["size"], r["seed"], r["model"]) for r in earlier}
        for size in args.sizes:
            for seed in args.seeds:
                if all((size, seed, model) in done for model in args.models):
                    continue
                difficulty = LungDifficulty(nodule_mm=SIZES[size], spread_mm=SPREAD_MM[size])
                data, _ = synth("lung", temp / f"{size}-{seed}", args.patients, "dicom", seed, difficulty)
                splits = temp / f"{size}-{seed}.csv"
                split_folder(data, splits, seed=seed)
                for model in args.models:
                    if (size, seed, model) in done:
                        continue
                    started = time.perf_counter()
                    result = train(TrainRequest(splits, temp / f"run-{size}-{seed}-{model}", model,
                                                {"seed": seed, "epochs": args.epochs or None}, Runtime(device="cpu")))
                    seconds = time.perf_counter() - started
                    history = result.metrics
                    row = {"size": size, "seed": seed, "model": model, "seconds": round(seconds, 1),
                           "test_accuracy": history["test"]["accuracy"],
                           "train_accuracy": history["train"]["accuracy"],
                           "val_accuracy": history["val"]["accuracy"], "test_n": history["test"]["n"]}
                    if "vit" in history:
                        row["vit_test_accuracy"] = history["vit"]["test"]["accuracy"]
                    row["load_average"] = round(os.getloadavg()[0], 2)
                    results.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:  # after every run: a long benchmark that is stopped keeps what it measured
                        args.json.write_text(json.dumps({"patients": args.patients, "epochs": args.epochs,
                                                         "results": results, "complete": False, **kept}, indent=2))
        summary = {}
        for size in args.sizes:
            for model in args.models:
                rows = [r for r in results if r["size"] == size and r["model"] == model]
                if not rows:
                    continue
                summary[f"{size}/{model}"] = {
                    "mean_test_accuracy": round(sum(r["test_accuracy"] for r in rows) / len(rows), 4),
                    "min_test_accuracy": round(min(r["test_accuracy"] for r in rows), 4),
                    "mean_seconds": round(sum(r["seconds"] for r in rows) / len(rows), 1)}
        from perceiver_med.training.engine import native_cpu_bf16

        report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "native_cpu_bf16": native_cpu_bf16(),
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "python": sys.version.split()[0]},
                  "patients": args.patients, "epochs": args.epochs, "results": results, "summary": summary,
                  "complete": True, **kept}
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
