"""Library functions behind `synth`, `inspect`, `split`, `points`, `preview` and `prepare`: each takes its command's
options (a request object where there are many) and returns what the CLI prints."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from perceiver_med.inputs.cache import find_scan, prepare, usable_cache_root
from perceiver_med.csvfiles import printable, write_csv
from perceiver_med.inputs.loading import LoadedInputs, describe_scans, load_split_inputs, preprocess_config
from perceiver_med.errors import ScanError, UserError
from perceiver_med.files import atomic_path, refuse_inside
from perceiver_med.run.rundir import check_new_output, refuse_inside_runs
from perceiver_med.io import Discovery, discover
from perceiver_med.io.discover import Skip
from perceiver_med.io.scans import relative
from perceiver_med.inputs.labels import LabelledSet, label_scans
from perceiver_med.inputs.lidc import LidcPoints, holds_lidc_readings, points_from_lidc
from perceiver_med.inputs.masks import MaskPoints, points_from_masks
from perceiver_med.inputs.points import PointsFile, match_points, parse_classes, parse_point, read_points
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.kinds import AUTO, check_samples, choose_kind
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.results.report.flow import write_flow_record
from perceiver_med.inputs.windows import parse_window
from perceiver_med.inputs.splits import (SPLITS, assign_folds, assign_splits, check_ratios, count_table, find_problems,
                                         fold_notes, given_folds, read_sound_splits, read_splits, sample_noun,
                                         split_notes, write_splits)
from perceiver_med.synth.phantoms import synth
from perceiver_med.training.config import Runtime, applies_runtime

INSPECT_COLUMNS = ["file", "scan", "status", "reason", "kind", "modality", "shape"]


@dataclass(frozen=True)
class SynthRequest:
    """A phantom data set to write (synth.phantoms.synth documents each field)."""

    kind: str
    out: Path
    patients: int = 100
    format: str | None = None
    seed: int = 0
    difficulty: str = "easy"
    points: bool = False
    masks: bool = False


def synth_folder(request: SynthRequest) -> tuple[Path, int]:
    """Write a phantom data set into a new folder, never inside a run directory; returns its scans' folder and
    how many files it holds."""
    refuse_inside_runs(request.out)
    return synth(request.kind, request.out, request.patients, request.format, request.seed, request.difficulty,
                 request.points, request.masks)


def inspect_folder(data: Path, out: Path | None = None, *, overwrite: bool = False,
                   runtime: Runtime = Runtime()) -> Discovery:
    """Discover every scan under `data` (with the runtime's voxel budget); optionally write one CSV row per file
    to `out`, a new file unless `overwrite`.

    The labels `split --label-from auto` would use are attached as `discovery.labels` and
    `discovery.patients` ({scan id: label or patient id}).
    """
    if out is not None:
        check_new_output(out, overwrite, inputs=(data,))
    with runtime.reading():
        discovery = discover(data)
        try:
            labelled = label_scans(discovery)
            samples = {(sample.path, sample.series_uid): sample for sample in labelled.samples}
            labelled_scans = [(scan.id, samples.get((scan.path.resolve(), scan.series_uid)))
                              for scan in discovery.scans]
            discovery.labels = {scan_id: sample.label for scan_id, sample in labelled_scans if sample}
            discovery.patients = {scan_id: sample.patient_id for scan_id, sample in labelled_scans if sample}
        except UserError:  # no label source: inspect still lists the scans
            discovery.labels = {}
    if out is not None:
        write_csv(out, INSPECT_COLUMNS, ([record[c] for c in INSPECT_COLUMNS] for record in discovery.records()))
    return discovery


@dataclass
class SplitCheck:
    """A splits file's samples and what is worth saying of them (empty splits, folds without a class)."""

    rows: list[Sample]
    notes: list[str]

    @property
    def noun(self) -> str:
        return sample_noun(self.rows)

    def counts(self, by_fold: bool = False) -> dict:
        """{split (or "fold k"): {label: (samples, patients)}}."""
        return count_table(self.rows, by_fold)

    @property
    def has_folds(self) -> bool:
        return any(row.fold is not None for row in self.rows)


@dataclass
class SplitResult(SplitCheck):
    """A split made from a folder: its samples and notes, with the discovery and labelling behind them."""

    discovery: Discovery
    labelled: LabelledSet

    @property
    def skipped(self) -> list[Skip]:
        """Files not discovered as scans, then scans left without a label or patient."""
        return self.discovery.skipped + self.labelled.skipped


@dataclass(frozen=True)
class SplitRequest:
    """What `split` is asked: split the scans under `data` into the splits CSV `out` (split_folder documents the
    fields), or, with `check`, verify an existing splits CSV instead."""

    data: Path | None = None
    out: Path | None = None
    ratios: tuple[float, float, float] | str | None = None  # or "T,V,T", as --ratios takes them; None: 0.6,0.2,0.2
    seed: int = 0
    label_from: str = "auto"
    labels: Path | None = None
    patient_regex: str | None = None
    points: Path | None = None
    folds: int | None = None
    overwrite: bool = False
    check: Path | None = None
    runtime: Runtime = field(default_factory=Runtime)
    classes: str | None = None  # "0=benign,1=malignant": the class of each label value of the points file
    folds_from: str | None = None  # a column of the points file, or "folder": the folds the data set gives


def split_data(request: SplitRequest) -> SplitResult | SplitCheck:
    """`split`: a new splits file (SplitResult), or the verdict on an existing one when `request.check` is given
    (SplitCheck)."""
    if request.check is not None:
        return check_splits_file(request.check)
    if request.data is None or request.out is None:
        raise UserError("split needs DATA and --out splits.csv (or --check splits.csv)")
    ratios = request.ratios
    if request.folds_from is not None and (request.folds is not None or ratios is not None):
        raise UserError("--folds-from takes the folds the data set gives, every sample in one: leave out "
                        + ("--folds" if request.folds is not None else "--ratios (there is no test split to draw)"))
    if ratios is None:
        ratios = (0.6, 0.2, 0.2)
    if isinstance(ratios, str):
        try:
            ratios = tuple(float(r) for r in ratios.split(","))
        except ValueError:
            raise UserError(f"--ratios must be three numbers like 0.6,0.2,0.2, got {request.ratios!r}") from None
    check_new_output(request.out, request.overwrite, inputs=(request.data,))
    with request.runtime.reading():
        return split_folder(request.data, request.out, ratios, request.seed, request.label_from, request.labels,
                            request.patient_regex, request.points, request.folds, parse_classes(request.classes),
                            request.folds_from)


def split_folder(data: Path, out: Path, ratios=(0.6, 0.2, 0.2), seed: int = 0, label_from: str = "auto",
                 labels_csv: Path | None = None, patient_regex: str | None = None,
                 points_csv: Path | None = None, folds: int | None = None, classes: dict[str, str] | None = None,
                 folds_from: str | None = None) -> SplitResult:
    """Discover, label and split a folder of scans; write splits.csv. With `points_csv`, one row per point,
    labelled by the points file (its label values renamed by `classes`), its patient from the file, else the scan's
    DICOM PatientID, else the scan itself. With `folds`, the train and val patients together are dealt into that
    many cross-validation folds (see assign_folds); with `folds_from`, the folds are those the data set gives, in a
    column of the points file or ("folder") in the folders under `data` that hold the scans (see given_folds)."""
    check_ratios(tuple(ratios))
    refuse_inside(out, data)
    discovery = discover(data)
    table = read_points(points_csv, classes) if points_csv is not None else None
    if classes and table is None:
        raise UserError("--classes names the label values of a points file: give it with --points CSV")
    if table is not None:
        labelled = label_points(table, discovery)
    else:
        labelled = label_scans(discovery, label_from, labels_csv, patient_regex)
    if not labelled.samples:
        raise UserError(f"no labelled scans in {data}" + (f" ({labelled.skipped[0].reason})"
                                                          if labelled.skipped else ""))
    notes = []
    if folds_from is not None:
        values, source = fold_values(labelled.samples, folds_from, table, discovery.root)
        rows, names = given_folds(labelled.samples, values, source)
        notes.append(f"folds from {source}: " + ", ".join(f"{k} = {printable(name)}" for k, name in enumerate(names)))
    else:
        rows = assign_splits(labelled.samples, ratios, seed)
        if folds is not None:
            rows = assign_folds(rows, folds, seed)
    problems = find_problems(rows)  # what `split --check` and `train` would refuse is never written
    if problems:
        raise UserError(f"{printable(data)}: " + "; ".join(problems))
    write_splits(rows, out)
    write_flow_record(out, discovery, labelled)  # files found and skipped, for the report's flow diagram
    asked = [split for split, ratio in zip(SPLITS, ratios) if split != "train" and ratio > 0 and folds_from is None]
    return SplitResult(rows, labelled.notes + notes + split_notes(rows, asked) + fold_notes(rows), discovery,
                       labelled)


FOLDER = "folder"  # --folds-from folder: the folder under DATA that holds each scan (LUNA16's subset0..subset9)


def fold_values(samples: list[Sample], folds_from: str, table: PointsFile | None, root: Path) -> tuple[list[str], str]:
    """Each sample's fold as the data set gives it, and where it came from (for messages): the cell of a column of
    the points file, or the first folder of the scan's path under `root`."""
    columns = [c for c in table.columns if c] if table is not None else []
    if folds_from == FOLDER and FOLDER in columns:
        raise UserError("--folds-from folder: the points file has a column called folder too; rename it, so that "
                        "which one gives the folds is plain")
    if folds_from == FOLDER:
        parts = [Path(relative(sample.path.resolve(), root.resolve())).parts for sample in samples]
        return [part[0] if len(part) > 1 else "" for part in parts], f"the folders under {printable(root)}"
    if table is None:
        raise UserError(f"--folds-from {printable(folds_from)}: a column of the points file (--points CSV), or "
                        "folder for the folders that hold the scans")
    if folds_from not in columns:
        raise UserError(f"--folds-from {printable(folds_from)} is not a column of {printable(table.source)} "
                        f"(its columns: {', '.join(printable(c) for c in columns)}), nor folder")
    return [table.cells[sample.point_id].get(folds_from, "").strip() for sample in samples], \
        f"column {printable(folds_from)} of {printable(table.source.name)}"


def label_points(table: PointsFile, discovery: Discovery) -> LabelledSet:
    """The labelled samples of a points file (one per usable row, in its order) and the rows skipped. A row whose
    patient neither the file nor the scan's DICOM PatientID gives (LUNA16's tables, MetaImage scans) takes its
    scan as its patient, and a note says so."""
    samples, skipped = match_points(table, discovery)
    labelled, own = [], 0
    for sample in samples:
        where = f"{printable(table.source)}:{sample.point_id}"
        if not sample.label:
            skipped.append(Skip(sample.path, f"{where}: no label (add a label column to the points file)",
                                int(sample.point_id)))
            continue
        patient = sample.patient_id or sample.series_uid or relative(sample.path, discovery.root)
        own += not sample.patient_id
        labelled.append(replace(sample, path=sample.path.resolve(), patient_id=patient))
    notes = [f"no patient id for {own} point(s) (no PatientID or patient_id column, no DICOM PatientID): each of "
             "their scans is its own patient"] if own else []
    return LabelledSet(labelled, skipped, "the points file", "the points file or DICOM PatientID"
                       + (", else the scan" if own else ""), notes)


def mask_points(masks: Path, scans: Path, out: Path, mask_labels: str | None = None,
                overwrite: bool = False) -> MaskPoints | LidcPoints:
    """`points`: segmentation masks (inputs.masks.points_from_masks), or LIDC-IDRI readers' XML where MASKS holds
    it (inputs.lidc.points_from_lidc), -> a new points CSV `out`."""
    check_new_output(out, overwrite, inputs=(masks, scans))
    if holds_lidc_readings(masks):
        if mask_labels is not None:
            raise UserError("--mask-labels names the classes of mask values; LIDC-IDRI readings are labelled by "
                            "their median malignancy rating: leave it out")
        return points_from_lidc(masks, scans, out)
    return points_from_masks(masks, scans, out, mask_labels)


def check_splits_file(csv_path: Path) -> SplitCheck:
    """Refuse what `train` would refuse; note what it would accept but measure nothing on."""
    rows = read_sound_splits(csv_path)
    return SplitCheck(rows, split_notes(rows) + fold_notes(rows))


@dataclass(frozen=True)
class PreprocessOptions:
    """The preprocessing options a user gave (None: not given, the choice train would make)."""

    input: str = AUTO
    size: int | None = None
    channels: int | None = None
    grid_pad: bool | None = None
    fov_mm: float | None = None
    slice_mm: float | None = None
    window: str | None = None


@dataclass(frozen=True)
class PreviewRequest:
    """One scan's model input to write as OUT.npy and OUT.png.

    Args:
        scan: a scan file, or a folder holding one series (`series_uid` picks one of several).
        out: the output prefix.
        preprocess: the preprocessing options; none may be given with `run`.
        center: the centre slice of a grid (None: the middle one).
        point: "X,Y,Z" in DICOM patient mm (LPS), or (x, y, z): centre a grid in mm on it.
        run: preprocess as this run does (its config.json).
    """

    scan: Path
    out: Path
    preprocess: PreprocessOptions = PreprocessOptions()
    series_uid: str = ""
    center: int | None = None
    point: str | tuple[float, float, float] | None = None
    run: Path | None = None
    overwrite: bool = False
    runtime: Runtime = field(default_factory=Runtime)


@applies_runtime
def preview_scan(request: PreviewRequest) -> np.ndarray:
    """Write the exact model input as PREFIX.npy (float32, C x H x W) and PREFIX.png; input "auto" as train
    (a point-centred grid when a point is given). With `run`, the preprocessing is that run's (its config.json),
    and no other preprocessing option may be given."""
    scan, prefix, options, overwrite = request.scan, request.out, request.preprocess, request.overwrite
    input, size, channels, grid_pad = options.input, options.size, options.channels, options.grid_pad
    fov_mm, slice_mm, window, run = options.fov_mm, options.slice_mm, options.window, request.run
    series_uid, center = request.series_uid, request.center
    point = parse_point(request.point) if isinstance(request.point, str) else request.point
    if not scan.exists():
        raise UserError(f"{scan} does not exist")
    for suffix in (".npy", ".png"):
        check_new_output(prefix.parent / (prefix.name + suffix), overwrite, inputs=(scan,))
    try:
        if run is not None:
            config = _run_preprocess(run, point, input=None if input == AUTO else input, size=size,
                                     channels=channels, grid_pad=grid_pad, fov_mm=fov_mm, slice_mm=slice_mm,
                                     window=window)
        else:
            scan_kinds = {find_scan(scan, series_uid).kind} if input == AUTO and point is None else set()
            kind = choose_kind(input, point is not None, scan_kinds)
            config = preprocess_config(kind.name, size, channels, grid_pad, fov_mm, slice_mm, window)
        tensor = prepare(Sample(scan, series_uid=series_uid, slice=center, point=point), config, use_cache=False)
    except ScanError as exc:
        raise UserError(f"{scan}: {exc}") from None
    with atomic_path(prefix.parent / f"{prefix.name}.npy", suffix=".npy") as temp:
        np.save(temp, tensor.astype(np.float32))
    picture = np.moveaxis(tensor, 0, -1) if tensor.shape[0] == 3 else tensor[0]
    with atomic_path(prefix.parent / f"{prefix.name}.png", suffix=".png") as temp:
        Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(temp, format="PNG")
    return tensor


def _run_preprocess(run: Path, point, **given) -> PreprocessConfig:
    """A run's preprocessing for preview --run; options that would change it are refused by name."""
    from perceiver_med.run.rundir import load_run_config

    named = [f"--{key.replace('_', '-')}" for key, value in given.items() if value is not None]
    if named:
        raise UserError(f"--run previews the input as {run} prepares it: leave out {', '.join(named)}")
    config = load_run_config(run).preprocess
    check_samples(config.kind, point is not None, "that run", "give --point X,Y,Z", "leave out --point")
    return config


@dataclass(frozen=True)
class PrepareRequest:
    """A splits file to preprocess into the cache, as train would prepare it; the runtime's workers prepare it."""

    splits: Path
    preprocess: PreprocessOptions = PreprocessOptions()
    runtime: Runtime = field(default_factory=Runtime)


@dataclass
class Prepared:
    loaded: LoadedInputs
    config: PreprocessConfig
    cache: Path | None  # where the inputs are kept (None: the cache folder is not writable)


@applies_runtime
def prepare_splits(request: PrepareRequest, on_done=None) -> Prepared:
    """Preprocess every scan of a splits file into the cache, with the preprocessing train would choose."""
    options = request.preprocess
    parse_window(options.window or "auto")  # a bad --window fails before the splits file is read
    rows = read_splits(request.splits)
    with_points = any(row.point is not None for row in rows)
    kind = choose_kind(options.input, with_points,
                       describe_scans(rows).kinds if options.input == AUTO and not with_points else ())
    config = preprocess_config(kind.name, options.size, options.channels, options.grid_pad, options.fov_mm,
                               options.slice_mm, options.window)
    loaded = load_split_inputs(rows, config, request.runtime.workers, on_done=on_done)
    return Prepared(loaded, config, usable_cache_root())
