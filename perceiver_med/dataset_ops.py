"""Library functions behind `inspect`, `split` and `preview`: each returns what the CLI prints."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from perceiver_med.cache import InputRequest, prepare
from perceiver_med.errors import ScanError, UserError
from perceiver_med.files import atomic_path, atomic_text, refuse_inside
from perceiver_med.io import Discovery, discover
from perceiver_med.io.labels import LabelledSet, label_scans
from perceiver_med.preprocess import PreprocessConfig
from perceiver_med.splits import (SplitRow, assign_splits, check_ratios, find_problems, read_splits,
                                  rows_from_items, write_splits)

INSPECT_COLUMNS = ["file", "scan", "status", "reason", "kind", "modality", "shape"]


def inspect_folder(data: Path, out: Path | None = None) -> Discovery:
    """Discover every scan under `data`; optionally write one CSV row per file.

    The labels `split --label-from auto` would use are attached as `discovery.labels` and
    `discovery.patients` ({scan id: label or patient id}).
    """
    discovery = discover(data)
    try:
        labelled = label_scans(discovery)
        discovery.labels = {item.scan.id: item.label for item in labelled.items}
        discovery.patients = {item.scan.id: item.patient_id for item in labelled.items}
    except UserError:  # no label source: inspect still lists the scans
        discovery.labels = {}
    if out is not None:
        refuse_inside(out, data)

        def write(handle):
            writer = csv.DictWriter(handle, fieldnames=INSPECT_COLUMNS)
            writer.writeheader()
            writer.writerows(discovery.records())

        atomic_text(out, write)
    return discovery


@dataclass
class SplitResult:
    discovery: Discovery
    labelled: LabelledSet
    rows: list[SplitRow]


def split_folder(data: Path, out: Path, ratios=(0.6, 0.2, 0.2), seed: int = 0, label_from: str = "auto",
                 labels_csv: Path | None = None, patient_regex: str | None = None) -> SplitResult:
    """Discover, label and split a folder of scans; write splits.csv."""
    check_ratios(tuple(ratios))
    refuse_inside(out, data)
    discovery = discover(data)
    labelled = label_scans(discovery, label_from, labels_csv, patient_regex)
    if not labelled.items:
        raise UserError(f"no labelled scans in {data}")
    splits = assign_splits(labelled.items, ratios, seed)
    rows = rows_from_items(labelled.items, splits)
    write_splits(rows, out)
    return SplitResult(discovery, labelled, rows)


def check_splits_file(csv_path: Path) -> list[SplitRow]:
    rows = read_splits(csv_path)
    problems = find_problems(rows)
    if problems:
        raise UserError(f"{csv_path}: " + "; ".join(problems))
    return rows


def preview_scan(scan: Path, prefix: Path, config: PreprocessConfig, series_uid: str = "",
                 center: int | None = None) -> np.ndarray:
    """Write the exact model input as PREFIX.npy (float32, C x H x W) and PREFIX.png."""
    if not scan.exists():
        raise UserError(f"{scan} does not exist")
    refuse_inside(prefix.parent / (prefix.name + ".npy"), scan)
    try:
        tensor = prepare(InputRequest(scan, series_uid, center), config, use_cache=False)
    except ScanError as exc:
        raise UserError(f"{scan}: {exc}") from None
    with atomic_path(prefix.parent / f"{prefix.name}.npy", suffix=".npy") as temp:
        np.save(temp, tensor.astype(np.float32))
    picture = np.moveaxis(tensor, 0, -1) if tensor.shape[0] == 3 else tensor[0]
    with atomic_path(prefix.parent / f"{prefix.name}.png", suffix=".png") as temp:
        Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(temp, format="PNG")
    return tensor
