"""Training and evaluation loops: fit, evaluate, checkpoint, resume, DistributedDataParallel.

A run directory holds everything; a run is only ever read back through safetensors (weights),
JSON (configuration) and torch.load(weights_only=True) (the resumable checkpoint).
"""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from perceiver_med.training.config import TrainConfig, resolve_epochs
from perceiver_med.inputs.augment import AugmentConfig, augment_batch
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.errors import UserError
from perceiver_med.files import atomic_path, file_sha256
from perceiver_med.io.limits import describe
from perceiver_med.stats.metrics import split_metrics
from perceiver_med.models.cnn import SupervisedOutput
from perceiver_med.models.layers import batch_norms
from perceiver_med.models.registry import Stage, model_stages
from perceiver_med.models.weights import load_weights, save_weights



# ---------------------------------------------------------------- devices and processes
def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name not in ("cpu", "mps"):
        raise UserError("--device must be auto, cpu, cuda or mps")
    return torch.device(name)


@dataclass
class Processes:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this object started the process group, so it ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def planned() -> "Processes":
        """Rank and world size from torchrun's environment, before any process group exists."""
        return Processes(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    @classmethod
    def start(cls, device: torch.device) -> "Processes":
        world = int(os.environ.get("WORLD_SIZE", 1))
        owns = world > 1 and not dist.is_initialized()
        if owns:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank() if world > 1 else 0, world, owns)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def average_buffers(self, module: nn.Module) -> None:
        """BatchNorm running statistics are updated by each process's own batches: average them."""
        if self.world == 1:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer /= self.world

    def gather(self, value):
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def native_cpu_bf16() -> bool:
    """True when this CPU has bf16 matrix units (AVX512-BF16 or AMX on x86, the BF16 extension on Arm)."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return onednn  # on Arm, oneDNN asks the CPU for its BF16 extension itself
    # on x86, oneDNN also says yes for plain AVX512, where it emulates bf16; only real units beat fp32
    units = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
             or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return onednn and units


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where it is the faster: "auto" on CUDA and on CPUs with bf16 units, "bf16" always, "fp32" never.

    Without bf16 units torch emulates bf16 matmuls on the CPU, several times slower than fp32. Losses and
    probabilities are computed from the logits in fp32 and float64 either way.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    native = device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16())
    enabled = precision == "bf16" or (precision == "auto" and native)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------- stages
def stages_for(model: nn.Module, model_name: str) -> list[Stage]:
    """The model's training stages, as its registry entry declares them."""
    return model_stages(model, model_name)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_probs(forward: Callable, inputs: torch.Tensor, device: torch.device, batch_size: int = 64,
                  processes: Processes | None = None, precision: str = "auto") -> np.ndarray:
    """Softmax probabilities (N, K) in float64; under torchrun each process takes every world-th sample."""
    processes = processes or Processes()
    indices = np.arange(processes.rank, len(inputs), processes.world)
    outputs = []
    for start in range(0, len(indices), batch_size):
        batch = inputs[indices[start:start + batch_size]].to(device, non_blocking=True)
        with autocast(device, precision):
            logits = forward(batch)
        # float64 on the CPU (MPS has no float64): probabilities sum to 1
        outputs.append(torch.softmax(logits.float().cpu().double(), dim=1))
    local = torch.cat(outputs).numpy() if outputs else np.zeros((0, 0))
    if not np.isfinite(local).all():
        raise UserError("the model gave non-finite outputs (NaN or infinity): its weights are damaged")
    parts = processes.gather((indices, local))
    probs = None
    for part_indices, part in parts:
        if len(part_indices) == 0:
            continue
        if probs is None:
            probs = np.zeros((len(inputs), part.shape[1]))
        probs[part_indices] = part
    return probs if probs is not None else np.zeros((0, 0))


def evaluate_forward(forward: Callable, data: dict, classes: list[str], device, batch_size=64,
                     processes: Processes | None = None, splits=SPLITS, positive: int | None = None,
                     precision: str = "auto") -> tuple[dict, dict]:
    """Metrics and probabilities of each split in `data` ({split: (inputs, labels)})."""
    metrics, probs = {}, {}
    for split in splits:
        if split not in data or len(data[split][1]) == 0:
            continue
        inputs, labels = data[split]
        probs[split] = predict_probs(forward, inputs, device, batch_size, processes, precision)
        metrics[split] = split_metrics(labels.numpy(), probs[split], classes, positive)
    return metrics, probs


# ---------------------------------------------------------------- training
class Reporter:
    """Progress callbacks; the CLI draws them with rich. The default is silent."""

    def stage_start(self, stage: str, epochs: int, steps: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def epoch_end(self, row: dict) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class FitState:
    """What the resumable checkpoint holds besides tensors of the model and optimiser."""

    stage_index: int = 0
    epoch: int = 0
    best_loss: float = math.inf
    bad_epochs: int = 0
    history: list = field(default_factory=list)


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: nothing worth saving was learnt."""


def derived_seed(*key: int) -> int:
    """A seed from several integers without collisions (seed*1000 + epoch collides after 1000 epochs)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)


def lr_lambda(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def training_loss(outputs, y: torch.Tensor, weights: torch.Tensor | None = None, label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, the loss to minimise, the model's own loss) of a training-mode forward pass.

    With deep supervision (SupervisedOutput) the loss adds the auxiliary classifier's weighted cross-entropy; it
    trains the stem, never predicts, and is left out of the reported training loss. No label smoothing there:
    smoothing calibrates the predictions, which the auxiliary classifier does not make.
    """
    logits = outputs.logits if isinstance(outputs, SupervisedOutput) else outputs
    model_loss = F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=label_smoothing)
    loss = model_loss
    if isinstance(outputs, SupervisedOutput):
        loss = loss + outputs.weight * F.cross_entropy(outputs.auxiliary.float(), y, weight=weights)
    return logits, loss, model_loss


FITTED_ACCURACY = 0.95


def stopping_armed(history: list[dict], stage: str, epochs: int) -> bool:
    """Whether early stopping may count epochs yet: once the stage has fitted its training set, or has run three
    quarters of its epochs.

    Small lesions keep a model at chance for tens of epochs before it starts to learn, with the validation loss
    flat all that time, so counting those epochs would stop runs that have not begun to fit their training set
    (benchmarks/README.md, "Learning small lesions", third round).
    """
    rows = [row for row in history if row["stage"] == stage]
    return len(rows) >= epochs * 3 / 4 or any(row["train_accuracy"] >= FITTED_ACCURACY for row in rows)


def stage_done(state: "FitState", train_cfg: TrainConfig, stage: str, epochs: int) -> bool:
    """Whether a stage stops before its last epoch: `patience` epochs without a better monitored loss, or, once
    stopping is armed (stopping_armed), the best monitored loss at or below `stop_loss`. Read from the state
    alone, so a resumed run stops alike."""
    waited = train_cfg.patience and state.bad_epochs >= train_cfg.patience
    reached = (train_cfg.stop_loss and state.best_loss <= train_cfg.stop_loss
               and stopping_armed(state.history, stage, epochs))
    return bool(waited or reached)


def unfitted_note(history: list[dict], stage: str) -> str:
    """A note when a stage never fitted its training set: on small lesions that is a run still on its initial
    plateau, which its metrics alone do not say (benchmarks/README.md, "Learning small lesions", third round)."""
    rows = [row for row in history if row["stage"] == stage]
    best = max((row["train_accuracy"] for row in rows), default=0.0)
    if not rows or best >= FITTED_ACCURACY:
        return ""
    return (f"note: stage {stage} never fitted its training set (best training accuracy {best:.2f} in {len(rows)} "
            "epochs, on the augmented batches it trained on; the train row of the metrics scores un-augmented "
            "inputs): it may not have left the initial plateau; train longer (--epochs) or with another --seed")


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of many kinds: the file is refused, never executed
        raise UserError(f"{path} is damaged or not a perceiver-med checkpoint: {describe(exc)}") from None



@dataclass(frozen=True)
class FitFiles:
    """Where fit writes: the resumable checkpoint and the best weights so far (a run directory names them)."""

    checkpoint: Path
    weights: Path


def fit(model: nn.Module, model_name: str, data: dict, classes: list[str], train_cfg, augment: AugmentConfig,
        files: FitFiles, device: torch.device, processes: Processes, reporter: Reporter, resume: bool = False,
        weights_metadata: dict[str, str] | None = None, on_saved: Callable[[str, str], None] | None = None
        ) -> FitState:
    """Fit every stage of the model; the best weights (by validation loss) end up in the model and on disk.

    Without a validation split the best weights are those of the lowest training-split loss as evaluation measures
    it (eval mode, un-augmented inputs, recomputed batch-norm statistics), the measure every score of the run uses:
    the running loss of augmented training-mode batches can be as low at epochs that misclassify training inputs
    in evaluation (benchmarks/README.md, "Learning small lesions", "Which weights a run without a val split keeps").

    `on_saved(name, sha256)` is called after each save of the best weights or the checkpoint (by their run file
    names: the run records the digests, so a damaged file is refused later).
    """
    model.to(device)
    stages = stages_for(model, model_name)
    checkpoint_path, best_path = files.checkpoint, files.weights
    state, saved = FitState(), None
    torch.manual_seed(derived_seed(train_cfg.seed, processes.rank))  # dropout differs between processes
    if resume:
        saved = load_checkpoint(checkpoint_path)
        try:
            state = FitState(**saved["state"])
            model.load_state_dict(saved["model"])
            if "torch_rng" in saved:
                torch.set_rng_state(saved["torch_rng"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(f"{checkpoint_path} does not belong to this run's model: {describe(exc)}") from None
        reporter.message(f"resuming at stage {stages[min(state.stage_index, len(stages) - 1)].name}, "
                         f"epoch {state.epoch + 1}")
    train_inputs, train_labels = data["train"]
    weights = None
    if train_cfg.class_weights == "auto":
        counts = torch.bincount(train_labels, minlength=len(classes)).float().clamp_min(1)
        weights = (counts.sum() / counts / len(classes)).to(device)
    monitor = "val" if "val" in data and len(data["val"][1]) else "train"
    for stage_index, stage in enumerate(stages):
        if stage_index < state.stage_index:
            continue
        for earlier in stages[:stage_index]:
            earlier.module.requires_grad_(False)
        trainable = [p for p in stage.module.parameters() if p.requires_grad]
        wrapped = stage.module
        if processes.world > 1:
            wrapped = nn.parallel.DistributedDataParallel(stage.module, device_ids=[device.index]
                                                          if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(trainable, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        per_step = train_cfg.batch_size * processes.world
        steps = math.ceil(len(train_labels) / per_step)
        epochs = resolve_epochs(train_cfg.epochs, steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(int(train_cfg.warmup_epochs * steps), epochs * steps))
        if saved is not None and stage_index == state.stage_index and "optimizer" in saved:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        reporter.stage_start(stage.name, epochs, steps)
        def forward(x, wrapped=wrapped, stage=stage):
            return stage.call(wrapped, x)

        if stage.starts_trained and state.epoch == 0 and monitor == "val":
            # the stage's start is the first candidate for the best weights: a stage that only makes its trained
            # start worse on validation ends where it started
            stage.module.eval()
            if stage.frozen is not None:
                stage.frozen.eval()
            evaluated, _ = evaluate_forward(stage.forward, data, classes, device, precision=train_cfg.precision,
                                            processes=processes, splits=("val",))
            state.best_loss = evaluated["val"]["loss"]
            if processes.main:
                saved_file(on_saved, best_path, save_weights(model, best_path, weights_metadata))
            reporter.message(f"stage {stage.name} starts as the trained model: val loss {state.best_loss:.4f}")
        while state.epoch < epochs and not stage_done(state, train_cfg, stage.name, epochs):
            started = time.perf_counter()
            # one draw for all processes, each takes its share; augmentation differs per process
            order = epoch_order(train_labels, train_cfg.sampler, len(classes),
                                derived_seed(train_cfg.seed, stage_index, state.epoch))[processes.rank::processes.world]
            generator = torch.Generator().manual_seed(
                derived_seed(train_cfg.seed, stage_index, state.epoch, processes.rank, 1))
            stage.module.train()
            if stage.frozen is not None:
                stage.frozen.eval()
            total_loss, correct, seen = 0.0, 0, 0
            for start in range(0, steps * train_cfg.batch_size, train_cfg.batch_size):
                index = order[start:start + train_cfg.batch_size]
                if len(index) == 0:
                    index = order[:1]  # keep every process stepping together under DDP
                x = train_inputs[index].to(device, non_blocking=True)
                y = train_labels[index].to(device, non_blocking=True)
                x = augment_batch(x, augment, generator)
                with autocast(device, train_cfg.precision):
                    outputs = forward(x)
                logits, loss, model_loss = training_loss(outputs, y, weights, train_cfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged: the loss became {loss.item()} at stage {stage.name}, epoch "
                        f"{state.epoch + 1}, step {start // train_cfg.batch_size + 1}; try a lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, train_cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                total_loss += model_loss.item() * len(y)  # the model's own loss, comparable to val_loss
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                reporter.step(model_loss.item())
            recompute_batch_norm(stage, train_inputs[order[:BATCH_NORM_SAMPLES]], train_cfg, device)
            processes.average_buffers(stage.module)
            stage.module.eval()
            evaluated, _ = evaluate_forward(stage.forward, data, classes, device, precision=train_cfg.precision,
                                            processes=processes, splits=(monitor,))
            sums = processes.gather((total_loss, correct, seen))
            total_loss, correct, seen = (sum(s[i] for s in sums) for i in range(3))
            row = {"stage": stage.name, "epoch": state.epoch + 1, "train_loss": total_loss / seen,
                   "train_accuracy": correct / seen, "lr": scheduler.get_last_lr()[0],
                   "seconds": round(time.perf_counter() - started, 3)}
            if monitor == "val":
                row.update(val_loss=evaluated["val"]["loss"], val_accuracy=evaluated["val"]["accuracy"])
            current = evaluated[monitor]["loss"]
            improved = current < state.best_loss - 1e-6
            state.best_loss = current if improved else state.best_loss
            armed = stopping_armed(state.history + [row], stage.name, epochs)
            state.bad_epochs = 0 if improved or not armed else state.bad_epochs + 1
            state.epoch += 1
            state.history.append(row)
            if processes.main:
                if improved:
                    saved_file(on_saved, best_path, save_weights(model, best_path, weights_metadata))
                saved_file(on_saved, checkpoint_path,
                           _save_checkpoint(checkpoint_path, model, optimizer, scheduler, state))
            reporter.epoch_end({**row, "best": improved})
        if processes.world > 1:
            dist.barrier()
        if state.epoch < epochs and train_cfg.stop_loss and state.best_loss <= train_cfg.stop_loss:
            reporter.message(f"stage {stage.name} stops at epoch {state.epoch}: its {monitor} loss "
                             f"{state.best_loss:.4g} is at or below --stop-loss {train_cfg.stop_loss:g}")
        unfitted = unfitted_note(state.history, stage.name)
        if unfitted:
            reporter.message(unfitted)
        load_weights(model, best_path)  # the next stage (and the final evaluation) use the best weights
        model.to(device)
        state.stage_index, state.epoch, state.best_loss, state.bad_epochs = stage_index + 1, 0, math.inf, 0
        saved = None
        if processes.main:
            saved_file(on_saved, checkpoint_path, _save_checkpoint(checkpoint_path, model, None, None, state))
    return state


def epoch_order(labels: torch.Tensor, sampler: str, num_classes: int, seed: int) -> torch.Tensor:
    """The training samples one epoch visits, in order (TrainConfig.sampler): "shuffle" visits each once;
    "balanced" draws as many, with replacement, each sample with probability 1 / (classes present x its class's
    count), so that every class present is drawn equally often on average (torch's WeightedRandomSampler)."""
    generator = torch.Generator().manual_seed(seed)
    if sampler == "shuffle":
        return torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels, minlength=num_classes).double()
    chances = 1 / counts[labels] / int((counts > 0).sum())
    return torch.multinomial(chances, len(labels), replacement=True, generator=generator)


BATCH_NORM_SAMPLES = 512  # training inputs per epoch that batch norm's statistics are recomputed from
BATCH_NORM_CHUNK = 64  # inputs per forward pass there: the mean of per-chunk variances misses less of the spread


@torch.no_grad()
def recompute_batch_norm(stage: Stage, inputs: torch.Tensor, train_cfg: TrainConfig, device: torch.device) -> None:
    """Batch norm's running statistics, from un-augmented training inputs (precise BN, Wu & Johnson 2021).

    Running statistics gathered during training describe augmented batches; every augmented input is resampled
    (bilinear) and rescaled in intensity, and a one-pixel spicule looks different afterwards. Evaluation sees
    un-augmented inputs, so its statistics come from them (benchmarks/README.md, "Learning small lesions").
    """
    norms = batch_norms(stage.module)
    if not norms or not len(inputs):
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    chunk = max(train_cfg.batch_size, BATCH_NORM_CHUNK)
    for start in range(0, min(len(inputs), BATCH_NORM_SAMPLES), chunk):
        x = inputs[start:start + chunk].to(device)
        with autocast(device, train_cfg.precision):
            stage.forward(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def saved_file(on_saved: Callable[[str, str], None] | None, path: Path, digest: str) -> None:
    if on_saved is not None:
        on_saved(path.name, digest)


def _save_checkpoint(path: Path, model, optimizer, scheduler, state: FitState) -> str:
    payload = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "torch_rng": torch.get_rng_state(),
               "state": {"stage_index": state.stage_index, "epoch": state.epoch, "best_loss": state.best_loss,
                         "bad_epochs": state.bad_epochs, "history": state.history}}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
        payload["scheduler"] = scheduler.state_dict()
    with atomic_path(path, suffix=".pt") as temp:
        torch.save(payload, temp)
        return file_sha256(temp)
