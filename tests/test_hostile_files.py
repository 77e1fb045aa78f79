"""Hostile folders through the installed `perceiver-med`: every file pydicom and nibabel test themselves with,
decompression bombs beside good scans (with the peak memory of the command), a named pipe, an unreadable
folder, a symbolic link loop. One bad file is one skipped row with a reason, never a crash, hang or traceback.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from tests.conftest import index_volume, installed_command, write_series

INSPECT_PEAK_LIMIT_MB = 1000  # generous: about 250 MB is importing torch and friends

# ---------------------------------------------------------------- hostile files, written cheaply


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height grey pixels (its data is one empty deflate stream)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b""))
                     + _png_chunk(b"IEND", b""))
    return path


def png_of_zeros(path: Path, width: int, height: int) -> Path:
    """A complete, valid black PNG of width x height (12000^2 is 140 KB on disk, 144 MB of pixels)."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [packer.compress(row * 256) for _ in range(height // 256)]
    parts += [packer.compress(row * (height % 256)), packer.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
                     + _png_chunk(b"IEND", b""))
    return path


def nifti_gz_of_zeros(path: Path, side: int, dtype=np.uint8) -> Path:
    """A complete .nii.gz of side^3 zeros, streamed (800^3 is 512 MB of voxels in a file of about 0.5 MB)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape((side, side, side))
    header.set_qform(np.eye(4), 1)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 352
    plane = bytes(side * side * np.dtype(dtype).itemsize)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header.binaryblock + b"\x00" * 4)
        for _ in range(side):
            out.write(plane)
    return path


def nifti_claiming(path: Path, side: int) -> Path:
    """An uncompressed .nii whose header claims side^3 int16 voxels and holds none."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((side, side, side))
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\x00" * 4)
    return path


def deflated_dicom(path: Path, rows: int, columns: int, series_uid: str | None = None) -> Path:
    """Deflated Explicit VR Little Endian DICOM of rows x columns 8-bit zeros, streamed (16384^2: ~0.3 MB)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "BOMB"
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = io.BytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(pydicom.filebase.DicomFileLike(head), meta)
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = rows * columns + (rows * columns) % 2
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, length))]
    block = bytes(1 << 22)
    for start in range(0, length, len(block)):
        parts.append(packer.compress(block[:min(len(block), length - start)]))
    parts.append(packer.flush())
    path.write_bytes(head.getvalue() + b"".join(parts))
    return path


BOMBS = {
    "png-header-20000x20000": lambda folder: png_claiming(folder / "claims.png", 20000, 20000),
    "png-12000x12000": lambda folder: png_of_zeros(folder / "black.png", 12000, 12000),
    "nifti-gz-800-cubed": lambda folder: nifti_gz_of_zeros(folder / "zeros.nii.gz", 800),
    "nifti-header-32767-cubed": lambda folder: nifti_claiming(folder / "claims.nii", 32767),
    "dicom-deflated-16384x16384": lambda folder: deflated_dicom(folder / "deflated.dcm", 16384, 16384),
}


def good_scans(folder: Path) -> list[str]:
    """A few small, good scans of every format; returns their file names relative to `folder`."""
    (folder / "good").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(folder / "good" / f"knee{k}.png")
    write_series(folder / "good" / "ct", index_volume(slices=12, rows=32, cols=32))
    nib.save(nib.Nifti1Image(rng.normal(size=(24, 24, 10)).astype(np.float32), np.eye(4)),
             folder / "good" / "vol.nii.gz")
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "good").rglob("*") if p.is_file())


# ---------------------------------------------------------------- running the installed command


def run_measured(args: list, tmp_path: Path, env: dict | None = None, timeout: float = 300):
    """Run `perceiver-med ARGS` in a fresh wrapper process; returns (code, stdout, stderr, peak RSS in MB)."""
    wrapper = ("import resource, subprocess, sys\n"
               "done = subprocess.run(sys.argv[1:])\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=open(sys.argv[0] + '.rss', 'w'))\n"
               "sys.exit(done.returncode)\n")
    script = tmp_path / f"measure-{time.monotonic_ns()}.py"
    script.write_text(wrapper)
    environment = {**os.environ, "PERCEIVER_MED_CACHE": str(tmp_path / "cache"), "COLUMNS": "200", **(env or {})}
    done = subprocess.run([sys.executable, str(script), installed_command(), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=environment)
    peak_kb = int(Path(str(script) + ".rss").read_text())
    return done.returncode, done.stdout, done.stderr, peak_kb / 1024


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def assert_clean(code: int, stdout: str, stderr: str) -> None:
    assert code == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr


# ---------------------------------------------------------------- the test data of pydicom and nibabel


def _library_test_files() -> list[tuple[Path, Path]]:
    """(source, name in the copy) for every file pydicom and nibabel ship for their own tests."""
    pydicom_root = Path(pydicom.data.__file__).parent
    sources = [Path(p) for p in pydicom.data.get_testdata_files()]
    for folder in ("palettes", "charset_files"):
        sources += sorted((pydicom_root / folder).rglob("*"))
    pairs = []
    for source in sources:
        if not source.is_file() or source.suffix in (".py", ".pyc"):
            continue
        try:
            name = Path("pydicom") / source.relative_to(pydicom_root)
        except ValueError:
            name = Path("pydicom") / "external" / source.name
        pairs.append((source, name))
    nibabel_root = Path(nib.__file__).parent / "tests" / "data"
    pairs += [(p, Path("nibabel") / p.relative_to(nibabel_root)) for p in sorted(nibabel_root.rglob("*"))
              if p.is_file() and "__pycache__" not in p.parts]
    return pairs


def test_inspect_reads_or_explains_every_file_pydicom_and_nibabel_test_with(tmp_path):
    data = tmp_path / "data"
    pairs = _library_test_files()
    assert len(pairs) > 250
    for source, name in pairs:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, data / name)
    started = time.monotonic()
    code, out, err, peak = run_measured(["inspect", data, "--out", tmp_path / "files.csv"], tmp_path)
    seconds = time.monotonic() - started
    assert_clean(code, out, err)
    rows = read_rows(tmp_path / "files.csv")
    assert set(rows) == {name.as_posix() for _, name in pairs}  # every file is a row
    skipped = {name: row["reason"] for name, row in rows.items() if row["status"] == "skipped"}
    assert all(reason.strip() for reason in skipped.values())
    assert "CIFTI-2" in skipped["nibabel/row_major.dconn.nii"]  # the file whose get_zooms() crashed discovery
    assert "truncated pixel data" in skipped["pydicom/test_files/MR_truncated.dcm"]
    ok = [name for name, row in rows.items() if row["status"] == "ok"]
    assert len(ok) > 60 and any(name.startswith("nibabel/") for name in ok)
    assert seconds < 60, f"inspect took {seconds:.1f} s over {len(pairs)} files"


# ---------------------------------------------------------------- decompression bombs beside good scans


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_bomb_is_skipped_by_header_and_the_good_scans_beside_it_are_read(tmp_path, bomb):
    data = tmp_path / "data"
    good = good_scans(data)
    bomb_file = BOMBS[bomb](data).relative_to(data).as_posix()
    code, out, err, peak = run_measured(["inspect", data, "--out", tmp_path / "files.csv"], tmp_path)
    assert_clean(code, out, err)
    rows = read_rows(tmp_path / "files.csv")
    assert rows[bomb_file]["status"] == "skipped"
    reason = rows[bomb_file]["reason"]
    assert "PERCEIVER_MED_MAX_VOXELS" in reason and "budget" in reason, reason
    assert all(rows[name]["status"] == "ok" for name in good)
    print(f"\n{bomb}: inspect peak RSS {peak:.0f} MB")
    assert peak < INSPECT_PEAK_LIMIT_MB, f"inspect peaked at {peak:.0f} MB beside {bomb}"


def test_a_raised_budget_reads_what_the_default_refuses(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    png_of_zeros(data / "big.png", 9000, 9000)  # 81M pixels in one plane: over the default 2^26
    code, out, err, _ = run_measured(["inspect", data, "--out", tmp_path / "a.csv"], tmp_path)
    assert_clean(code, out, err)
    assert read_rows(tmp_path / "a.csv")["big.png"]["status"] == "skipped"
    code, out, err, _ = run_measured(["inspect", data, "--out", tmp_path / "b.csv"], tmp_path,
                                     env={"PERCEIVER_MED_MAX_VOXELS": str(1 << 30)})
    assert_clean(code, out, err)
    assert read_rows(tmp_path / "b.csv")["big.png"]["status"] == "ok"


def test_prepare_workers_use_the_budget_given_on_the_command_line(tmp_path):
    """--max-voxels reaches the preprocessing worker processes (--workers 2, 17 scans: a pool of two): a PNG over
    the budget is skipped with the budget's reason, and prepared without the option."""
    from perceiver_med.workflows.folders import split_folder

    for side in ("left", "right"):
        (tmp_path / "data" / side).mkdir(parents=True)
    from PIL import Image

    def gradient_png(path: Path, side: int) -> None:  # not constant: a flat image is skipped as such
        Image.fromarray(np.add.outer(np.arange(side), np.arange(side)).astype(np.uint8)).save(path)

    for k in range(16):
        gradient_png(tmp_path / "data" / ("left", "right")[k % 2] / f"knee{k:02d}_{('L', 'R')[k % 2]}.png", 16)
    gradient_png(tmp_path / "data" / "right" / "big.png", 64)  # one plane of 4,096 pixels
    split_folder(tmp_path / "data", tmp_path / "splits.csv", seed=0)
    prepare = ["prepare", tmp_path / "splits.csv", "--input", "image", "--size", "16", "--workers", "2"]
    code, out, err, _ = run_measured([*prepare, "--max-voxels", "8000"], tmp_path)  # planes of 2,000 pixels
    assert_clean(code, out, err)
    assert "big.png" in out and "over the limit of 2,000" in out and "16 scan(s) ready" in out, out
    code, out, err, _ = run_measured(prepare, tmp_path)
    assert_clean(code, out, err)
    assert "big.png" not in out and "17 scan(s) ready" in out, out


def test_a_malformed_budget_is_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    good_scans(data)
    code, out, err, _ = run_measured(["inspect", data], tmp_path, env={"PERCEIVER_MED_MAX_VOXELS": "lots"})
    assert code == 2 and "PERCEIVER_MED_MAX_VOXELS" in out + err and "Traceback" not in out + err


# ---------------------------------------------------------------- what is not a regular file


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_and_a_link_loop_are_skipped_not_waited_on(tmp_path):
    data = tmp_path / "data"
    good = good_scans(data)
    os.mkfifo(data / "pipe.dcm")
    os.symlink(data / "loop_b", data / "loop_a")
    os.symlink(data / "loop_a", data / "loop_b")
    os.symlink(data / "missing.png", data / "dangling.png")
    code, out, err, _ = run_measured(["inspect", data, "--out", tmp_path / "files.csv"], tmp_path, timeout=120)
    assert_clean(code, out, err)
    rows = read_rows(tmp_path / "files.csv")
    assert rows["pipe.dcm"]["reason"] == "not a regular file (named pipe)"
    assert "loop" in rows["loop_a"]["reason"] and "loop" in rows["loop_b"]["reason"]
    assert "broken symbolic link" in rows["dangling.png"]["reason"]
    assert all(rows[name]["status"] == "ok" for name in good)


def test_an_unreadable_folder_is_reported(tmp_path):
    data = tmp_path / "data"
    good = good_scans(data)
    locked = data / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(b"")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop this user from reading the folder")
        code, out, err, _ = run_measured(["inspect", data, "--out", tmp_path / "files.csv"], tmp_path)
    finally:
        locked.chmod(0o755)
    assert_clean(code, out, err)
    rows = read_rows(tmp_path / "files.csv")
    assert rows["locked"]["status"] == "skipped" and "permission denied" in rows["locked"]["reason"]
    assert all(rows[name]["status"] == "ok" for name in good)
