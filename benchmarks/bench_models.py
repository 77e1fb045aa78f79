"""Model benchmarks: our Perceiver against perceiver-pytorch, time to accuracy, and scaling with pixels.

    pip install -e '.[bench]'
    python benchmarks/bench_models.py --json models.json [--sections equivalence,throughput,accuracy,precision,scaling]

equivalence: perceiver-pytorch's weights loaded into ours; the losses of a few AdamW steps on the same batches.
throughput: identical configuration (64x64x1, 6 bands, max_freq 10, 128 latents x 256, 1 cross head,
  8 latent heads x 64, 2 self-attention blocks per cross-attention, 2 iterations tied after the first,
  GEGLU, no dropout, 2 classes, batch 32), training steps (forward, backward, AdamW) of both models measured
  alternately after warm-up, in fp32 and in bf16 autocast, each precision in a fresh process. Also model FLOPs
  per image (torch's FlopCounterMode) and the fraction of this machine's own measured matmul peak.
accuracy: seconds of training on phantom knees until test accuracy first reaches 0.95.
precision: perceiver-med trained in fp32 and in bf16 autocast (perceiver_med.training.engine.autocast) in lockstep,
  per seed: epochs and seconds to 0.95 test accuracy, and the test accuracy after a fixed number of epochs.
scaling: time and peak memory per training sample at 32^2..256^2 pixels, Perceiver vs a transformer
  with self-attention over all pixels; exponents fitted to cost ~ pixels^k.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import (FlopCounterMode, register_flop_formula, sdpa_backward_flop_count,
                                      sdpa_flop_count)

try:  # torch counts the CUDA fused attention kernels but not the CPU one; same formula
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)(
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v))
except RuntimeError:  # a later torch counts it itself
    pass

SAME = dict(num_freq_bands=6, max_freq=10.0, num_latents=128, latent_dim=256, cross_heads=1, latent_heads=8,
            cross_dim_head=64, latent_dim_head=64, num_classes=2, attn_dropout=0.0, ff_dropout=0.0,
            self_per_cross_attn=2)


def build_pair(device):
    """The two models, each as (model, takes channels-last input)."""
    from perceiver_pytorch import Perceiver as ReferencePerceiver

    from perceiver_med.models import Perceiver

    torch.manual_seed(0)
    return {"perceiver-pytorch": (ReferencePerceiver(input_channels=1, input_axis=2, depth=2, weight_tie_layers=True,
                                                     fourier_encode_data=True, **SAME).to(device), True),
            "perceiver-med": (Perceiver(in_channels=1, image_size=64, num_iterations=2,
                                        weight_sharing="after_first", stem_widths=(), deep_supervision=0.0,
                                        **SAME).to(device), False)}


def copy_reference_weights(reference, ours) -> None:
    """Load perceiver-pytorch's weights into our Perceiver, module by module (their q and kv make our qkv)."""
    pairs = [(ours.latents, reference.latents), (ours.norm.weight, reference.to_logits[1].weight),
             (ours.norm.bias, reference.to_logits[1].bias), (ours.head.weight, reference.to_logits[2].weight),
             (ours.head.bias, reference.to_logits[2].bias)]

    def linear(mine, theirs):
        pairs.extend([(mine.weight, theirs.weight)] + ([(mine.bias, theirs.bias)] if mine.bias is not None else []))

    def norm(mine, theirs):
        pairs.extend([(mine.weight, theirs.weight), (mine.bias, theirs.bias)])

    def feed_forward(mine, theirs):
        norm(mine.norm, theirs.norm)
        linear(mine.net[0], theirs.fn.net[0])
        linear(mine.net[-1], theirs.fn.net[2])

    for layer, block in zip(ours.layers, reference.layers):  # their tied blocks are one module, as ours are
        attn, theirs = layer.cross_attn, block.cross_attn
        norm(attn.norm, theirs.norm)
        norm(attn.norm_context, theirs.norm_context)
        for name in ("to_q", "to_kv", "to_out"):
            linear(getattr(attn, name), getattr(theirs.fn, name))
        feed_forward(layer.cross_ff, block.cross_ff)
        for (self_attn, ff), (their_attn, their_ff) in zip(layer.self_attns, block.self_attns):
            norm(self_attn.norm, their_attn.norm)
            pairs.append((self_attn.to_qkv.weight, torch.cat([their_attn.fn.to_q.weight, their_attn.fn.to_kv.weight])))
            linear(self_attn.to_out, their_attn.fn.to_out)
            feed_forward(ff, their_ff)
    assert len({id(mine) for mine, _ in pairs}) == len(list(ours.parameters())), "every parameter is copied once"
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.copy_(theirs)


def equivalence(device, steps=3, batch=8) -> dict:
    """Same weights, same batches: do the two models compute the same losses, step after step?

    In fp32, and in bf16 autocast (where the two use different kernels, so the losses agree to bf16 rounding).
    """
    out = {"steps": steps, "batch": batch}
    for precision in ("fp32", "bf16"):
        models = build_pair(device)
        (reference, _), (ours, _) = models["perceiver-pytorch"], models["perceiver-med"]
        copy_reference_weights(reference, ours)
        generator = torch.Generator().manual_seed(0)
        losses = {name: [] for name in models}
        for name, (model, channels_last) in models.items():
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            for step in range(steps):
                x = torch.rand(batch, 1, 64, 64, generator=generator.manual_seed(step)).to(device)
                y = torch.arange(batch, device=device) % 2
                losses[name].append(train_step(model, optimizer, x, y, channels_last, precision == "bf16",
                                               device).item())
        difference = max(abs(a - b) for a, b in zip(*losses.values()))
        if precision == "fp32":  # the keys of earlier results
            out.update(losses=losses, max_abs_loss_difference=difference)
        else:
            out.update(bf16_losses=losses, bf16_max_abs_loss_difference=difference)
    return out


def train_step(model, optimizer, x, y, channels_last, bf16, device) -> torch.Tensor:
    """One forward, backward and optimiser step; returns the (detached) loss."""
    from perceiver_med.training.engine import autocast, training_loss

    inputs = x.permute(0, 2, 3, 1) if channels_last else x  # perceiver-pytorch takes (B, H, W, C)
    with autocast(device, "bf16" if bf16 else "fp32"):
        outputs = model(inputs)
    _, loss, _ = training_loss(outputs, y)  # with our models' deep supervision, as train trains them
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, size=2048, repeats=5) -> float:
    """This machine's own dense matmul rate in FLOP/s, same threads and dtype, best of two operand layouts

    (a @ b and a @ b.T: torch's emulated bf16 GEMM on CPUs without bf16 units is ~15x slower on the first).
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for right in (b, b.t()):
        a @ right
        sync(device)
        for _ in range(repeats):
            started = time.perf_counter()
            a @ right
            sync(device)
            best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def step_flops(model, channels_last, batch, device) -> float:
    x = torch.rand(batch, 1, 64, 64, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    inputs = x.permute(0, 2, 3, 1) if channels_last else x
    from perceiver_med.training.engine import training_loss

    with FlopCounterMode(display=False) as counter:
        training_loss(model(inputs), y)[1].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def _reset_peak_rss() -> bool:
    """Linux resets the resident-set high-water mark when 5 is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def in_fresh_process(target, *args, mmap_threshold: str | None = "65536"):
    """Run target(*args, queue) in a new process and return what it puts on the queue.

    Each measurement gets a clean heap. For memory, glibc is told to map every block over 64 KiB on its own:
    without a fixed threshold it keeps freed blocks for reuse, and a step's peak would not show in the
    resident set at all. Timings keep glibc's own behaviour (mmap_threshold=None).
    """
    context = get_context("spawn")
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if mmap_threshold is not None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = mmap_threshold
    try:
        queue = context.Queue()
        process = context.Process(target=target, args=(*args, queue))
        process.start()
        result = queue.get()
        process.join()
    finally:
        if previous is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
    return result


def _second_step(name, bf16, batch, device):
    """A function that runs one training step of model `name`, called after a first step (optimiser state exists)."""
    model, channels_last = build_pair(device)[name]
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.rand(batch, 1, 64, 64, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    train_step(model, optimizer, x, y, channels_last, bf16, device)
    return lambda: train_step(model, optimizer, x, y, channels_last, bf16, device)


def _memory_child(name, bf16, batch, queue):
    step = _second_step(name, bf16, batch, torch.device("cpu"))
    if not _reset_peak_rss():
        queue.put(None)
        return
    base = _peak_rss_mb()
    step()
    queue.put(_peak_rss_mb() - base)


def peak_memory_mb(name, bf16, batch, device) -> float | None:
    """Peak memory of one training step above what was held before it: CUDA allocator peak, or resident set."""
    if device.type != "cuda":
        return in_fresh_process(_memory_child, name, bf16, batch)
    step = _second_step(name, bf16, batch, device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def throughput(device, batch=32, warmup=2, measured=4, bf16_measured=None, precisions=("fp32", "bf16")) -> dict:
    from perceiver_med.training.engine import native_cpu_bf16

    out = {"batch": batch, "threads": torch.get_num_threads(), "device": str(device)}
    emulated_bf16 = device.type == "cpu" and not native_cpu_bf16()
    pair = build_pair(device)
    out["parameters"] = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in pair.items()}
    counts = list(out["parameters"].values())
    out["parameter_ratio"] = counts[1] / counts[0]
    flops = {name: step_flops(m, cl, 4, device) for name, (m, cl) in pair.items()}
    out["train_flops_per_image"] = flops
    out["cpu_native_bf16"] = None if device.type == "cuda" else not emulated_bf16
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        if precision not in precisions:
            continue
        models = pair
        slow = bf16 and bf16_measured is not None
        steps = bf16_measured if slow else measured
        optimizers = {name: torch.optim.AdamW(m.parameters()) for name, (m, _) in models.items()}
        x = torch.rand(batch, 1, 64, 64, device=device)
        y = torch.randint(0, 2, (batch,), device=device)
        for _ in range(1 if slow else warmup):
            for name, (model, channels_last) in models.items():
                train_step(model, optimizers[name], x, y, channels_last, bf16, device)
        seconds = {name: [] for name in models}
        for _ in range(steps):  # alternate, so drifts in machine speed hit every model alike
            for name, (model, channels_last) in models.items():
                sync(device)
                started = time.perf_counter()
                train_step(model, optimizers[name], x, y, channels_last, bf16, device)
                sync(device)
                seconds[name].append(time.perf_counter() - started)
        peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32,
                           size=1024 if bf16 and emulated_bf16 else 2048)
        rates = {name: batch / float(np.median(s)) for name, s in seconds.items()}
        # on a shared machine the ratio of neighbouring steps is steadier than either rate
        ratios = [a / b for a, b in zip(seconds["perceiver-pytorch"], seconds["perceiver-med"])]
        out[precision] = {
            "images_per_second": rates,
            "speedup": float(np.median(ratios)),
            "speedup_per_round": ratios,
            "matmul_peak_tflops": peak / 1e12,
            "fraction_of_peak": {name: rates[name] * flops[name] / peak for name in models},
            "peak_memory_mb": {name: peak_memory_mb(name, bf16, batch, device) for name in models},
            "measured_steps": steps,
        }
    return out


def phantom_knees() -> dict:
    """60 synthetic knee patients (left or right), split by patient: inputs, labels, train and test masks."""
    from perceiver_med.inputs.loading import load_split_inputs
    from perceiver_med.workflows.folders import split_folder
    from perceiver_med.inputs.preprocess import PreprocessConfig
    from perceiver_med.inputs.splits import read_splits
    from perceiver_med.synth.phantoms import synth

    with tempfile.TemporaryDirectory() as temp:
        os.environ["PERCEIVER_MED_CACHE"] = str(Path(temp) / "cache")
        synth("knee", Path(temp) / "knee", 60, "png", 0)
        split_folder(Path(temp) / "knee", Path(temp) / "splits.csv", seed=0)
        rows = read_splits(Path(temp) / "splits.csv")
        loaded = load_split_inputs(rows, PreprocessConfig())
    return {"x": torch.from_numpy(loaded.inputs),
            "y": torch.tensor([row.label == "right" for row in loaded.samples]).long(),
            "train": torch.tensor([row.split == "train" for row in loaded.samples]),
            "test": torch.tensor([row.split == "test" for row in loaded.samples])}


def train_epochs(model, data, lr, channels_last, device, bf16=False, seed=0, batch=16):
    """Train epoch after epoch, yielding (seconds of training in that epoch, test accuracy after it).

    bf16 trains and evaluates under perceiver_med's autocast.
    """
    from perceiver_med.inputs.augment import AugmentConfig, augment_batch
    from perceiver_med.training.engine import autocast

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    x, y, test = data["x"], data["y"], data["test"]
    xt, yt = x[data["train"]], y[data["train"]]
    while True:
        order = torch.randperm(len(yt), generator=generator)
        started = time.perf_counter()
        model.train()
        for i in range(0, len(yt), batch):
            index = order[i:i + batch]
            inputs = augment_batch(xt[index], AugmentConfig(), generator)
            train_step(model, optimizer, inputs, yt[index], channels_last, bf16, device)
        seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad(), autocast(device, "bf16" if bf16 else "fp32"):
            inputs = x[test].permute(0, 2, 3, 1) if channels_last else x[test]
            accuracy = float((model(inputs).argmax(1) == y[test]).float().mean())
        yield seconds, accuracy


def train_curve(model, data, lr, channels_last, device, budget_seconds, target) -> dict:
    """Seconds of training (evaluation excluded) until test accuracy first reaches `target`, within a budget."""
    elapsed, curve = 0.0, []
    for seconds, accuracy in train_epochs(model, data, lr, channels_last, device):
        elapsed += seconds
        curve.append((round(elapsed, 2), accuracy))
        if accuracy >= target:
            return {"seconds": round(elapsed, 2), "reached": True, "curve": curve}
        if elapsed >= budget_seconds:
            return {"seconds": None, "reached": False, "curve": curve}


def _throughput_child(device_name, precision, measured, bf16_measured, threads, queue):
    torch.set_num_threads(threads)
    queue.put(throughput(torch.device(device_name), measured=measured, bf16_measured=bf16_measured,
                         precisions=(precision,)))


def throughput_by_precision(device, precisions, measured, bf16_measured) -> dict:
    """throughput() for each precision in a fresh process, as `train` runs one precision per process: the
    allocator state an fp32 run leaves behind changed the later bf16 ratio by up to 7% here."""
    out = {}
    for precision in precisions:
        part = in_fresh_process(_throughput_child, str(device), precision, measured, bf16_measured,
                                torch.get_num_threads(), mmap_threshold=None)
        out = {**part, **out}
    return out


def time_to_accuracy(device, budget_seconds=240.0, target=0.95) -> dict:
    """Seconds of training until test accuracy first reaches `target` on phantom knees, ours and perceiver-pytorch's."""
    from perceiver_pytorch import Perceiver as ReferencePerceiver

    from perceiver_med.models import build_model, default_config

    data = phantom_knees()
    results = {"target": target, "budget_seconds": budget_seconds, "test_images": int(data["test"].sum()),
               "train_images": int(data["train"].sum())}
    torch.manual_seed(0)
    results["perceiver-med (defaults: 8x8 patches)"] = train_curve(
        build_model(default_config("perceiver", (1, 64, 64), 2)), data, 2e-3, False, device, budget_seconds, target)
    best = None
    for lr in (1e-3, 3e-3):  # perceiver-pytorch is pixel-level only; its best learning rate of these
        torch.manual_seed(0)
        reference = ReferencePerceiver(input_channels=1, input_axis=2, depth=2, weight_tie_layers=True,
                                       fourier_encode_data=True, **{**SAME, "num_latents": 64, "latent_dim": 128,
                                                                   "latent_heads": 4, "latent_dim_head": 32,
                                                                   "max_freq": 64.0})
        outcome = {"lr": lr, **train_curve(reference, data, lr, True, device, budget_seconds, target)}
        if best is None or (outcome["reached"] and (not best["reached"] or outcome["seconds"] < best["seconds"])):
            best = outcome
    results["perceiver-pytorch (pixels, best lr)"] = best
    return results


def precision_accuracy(device, epochs=30, seeds=(0, 1, 2), target=0.95) -> dict:
    """perceiver-med (defaults) trained in fp32 and in bf16 autocast from the same weights and batches, per seed:
    epochs and seconds until test accuracy first reaches `target`, and test accuracy after `epochs` epochs.

    The two precisions train in lockstep, an epoch of one and then an epoch of the other, so that a shared
    machine's changing load falls on both alike.
    """
    from perceiver_med.models import build_model, default_config

    data = phantom_knees()
    config = default_config("perceiver", (1, 64, 64), 2)
    results = {"target": target, "epochs": epochs, "seeds": list(seeds), "test_images": int(data["test"].sum()),
               "train_images": int(data["train"].sum()), "config": config, "fp32": {}, "bf16": {}}
    for seed in seeds:
        runs = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(seed)
            model = build_model(config).to(device)
            runs[precision] = train_epochs(model, data, 2e-3, False, device, precision == "bf16", seed)
        curves = {precision: [] for precision in runs}
        for _ in range(epochs):
            for precision, run in runs.items():
                curves[precision].append(next(run))
        for precision, curve in curves.items():
            reached = next((epoch for epoch, (_, accuracy) in enumerate(curve, 1) if accuracy >= target), None)
            results[precision][str(seed)] = {
                "epochs_to_target": reached,
                "seconds_to_target": round(sum(s for s, _ in curve[:reached]), 2) if reached else None,
                "final_accuracy": curve[-1][1], "epoch_seconds": [round(s, 3) for s, _ in curve],
                "accuracy": [a for _, a in curve]}
    for precision in ("fp32", "bf16"):
        runs = list(results[precision].values())
        reached = [run for run in runs if run["epochs_to_target"]]
        results[precision + "_summary"] = {
            "reached": f"{len(reached)} of {len(runs)}",
            "median_epochs_to_target": float(np.median([r["epochs_to_target"] for r in reached])) if reached else None,
            "median_seconds_to_target": (float(np.median([r["seconds_to_target"] for r in reached]))
                                         if reached else None),
            "median_seconds_per_epoch": float(np.median([s for r in runs for s in r["epoch_seconds"]])),
            "final_accuracy": [r["final_accuracy"] for r in runs]}
    return results


class PixelTransformer(torch.nn.Module):
    """Self-attention over every pixel: the quadratic baseline."""

    def __init__(self, pixels, dim=64, heads=4, depth=2):
        super().__init__()
        from perceiver_med.models.vit import Block

        self.embed = torch.nn.Linear(1, dim)
        self.pos = torch.nn.Parameter(torch.randn(1, pixels, dim) * 0.02)
        self.blocks = torch.nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, x):
        tokens = self.embed(x.flatten(2).transpose(1, 2)) + self.pos
        for block in self.blocks:
            tokens, _ = block(tokens)
        return self.head(tokens.mean(1))


def _scaling_child(kind, side, batch, queue):  # a fresh process, so one size's memory never hides another's
    from perceiver_med.models import Perceiver

    torch.manual_seed(0)
    if kind == "perceiver":
        model = Perceiver(in_channels=1, image_size=side, num_latents=64, latent_dim=128, latent_heads=4,
                          latent_dim_head=32, max_freq=float(side), stem_widths=(), deep_supervision=0.0)
    else:
        model = PixelTransformer(side * side)
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.rand(batch, 1, side, side), torch.randint(0, 2, (batch,))
    device = torch.device("cpu")
    train_step(model, optimizer, x, y, False, False, device)
    _reset_peak_rss()
    before = _peak_rss_mb()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        train_step(model, optimizer, x, y, False, False, device)
        times.append(time.perf_counter() - started)
    queue.put({"seconds_per_sample": min(times) / batch, "peak_memory_mb_per_sample": (_peak_rss_mb() - before) / batch})


def scaling(sides=(32, 64, 128, 256), transformer_limit=64, batch=4) -> dict:
    results = {"batch": batch, "perceiver": {}, "pixel_transformer": {}}
    for kind, limit in (("perceiver", max(sides)), ("pixel_transformer", transformer_limit)):
        for side in sides:
            if side > limit:
                results[kind][str(side)] = "not run: self-attention over all pixels is too large here"
                continue
            results[kind][str(side)] = in_fresh_process(_scaling_child, kind, side, batch)
    for kind in ("perceiver", "pixel_transformer"):
        points = [(int(s) ** 2, v["seconds_per_sample"]) for s, v in results[kind].items() if isinstance(v, dict)]
        if len(points) >= 2:
            pixels, seconds = np.log([p for p, _ in points]), np.log([t for _, t in points])
            results[kind + "_time_exponent"] = float(np.polyfit(pixels, seconds, 1)[0])
        big = [(int(s) ** 2, v["seconds_per_sample"]) for s, v in results[kind].items()
               if isinstance(v, dict) and int(s) >= 64]
        if len(big) >= 2:  # the asymptotic regime, where fixed per-sample costs no longer dominate
            pixels, seconds = np.log([p for p, _ in big]), np.log([t for _, t in big])
            results[kind + "_time_exponent_from_64"] = float(np.polyfit(pixels, seconds, 1)[0])
    return results


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def main() -> None:
    from perceiver_med.training.engine import native_cpu_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sections", default="equivalence,throughput,accuracy,precision,scaling")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16-steps", type=int, default=None,
                        help="measured bf16 steps (CPUs without native bf16 are very slow)")
    parser.add_argument("--accuracy-budget", type=float, default=240.0)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=4, help="measured training steps per model and precision")
    parser.add_argument("--precision-epochs", type=int, default=30)
    parser.add_argument("--precision-seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; on a shared machine 1 avoids threads waiting on "
                             "each other)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version(), "processor": platform.processor(),
                          "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                          "cpu_model": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "cpu_native_bf16": native_cpu_bf16(), "load_average_at_start": os.getloadavg()}}
    sections = args.sections.split(",")
    if "equivalence" in sections:
        result["equivalence"] = equivalence(device)
        print(json.dumps(result["equivalence"], indent=2), flush=True)
    if "throughput" in sections:
        result["throughput"] = throughput_by_precision(device, args.precisions.split(","), args.steps,
                                                       args.bf16_steps)
        print(json.dumps(result["throughput"], indent=2), flush=True)
    if "accuracy" in sections:
        result["time_to_accuracy"] = time_to_accuracy(device, args.accuracy_budget)
        print(json.dumps(result["time_to_accuracy"], indent=2), flush=True)
    if "precision" in sections:
        result["precision_accuracy"] = precision_accuracy(device, args.precision_epochs,
                                                          tuple(range(args.precision_seeds)))
        print(json.dumps({k: v for k, v in result["precision_accuracy"].items() if k.endswith("summary")}, indent=2),
              flush=True)
    if "scaling" in sections:
        result["scaling"] = scaling()
        print(json.dumps(result["scaling"], indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
