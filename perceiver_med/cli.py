"""The `perceiver-med` command line: parse options, call one library function, print with rich."""
from __future__ import annotations

from inspect import Parameter
from inspect import signature as _signature
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from perceiver_med import __version__
from perceiver_med.inputs.kinds import AUTO, KINDS
from perceiver_med.models import DEFAULT_MODEL
from perceiver_med.io.limits import ENV as MAX_VOXELS_VARIABLE
from perceiver_med.io.limits import parse_max_voxels
from perceiver_med.training.config import POSITIVE_NAMES, SEED_RANGE, Runtime, TrainConfig, value_range
from perceiver_med.errors import Interrupted, UserError
from perceiver_med.results.display import (console, counts_table, err_console, froc_table, metrics_table, plain,
                                           scans_table, skipped_table, summary_line, trust_table)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 100},
                  help="Turn folders of medical scans into trained, explainable classifiers.")


# ---------------------------------------------------------------- choices (any case is accepted)
class Kind(str, Enum):
    knee = "knee"
    lung = "lung"
    luna16 = "luna16"
    luna25 = "luna25"


class Format(str, Enum):
    dicom = "dicom"
    nifti = "nifti"
    png = "png"


class LabelFrom(str, Enum):
    auto = "auto"
    folder = "folder"
    csv = "csv"
    laterality = "laterality"


InputChoice = Enum("InputChoice", {name: name for name in (AUTO, *KINDS)}, type=str)  # --input: the kinds, or auto


class Difficulty(str, Enum):
    easy = "easy"
    medium = "medium"
    hard = "hard"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class ClassWeights(str, Enum):
    none = "none"
    auto = "auto"


class Sampler(str, Enum):
    auto = "auto"
    shuffle = "shuffle"
    balanced = "balanced"


class SplitName(str, Enum):
    all = "all"
    train = "train"
    val = "val"
    test = "test"


def _choice(help: str, **kwargs):
    return typer.Option(help=help, case_sensitive=False, **kwargs)


def _value(choice: Enum | None):
    return None if choice is None else choice.value


# Options several commands share.
DeviceOption = Annotated[Device, _choice("where the model runs (auto: CUDA, then Apple MPS, then the CPU)")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an existing output file", metavar="")]
Size = Annotated[Optional[int], typer.Option(help="image side, or tile side of a grid", min=8, metavar="PIXELS",
                                             show_default="64")]
Channels = Annotated[Optional[int], typer.Option(help="1, or 3 to repeat the grey channel", min=1, max=3,
                                                 metavar="N", show_default="1")]
GridPad = Annotated[Optional[bool], typer.Option("--grid-pad/--no-grid-pad", metavar="",
                                                 help="pad volumes with fewer than 9 slices", show_default="off")]
WindowOption = Annotated[Optional[str], typer.Option(
    "--window", metavar="WINDOW", show_default="auto",
    help="intensities to [0, 1]: auto (CT volumes: lung window; other volumes: 0.5-99.5th percentiles of the "
         "volume; 2D images: their DICOM VOI, else percentiles), percentile, lung, mediastinum, soft-tissue, bone, "
         "brain, or LOW,HIGH in the scan's units (HU for CT)")]
TtaOption = Annotated[int, typer.Option(
    help="test-time augmentation: average the probabilities over N label-preserving views of each scan (the scan, "
         "its mirror unless labels are sides, then warps within the training ranges); 1: none", min=1,
    metavar="N")]
PointsOption = Annotated[Optional[Path], typer.Option(
    help="CSV of points, one sample each: seriesuid or path, coordX,coordY,coordZ in DICOM patient mm (LPS), "
         "optionally diameter_mm, label, patient_id (LUNA16's annotations.csv and candidates_V2.csv, LUNA25's "
         "table with its SeriesInstanceUID, CoordX.., PatientID spellings); other columns are carried to predictions",
    metavar="CSV")]
ClassesOption = Annotated[Optional[str], typer.Option(
    help="the class of each label value of the points file, e.g. 0=benign,1=malignant (LUNA25, LUNA16); other "
         "values are skipped (default: the values as written are the classes)", metavar="VALUE=CLASS,...")]
FovMm = Annotated[Optional[float], typer.Option(help="side of a point grid's square, in mm", metavar="MM",
                                                show_default="40")]
SliceMm = Annotated[Optional[float], typer.Option(help="distance between a point grid's 9 planes, in mm",
                                                  metavar="MM", show_default="2")]
MaxVoxels = Annotated[Optional[int], typer.Option(
    help="largest scan read, in pixels or voxels; bigger files are skipped with a reason "
         "(default: $PERCEIVER_MED_MAX_VOXELS, else the readers' built-in budget)", min=1, metavar="N")]


def _runtime(max_voxels: int | None, device: Device = Device.auto, precision: Precision = Precision.auto,
             workers: int = 0) -> Runtime:
    """This machine's settings for a command: --max-voxels, else $PERCEIVER_MED_MAX_VOXELS, else the readers'
    own budget."""
    if max_voxels is None:
        max_voxels = parse_max_voxels(os.environ.get(MAX_VOXELS_VARIABLE))
    return Runtime(device.value, precision.value, workers, max_voxels)


def _version(value: bool):
    if value:
        console.print(f"perceiver-med {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                                help="Print the version and exit.")] = False):
    pass


def progress_bar() -> Progress:
    # the same console as every other line, so rows printed during a bar land above it, never beside it
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


class RichReporter:
    """Training progress on one rich Progress: a bar per epoch with the running loss, a table row per epoch above."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.task, self.epochs, self.steps, self.running = quiet, None, 0, 0, []
        self.started = False
        self.progress = progress_bar()
        self.progress.disable = quiet

    def __enter__(self) -> "RichReporter":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.started:  # stopping a Progress that never started still prints a blank line
            self.progress.stop()

    def _start_bar(self, description: str, total: int) -> None:
        # started with the first bar: a command that fails before any work prints nothing on stdout
        self.started = True
        self.progress.start()
        self.task = self.progress.add_task(description, total=total)

    def preparing(self, done: int, total: int) -> None:
        if self.task is None:
            self._start_bar("preprocessing", total)
        self.progress.update(self.task, completed=done, total=total)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(text, highlight=False)

    def stage_start(self, stage, epochs, steps):
        self.epochs, self.steps = epochs, steps
        self._drop_bar()
        self.say(f"[bold]stage {stage}[/]: up to {epochs} epochs of {steps} steps")
        self.say(f"{'epoch':>7}  {'train loss':>10} {'train acc':>9}  {'val loss':>9} {'val acc':>8}"
                    f"  {'lr':>8} {'time':>6}")

    def step(self, loss):
        if self.task is None:
            self._start_bar("epoch", self.steps)
        self.running.append(loss)
        self.progress.update(self.task, advance=1, description=f"loss {sum(self.running) / len(self.running):.4f}")

    def epoch_end(self, row):
        self.running = []
        val = (f"{row['val_loss']:>9.4f} {row['val_accuracy']:>8.4f}" if "val_loss" in row else f"{'':>18}")
        self.say(f"{row['epoch']:>3}/{self.epochs:<3}  {row['train_loss']:>10.4f} {row['train_accuracy']:>9.4f}"
                    f"  {val}  {row['lr']:>8.2e} {row['seconds']:>5.1f}s" + ("  [green]best[/]" if row["best"] else ""))
        if self.task is not None:
            self.progress.reset(self.task, total=self.steps)

    def message(self, text):
        self._drop_bar()
        if text.startswith("note"):  # --quiet leaves out the epochs, never what is wrong with the run
            self.progress.console.print(escape(text), highlight=False)
        else:
            self.say(escape(text))

    def _drop_bar(self):
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


@app.command()
def synth(kind: Annotated[Kind, typer.Argument(help="knee, lung, or a benchmark's layout: luna16 (subsetK/*.mhd + "
                                                   ".raw, annotations.csv, candidates_V2.csv) or luna25 (*.mha and its "
                                                   "table)", case_sensitive=False, metavar="KIND")],
          out: Annotated[Path, typer.Argument(help="new folder to write", metavar="OUT")],
          patients: Annotated[int, typer.Option(help="number of patients", min=1, metavar="N")] = 100,
          format: Annotated[Optional[Format], _choice("file format", show_default="png for knee, dicom for lung")
                            ] = None,
          seed: Annotated[int, typer.Option(help="random seed", min=SEED_RANGE[0], max=SEED_RANGE[1], metavar="N")] = 0,
          difficulty: Annotated[Difficulty, _choice(
              "lung nodules: easy (size and a calcified core give the class away), medium (4-6 mm radius) or "
              "hard (2-4 mm: 3-6 pixels), where only the shape, smooth or spiculated, tells the classes apart")
              ] = Difficulty.easy,
          points: Annotated[bool, typer.Option(
              "--points", help="lung: 1-4 benign or malignant nodules per patient, with their centres in "
              "OUT/points.csv (LUNA16 style, patient mm) and the scans in OUT/scans", metavar="")] = False,
          masks: Annotated[bool, typer.Option(
              "--masks", help="with --points: a NIfTI label map per scan in OUT/masks (value 1: a benign nodule, "
              "2: a malignant one)", metavar="")] = False):
    """Write a phantom data set as real DICOM / NIfTI / MetaImage / PNG files."""
    from perceiver_med.workflows.folders import SynthRequest, synth_folder

    request = SynthRequest(kind.value, out, patients, _value(format), seed, difficulty.value, points, masks)
    with console.status(f"writing synthetic {kind.value} scans"):
        folder, count = synth_folder(request)
    unit = "images" if kind is Kind.knee else "volumes"
    console.print(f"wrote {count} {unit} of {patients} patients to [bold]{escape(str(folder))}[/]")


@app.command()
def inspect(data: Annotated[Path, typer.Argument(help="folder of scans, or one file", metavar="DATA")],
            out: Annotated[Optional[Path], typer.Option(help="CSV with one row per file", metavar="CSV")] = None,
            overwrite: Overwrite = False, max_voxels: MaxVoxels = None):
    """List every scan found and every file skipped, with the reason."""
    from perceiver_med.workflows.folders import inspect_folder

    discovery = inspect_folder(data, out, overwrite=overwrite, runtime=_runtime(max_voxels))
    console.print(scans_table(discovery))
    _print_skips(discovery.skipped)
    for scan in discovery.scans:
        for warning in scan.warnings:
            console.print("[yellow]warning[/]", plain(scan.id), plain(warning))
    console.print(summary_line(len(discovery.scans), discovery.skipped))
    if out:
        console.print(f"file list written to [bold]{escape(str(out))}[/]")


def _print_skips(skipped, title="skipped"):
    table = skipped_table(skipped, title)
    if table is not None:
        console.print(table)


@app.command(short_help="Patient-grouped, stratified train/val/test split (or --check one).")
def split(data: Annotated[Optional[Path], typer.Argument(help="folder of scans", metavar="DATA")] = None,
          out: Annotated[Optional[Path], typer.Option(help="splits CSV to write", metavar="CSV")] = None,
          check: Annotated[Optional[Path], typer.Option(help="verify an existing splits CSV instead",
                                                        metavar="CSV")] = None,
          ratios: Annotated[Optional[str], typer.Option(help="train,val,test fractions", metavar="T,V,T",
                                                        show_default="0.6,0.2,0.2")] = None,
          seed: Annotated[int, typer.Option(help="random seed", min=SEED_RANGE[0], max=SEED_RANGE[1], metavar="N")] = 0,
          labels: Annotated[Optional[Path], typer.Option(help="CSV path,label[,patient_id][,slice]",
                                                         metavar="CSV")] = None,
          label_from: Annotated[LabelFrom, _choice("where labels come from (auto: a labels CSV, else class "
                                                   "folders, else laterality)")] = LabelFrom.auto,
          patient_regex: Annotated[Optional[str], typer.Option(help="regex for patient ids in paths",
                                                               metavar="REGEX")] = None,
          points: PointsOption = None, classes: ClassesOption = None,
          folds: Annotated[Optional[int], typer.Option(
              help="also deal the train and val patients into K cross-validation folds (a fold column; fold 0 "
                   "is the val split; test patients stay held out)", metavar="K", min=2)] = None,
          folds_from: Annotated[Optional[str], typer.Option(
              help="use the folds the data set gives instead of drawing them: a column of the points file, or "
                   "folder for the folder under DATA holding each scan (LUNA16: subset0..subset9); every sample "
                   "is in a fold, fold 0 the val split, no test split", metavar="COLUMN")] = None,
          overwrite: Overwrite = False, max_voxels: MaxVoxels = None):
    """Stratified, patient-grouped train/val/test split (or --check an existing one)."""
    from perceiver_med.workflows.folders import SplitRequest, SplitResult, split_data

    result = split_data(SplitRequest(data, out, ratios, seed, label_from.value, labels, patient_regex, points, folds,
                                     overwrite, check, _runtime(max_voxels), classes=classes, folds_from=folds_from))
    console.print(counts_table(result.counts(), samples=result.noun))
    if result.has_folds:
        console.print(counts_table(result.counts(by_fold=True), "fold", result.noun))
    if not isinstance(result, SplitResult):  # --check: a splits file read back, nothing made
        for note in result.notes:
            console.print(f"[yellow]note[/]: {escape(note)}")
        console.print(f"[green]ok[/]: {len(result.rows)} {result.noun}, no patient in two splits, every file "
                      "present")
        return
    _print_skips(result.skipped)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    console.print(f"labels from {result.labelled.label_source}, patients from {result.labelled.patient_source}; "
                  + summary_line(len(result.rows), result.skipped, f"{result.noun} split"))
    console.print(f"splits written to [bold]{escape(str(out))}[/]")


@app.command(short_help="Segmentation masks or LIDC-IDRI readings -> a points CSV: one point per lesion.")
def points(masks: Annotated[Path, typer.Argument(help="folder of masks (NIfTI label maps named as their scans, "
                                                      "or DICOM SEG), or one mask; or LIDC-IDRI readers' XML (a TCIA "
                                                      "download: the scans folder itself)", metavar="MASKS")],
           scans: Annotated[Path, typer.Option(help="folder of the scans the masks segment (or the readings read)",
                                               metavar="DIR")],
           out: Annotated[Path, typer.Option(help="points CSV to write", metavar="CSV")],
           mask_labels: Annotated[Optional[str], typer.Option(
               help="class of each label value (SEG: segment number), e.g. 1=benign,2=malignant; other values are "
                    "left out (default: every value, labelled by the scan's class folder)",
               metavar="VALUE=CLASS,...")] = None,
           overwrite: Overwrite = False):
    """Each connected component of a mask becomes one row: its centroid in patient mm (LPS), the diameter of a
    sphere of its volume, its label. LIDC-IDRI XML: the readers' outlines of one nodule (3 mm or more) become one
    row, labelled by their median malignancy rating. `split DATA --points CSV` takes the file."""
    from rich.table import Table

    from perceiver_med.inputs.lidc import LidcPoints
    from perceiver_med.workflows.folders import mask_points

    result = mask_points(masks, scans, out, mask_labels, overwrite)
    if isinstance(result, LidcPoints):
        table = Table(title=f"nodules of 3 mm or more per series ({len(result.series)} reading(s) used)")
        for column in ("reading", "series", "nodules", "labelled", "marks under 3 mm", "non-nodules"):
            table.add_column(column, justify="left" if column in ("reading", "series") else "right")
        for item in result.series:
            table.add_row(plain(item.reading.name), plain(item.scan.id), str(len(item.nodules)),
                          str(len(item.labelled)), str(item.small_marks), str(item.non_nodules))
        what, skipped_title = "nodule point(s)", "skipped (readings and other XML files)"
    else:
        table = Table(title=f"components per scan ({len(result.scans)} mask(s) used)")
        for column in ("mask", "scan", "components"):
            table.add_column(column, justify="right" if column == "components" else "left")
        for item in result.scans:
            table.add_row(plain(item.mask.name), plain(item.scan.id), str(len(item.components)))
        what, skipped_title = "point(s) from masks", "skipped (masks and other files)"
    console.print(table)
    _print_skips(result.skipped, skipped_title)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    console.print(f"labels from {escape(result.label_source)}; " + summary_line(result.rows, result.skipped, what))
    console.print(f"points written to [bold]{escape(str(out))}[/]")


@app.command()
def preview(scan: Annotated[Path, typer.Argument(help="a scan file, or a folder holding one series",
                                                 metavar="SCAN")],
            out: Annotated[Path, typer.Option(help="output prefix: writes PREFIX.png and PREFIX.npy",
                                              metavar="PREFIX")],
            input: Annotated[InputChoice, _choice("model input (auto: a grid for volumes, else an image), as "
                                                  "train chooses it")] = InputChoice.auto,
            size: Size = None, channels: Channels = None, grid_pad: GridPad = None,
            slice: Annotated[Optional[int], typer.Option(help="centre slice of the grid", metavar="K",
                                                         show_default="the middle slice")] = None,
            series_uid: Annotated[str, typer.Option(help="pick one series of a folder", metavar="UID")] = "",
            point: Annotated[Optional[str], typer.Option(help="centre a grid in mm on this point, DICOM patient "
                                                         "coordinates (LPS)", metavar="X,Y,Z")] = None,
            fov_mm: FovMm = None, slice_mm: SliceMm = None, window: WindowOption = None,
            run: Annotated[Optional[Path], typer.Option(
                help="preprocess as this run does (its config.json): the input its predict and explain see",
                metavar="RUN")] = None,
            overwrite: Overwrite = False, max_voxels: MaxVoxels = None):
    """Write the exact model input of one scan as PNG and NumPy."""
    from perceiver_med.workflows.folders import PreprocessOptions, PreviewRequest, preview_scan

    preprocess = PreprocessOptions(_value(input), size, channels, grid_pad, fov_mm, slice_mm, window)
    tensor = preview_scan(PreviewRequest(scan, out, preprocess, series_uid, slice, point, run, overwrite,
                                         _runtime(max_voxels)))
    console.print(f"model input {tuple(tensor.shape)} written to [bold]{escape(str(out))}.png[/] and "
                  f"[bold]{escape(str(out))}.npy[/]")


@app.command(short_help="Preprocess a splits file's scans into the cache (train does it too).")
def prepare(splits: Annotated[Path, typer.Argument(help="splits CSV", metavar="SPLITS")],
            input: Annotated[InputChoice, _choice("model input (auto: a grid for volumes, else an image)")
                             ] = InputChoice.auto,
            size: Size = None, channels: Channels = None, grid_pad: GridPad = None, window: WindowOption = None,
            workers: Annotated[int, typer.Option(help="processes (0: one per core, up to 8; never more than the "
                                                      "cores)", min=0, max=value_range(Runtime, "workers")[1],
                                                 metavar="N")] = 0,
            max_voxels: MaxVoxels = None):
    """Preprocess every scan of a splits file into the on-disk cache (training does this too)."""
    from perceiver_med.workflows.folders import PrepareRequest, PreprocessOptions, prepare_splits

    request = PrepareRequest(splits, PreprocessOptions(_value(input), size, channels, grid_pad, window=window),
                             _runtime(max_voxels, workers=workers))
    with RichReporter() as reporter:
        prepared = prepare_splits(request, reporter.preparing)
    loaded, config, root = prepared.loaded, prepared.config, prepared.cache
    _print_skips(loaded.skipped)
    noun = f"{config.kind.noun}(s)"
    console.print(summary_line(len(loaded.samples), loaded.skipped, f"{noun} ready as {config.input} "
                               f"{config.output_shape}") + (f"; cache in {escape(str(root))}" if root else
                                                            "; [yellow]the cache folder is not writable[/]"))


def _is_main_process() -> bool:
    from perceiver_med.training.engine import Processes

    return Processes.planned().main


_D = TrainConfig()


def _trained_models():
    from perceiver_med.models import MODELS, model_names

    return [MODELS[name] for name in model_names()]


def _model_choice(name: str | None) -> str | None:
    """--model in any case; a name the registry lacks is refused with the nearest one (trainable_model's answer,
    as a usage error)."""
    from perceiver_med.training.config import trainable_model

    try:
        return trainable_model(name)
    except UserError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--model ")) from None


def _with_model_options(command):
    """Adds each model option of the registry to a command that takes **model_options, as --<name> with its help,
    the models that take it and their defaults (train's, for a 64x64 image)."""
    owners: dict[str, list] = {}
    for spec in _trained_models():
        defaults = spec.option_values({})
        for option in spec.options:
            owners.setdefault(option.name, []).append((spec.name, option, defaults[option.name]))
    extra = []
    for name, takers in owners.items():
        option = takers[0][1]
        helps = list(dict.fromkeys(o.help for _, o, _ in takers))
        values = {f"{value:g}" if isinstance(value, float) else str(value) for _, _, value in takers}
        shown = values.pop() if len(values) == 1 else ", ".join(f"{model}: {value}" for model, _, value in takers)
        info = typer.Option(help=f"{'; '.join(helps)} ({' and '.join(model for model, _, _ in takers)})",
                            min=option.minimum, max=option.maximum, metavar=option.metavar, show_default=shown)
        extra.append(Parameter(name, Parameter.KEYWORD_ONLY, default=None,
                                       annotation=Annotated[Optional[option.type], info]))
    signature = _signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=fixed + extra)
    return command


@app.command(short_help="Train a model into a run directory: config, weights, metrics, plots.")
@_with_model_options
def train(splits: Annotated[Optional[Path], typer.Argument(help="splits CSV from `perceiver-med split` "
                                                                 "(may be left out with --resume)",
                                                            metavar="SPLITS")] = None,
          out: Annotated[Path, typer.Option(help="run directory to create (or to continue, with --resume)",
                                            metavar="RUN")] = ...,
          model: Annotated[Optional[str], typer.Option(
              help="model family: " + "; ".join(f"{spec.name}: {spec.summary}" for spec in _trained_models()),
              metavar="|".join(spec.name for spec in _trained_models()), show_default=DEFAULT_MODEL,
              callback=_model_choice)] = None,
          epochs: Annotated[Optional[int], typer.Option(
              help="maximum epochs, per stage for the hybrid (0: about 600 steps, 30..150 epochs)", min=0,
              max=value_range(TrainConfig, "epochs")[1], metavar="N", show_default=str(_D.epochs))] = None,
          batch_size: Annotated[Optional[int], typer.Option(help="samples per step and process", min=1, metavar="N",
                                                            max=value_range(TrainConfig, "batch_size")[1],
                                                            show_default=str(_D.batch_size))] = None,
          lr: Annotated[Optional[float], typer.Option(help="peak learning rate", min=0.0, metavar="LR",
                                                      show_default=f"{_D.lr:g}")] = None,
          weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay", min=0.0, metavar="WD",
                                                                show_default=f"{_D.weight_decay:g}")] = None,
          patience: Annotated[Optional[int], typer.Option(
              help="early-stopping patience in epochs (0: off), counted once the training set is fitted or 3/4 of "
                   "the epochs have run", min=0, max=value_range(TrainConfig, "patience")[1], metavar="N",
              show_default=str(_D.patience))] = None,
          stop_loss: Annotated[Optional[float], typer.Option(
              help="stop a stage once its validation loss is at or below this (0: never), counted as patience is; "
                   "0.01: the true classes' mean probability is about 0.99", min=0.0, metavar="LOSS",
              show_default=f"{_D.stop_loss:g}")] = None,
          seed: Annotated[Optional[int], typer.Option(help="random seed", metavar="N", min=SEED_RANGE[0],
                                                      max=SEED_RANGE[1], show_default=str(_D.seed))] = None,
          device: DeviceOption = Device.auto,
          precision: Annotated[Precision, _choice("arithmetic: auto = bf16 autocast on CUDA and on CPUs with "
                                                  "native bf16 units, else fp32; the run records it, and evaluate "
                                                  "and predict compute in it (auto on --resume: the run's)")
                               ] = Precision.auto,
          input: Annotated[Optional[InputChoice], _choice("model input (auto: a 3x3 grid of 9 slices for volumes, "
                                                          "else an image)", show_default="auto")] = None,
          size: Size = None, channels: Channels = None, grid_pad: GridPad = None,
          fov_mm: FovMm = None, slice_mm: SliceMm = None, window: WindowOption = None,
          flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", metavar="", help="horizontal flip "
                                                       "augmentation", show_default="off for laterality "
                                                       "labels, else on")] = None,
          positive: Annotated[Optional[str], typer.Option(
              help="the class sensitivity, specificity and ROC AUC are reported for, and --threshold decides",
              metavar="CLASS",
              show_default=f"the first of {', '.join(POSITIVE_NAMES[:4])}... that is a class, else the last "
                           "class in sorted order")] = None,
          threshold: Annotated[Optional[str], typer.Option(
              help="decision threshold on the positive class's calibrated probability, chosen on the validation "
                   "split only: youden, f1, 0.5, sensitivity=X or specificity=X (two classes)", metavar="RULE",
              show_default="0.5")] = None,
          class_weights: Annotated[Optional[ClassWeights], _choice("auto: inverse class frequency in the loss",
                                                                   show_default="none")] = None,
          sampler: Annotated[Optional[Sampler], _choice(
              "how an epoch draws training samples: shuffle (each once) or balanced (with replacement, each class "
              "equally often); auto: balanced where a class has under 1/4 of the commonest class's training "
              "samples and --class-weights is not auto", show_default="auto")] = None,
          num_workers: Annotated[int, typer.Option(help="preprocessing processes (0: one per core, up to 8; never "
                                                        "more than the cores)", min=0,
                                                   max=value_range(Runtime, "workers")[1],
                                                   metavar="N")] = 0,
          fold: Annotated[Optional[int], typer.Option(
              help="train one cross-validation fold: its rows are val, the other folds' train (split --folds)",
              min=0, metavar="K")] = None,
          cv: Annotated[bool, typer.Option("--cv", metavar="", help="train every fold into RUN/fold_<k>, score the "
                                           "out-of-fold predictions, and make RUN their ensemble")] = False,
          resume: Annotated[bool, typer.Option("--resume", metavar="", help="continue an interrupted run in --out "
                                               "with the settings in its config.json")] = False,
          quiet: Annotated[bool, typer.Option("--quiet", metavar="", help="no per-epoch output")] = False,
          max_voxels: MaxVoxels = None, **model_options):
    """Train a model; writes config, weights, metrics, history, curves and predictions to --out."""
    from perceiver_med.workflows.train import TrainRequest
    from perceiver_med.workflows.train import train as train_model

    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                   stop_loss=stop_loss, seed=seed, class_weights=_value(class_weights),
                   sampler=None if sampler in (None, Sampler.auto) else sampler.value, input=_value(input),
                   size=size, channels=channels,
                   grid_pad=grid_pad, fov_mm=fov_mm, slice_mm=slice_mm, window=window, flip=flip, positive=positive,
                   threshold=threshold, **model_options)
    request = TrainRequest(splits, out, model, options, _runtime(max_voxels, device, precision, num_workers),
                           resume=resume, cv=cv, fold=fold)
    main_process = _is_main_process()
    with RichReporter(quiet or not main_process) as reporter:
        result = train_model(request, reporter, reporter.preparing)
    if not main_process:
        return
    _print_skips(result.skipped)
    if cv:
        tested = "test" in result.metrics  # folds from a column or folders (LUNA16's subsets) leave no test split
        console.print(metrics_table(result.metrics, f"{len(result.config.ensemble)}-fold cross-validation of "
                                                    f"{result.config.model['name']}: out of fold"
                                                    + (", and the folds' ensemble on test" if tested else "")
                                                    + f" (positive class: {escape(result.config.positive_class)})"))
        _print_trust(result.metrics)
        console.print(f"run written to [bold]{escape(str(out))}[/] (fold_<k>/, metrics.json, "
                      "predictions_out_of_fold.csv" + (", predictions_test.csv)" if tested else ")"))
        return
    for number, stage in enumerate(result.earlier_stages, 1):
        console.print(metrics_table(result.metrics[stage], f"stage {number}: {stage} alone"))
    console.print(metrics_table(result.metrics, f"best checkpoint of {result.config.model['name']} "
                                                f"(positive class: {escape(result.config.positive_class)})"))
    _print_trust(result.metrics)
    console.print(f"run written to [bold]{escape(str(out))}[/] (metrics.json, curves.png, predictions_<split>.csv)")


@app.command()
def evaluate(run: Annotated[Path, typer.Argument(help="run directory", metavar="RUN")],
             splits: Annotated[Optional[Path], typer.Option(help="another splits CSV; scans the run trained on "
                                                            "are refused", metavar="CSV",
                                                            show_default="the run's frozen copy")] = None,
             split: Annotated[SplitName, _choice("which split")] = SplitName.all,
             nodules: Annotated[Optional[Path], typer.Option(
                 help="a point run's nodule reference for FROC and CPM, as LUNA16 counts them: seriesuid (or "
                      "path),coordX,coordY,coordZ,diameter_mm in LPS mm (LUNA16's annotations.csv)",
                 metavar="CSV")] = None,
             excluded: Annotated[Optional[Path], typer.Option(
                 help="findings whose hits FROC ignores, in the same columns (annotations_excluded.csv)",
                 metavar="CSV")] = None,
             out: Annotated[Optional[Path], typer.Option(help="also write the metrics as JSON (metrics.json's "
                                                             "form)", metavar="JSON")] = None,
             overwrite: Overwrite = False,
             tta: TtaOption = 1, device: DeviceOption = Device.auto, max_voxels: MaxVoxels = None):
    """Metrics of a trained run on the chosen splits; FROC and CPM of a point run with --nodules."""
    from perceiver_med.results.evaluation import evaluate_run

    metrics = evaluate_run(run, splits, split.value, tta, _runtime(max_voxels, device), nodules, excluded, out,
                           overwrite)
    views = f", mean of {tta} test-time views" if tta > 1 else ""
    console.print(metrics_table(metrics, f"{escape(str(run))} (positive class: "
                                         f"{escape(metrics['positive_class'])}{views})"))
    _print_trust(metrics)
    table = froc_table(metrics)
    if table is not None:
        console.print(table)
    if out is not None:
        console.print(f"wrote [bold]{escape(str(out))}[/]")


def _print_trust(metrics: dict) -> None:
    table = trust_table(metrics)
    if table is not None:
        console.print(table)


@app.command(short_help="Predict every scan in a folder with a run's own preprocessing.")
def predict(run: Annotated[Path, typer.Argument(help="run directory, or a model file from `export`",
                                                metavar="RUN")],
            scans: Annotated[Path, typer.Argument(help="folder of scans, or one file", metavar="SCANS")],
            out: Annotated[Path, typer.Option(help="predictions CSV to write", metavar="CSV")],
            points: PointsOption = None, classes: ClassesOption = None, tta: TtaOption = 1,
            device: DeviceOption = Device.auto, overwrite: Overwrite = False, max_voxels: MaxVoxels = None):
    """Predict every scan found in a folder with the run's preprocessing (an exported model.onnx carries it, and
    runs in ONNX Runtime)."""
    from rich.table import Table

    from perceiver_med.results.predictions import PredictRequest, predict_run

    request = PredictRequest(run, scans, out, points, tta, overwrite, _runtime(max_voxels, device), classes)
    with RichReporter() as reporter:
        predicted = predict_run(request, reporter.preparing)
    samples, decided = predicted.samples, predicted.decided
    table = Table(title=f"{len(samples)} prediction(s)" + (f", each the mean of {tta} test-time views"
                                                            if tta > 1 else "")
                  + (f"; pred is {escape(predicted.positive_class)} where its probability is at least "
                     f"{predicted.threshold:.6g}" if predicted.threshold not in (None, 0.5) else ""))
    with_points = any(sample.point is not None for sample in samples)
    # the scan as a path below SCANS (IMG00025.dcm is in every patient's folder), folded, never cut; a
    # coordinate cut short misleads; a probability's header is never cut to p(malignan…)
    table.add_column("scan", overflow="fold")
    if with_points:
        table.add_column("point (LPS mm)", no_wrap=True)
    for column in ("label", "pred", *(f"p({c})" for c in decided.classes)):
        table.add_column(plain(column), min_width=len(plain(column)) if column.startswith("p(") else None)
    for sample, pred, probs in zip(samples[:30], decided.names, decided.probs):
        point = [",".join(f"{c:.1f}" for c in sample.point)] if with_points else []
        table.add_row(plain(predicted.scan_name(sample)), *point, plain(sample.label), plain(pred),
                      *(f"{v:.4f}" for v in probs))
    if len(samples) > 30:
        table.caption = f"... and {len(samples) - 30} more in {escape(str(out))}"
    console.print(table)
    scored = predicted.accuracy()
    if scored is not None and scored.accuracy is not None:
        whose = ("of patients the run did not train on" if predicted.splits_known else
                 "(an exported model does not say which patients it learnt from: predict the run directory to "
                 "leave them out)")
        console.print(f"accuracy against the labels of the {predicted.label_source}, on {scored.unseen} sample(s) "
                      f"{whose}: [bold]{scored.accuracy:.4f}[/]")
    if scored is not None and scored.own:
        counts = ", ".join(f"{n} of its {split} patients" for split, n in scored.own.items())
        console.print(f"{sum(scored.own.values())} labelled sample(s) were the run's own ({counts}): left out of "
                      "the accuracy")
    _print_skips(predicted.skipped)
    noun = "point(s)" if points else "scan(s)"
    console.print(summary_line(len(samples), predicted.skipped, f"{noun} predicted")
                  + f"; written to [bold]{escape(str(out))}[/]")


@app.command(short_help="Overlays of what each prediction rests on (occlusion evidence).")
def explain(run: Annotated[Path, typer.Argument(help="run directory", metavar="RUN")],
            scans: Annotated[list[Path], typer.Argument(help="scan files (or series folders)", metavar="SCAN...")],
            out: Annotated[Path, typer.Option(help="folder for the overlay PNGs", metavar="DIR")],
            points: PointsOption = None,
            overwrite: Overwrite = False, max_voxels: MaxVoxels = None):
    """Overlay PNGs of the evidence for each prediction: the fall of log p(predicted class) when a patch is painted
    dark or bright. Works the same for every model; scans unlike the training scans are skipped."""
    from perceiver_med.results.explain import ExplainRequest, explain_run

    written, skipped = explain_run(ExplainRequest(run, scans, out, points, overwrite=overwrite,
                                                  runtime=_runtime(max_voxels)))
    for path in written:
        console.print(f"wrote [bold]{escape(str(path))}[/]")
    _print_skips(skipped)


@app.command(short_help="The run as one self-contained HTML page (and Markdown): flow, metrics, checklist.")
def report(run: Annotated[Path, typer.Argument(help="run directory", metavar="RUN")],
           out: Annotated[Path, typer.Option(help="HTML file to write; OUT.md and OUT_files/ go beside it",
                                             metavar="HTML")],
           nodules: Annotated[Optional[Path], typer.Option(
               help="a point run's nodule reference: adds FROC and CPM of its predictions (as evaluate --nodules)",
               metavar="CSV")] = None,
           excluded: Annotated[Optional[Path], typer.Option(help="findings whose hits FROC ignores "
                                                                 "(annotations_excluded.csv)", metavar="CSV")] = None,
           overwrite: Overwrite = False):
    """A model card of a trained run: flow of patients, per-split characteristics, configuration and file hashes,
    metrics with 95% intervals, calibration, the most confident errors, and a CLAIM 2024 checklist; FROC and CPM of
    a point run with --nodules."""
    from perceiver_med.results.report import write_report

    written = write_report(run, out, overwrite, nodules, excluded)
    console.print(f"wrote [bold]{escape(str(written))}[/] and [bold]{escape(str(written.with_suffix('.md')))}[/]")


class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command(short_help="The run's model as one ONNX file with its preprocessing, verified against PyTorch.")
def export(run: Annotated[Path, typer.Argument(help="run directory", metavar="RUN")],
           out: Annotated[Path, typer.Option(help="model file to write", metavar="FILE")],
           format: Annotated[ExportFormat, _choice("file format")] = ExportFormat.onnx,
           overwrite: Overwrite = False, max_voxels: MaxVoxels = None):
    """Export a run's model (a fold ensemble as one graph) for ONNX Runtime, TensorRT, OpenVINO...: its metadata
    holds the preprocessing, classes, temperature and threshold, and `predict FILE SCANS` runs it alone. ONNX
    Runtime checks it against PyTorch on the run's own val (else test) inputs before it is written."""
    from perceiver_med.results.onnx_export import ExportRequest, export_run

    with console.status("exporting and verifying"):
        exported = export_run(ExportRequest(run, out, format.value, overwrite, _runtime(max_voxels)))
    metadata, check = exported.metadata, exported.verification
    model = (f"an ensemble of {len(metadata.members)} {metadata.model} models" if metadata.members
             else f"a {metadata.model}")
    graph = " -> ".join(f"{part['name']} {part['shape']}" for part in (metadata.input, metadata.output))
    console.print(f"wrote [bold]{escape(str(exported.path))}[/] ({exported.size_bytes / 1e6:.2f} MB): {model}, "
                  f"{escape(graph)}")
    console.print(f"verified with ONNX Runtime on {check.samples} {check.split} input(s): probabilities within "
                  f"{check.max_abs_difference:.2g} of PyTorch's (fp32; tolerance {check.tolerance:g})")


class DemoKind(str, Enum):
    knee = "knee"
    lung = "lung"


@app.command(short_help="Phantom data end to end: synth, split, train, evaluate, predict, explain.")
def demo(out: Annotated[Path, typer.Option(help="folder for everything the demo writes", metavar="DIR")
                        ] = Path("demo-output"),
         kind: Annotated[DemoKind, _choice("knee: laterality of phantom radiographs; lung: benign or malignant "
                                           "nodule points in phantom chest CTs")] = DemoKind.knee,
         patients: Annotated[int, typer.Option(help="synthetic patients", min=8, metavar="N")] = 60,
         epochs: Annotated[Optional[int], typer.Option(help="maximum training epochs (0: train's default, about "
                                                             "600 steps)", min=0, metavar="N",
                                                        show_default="40 for knee, 0 for lung")] = None,
         seed: Annotated[int, typer.Option(help="random seed", min=SEED_RANGE[0], max=SEED_RANGE[1], metavar="N")] = 0):
    """synth -> split -> train a Perceiver -> evaluate -> predict -> explain, on the CPU in minutes."""
    from perceiver_med.workflows.demo import DemoRequest, run_demo

    with RichReporter() as reporter:
        run_demo(DemoRequest(out, kind.value, patients, epochs, seed), reporter, reporter.say)


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
    """Entry point: user errors and usage errors become one line on stderr and exit code 2; Ctrl-C exits 130."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        _error_line(str(exc))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        err_console.print(plain(str(exc)), style="yellow", highlight=False, soft_wrap=True)
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[yellow]interrupted[/]", highlight=False)
        sys.exit(130)
    except _usage_error_types() as exc:  # a misspelt option, a missing argument, `--epochs abc`
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments at all: the help is the answer
            print(exc.ctx.get_help())
        else:
            context = getattr(exc, "ctx", None)
            exc.message = _plain_validation(exc)
            _error_line(f"{exc.format_message()} (see {context.command_path if context else 'perceiver-med'} --help)")
        sys.exit(getattr(exc, "exit_code", 2))


# Typer checks option values with pydantic; its messages ("Input should be greater than or equal to 0") are
# said here as a person would, with the value given, so `--lr nan` reads "must be at least 0, not nan".
_VALIDATION_PHRASES = {"greater_than_equal": "at least {ge}", "greater_than": "more than {gt}",
                       "less_than_equal": "at most {le}", "less_than": "less than {lt}",
                       "int_parsing": "a whole number", "int_from_float": "a whole number",
                       "float_parsing": "a number", "finite_number": "a finite number"}


def _plain_validation(exc) -> str:
    """A usage error's message, in plain words where pydantic phrased it."""
    cause = exc.__cause__
    errors = cause.errors() if type(cause).__name__ == "ValidationError" else []
    phrase = _VALIDATION_PHRASES.get(errors[0]["type"]) if errors else None
    if errors and errors[0]["type"] == "value_error":  # our own checks' sentence, without "Value error, "
        return str(errors[0]["msg"]).removeprefix("Value error, ")
    if phrase is None:
        return exc.message
    given = errors[0].get("input")
    bounds = {name: f"{value:g}" if isinstance(value, float) else value
              for name, value in errors[0].get("ctx", {}).items()}
    return f"must be {phrase.format(**bounds)}, not {plain(str(given))}"


def _error_line(text: str) -> None:
    err_console.print("[red]error[/]:", plain(text), highlight=False, soft_wrap=True)
