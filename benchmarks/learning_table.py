"""Print bench_learning.py's JSON as the Markdown table in README.md and benchmarks/README.md.

    python benchmarks/learning_table.py benchmarks/results/learning-cpu-2core-avx512bf16.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("cnn", "perceiver", "vit-rollout-cnn")
SIZES = ("large", "medium", "small")


def table(results: list[dict]) -> str:
    lines = ["| lesion size | model | test accuracy per seed | mean | min | mean seconds (load) |",
             "|---|---|---|---|---|---|"]
    for size in SIZES:
        for model in MODELS:
            rows = sorted((r for r in results if r["size"] == size and r["model"] == model), key=lambda r: r["seed"])
            if not rows:
                continue
            accuracies = [r["test_accuracy"] for r in rows]
            seconds = sum(r["seconds"] for r in rows) / len(rows)
            load = sum(r.get("load_average", 0) for r in rows) / len(rows)
            per_seed = ", ".join(f"{a:.3f}" for a in accuracies)
            lines.append(f"| {size} | {model} | {per_seed} | {sum(accuracies) / len(accuracies):.3f} | "
                         f"{min(accuracies):.3f} | {seconds:.0f} ({load:.1f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())["results"]))
