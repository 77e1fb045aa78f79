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
from perceiver_med.inputs.labels import LabelledSet, label_scans
from perceiver_med.inputs.lidc import LidcPoints, holds_lidc_readings, points_from_lidc
from perceiver_med.inputs.masks import MaskPoints, points_from_masks
from perceiver_med.inputs.points import match_points, parse_point, read_points
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.kinds import AUTO, check_samples, choose_kind
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.results.report.flow import write_flow_record
from perceiver_med.inputs.windows import parse_window
from perceiver_med.inputs.splits import (SPLITS, assign_folds, assign_splits, check_ratios, count_table, find_problems,
                                         fold_notes, read_splits, sample_noun, split_notes, write_splits)
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
        check_new_output(out, overwrite)
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
        refuse_inside(out, data)
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
    ratios: tuple[float, float, float] | str = (0.6, 0.2, 0.2)  # or "T,V,T", as --ratios takes them
    seed: int = 0
    label_from: str = "auto"
    labels: Path | None = None
    patient_regex: str | None = None
    points: Path | None = None
    folds: int | None = None
    overwrite: bool = False
    check: Path | None = None
    runtime: Runtime = field(default_factory=Runtime)


def split_data(request: SplitRequest) -> SplitResult | SplitCheck:
    """`split`: a new splits file (SplitResult), or the verdict on an existing one when `request.check` is given
    (SplitCheck)."""
    if request.check is not None:
        return check_splits_file(request.check)
    if request.data is None or request.out is None:
        raise UserError("split needs DATA and --out splits.csv (or --check splits.csv)")
    ratios = request.ratios
    if isinstance(ratios, str):
        try:
            ratios = tuple(float(r) for r in ratios.split(","))
        except ValueError:
            raise UserError(f"--ratios must be three numbers like 0.6,0.2,0.2, got {request.ratios!r}") from None
    check_new_output(request.out, request.overwrite)
    with request.runtime.reading():
        return split_folder(request.data, request.out, ratios, request.seed, request.label_from, request.labels,
                            request.patient_regex, request.points, request.folds)


def split_folder(data: Path, out: Path, ratios=(0.6, 0.2, 0.2), seed: int = 0, label_from: str = "auto",
                 labels_csv: Path | None = None, patient_regex: str | None = None,
                 points_csv: Path | None = None, folds: int | None = None) -> SplitResult:
    """Discover, label and split a folder of scans; write splits.csv. With `points_csv`, one row per point,
    labelled by the points file, its patient from the file or else the scan's DICOM PatientID. With `folds`,
    the train and val patients together are dealt into that many cross-validation folds (see assign_folds)."""
    check_ratios(tuple(ratios))
    refuse_inside(out, data)
    discovery = discover(data)
    if points_csv is not None:
        labelled = label_points(points_csv, discovery)
    else:
        labelled = label_scans(discovery, label_from, labels_csv, patient_regex)
    if not labelled.samples:
        raise UserError(f"no labelled scans in {data}" + (f" ({labelled.skipped[0].reason})"
                                                          if labelled.skipped else ""))
    rows = assign_splits(labelled.samples, ratios, seed)
    if folds is not None:
        rows = assign_folds(rows, folds, seed)
    problems = find_problems(rows)  # what `split --check` and `train` would refuse is never written
    if problems:
        raise UserError(f"{printable(data)}: " + "; ".join(problems))
    write_splits(rows, out)
    write_flow_record(out, discovery, labelled)  # files found and skipped, for the report's flow diagram
    asked = [split for split, ratio in zip(SPLITS, ratios) if split != "train" and ratio > 0]
    return SplitResult(rows, labelled.notes + split_notes(rows, asked) + fold_notes(rows), discovery, labelled)


def label_points(points_csv: Path, discovery: Discovery) -> LabelledSet:
    """The labelled samples of a points file (one per usable row, in its order) and the rows skipped."""
    samples, skipped = match_points(read_points(points_csv), discovery)
    labelled = []
    for sample in samples:
        where = f"{printable(points_csv)}:{sample.point_id}"
        if not sample.label:
            skipped.append(Skip(sample.path, f"{where}: no label (add a label column to the points file)",
                                int(sample.point_id)))
        elif not sample.patient_id:
            skipped.append(Skip(sample.path, f"{where}: no patient_id in the points file, and the scan has no "
                                             "DICOM PatientID", int(sample.point_id)))
        else:
            labelled.append(replace(sample, path=sample.path.resolve()))
    return LabelledSet(labelled, skipped, "the points file", "the points file or DICOM PatientID")


def mask_points(masks: Path, scans: Path, out: Path, mask_labels: str | None = None,
                overwrite: bool = False) -> MaskPoints | LidcPoints:
    """`points`: segmentation masks (inputs.masks.points_from_masks), or LIDC-IDRI readers' XML where MASKS holds
    it (inputs.lidc.points_from_lidc), -> a new points CSV `out`."""
    check_new_output(out, overwrite)
    if holds_lidc_readings(masks):
        if mask_labels is not None:
            raise UserError("--mask-labels names the classes of mask values; LIDC-IDRI readings are labelled by "
                            "their median malignancy rating: leave it out")
        return points_from_lidc(masks, scans, out)
    return points_from_masks(masks, scans, out, mask_labels)


def check_splits_file(csv_path: Path) -> SplitCheck:
    """Refuse what `train` would refuse; note what it would accept but measure nothing on."""
    rows = read_splits(csv_path)
    problems = find_problems(rows)
    if problems:
        raise UserError(f"{printable(csv_path)}: " + "; ".join(problems))
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
        refuse_inside(prefix.parent / (prefix.name + suffix), scan)
        check_new_output(prefix.parent / (prefix.name + suffix), overwrite)
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
