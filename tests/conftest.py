"""Shared helpers: real DICOM series written by the tests, and the CLI run in-process."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from perceiver_med import cli
from perceiver_med.training.config import Runtime


def ct_slice(pixels_hu: np.ndarray, position_z: float, series_uid: str, instance: int | None = None,
             orientation=(1, 0, 0, 0, 1, 0), position_xy=(-100.0, -100.0), photometric="MONOCHROME2",
             patient_id="P001", modality="CT") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "DOE^JANE"
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.3.4"
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    if position_z is not None:
        ds.ImagePositionPatient = [position_xy[0], position_xy[1], position_z]
    if instance is not None:
        ds.InstanceNumber = instance
    ds.PixelSpacing = [0.8, 0.8]
    ds.Rows, ds.Columns = pixels_hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.round(pixels_hu) + 1024).astype(np.uint16).tobytes()
    return ds


def write_series(folder, volume_hu: np.ndarray, order=None, spacing=2.0, name=lambda k: f"{k:08x}",
                 positions=True, instances=True, series_uid=None, **kwargs) -> str:
    """Write volume_hu[k] as slice k (z = k * spacing) in the given file order; returns the series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = range(len(volume_hu)) if order is None else order
    for number, k in enumerate(order):
        ds = ct_slice(volume_hu[k], k * spacing if positions else None, series_uid,
                      instance=k + 1 if instances else None, **kwargs)
        ds.save_as(folder / name(number * 7919 + k), enforce_file_format=True)
    return series_uid


def index_volume(slices=12, rows=16, cols=16) -> np.ndarray:
    """Slice k holds the value 100 * k HU, so order survives any resizing."""
    return (np.arange(slices, dtype=np.float32)[:, None, None] * 100 - 1000) * np.ones((1, rows, cols), np.float32)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `perceiver-med ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["perceiver-med", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Session fixtures (a trained run) also keep their cache out of the home folder."""
    import os

    before = os.environ.get("PERCEIVER_MED_CACHE")
    os.environ["PERCEIVER_MED_CACHE"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if before is None:
        os.environ.pop("PERCEIVER_MED_CACHE", None)
    else:
        os.environ["PERCEIVER_MED_CACHE"] = before


@pytest.fixture(scope="session")
def knee(tmp_path_factory):
    """12 phantom knee patients (PNG, AKOA names) and their patient-grouped splits.csv."""
    from perceiver_med.workflows.folders import split_folder
    from perceiver_med.synth.phantoms import synth

    root = tmp_path_factory.mktemp("knee")
    synth("knee", root / "data", 12, "png", 3)
    split_folder(root / "data", root / "splits.csv", seed=0)
    return root


TINY_PERCEIVER_RUN = dict(size=32, epochs=2, batch_size=8, patience=0, num_latents=8, latent_dim=32)
CPU = Runtime(device="cpu")
CPU_FP32 = Runtime(device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_run(knee, tmp_path_factory):
    """A small Perceiver trained on `knee` (shared: tests change only copies of it)."""
    from perceiver_med.workflows.train import TrainRequest, train

    return train(TrainRequest(knee / "splits.csv", tmp_path_factory.mktemp("runs") / "run", "perceiver",
                              TINY_PERCEIVER_RUN, CPU))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PERCEIVER_MED_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("COLUMNS", "200")


def installed_command() -> str:
    """The `perceiver-med` console script of this environment: what users run."""
    import shutil
    from pathlib import Path

    beside = Path(sys.executable).with_name("perceiver-med")
    found = str(beside) if beside.exists() else shutil.which("perceiver-med")
    if not found:
        pytest.fail("the perceiver-med console script is not installed (pip install -e .)")
    return found


@pytest.fixture
def run_installed(tmp_path_factory):
    """Run the installed `perceiver-med ARGS` in a subprocess; returns (exit code, stdout, stderr)."""
    import os
    import subprocess

    cache = tmp_path_factory.mktemp("cache-subprocess")

    def run(*args, timeout=300, env=None, cwd=None):
        environment = {**os.environ, "PERCEIVER_MED_CACHE": str(cache), "COLUMNS": "200", **(env or {})}
        done = subprocess.run([installed_command(), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=environment, cwd=cwd)
        return done.returncode, done.stdout, done.stderr

    return run
