"""The `perceiver-med` command line: parse options, call one library function, print with rich."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from perceiver_med import __version__
from perceiver_med.errors import UserError
from perceiver_med.report import console, counts_table, err_console, scans_table, skipped_table, summary_line

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

    if check is not None:
        rows = dataset_ops.check_splits_file(check)
        console.print(counts_table(dataset_ops.counts(rows)))
        console.print(f"[green]ok[/]: {len(rows)} scans, no patient in two splits, every file present")
        return
    if data is None or out is None:
        raise UserError("split needs DATA and --out splits.csv (or --check splits.csv)")
    try:
        parsed = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise UserError(f"--ratios must be three numbers like 0.6,0.2,0.2, got {ratios!r}") from None
    result = dataset_ops.split_folder(data, out, parsed, seed, label_from, labels, patient_regex)
    console.print(counts_table(dataset_ops.counts(result.rows)))
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


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        err_console.print(f"[red]error[/]: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
