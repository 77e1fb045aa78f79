"""Model inputs for the samples of a splits file, and what kind of scans they are."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from perceiver_med.csvfiles import printable
from perceiver_med.errors import ScanError, UserError
from perceiver_med.inputs.cache import find_scan, prepare_many
from perceiver_med.inputs.preprocess import PreprocessConfig
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.splits import SPLITS
from perceiver_med.io.discover import Discovery, Skip
from perceiver_med.io.scans import Scan

# DICOM modalities grouped by what the pictures look like: a model trained on one group says nothing of another.
MODALITY_GROUPS = {"CT": "CT", "MR": "MR", "PT": "nuclear medicine", "NM": "nuclear medicine",
                   "CR": "radiograph", "DX": "radiograph", "DR": "radiograph", "RG": "radiograph",
                   "MG": "mammogram", "XA": "angiography", "RF": "fluoroscopy", "US": "ultrasound"}
UNSPECIFIC_MODALITIES = {"", "OT", "SC"}  # "other" and secondary capture say nothing of the picture


def modality_group(modality: str) -> str:
    modality = modality.strip().upper()
    return "" if modality in UNSPECIFIC_MODALITIES else MODALITY_GROUPS.get(modality, modality)


def preprocess_config(input: str, size: int | None = None, channels: int | None = None,
                      grid_pad: bool | None = None, fov_mm: float | None = None,
                      slice_mm: float | None = None, window: str | None = None) -> PreprocessConfig:
    """The preprocessing of train, prepare and preview from their options (None: PreprocessConfig's default),
    checked as a run's config.json is: a value out of range is a UserError naming its option."""
    given = {name: value for name, value in (("size", size), ("channels", channels), ("fov_mm", fov_mm),
                                             ("slice_mm", slice_mm), ("window", window)) if value is not None}
    config = PreprocessConfig(input=input, grid_pad=bool(grid_pad), **given)
    try:
        config.check()
    except ValueError as exc:
        raise UserError(f"--{str(exc).replace('_', '-')}") from None
    return config


@dataclass
class ScanSummary:
    kinds: list[str]  # "image" and/or "volume"
    modality_groups: list[str]


def describe_scans(samples: list[Sample], at_most: int = 32) -> ScanSummary:
    """The kinds and modality groups of up to `at_most` scans spread over the splits file (headers only)."""
    step = max(1, len(samples) // at_most)
    kinds, groups = set(), set()
    for sample in samples[::step][:at_most]:
        try:
            scan = find_scan(sample.path, sample.series_uid)
        except ScanError:
            continue
        kinds.add(scan.kind)
        groups.add(modality_group(scan.modality))
    if not kinds:
        raise UserError("none of the sampled scans in the splits file could be read")
    return ScanSummary(sorted(kinds), sorted(groups - {""}))


def scan_mismatch(scan, config) -> str:
    """Why a scan does not suit a run (a CT volume for a radiograph model), or "" when it does."""
    if config.scan_kinds and scan.kind not in config.scan_kinds:
        trained = " and ".join("2D images" if k == "image" else "volumes" for k in config.scan_kinds)
        found = "a volume" if scan.kind == "volume" else "a 2D image"
        return f"{found}{f' ({scan.modality})' if scan.modality else ''}, and this run was trained on {trained}"
    group = modality_group(scan.modality)
    if group and config.modality_groups and group not in config.modality_groups:
        return (f"modality {scan.modality} ({group}), and this run was trained on "
                f"{', '.join(config.modality_groups)}")
    return ""


@dataclass
class LoadedInputs:
    samples: list[Sample]  # those prepared, in the splits file's order
    inputs: np.ndarray  # (N, C, H, W) float32
    skipped: list[Skip]

    def by_split(self, classes: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{split: (inputs, label indices)} for train, val and test; a label the run does not know is a user
        error."""
        unknown = sorted({sample.label for sample in self.samples} - set(classes))
        if unknown:
            raise UserError(f"labels {unknown} are not among the run's classes {classes}")
        index = {name: k for k, name in enumerate(classes)}
        data = {}
        for split in SPLITS:
            picked = [k for k, sample in enumerate(self.samples) if sample.split == split]
            labels = torch.tensor([index[self.samples[k].label] for k in picked], dtype=torch.long)
            data[split] = (torch.from_numpy(self.inputs[picked]), labels)
        return data


def load_split_inputs(samples: list[Sample], config: PreprocessConfig, workers: int = 0,
                      on_done: Callable[[int, int], None] | None = None, must_keep: bool = True) -> LoadedInputs:
    """The model inputs of a splits file's samples; those that fail are skipped with their reason."""
    missing = [sample.path for sample in samples if not sample.path.exists()]
    if missing:
        raise UserError(f"the splits file names {len(missing)} file(s) that do not exist, e.g. {missing[0]}")
    return load_inputs(samples, config, workers, on_done, must_keep=must_keep)


def suited_samples(found: Discovery, config, sample_of: Callable[[Scan], Sample] = Sample.of
                   ) -> tuple[list[Sample], list[Skip]]:
    """A sample (`sample_of`) of each discovered scan that suits the run `config` (scan_mismatch); the others
    skipped with their reason, after the files the discovery skipped. Nothing left is a UserError."""
    if not found.scans:
        raise UserError(f"no readable scans in {printable(found.root)} ({len(found.skipped)} file(s) skipped)")
    samples, skipped = [], list(found.skipped)
    for scan in found.scans:
        reason = scan_mismatch(scan, config)
        if reason:
            skipped.append(Skip(scan.path, reason))
        else:
            samples.append(sample_of(scan))
    if not samples:
        raise UserError(f"no scan in {printable(found.root)} suits this run ({skipped[-1].reason})")
    return samples, skipped


def load_inputs(samples: list[Sample], config: PreprocessConfig, workers: int = 0,
                on_done: Callable[[int, int], None] | None = None, *, skipped: list[Skip] = (),
                where: Callable[[Sample], str] | None = None, must_keep: bool = True) -> LoadedInputs:
    """Preprocess (or fetch from the cache) every sample, in order. A sample that fails is skipped with its
    reason (after `skipped`, prefixed by `where(sample)` when given, e.g. a points file's line); when none is left
    that is a UserError naming the last reason, unless `must_keep` is False."""
    arrays, reasons = prepare_many(samples, config, workers, on_done=on_done)
    kept, inputs, skipped = [], [], list(skipped)
    for sample, array, reason in zip(samples, arrays, reasons):
        if array is None:
            skipped.append(Skip(sample.path, f"{where(sample)}: {reason}" if where else reason,
                                int(sample.point_id) if where and sample.point_id else None))
        else:
            kept.append(sample)
            inputs.append(array)
    if kept:
        return LoadedInputs(kept, np.stack(inputs).astype(np.float32), skipped)
    if must_keep:
        from perceiver_med.inputs.points import RAS_HINT, all_outside

        hint = f"; {RAS_HINT}" if all_outside(skipped) else ""
        raise UserError(f"no scan could be prepared ({skipped[-1].reason if skipped else 'none given'}){hint}")
    return LoadedInputs([], np.zeros((0, *config.output_shape), np.float32), skipped)
