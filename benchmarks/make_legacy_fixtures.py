"""Legacy run fixtures: small runs made by the code of commit 4000073, with the numbers that code gave for them.

This script belongs to commit 4000073 (the flat package layout before the redesign) and imports that layout's
modules (perceiver_med.runs, perceiver_med.cache, ...): it does not run against today's package. It is kept as the
record of how tests/fixtures/legacy_runs was made; to make the fixtures again, run it from a checkout of that commit:

    git worktree add /tmp/legacy 4000073 && cd /tmp/legacy && python -m venv .venv && . .venv/bin/activate
    pip install torch==2.13.0 && pip install -e . && python /path/to/this/make_legacy_fixtures.py OUT

    python benchmarks/make_legacy_fixtures.py OUT [--no-retrain] [--overwrite]

OUT gets (all commands run with OUT as the working directory, so every path they are given is relative):

    data/knee/scans/*.png, data/knee/splits.csv, data/knee/splits-cv.csv   (synth knee, split; relative paths)
    data/lung/scans/*.nii.gz, data/lung/points.csv, data/lung/splits.csv    (synth lung --points, split --points)
    runs/<run>/                     run directories as `train` wrote them, less checkpoint.pt and the PNG figures
    expected/<run>/                 what today's code says about each run (see README.md, which this script writes)
    expected/summary.json           the checks made here: repeatability, relocation, thread count, retraining

A run's frozen splits.csv (and config.json's splits_file) name the scans by ABSOLUTE path: `split`/`train`
write a scan path relative only when it lies inside the CSV's folder, and a splits file may not climb out of its
folder with `..`, so a run directory cannot refer to data beside it. Each data folder therefore carries its own
splits CSV with relative paths (`scans/...`), and the relocatable expectations are those of
`evaluate RUN --splits data/<set>/splits.csv` (checked here to equal evaluating the frozen copy, bit for bit).

Every CLI step is a subprocess of the `perceiver-med` on PATH (or `python -m perceiver_med`); the expected
numbers of the Python API come from the perceiver_med this interpreter imports.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMIT = "4000073"
COMMON = ["--seed", "0", "--device", "cpu", "--precision", "fp32", "--num-workers", "1", "--quiet"]
SMALL_PERCEIVER = ["--num-latents", "8", "--latent-dim", "16", "--num-iterations", "1"]

DATA_COMMANDS = [
    ["synth", "knee", "data/knee/scans", "--patients", "12", "--format", "png", "--seed", "0"],
    ["split", "data/knee/scans", "--out", "data/knee/splits.csv", "--seed", "0"],
    ["split", "data/knee/scans", "--out", "data/knee/splits-cv.csv", "--seed", "0", "--folds", "3"],
    ["synth", "lung", "data/lung", "--points", "--patients", "6", "--format", "nifti", "--seed", "0"],
    ["split", "data/lung/scans", "--points", "data/lung/points.csv", "--out", "data/lung/splits.csv", "--seed", "0"],
]

# name: (splits CSV, train options, scans folder for predict/explain, points CSV or None, explain samples)
KNEE_SCANS = "data/knee/scans"
RUNS = {
    "knee-perceiver": ("data/knee/splits.csv", ["--model", "perceiver", *SMALL_PERCEIVER, "--epochs", "2"],
                       KNEE_SCANS, None, 2),
    "knee-hybrid": ("data/knee/splits.csv", ["--model", "vit-rollout-cnn", "--depth", "1", "--dim", "32",
                                             "--epochs", "1"], KNEE_SCANS, None, 1),
    "knee-cnn": ("data/knee/splits.csv", ["--model", "cnn", "--epochs", "2"], KNEE_SCANS, None, 1),
    "lung-points-perceiver": ("data/lung/splits.csv", ["--model", "perceiver", *SMALL_PERCEIVER, "--epochs", "2"],
                              "data/lung/scans", "data/lung/points.csv", 1),
    "knee-cv": ("data/knee/splits-cv.csv", ["--cv", "--model", "perceiver", *SMALL_PERCEIVER, "--epochs", "1"],
                KNEE_SCANS, None, 1),
}
# The splits CSV a relocated copy scores each run with (relative paths). A cross-validation's frozen copy marks
# the val (fold 0) rows train, and evaluate --splits refuses a file whose val rows hold the run's training
# patients even for --split test, so its own is the frozen copy with the build's data folder made relative.
EVAL_SPLITS = {"knee-cv": "data/knee/splits-cv-ensemble.csv"}
DROPPED = ("checkpoint.pt", "*.png")  # not needed by evaluate, predict, explain or report (checked below)


def cli() -> list[str]:
    exe = shutil.which("perceiver-med")
    return [exe] if exe else [sys.executable, "-m", "perceiver_med"]


def run_cli(args: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
    done = subprocess.run([*cli(), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"perceiver-med {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def shell(args: list[str]) -> str:
    return "perceiver-med " + " ".join(args)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_json(value) -> object:
    """A JSON round trip (numpy scalars and arrays as floats and lists), for exact comparison."""
    import numpy as np

    def default(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        raise TypeError(type(v))
    return json.loads(json.dumps(value, default=default))


def max_abs_diff(a, b) -> float:
    """Largest difference between numeric leaves of two JSON values; inf where their structure differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return float("inf")
        return max([max_abs_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf")
        return max([max_abs_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if a == b:
            return 0.0
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(value), indent=1, sort_keys=True) + "\n")


def eval_splits(name: str) -> str:
    return EVAL_SPLITS.get(name, RUNS[name][0])


def write_ensemble_splits(root: Path) -> None:
    """data/knee/splits-cv-ensemble.csv: runs/knee-cv/splits.csv with paths relative to data/knee."""
    prefix = (root / "data" / "knee").as_posix() + "/"
    text = (root / "runs" / "knee-cv" / "splits.csv").read_text()
    assert text.count(prefix) == text.count("\n") - 1, "every frozen path should lie in data/knee"
    (root / EVAL_SPLITS["knee-cv"]).write_text(text.replace(prefix, ""))


def evaluate_args(name: str) -> dict:
    """evaluate_run keywords that score a run against its data folder's relative splits CSV, as the frozen copy
    does by default (a cross-validation: its test split)."""
    return {"split": "test" if name == "knee-cv" else "all"}


def explain_samples(root: Path, name: str) -> list[str]:
    """Scans for explain: test scans of the run's splits CSV, one per class where possible (fewest points)."""
    import csv

    splits, _, _, points, count = RUNS[name]
    rows = [r for r in csv.DictReader(open(root / splits)) if r["split"] == "test"]
    folder = Path(splits).parent
    if points:  # a point run: the test scan with the fewest points
        per_scan: dict[str, int] = {}
        for r in rows:
            per_scan[r["path"]] = per_scan.get(r["path"], 0) + 1
        best = min(sorted(per_scan), key=lambda p: per_scan[p])
        return [(folder / best).as_posix()]
    picked, seen = [], set()
    for r in rows:
        if r["label"] not in seen:
            seen.add(r["label"])
            picked.append((folder / r["path"]).as_posix())
    return picked[:count]


def evidence_of(run: Path, scans: list[Path], points: Path | None) -> list[dict]:
    """What explain computes for each overlay: model input, calibrated probabilities, decision, evidence map."""
    import numpy as np
    import torch

    from perceiver_med.cache import InputRequest, prepare
    from perceiver_med.explain import evidence_map, occlusion_window
    from perceiver_med.runs import load_model
    from perceiver_med.scoring import apply_decision

    config, model = load_model(run, torch.device("cpu"))
    if points is not None:
        from perceiver_med.point_runs import prepare_points

        prepared = prepare_points(points, scans, config)
        items = [(f"{s.scan.path.name}:line{s.row.line}", a) for s, a in zip(prepared.samples, prepared.inputs)]
    else:
        items = [(scan.name, prepare(InputRequest(scan), config.preprocess)) for scan in scans]
    results = []
    for key, array in items:
        x = torch.from_numpy(array)[None]
        with torch.no_grad():
            raw = torch.softmax(model(x).float(), dim=1).numpy()
        probs, decided = apply_decision(raw, config.decision, config.classes.index(config.positive_class))
        window = occlusion_window(model, max(x.shape[-2:]))
        evidence = evidence_map(model, x, window, classes=torch.from_numpy(decided))[0, 0].numpy()
        results.append({"key": key, "input": np.asarray(array), "evidence": evidence.astype(np.float32),
                        "raw_probs": raw[0].tolist(), "probs": probs[0].tolist(),
                        "predicted": config.classes[int(decided[0])], "window": int(window)})
    return results


def png_titles(folder: Path) -> dict:
    from PIL import Image

    return {p.name: Image.open(p).info.get("Title") for p in sorted(folder.glob("*.png"))}


def strip_run(run: Path) -> list[str]:
    removed = []
    for pattern in DROPPED:
        for path in sorted(run.rglob(pattern)):
            removed.append(path.relative_to(run).as_posix())
            path.unlink()
    return removed


def cpu_info() -> dict:
    model, flags = "", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    import torch
    return {"model_name": model, "avx512_bf16": "avx512_bf16" in flags.split(), "amx_bf16": "amx_bf16" in flags.split(),
            "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine()}


def expected_for(root: Path, name: str, target: Path, scratch: Path) -> dict:
    """Every expectation of one run, written under target (expected/<name>/); returns a summary."""
    from perceiver_med.runs import evaluate_run

    _, _, scans, points, _ = RUNS[name]
    splits = eval_splits(name)
    run = root / "runs" / name
    target.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    # 1. the Python API on the run's frozen splits (absolute paths of this build), twice
    frozen = to_json(evaluate_run(run, split="all", device="cpu"))
    again = to_json(evaluate_run(run, split="all", device="cpu"))
    write_json(target / "evaluate_all.json", frozen)
    summary["evaluate_twice_identical"] = frozen == again
    # 2. against the data folder's relative splits CSV: what a relocated copy can reproduce
    kwargs = evaluate_args(name)
    relocatable = to_json(evaluate_run(run, splits=root / splits, device="cpu", **kwargs))
    write_json(target / "evaluate_relocatable.json", relocatable)
    summary["relocatable_equals_frozen"] = relocatable == frozen
    summary["relocatable_max_abs_diff_vs_frozen"] = max_abs_diff(relocatable, frozen)
    for split in ("train", "val", "test"):
        if name == "knee-cv" and split != "test":
            continue
        metrics = to_json(evaluate_run(run, splits=root / splits, split=split, device="cpu"))
        write_json(target / f"evaluate_{split}.json", metrics)
    # 3. the CLI, as text (relative paths, so the text does not depend on where the fixture lies)
    for split in ("all",) if name != "knee-cv" else ("test",):
        args = ["evaluate", f"runs/{name}", "--splits", splits, "--split", split, "--device", "cpu"]
        out = run_cli(args, root)
        (target / f"evaluate_cli_{split}.txt").write_text(f"$ {shell(args)}\n{out.stdout}")
    # 4. predict (a point run: with its points CSV)
    args = ["predict", f"runs/{name}", scans, "--out", f"expected/{name}/predict.csv", "--device", "cpu"]
    if points:
        args += ["--points", points]
    out = run_cli(args, root)
    (target / "predict_cli.txt").write_text(f"$ {shell(args)}\n{out.stdout}")
    # 5. explain: the CLI's overlay titles, and the evidence the API computes for the same inputs
    samples = explain_samples(root, name)
    overlays = scratch / "explain" / name
    args = ["explain", f"runs/{name}", *samples, "--out", str(overlays), "--overwrite"]
    if points:
        args += ["--points", points]
    run_cli(args, root)
    titles = png_titles(overlays)
    evidence = evidence_of(run, [root / s for s in samples], root / points if points else None)
    import numpy as np

    records = []
    for k, item in enumerate(evidence):
        stem = f"sample{k}"
        np.save(target / f"evidence_{stem}.npy", item["evidence"])
        np.save(target / f"input_{stem}.npy", item["input"].astype(np.float32))
        records.append({"file": stem, "key": item["key"], "predicted": item["predicted"], "probs": item["probs"],
                        "raw_probs": item["raw_probs"], "window": item["window"],
                        "evidence_max": float(item["evidence"].max()), "evidence_sum": float(item["evidence"].sum())})
    write_json(target / "explain.json", {"command": shell(args).replace(str(overlays), "OVERLAYS"),
                                         "samples": samples, "overlay_titles": titles, "evidence": records})
    # explain's title shows the same probability the API gives
    summary["explain_titles_match_api"] = all(
        any(f"predicted {r['predicted']} (p = {max(r['probs']):.3f})" in (t or "") for t in titles.values())
        for r in records)
    # 6. report (its Markdown; numbers only, the page holds this build's paths and time)
    page = scratch / "report" / name / "report.html"
    args = ["report", f"runs/{name}", "--out", str(page), "--overwrite"]
    done = run_cli(args, root, check=False)
    summary["report_ok"] = done.returncode == 0
    if done.returncode == 0:
        shutil.copyfile(page.with_suffix(".md"), target / "report.md")
    else:
        (target / "report_error.txt").write_text(done.stdout + done.stderr)
    return summary


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same tensors and metadata (their bytes may still differ: the
    order of the header's metadata keys varies from one save to the next)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as x, safe_open(str(b), "pt") as y:
        return (x.metadata() == y.metadata() and set(x.keys()) == set(y.keys())
                and all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys()))


def retrain(root: Path, name: str, scratch: Path) -> dict:
    """The same train command again, into scratch: are the weights and the numbers the same?"""
    from perceiver_med.runs import evaluate_run

    splits, options, *_ = RUNS[name]
    again = scratch / "retrain" / name
    shutil.rmtree(again, ignore_errors=True)
    args = ["train", splits, "--out", str(again), *options, *COMMON]
    started = time.time()
    run_cli(args, root)
    seconds = time.time() - started
    original, redone = root / "runs" / name, again
    weights = sorted(p.relative_to(original).as_posix() for p in original.rglob("model.safetensors"))
    same_weights = {w: sha256(original / w) == sha256(redone / w) for w in weights}
    same_values = {w: same_tensors(original / w, redone / w) for w in weights}
    first = json.loads((root / "expected" / name / "evaluate_all.json").read_text())
    second = to_json(evaluate_run(redone, split="all", device="cpu"))
    return {"command": shell(args).replace(str(again), "RETRAIN_DIR"), "seconds": round(seconds, 1),
            "weights_identical": same_weights, "tensors_identical": same_values, "evaluate_identical": first == second,
            "evaluate_max_abs_diff": max_abs_diff(first, second),
            "metrics_json_identical": to_json(json.loads((original / "metrics.json").read_text()))
            == to_json(json.loads((redone / "metrics.json").read_text())),
            "evaluate_all": second}


def verify_relocated(root: Path, scratch: Path) -> dict:
    """Copy the fixture elsewhere, hide the original data, and reproduce every expectation from the copy."""
    import numpy as np
    import torch

    from perceiver_med.runs import evaluate_run

    moved = scratch / "relocated" / "fixture"
    shutil.rmtree(moved.parent, ignore_errors=True)
    shutil.copytree(root, moved)
    hidden = root / "data.hidden"
    (root / "data").rename(hidden)  # the frozen splits' absolute paths now lead nowhere
    results: dict = {}
    threads = torch.get_num_threads()
    try:
        for name, (_, _, scans, points, _) in RUNS.items():
            splits = eval_splits(name)
            exp = moved / "expected" / name
            r: dict = {}
            want = json.loads((exp / "evaluate_relocatable.json").read_text())
            got = to_json(evaluate_run(moved / "runs" / name, splits=moved / splits, device="cpu",
                                       **evaluate_args(name)))
            r["evaluate_identical"] = got == want
            torch.set_num_threads(1)
            try:
                one = to_json(evaluate_run(moved / "runs" / name, splits=moved / splits, device="cpu",
                                           **evaluate_args(name)))
            finally:
                torch.set_num_threads(threads)
            r["evaluate_1_thread_identical"] = one == want
            r["evaluate_1_thread_max_abs_diff"] = max_abs_diff(one, want)
            default = run_cli(["evaluate", f"runs/{name}", "--device", "cpu"], moved, check=False)
            r["frozen_splits_evaluate_after_move"] = {"returncode": default.returncode,
                                                      "message": (default.stdout + default.stderr).strip()[-400:]}
            args = ["predict", f"runs/{name}", scans, "--out", str(scratch / "relocated" / f"{name}.csv"),
                    "--device", "cpu", "--overwrite"] + (["--points", points] if points else [])
            run_cli(args, moved)
            r["predict_identical"] = ((scratch / "relocated" / f"{name}.csv").read_bytes()
                                      == (exp / "predict.csv").read_bytes())
            info = json.loads((exp / "explain.json").read_text())
            evidence = evidence_of(moved / "runs" / name, [moved / s for s in info["samples"]],
                                   moved / points if points else None)
            r["evidence_identical"] = all(
                np.array_equal(np.load(exp / f"evidence_sample{k}.npy"), e["evidence"])
                and np.array_equal(np.load(exp / f"input_sample{k}.npy"), e["input"].astype(np.float32))
                and e["probs"] == info["evidence"][k]["probs"] for k, e in enumerate(evidence))
            overlays = scratch / "relocated" / "explain" / name
            run_cli(["explain", f"runs/{name}", *info["samples"], "--out", str(overlays), "--overwrite"]
                    + (["--points", points] if points else []), moved)
            r["explain_titles_identical"] = png_titles(overlays) == info["overlay_titles"]
            page = scratch / "relocated" / "report" / name / "report.html"
            r["report_ok"] = run_cli(["report", f"runs/{name}", "--out", str(page), "--overwrite"], moved,
                                     check=False).returncode == 0
            results[name] = r
    finally:
        hidden.rename(root / "data")
    return results


def tree_sizes(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            lines.append(f"{size / 1024:9.1f} KiB  {path.relative_to(root).as_posix()}/")
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    lines.append(f"{total / 1024:9.1f} KiB  (total)")
    return "\n".join(lines)


def write_readme(root: Path, summary: dict) -> None:
    cpu = summary["cpu"]
    data = "\n".join(f"    {shell(c)}" for c in DATA_COMMANDS)
    trains = "\n".join(f"    {shell(['train', s, '--out', f'runs/{n}', *o, *COMMON])}"
                       for n, (s, o, *_) in RUNS.items())
    retrained = summary.get("retrain", {})
    retrain_lines = "\n".join(
        f"- {n}: weight files byte-identical {all(r['weights_identical'].values())}, tensors and metadata identical "
        f"{all(r['tensors_identical'].values())}, evaluate identical "
        f"{r['evaluate_identical']} (max abs diff {r['evaluate_max_abs_diff']:.3g}), metrics.json identical "
        f"{r['metrics_json_identical']}" for n, r in retrained.items()) or "- not run (--no-retrain)"
    reloc = summary.get("relocated", {})
    reloc_lines = "\n".join(
        f"- {n}: evaluate {r['evaluate_identical']}, 1 thread {r['evaluate_1_thread_identical']}, predict "
        f"{r['predict_identical']}, evidence {r['evidence_identical']}, explain titles "
        f"{r['explain_titles_identical']}, report {r['report_ok']}; default `evaluate` (frozen splits) after the "
        f"move: exit {r['frozen_splits_evaluate_after_move']['returncode']}" for n, r in reloc.items())
    text = f"""# Legacy run fixtures (perceiver-med at commit {COMMIT})

Small runs trained by the code at commit `{COMMIT}` (package layout before the redesign), with what that code
says about them, so that later code can be shown to predict and evaluate the same runs to the same numbers.
Made by `python benchmarks/make_legacy_fixtures.py OUT` (rerunnable; it rebuilds everything into OUT).

CPU: {cpu['model_name']} ({cpu['cores']} cores, {cpu['machine']}); avx512_bf16 in /proc/cpuinfo flags:
{cpu['avx512_bf16']}; amx_bf16: {cpu['amx_bf16']}. torch {cpu['torch']}, Python {cpu['python']}, torch threads
{cpu['torch_threads']}. Everything runs with `--device cpu --precision fp32 --seed 0`.

## Runs

| run | model | data | epochs |
|---|---|---|---|
| runs/knee-perceiver | Perceiver, 8 latents x 16, 1 iteration | 12 phantom knees, 46 PNGs (data/knee) | 2 |
| runs/knee-hybrid | ViT (depth 1, dim 32) + rollout + CNN | the same | 1 per stage |
| runs/knee-cnn | CNN baseline | the same | 2 |
| runs/lung-points-perceiver | Perceiver, 8 latents x 16, 1 iteration, input `point` (3x3 grids of 64 px) | 6 phantom chest CTs (NIfTI), 18 nodule points (data/lung) | 2 |
| runs/knee-cv | 3-fold cross-validation of that small Perceiver; RUN is the ensemble of fold_0..2 | data/knee, splits-cv.csv | 1 |

Commands (working directory: the fixture root, `perceiver-med` of commit {COMMIT}):

{data}
{trains}

Then `checkpoint.pt` and every PNG (curves, confusion, reliability) were deleted from the runs: evaluate,
predict, explain and report work without them (checked from the relocated copy below). `config.json` still
names the checkpoint's SHA-256; only `--resume` reads it.

## Paths: what is relative and what is not

- `data/knee/splits.csv`, `data/knee/splits-cv.csv`, `data/lung/splits.csv` and `data/lung/points.csv` hold paths
  relative to their own folder (`scans/...`): `split` writes a scan inside the CSV's folder relative to it.
- Each run's frozen `splits.csv` (whose SHA-256 is in config.json) and config.json's `splits_file` hold the
  ABSOLUTE paths of the build ({summary['build_root']}). This cannot be avoided with this code: `write_splits`
  writes a path relative only when the scan lies inside the CSV's folder (the run directory), `read_splits`
  refuses a relative path that climbs out with `..`, and `train` refuses an `--out` that already holds files,
  so the data cannot sit inside a run. Editing the frozen copy would break its SHA-256 in config.json.
- So, after copying the fixture anywhere, score a run with its data folder's splits CSV:
  `perceiver_med.runs.evaluate_run(RUN, splits=FIXTURE/data/knee/splits.csv, split=...)` or
  `perceiver-med evaluate RUN --splits data/knee/splits.csv`. At build time this gives exactly the numbers of
  evaluating the frozen copy (`relocatable_equals_frozen` in expected/summary.json). The frozen copy is still
  read (for the check that no training patient is scored) but its files need not exist. Plain
  `evaluate RUN` (frozen copy) fails after a move because the scans are not found (recorded below).
- The cross-validation (knee-cv) is scored with `data/knee/splits-cv-ensemble.csv`, written by the generator
  (not by `split`): the run's frozen copy with `<build>/data/knee/` cut from its paths. The frozen copy of a
  cross-validation marks the fold-0 (val) rows `train`, and `evaluate RUN --splits data/knee/splits-cv.csv`
  is refused, even with `--split test` ("14 val scan(s) of that splits file were training scans or patients
  of this run"), although it is the very file the run was trained from. `evaluate RUN` without `--splits`
  scores its test split only; with `--splits` and `--split all` every split, so its expectations are for
  `--split test`.
- predict/explain take scan folders and files, and the points CSV; all are given as relative paths from the
  fixture root, and predict writes the paths as given, so `expected/<run>/predict.csv` is byte-comparable when
  the command is run from the fixture root with the same arguments.

## expected/<run>/

- `evaluate_all.json`: `evaluate_run(run, split="all", device="cpu")` on the frozen splits, at build time
  (cross-validation: its test split, as evaluate_run chooses).
- `evaluate_relocatable.json`: `evaluate_run(run, splits=data/.../splits.csv, split="all"` (knee-cv: `"test"`)
  `, device="cpu")`; equal to the above. `evaluate_{{train,val,test}}.json`: the same per split.
- `evaluate_cli_all.txt` (knee-cv: `_test`): stdout of `perceiver-med evaluate runs/RUN --splits ... --device cpu`.
- `predict.csv` and `predict_cli.txt`: `perceiver-med predict runs/RUN data/knee/scans --out expected/RUN/predict.csv
  --device cpu` (the point run: `data/lung/scans --points data/lung/points.csv`).
- `explain.json`, `evidence_sampleK.npy`, `input_sampleK.npy`: for the test scans in `explain.json["samples"]`
  (the point run: one test scan, one overlay per point), the model input (`perceiver_med.cache.prepare`, or
  `point_runs.prepare_points`), the run's calibrated probabilities and decision (`scoring.apply_decision`)
  and the occlusion evidence (`explain.evidence_map` with `occlusion_window`), exactly as `explain` computes
  them; `overlay_titles` holds the PNG Title of each overlay `perceiver-med explain` wrote (it names the
  prediction and `p = ...` to 3 decimals).
- `report.md`: the Markdown of `perceiver-med report runs/RUN --out report.html` (holds build paths and times:
  compare numbers, not text).
- `retrain.json`: the same train command run a second time (into a scratch folder), its weights' SHA-256
  against these, and its `evaluate_run(..., split="all")`.

## What was observed

Evaluating twice in one process: identical ({all(s['evaluate_twice_identical'] for s in summary['runs'].values())}).
Relocated copy (original data renamed away, one process, torch threads {cpu['torch_threads']} and 1):
{reloc_lines}

Retraining the same command on this CPU:
{retrain_lines}

A weight file's bytes, and so `weights_sha256` in config.json, differ between two identical trainings: the
safetensors header lists its `__metadata__` keys (model, classes, input_shape) in a different order from one
save to the next; the tensors and metadata values are the same. Do not compare SHA-256s of re-saved weights.
The hybrid evaluated with 1 torch thread instead of the default differs in the last bits of its
probabilities (max abs diff in the metrics about 1.6e-7); the others were identical.

Expect bit-identical numbers on an x86-64 CPU in fp32 with torch {cpu['torch']}; another torch version or CPU
may move the last bits of probabilities (compare with a tolerance of about 1e-6 there; accuracies, decisions
and confusion matrices should not move).

## Sizes

```
{tree_sizes(root)}
```
"""
    (root / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="fixture folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing fixture folder")
    parser.add_argument("--no-retrain", action="store_true", help="skip training every run a second time")
    parser.add_argument("--scratch", type=Path, help="scratch folder (default: a new temporary folder)")
    args = parser.parse_args()
    root = args.out.resolve()
    if root.exists():
        if not args.overwrite:
            raise SystemExit(f"{root} exists: add --overwrite")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="legacy-fixtures-"))).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PERCEIVER_MED_CACHE", str(scratch / "cache"))
    started = time.time()
    for command in DATA_COMMANDS:
        print("$", shell(command), flush=True)
        run_cli(command, root)
    runs: dict = {}
    for name, (splits, options, *_) in RUNS.items():
        command = ["train", splits, "--out", f"runs/{name}", *options, *COMMON]
        print("$", shell(command), flush=True)
        t = time.time()
        run_cli(command, root)
        runs[name] = {"command": shell(command), "train_seconds": round(time.time() - t, 1),
                      "removed": strip_run(root / "runs" / name)}
    write_ensemble_splits(root)
    for name in RUNS:
        print("expected outputs of", name, flush=True)
        runs[name].update(expected_for(root, name, root / "expected" / name, scratch))
    summary = {"commit": COMMIT, "cpu": cpu_info(), "build_root": str(root), "runs": runs,
               "data_commands": [shell(c) for c in DATA_COMMANDS]}
    if not args.no_retrain:
        summary["retrain"] = {}
        for name in RUNS:
            print("retraining", name, flush=True)
            result = retrain(root, name, scratch)
            write_json(root / "expected" / name / "retrain.json", result)
            summary["retrain"][name] = {k: v for k, v in result.items() if k != "evaluate_all"}
    print("checking a relocated copy", flush=True)
    summary["relocated"] = verify_relocated(root, scratch)
    summary["seconds"] = round(time.time() - started, 1)
    write_json(root / "expected" / "summary.json", summary)
    write_readme(root, summary)
    print(json.dumps(to_json({k: summary[k] for k in ("relocated", "seconds")}), indent=1))
    print(f"fixture written to {root}; scratch in {scratch}")


if __name__ == "__main__":
    main()
