"""The `perceiver-med` command line: parse options, call one library function, print with rich."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from perceiver_med import __version__
from perceiver_med.errors import UserError
from perceiver_med.report import (console, counts_table, err_console, metrics_table, scans_table, skipped_table,
                                  summary_line)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn folders of medical scans into trained, explainable classifiers.")


def _version(value: bool):
    if value:
        console.print(f"perceiver-med {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    pass


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


@app.command()
def synth(kind: Annotated[str, typer.Argument(help="knee or lung")],
          out: Annotated[Path, typer.Argument(help="new folder to write")],
          patients: Annotated[int, typer.Option(help="number of patients")] = 100,
          format: Annotated[Optional[str], typer.Option(help="dicom, nifti or png (default: png for knee, "
                                                             "dicom for lung)")] = None,
          seed: Annotated[int, typer.Option(help="random seed")] = 0):
    """Write a phantom data set as real DICOM / NIfTI / PNG files."""
    from perceiver_med.synth import synth as write

    with console.status(f"writing synthetic {kind} scans"):
        folder, count = write(kind, out, patients, format, seed)
    unit = "images" if kind == "knee" else "volumes"
    console.print(f"wrote {count} {unit} of {patients} patients to [bold]{folder}[/]")


@app.command()
def inspect(data: Annotated[Path, typer.Argument(help="folder of scans, or one file")],
            out: Annotated[Optional[Path], typer.Option(help="CSV with one row per file")] = None):
    """List every scan found and every file skipped, with the reason."""
    from perceiver_med.dataset_ops import inspect_folder

    discovery = inspect_folder(data, out)
    console.print(scans_table(discovery))
    _print_skips(discovery.skipped)
    for scan in discovery.scans:
        for warning in scan.warnings:
            err_console.print(f"[yellow]warning[/] {scan.id}: {warning}")
    console.print(summary_line(len(discovery.scans), len(discovery.skipped)))
    if out:
        console.print(f"file list written to [bold]{out}[/]")


def _print_skips(skipped, title="skipped"):
    table = skipped_table(skipped, title)
    if table is not None:
        console.print(table)


@app.command()
def split(data: Annotated[Optional[Path], typer.Argument(help="folder of scans")] = None,
          out: Annotated[Optional[Path], typer.Option(help="splits CSV to write")] = None,
          check: Annotated[Optional[Path], typer.Option(help="verify an existing splits CSV instead")] = None,
          ratios: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.6,0.2,0.2",
          seed: Annotated[int, typer.Option(help="random seed")] = 0,
          labels: Annotated[Optional[Path], typer.Option(help="CSV path,label[,patient_id][,slice]")] = None,
          label_from: Annotated[str, typer.Option(help="auto, folder, csv or laterality")] = "auto",
          patient_regex: Annotated[Optional[str], typer.Option(help="regex for patient ids in paths")] = None):
    """Stratified, patient-grouped train/val/test split (or --check an existing one)."""
    from perceiver_med import dataset_ops
    from perceiver_med.splits import count_table

    if check is not None:
        rows = dataset_ops.check_splits_file(check)
        console.print(counts_table(count_table(rows)))
        console.print(f"[green]ok[/]: {len(rows)} scans, no patient in two splits, every file present")
        return
    if data is None or out is None:
        raise UserError("split needs DATA and --out splits.csv (or --check splits.csv)")
    try:
        parsed = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise UserError(f"--ratios must be three numbers like 0.6,0.2,0.2, got {ratios!r}") from None
    result = dataset_ops.split_folder(data, out, parsed, seed, label_from, labels, patient_regex)
    console.print(counts_table(count_table(result.rows)))
    _print_skips(result.discovery.skipped + result.labelled.skipped)
    for note in result.labelled.notes:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"labels from {result.labelled.label_source}, patients from {result.labelled.patient_source}; "
                  + summary_line(len(result.rows), len(result.discovery.skipped) + len(result.labelled.skipped),
                                 "scan(s) split"))
    console.print(f"splits written to [bold]{out}[/]")


def _preprocess_config(input: str, size: Optional[int], channels: int, grid_pad: bool = False):
    from perceiver_med.preprocess import PreprocessConfig

    if input not in ("image", "grid"):
        raise UserError("--input must be image or grid")
    if channels not in (1, 3):
        raise UserError("--channels must be 1 or 3")
    return PreprocessConfig(input=input, size=size or 64, channels=channels, grid_pad=grid_pad)


@app.command()
def preview(scan: Annotated[Path, typer.Argument(help="a scan file, or a folder holding one series")],
            out: Annotated[Path, typer.Option(help="output prefix: writes PREFIX.png and PREFIX.npy")],
            input: Annotated[str, typer.Option(help="image or grid")] = "image",
            size: Annotated[Optional[int], typer.Option(help="image side, or tile side of a grid")] = None,
            channels: Annotated[int, typer.Option(help="1 or 3")] = 1,
            grid_pad: Annotated[bool, typer.Option(help="pad volumes with < 9 slices")] = False,
            slice: Annotated[Optional[int], typer.Option(help="centre slice of the grid")] = None,
            series_uid: Annotated[str, typer.Option(help="pick one series of a folder")] = ""):
    """Write the exact model input of one scan as PNG and NumPy."""
    from perceiver_med.dataset_ops import preview_scan

    config = _preprocess_config(input, size, channels, grid_pad)
    tensor = preview_scan(scan, out, config, series_uid, slice)
    console.print(f"model input {tuple(tensor.shape)} written to [bold]{out}.png[/] and [bold]{out}.npy[/]")


@app.command()
def prepare(splits: Annotated[Path, typer.Argument(help="splits CSV")],
            input: Annotated[str, typer.Option(help="auto, image or grid")] = "auto",
            size: Annotated[Optional[int], typer.Option(help="image side, or tile side of a grid")] = None,
            channels: Annotated[int, typer.Option(help="1 or 3")] = 1,
            grid_pad: Annotated[bool, typer.Option(help="pad volumes with < 9 slices")] = False,
            workers: Annotated[int, typer.Option(help="processes (0: one per core)")] = 0):
    """Preprocess every scan of a splits file into the on-disk cache (training does this too)."""
    from perceiver_med.cache import cache_root
    from perceiver_med.datasets import detect_input, load_split_inputs
    from perceiver_med.splits import read_splits

    rows = read_splits(splits)
    config = _preprocess_config(detect_input(rows) if input == "auto" else input, size, channels, grid_pad)
    with progress_bar() as bar:
        task = bar.add_task("preprocessing", total=len(rows))
        loaded = load_split_inputs(rows, config, workers, on_done=lambda: bar.advance(task))
    _print_skips(loaded.skipped)
    console.print(summary_line(len(loaded.rows), len(loaded.skipped), f"scan(s) ready as {config.input} "
                               f"{config.output_shape}") + f"; cache in {cache_root()}")


class RichReporter:
    """Draws training progress: one bar per stage with the running loss, a table row per epoch above it."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.bar, self.task, self.epochs, self.steps, self.running = quiet, None, None, 0, 0, []

    def stage_start(self, stage, epochs, steps):
        self.close()
        self.epochs, self.steps = epochs, steps
        if not self.quiet:
            console.print(f"[bold]stage {stage}[/]: up to {epochs} epochs of {steps} steps")
            console.print(f"{'epoch':>7}  {'train loss':>10} {'train acc':>9}  {'val loss':>9} {'val acc':>8}"
                          f"  {'lr':>8} {'time':>6}")

    def step(self, loss):
        if self.quiet:
            return
        if self.bar is None:
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task("epoch", total=self.steps)
        self.running.append(loss)
        self.bar.update(self.task, advance=1, description=f"loss {sum(self.running) / len(self.running):.4f}")

    def epoch_end(self, row):
        self.running = []
        if self.quiet:
            return
        val = (f"{row['val_loss']:>9.4f} {row['val_accuracy']:>8.4f}" if "val_loss" in row else f"{'':>18}")
        line = (f"{row['epoch']:>3}/{self.epochs:<3}  {row['train_loss']:>10.4f} {row['train_accuracy']:>9.4f}"
                f"  {val}  {row['lr']:>8.2e} {row['seconds']:>5.1f}s" + ("  [green]best[/]" if row["best"] else ""))
        console.print(line)
        if self.bar is not None:
            self.bar.reset(self.task, total=self.steps)

    def message(self, text):
        self.close()
        if not self.quiet:
            console.print(text)

    def close(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@app.command()
def train(splits: Annotated[Path, typer.Argument(help="splits CSV from `perceiver-med split`")],
          out: Annotated[Path, typer.Option(help="run directory to create")],
          model: Annotated[str, typer.Option(help="perceiver or vit-rollout-cnn")] = "perceiver",
          epochs: Annotated[Optional[int], typer.Option(help="maximum epochs (per stage for the hybrid)")] = None,
          batch_size: Annotated[Optional[int], typer.Option(help="samples per step and process")] = None,
          lr: Annotated[Optional[float], typer.Option(help="peak learning rate")] = None,
          weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay")] = None,
          patience: Annotated[Optional[int], typer.Option(help="early-stopping patience in epochs (0: off)")] = None,
          seed: Annotated[int, typer.Option(help="random seed")] = 0,
          device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
          input: Annotated[str, typer.Option(help="auto, image or grid")] = "auto",
          size: Annotated[Optional[int], typer.Option(help="image side, or tile side of a grid")] = None,
          channels: Annotated[int, typer.Option(help="1 or 3")] = 1,
          grid_pad: Annotated[bool, typer.Option(help="pad volumes with < 9 slices")] = False,
          flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="horizontal flip augmentation "
                                                       "(default: off for laterality labels, else on)")] = None,
          class_weights: Annotated[str, typer.Option(help="none or auto")] = "none",
          num_latents: Annotated[Optional[int], typer.Option(help="Perceiver latents")] = None,
          latent_dim: Annotated[Optional[int], typer.Option(help="Perceiver latent width")] = None,
          num_iterations: Annotated[Optional[int], typer.Option(help="Perceiver iterations")] = None,
          depth: Annotated[Optional[int], typer.Option(help="ViT blocks")] = None,
          dim: Annotated[Optional[int], typer.Option(help="ViT width")] = None,
          num_workers: Annotated[int, typer.Option(help="preprocessing processes (0: one per core)")] = 0,
          resume: Annotated[bool, typer.Option(help="continue an interrupted run in --out")] = False,
          quiet: Annotated[bool, typer.Option(help="no per-epoch output")] = False):
    """Train a model; writes config, weights, metrics, history, curves and predictions to --out."""
    from perceiver_med.config import TrainConfig
    from perceiver_med.runs import train_run, with_epochs

    if class_weights not in ("none", "auto"):
        raise UserError("--class-weights must be none or auto")
    config = with_epochs(TrainConfig(seed=seed, device=device, num_workers=num_workers, class_weights=class_weights),
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience)
    main_process = _is_main_process()
    options = {"num_latents": num_latents, "latent_dim": latent_dim, "num_iterations": num_iterations,
               "depth": depth, "dim": dim}
    with progress_bar() as bar:
        task = bar.add_task("preprocessing", total=None)
        reporter = RichReporter(quiet or not main_process)
        result = train_run(splits, model, out, input=input, size=size, channels=channels, grid_pad=grid_pad,
                           train=config, flip=flip, model_options=options, resume=resume,
                           reporter=_AfterBar(reporter, bar), on_prepared=lambda: bar.advance(task))
    reporter.close()
    if not main_process:
        return
    _print_skips(result.skipped)
    if "vit" in result.metrics:
        console.print(metrics_table(result.metrics["vit"], "stage 1: ViT alone"))
    console.print(metrics_table(result.metrics, f"best checkpoint of {model}"))
    console.print(f"run written to [bold]{out}[/] (metrics.json, curves.png, predictions_<split>.csv)")


class _AfterBar:
    """Stops the preprocessing bar before the first training output."""

    def __init__(self, reporter, bar):
        self.reporter, self.bar = reporter, bar

    def __getattr__(self, name):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        return getattr(self.reporter, name)


@app.command()
def evaluate(run: Annotated[Path, typer.Argument(help="run directory")],
             splits: Annotated[Optional[Path], typer.Option(help="splits CSV (default: the run's own)")] = None,
             split: Annotated[str, typer.Option(help="train, val, test or all")] = "all",
             device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto"):
    """Metrics of a trained run on the chosen splits."""
    from perceiver_med.runs import evaluate_run

    metrics = evaluate_run(run, splits, split, device)
    console.print(metrics_table(metrics, f"{run}"))


@app.command()
def predict(run: Annotated[Path, typer.Argument(help="run directory")],
            scans: Annotated[Path, typer.Argument(help="folder of scans, or one file")],
            out: Annotated[Path, typer.Option(help="predictions CSV to write")],
            device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto"):
    """Predict every scan found in a folder with the run's preprocessing."""
    from rich.table import Table

    from perceiver_med.runs import predict_run

    with progress_bar() as bar:
        task = bar.add_task("predicting", total=None)
        predictions, skipped, classes = predict_run(run, scans, out, device, on_done=lambda: bar.advance(task))
    table = Table(title=f"{len(predictions)} prediction(s)")
    for column in ("scan", "label", "pred", *(f"p({c})" for c in classes)):
        table.add_column(column)
    for p in predictions[:30]:
        table.add_row(p.path.name, p.label or "", classes[int(p.probs.argmax())], *(f"{v:.4f}" for v in p.probs))
    if len(predictions) > 30:
        table.caption = f"... and {len(predictions) - 30} more in {out}"
    console.print(table)
    known = [p for p in predictions if p.label is not None]
    if known and len(known) == len(predictions):
        accuracy = sum(classes[int(p.probs.argmax())] == p.label for p in known) / len(known)
        console.print(f"accuracy against the class folders: [bold]{accuracy:.4f}[/]")
    _print_skips(skipped)
    console.print(summary_line(len(predictions), len(skipped), "scan(s) predicted") + f"; written to [bold]{out}[/]")


@app.command()
def explain(run: Annotated[Path, typer.Argument(help="run directory")],
            scans: Annotated[list[Path], typer.Argument(help="scan files (or series folders)")],
            out: Annotated[Path, typer.Option(help="folder for the overlay PNGs")]):
    """Overlay PNGs: attention rollout for the hybrid, cross-attention over the pixels for the Perceiver."""
    from perceiver_med.explain import explain_run

    written, skipped = explain_run(run, scans, out)
    for path in written:
        console.print(f"wrote [bold]{path}[/]")
    _print_skips(skipped)


@app.command()
def demo(out: Annotated[Path, typer.Option(help="folder for everything the demo writes")] = Path("demo-output"),
         patients: Annotated[int, typer.Option(help="synthetic patients")] = 60,
         epochs: Annotated[int, typer.Option(help="maximum training epochs")] = 40,
         seed: Annotated[int, typer.Option(help="random seed")] = 0):
    """synth knee -> split -> train a Perceiver -> evaluate -> predict -> explain, on the CPU in minutes."""
    from perceiver_med.demo import run_demo

    reporter = RichReporter()
    try:
        run_demo(out, patients, epochs, seed, reporter, console.print)
    finally:
        reporter.close()


def _usage_error_types() -> tuple[type, ...]:
    """Typer 0.26+ carries its own copy of click (TyperException); older Typer raises click's own exceptions."""
    types: list[type] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click
    except ImportError:
        pass
    else:
        types.append(click.exceptions.ClickException)
    return tuple(types)


def main() -> None:
    """Entry point: user errors and usage errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        _error_line(str(exc))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/]", highlight=False)
        sys.exit(130)
    except _usage_error_types() as exc:  # a misspelt option, a missing argument, `--epochs abc`
        message = exc.format_message()
        if message:  # no arguments at all: the help was printed, nothing to add
            _error_line(f"{message} (see perceiver-med --help)")
        sys.exit(getattr(exc, "exit_code", 2))


def _error_line(text: str) -> None:
    err_console.print(f"[red]error[/]: {escape(text)}", highlight=False, soft_wrap=True)
