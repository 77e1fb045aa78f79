import os

import numpy as np
import pytest

from perceiver_med.inputs.cache import _load_entry, cache_root, prepare, prepare_many
from perceiver_med.inputs.samples import Sample
from perceiver_med.inputs.preprocess import PreprocessConfig
from tests.conftest import index_volume, write_series


def test_second_preparation_comes_from_the_cache_and_edits_invalidate_it(tmp_path):
    write_series(tmp_path / "ct", index_volume(slices=10))
    config = PreprocessConfig(input="grid", size=8)
    sample = Sample(tmp_path / "ct")
    first = prepare(sample, config)
    entries = list(cache_root().glob("*.npy"))
    assert len(entries) == 1
    np.save(entries[0], np.full_like(first, 0.375))  # a marked entry proves the next call reads the cache
    assert np.all(prepare(sample, config) == 0.375)
    other = prepare(sample, PreprocessConfig(input="grid", size=4))  # another config, another entry
    assert other.shape == (1, 12, 12) and len(list(cache_root().glob("*.npy"))) == 2
    file = sorted((tmp_path / "ct").iterdir())[0]
    file.write_bytes(file.read_bytes())  # touched: new identity, recomputed
    import os
    os.utime(file, ns=(1, 1))
    np.testing.assert_allclose(prepare(sample, config), first)


def test_parallel_preparation_reports_failures_without_stopping(tmp_path):
    samples = []
    for k in range(20):
        write_series(tmp_path / f"s{k}", index_volume(slices=9 if k != 3 else 4))
        samples.append(Sample(tmp_path / f"s{k}"))
    arrays, reasons = prepare_many(samples, PreprocessConfig(input="grid", size=8), workers=2)
    assert arrays[3] is None and "only 4 slices" in reasons[3]
    assert all(a.shape == (1, 24, 24) for k, a in enumerate(arrays) if k != 3)
    assert list(cache_root().glob(".*")) == []  # no temporary files left behind


@pytest.mark.parametrize("damage", ["empty", "float64", "wrong shape", "nan", "garbage", "out of range"])
def test_a_damaged_cache_entry_is_rebuilt_not_served(tmp_path, damage):
    write_series(tmp_path / "ct", index_volume(slices=10))
    config = PreprocessConfig(input="grid", size=8)
    sample = Sample(tmp_path / "ct")
    first = prepare(sample, config)
    (entry,) = cache_root().glob("*.npy")
    if damage == "empty":
        entry.write_bytes(b"")
    elif damage == "garbage":
        entry.write_bytes(b"\x93NUMPY" + bytes(range(200)))
    else:
        bad = {"float64": first.astype(np.float64), "wrong shape": first[:, :8], "nan": np.full_like(first, np.nan),
               "out of range": first * 5}[damage]
        np.save(entry, bad)
    again = prepare(sample, config)
    assert again.dtype == np.float32 and again.shape == first.shape
    np.testing.assert_array_equal(again, first)
    assert _load_entry(entry, config) is not None  # and the entry was rewritten


def test_a_same_size_rewrite_with_the_same_mtime_is_not_served_stale(tmp_path):
    import nibabel as nib

    path = tmp_path / "knee.nii"  # uncompressed: the same shape and dtype give the same size
    pattern = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    nib.save(nib.Nifti1Image(pattern, np.eye(4)), path)
    config = PreprocessConfig(input="image", size=16)
    before = prepare(Sample(path), config)
    info = path.stat()
    nib.save(nib.Nifti1Image(pattern.T.copy(), np.eye(4)), path)  # the same values, turned by 90 degrees
    assert path.stat().st_size == info.st_size
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    after = prepare(Sample(path), config)
    np.testing.assert_allclose(after[0], before[0].T, atol=1e-6)


def test_an_unwritable_cache_costs_speed_not_the_result(tmp_path, monkeypatch):
    write_series(tmp_path / "ct", index_volume(slices=10))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("PERCEIVER_MED_CACHE", str(blocker / "cache"))
    arrays, reasons = prepare_many([Sample(tmp_path / "ct")], PreprocessConfig(input="grid", size=8))
    assert arrays[0].shape == (1, 24, 24) and reasons == [""]


def test_worker_processes_read_with_the_budget_of_the_process_that_started_them(tmp_path):
    """The pool hands the caller's voxel budget to each worker it starts (no environment variable carries it):
    a series over the budget is skipped there with the budget's reason, and read under the built-in budget."""
    from perceiver_med.io.limits import voxel_budget

    requests = []
    for k in range(17):  # 16 jobs or more: prepare_many starts its pool
        write_series(tmp_path / f"s{k}", index_volume(slices=12 if k == 5 else 9))  # 3,072 or 2,304 voxels
        requests.append(Sample(tmp_path / f"s{k}"))
    config = PreprocessConfig(input="grid", size=8)
    with voxel_budget(16 * 16 * 10):
        arrays, reasons = prepare_many(requests, config, workers=2, use_cache=False)
    assert arrays[5] is None and "3,072 voxels, over the budget of 2,560" in reasons[5], reasons[5]
    assert all(array is not None for k, array in enumerate(arrays) if k != 5)
    arrays, reasons = prepare_many(requests, config, workers=2, use_cache=False)
    assert all(array is not None for array in arrays), reasons
