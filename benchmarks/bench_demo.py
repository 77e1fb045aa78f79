"""Knee demo time-to-accuracy: wall seconds of `perceiver-med demo`, and the training seconds until the
validation accuracy first reached its best, for whichever perceiver_med is importable (run it once per version,
side by side, to compare releases on one machine under one load).

    python benchmarks/bench_demo.py --json demo.json [--threads 1] [--label NAME]
    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_demo.py --json old.json --threads 1
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import perceiver_med
    from perceiver_med.workflows.demo import DemoRequest, run_demo

    with tempfile.TemporaryDirectory() as temp:
        os.environ["PERCEIVER_MED_CACHE"] = str(Path(temp) / "cache")
        started = time.perf_counter()
        result = run_demo(DemoRequest(Path(temp) / "demo"), say=lambda _: None)
        seconds = time.perf_counter() - started
        history = list(csv.DictReader(open(Path(temp) / "demo" / "run" / "history.csv")))
    best = max(float(row["val_accuracy"]) for row in history)
    elapsed, to_best = 0.0, None
    for row in history:
        elapsed += float(row["seconds"])
        if to_best is None and float(row["val_accuracy"]) >= best:
            to_best = {"epoch": int(row["epoch"]), "training_seconds": round(elapsed, 1)}
    report = {"label": args.label, "perceiver_med": str(Path(perceiver_med.__file__).parent),
              "wall_seconds": round(seconds, 1), "training_seconds": round(elapsed, 1),
              "best_val_accuracy": best, "to_best_val_accuracy": to_best,
              "test_accuracy": result["test"]["accuracy"], "unseen_correct": f"{result['unseen_correct']}/"
                                                                             f"{result['unseen']}",
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "load_average": round(os.getloadavg()[0], 2), "python": sys.version.split()[0]}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
