import numpy as np

from perceiver_med.cache import InputRequest, cache_root, prepare, prepare_many
from perceiver_med.preprocess import PreprocessConfig
from tests.conftest import index_volume, write_series


def test_second_preparation_comes_from_the_cache_and_edits_invalidate_it(tmp_path):
    write_series(tmp_path / "ct", index_volume(slices=10))
    config = PreprocessConfig(input="grid", size=8)
    request = InputRequest(tmp_path / "ct")
    first = prepare(request, config)
    entries = list(cache_root().glob("*.npy"))
    assert len(entries) == 1
    np.save(entries[0], np.full_like(first, 7.0))  # a marked entry proves the next call reads the cache
    assert np.all(prepare(request, config) == 7.0)
    other = prepare(request, PreprocessConfig(input="grid", size=4))  # another config, another entry
    assert other.shape == (1, 12, 12) and len(list(cache_root().glob("*.npy"))) == 2
    file = sorted((tmp_path / "ct").iterdir())[0]
    file.write_bytes(file.read_bytes())  # touched: new identity, recomputed
    import os
    os.utime(file, ns=(1, 1))
    np.testing.assert_allclose(prepare(request, config), first)


def test_parallel_preparation_reports_failures_without_stopping(tmp_path):
    requests = []
    for k in range(20):
        write_series(tmp_path / f"s{k}", index_volume(slices=9 if k != 3 else 4))
        requests.append(InputRequest(tmp_path / f"s{k}"))
    arrays, reasons = prepare_many(requests, PreprocessConfig(input="grid", size=8), workers=2)
    assert arrays[3] is None and "only 4 slices" in reasons[3]
    assert all(a.shape == (1, 24, 24) for k, a in enumerate(arrays) if k != 3)
    assert list(cache_root().glob(".*")) == []  # no temporary files left behind
