"""The model families of two source trees side by side: same configuration, same outputs, same throughput?

    python benchmarks/side_by_side_models.py --tree before=/path/to/old/checkout --tree after=. [--rounds 3]

For every family and input kind (a 64x64 image, a 192x192 slice grid), each tree builds the model `train` would
build (models.default_config, models.build_model), from the same seed, and runs it on the same batch; the script
reports whether the stored configurations and the outputs are identical, and the training throughput (forward,
backward and AdamW on a batch of 16, fp32, after warm-up) as the median of `--rounds` fresh processes per tree,
the trees taking turns so that a change of machine load falls on both. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

FAMILIES = ("perceiver", "vit-rollout-cnn", "cnn")
SHAPES = {"image": (1, 64, 64), "grid": (1, 192, 192)}

MEASURE = r"""
import hashlib, json, sys, time
import torch
from perceiver_med.models import build_model, default_config

name, shape, steps = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
config = default_config(name, shape, 2)
torch.manual_seed(0)
model = build_model(config)
x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
y = torch.tensor([0, 1] * 8)


def logits(out):
    return out if torch.is_tensor(out) else getattr(out, "logits", out[0])


model.eval()
with torch.no_grad():
    out = logits(model(x)).double()
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
seconds = []
for step in range(steps + 2):
    started = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(logits(model(x)), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step >= 2:
        seconds.append(time.perf_counter() - started)
print(json.dumps({"config": config, "output_sha256": hashlib.sha256(out.numpy().tobytes()).hexdigest(),
                  "samples_per_second": 16 * len(seconds) / sum(seconds)}))
"""


def measure(tree: Path, name: str, shape, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", MEASURE, name, json.dumps(shape), str(steps), str(threads)],
                          capture_output=True, text=True, env=env, cwd=tree, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="LABEL=PATH of a checkout (give two)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    trees = {label: Path(path).resolve() for label, path in (item.split("=", 1) for item in args.tree)}
    results = []
    for name in FAMILIES:
        for kind, shape in SHAPES.items():
            runs = {label: [] for label in trees}
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    runs[label].append(measure(tree, name, shape, args.steps, args.threads))
            first = {label: found[0] for label, found in runs.items()}
            results.append({
                "model": name, "input": kind, "shape": shape,
                "same_config": len({json.dumps(r["config"], sort_keys=True) for r in first.values()}) == 1,
                "same_output": len({r["output_sha256"] for r in first.values()}) == 1,
                "samples_per_second": {label: round(statistics.median(r["samples_per_second"] for r in found), 1)
                                       for label, found in runs.items()},
            })
    print(json.dumps({"trees": {label: str(path) for label, path in trees.items()}, "results": results,
                      "threads": args.threads, "rounds": args.rounds, "cpu": platform.processor() or
                      platform.machine(), "load_average": round(os.getloadavg()[0], 2)}, indent=2))


if __name__ == "__main__":
    main()
