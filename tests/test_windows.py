"""Intensity windows: CT lung window, percentiles that keep MR/PET contrast, DICOM VOI by the standard's formulas,
and --window from the command line to config.json."""
import json

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from perceiver_med.errors import UserError
from perceiver_med.io import discover, read_scan
from perceiver_med.inputs.preprocess import PreprocessConfig, scan_input
from perceiver_med.inputs.windows import parse_window
from tests.conftest import CPU, TINY_PERCEIVER_RUN, write_series

SIDE = 16  # scans as big as a tile: resizing is then the identity, and values can be checked exactly


def _only_scan(folder):
    found = discover(folder)
    assert not found.skipped and len(found.scans) == 1
    return found.scans[0]


def _tissues(slices=20, signal=(0.0, 300.0, 600.0, 1000.0)) -> np.ndarray:
    """Background, tissue A (rows 2-7), tissue B (rows 8-13) and a bright rim (row 15): constant along slices."""
    background, a, b, bright = signal
    volume = np.full((slices, SIDE, SIDE), background, np.float32)
    volume[:, 2:8, 2:14] = a
    volume[:, 8:14, 2:14] = b
    volume[:, 15, :] = bright
    return volume


def test_a_ct_grid_uses_hu_minus_1000_to_400(tmp_path):
    volume = np.full((12, SIDE, SIDE), -300.0, np.float32)
    volume[:, :2] = -1000.0  # air
    volume[:, -2:] = 1500.0  # bone, above the window
    write_series(tmp_path / "ct", volume)
    grid = scan_input(_only_scan(tmp_path / "ct"), PreprocessConfig(input="grid", size=SIDE))
    tile = grid[0, :SIDE, :SIDE]
    assert tile[8, 8] == 0.5  # (-300 + 1000) / 1400, exactly
    assert (tile[:2] == 0).all() and (tile[-2:] == 1).all()


@pytest.mark.parametrize("modality", ["MR", "PT"])
def test_an_mr_or_pet_grid_keeps_the_contrast_of_its_tissues(tmp_path, modality):
    write_series(tmp_path / "scan", _tissues(), modality=modality)
    grid = scan_input(_only_scan(tmp_path / "scan"), PreprocessConfig(input="grid", size=SIDE))
    tile = grid[0, :SIDE, :SIDE]
    a, b = tile[4, 8], tile[10, 8]
    assert 0 < a < b < 1  # the CT window made both 1.0: MR signal and PET counts are all above 400
    # percentiles 0.5..99.5 of the volume are the background (0) and the bright rim (1000)
    np.testing.assert_allclose([a, b], [0.3, 0.6], atol=1e-6)


def test_percentiles_are_the_whole_volumes_so_a_tissue_has_one_value_in_every_grid(tmp_path):
    volume = _tissues(slices=40)
    volume[:12, 8:14] = 300.0  # the lowest slices hold only tissue A (and the rim)
    volume[:12, 15] = 600.0  # ... and a dimmer rim: percentiles of those slices alone would stretch them
    write_series(tmp_path / "mr", volume, modality="MR")
    scan = _only_scan(tmp_path / "mr")
    config = PreprocessConfig(input="grid", size=SIDE)
    low, high = (scan_input(scan, config, center=k)[0, :SIDE, :SIDE] for k in (4, 30))
    assert low[4, 8] == high[4, 8] == pytest.approx(0.3, abs=1e-6)
    assert (low < 1).all()  # nothing in the low slices reaches the volume's 99.5th percentile


def test_a_nifti_volume_without_modality_is_ct_when_it_holds_air(tmp_path):
    hu = _tissues(signal=(-1000.0, -300.0, 40.0, 700.0))
    signal = _tissues()
    for name, data in (("ct.nii.gz", hu), ("mr.nii.gz", signal)):
        (tmp_path / name[:2]).mkdir()
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), np.eye(4)), tmp_path / name[:2] / name)
    config = PreprocessConfig(input="grid", size=SIDE)
    ct = scan_input(_only_scan(tmp_path / "ct"), config)[0, :SIDE, :SIDE]
    mr = scan_input(_only_scan(tmp_path / "mr"), config)[0, :SIDE, :SIDE]
    # -1000, -300, 40 and 700 HU in the lung window; 0, 300, 600 and 1000 between the percentiles 0 and 1000
    assert {round(float(v), 5) for v in ct.ravel()} == {0.0, 0.5, round(1040 / 1400, 5), 1.0}
    assert {round(float(v), 5) for v in mr.ravel()} == {0.0, 0.3, 0.6, 1.0}


def test_a_fixed_window_and_a_preset(tmp_path):
    write_series(tmp_path / "mr", _tissues(), modality="MR")
    scan = _only_scan(tmp_path / "mr")
    fixed = scan_input(scan, PreprocessConfig(input="grid", size=SIDE, window="200,700"))[0, :SIDE, :SIDE]
    np.testing.assert_allclose([fixed[4, 8], fixed[10, 8], fixed[0, 0], fixed[15, 0]], [0.2, 0.8, 0, 1], atol=1e-6)
    assert parse_window("Mediastinum") == "mediastinum"
    assert parse_window(" -1000 , 400 ") == parse_window((-1000, 400)) == "-1000,400"


@pytest.mark.parametrize("bad", ["400,-1000", "5,5", "lungs", "1,2,3", "a,b", "nan,1"])
def test_a_bad_window_is_refused_with_a_sentence(bad):
    with pytest.raises(UserError, match="--window"):
        parse_window(bad)


def test_a_stored_window_is_its_name_and_numbers_are_refused():
    from perceiver_med.training.config import from_dict, to_dict

    assert from_dict(PreprocessConfig, to_dict(PreprocessConfig(window="bone"))).window == "bone"
    assert from_dict(PreprocessConfig, {"input": "image"}).window == "auto"
    with pytest.raises(ValueError, match="preprocess.window must be text"):
        from_dict(PreprocessConfig, {"input": "grid", "window": [-1000.0, 400.0]}, "preprocess")


def test_the_cache_key_changes_with_the_window(tmp_path):
    from perceiver_med.inputs.cache import cache_key
    from perceiver_med.inputs.samples import Sample

    (tmp_path / "a.png").write_bytes(b"not read")
    sample = Sample(tmp_path / "a.png")
    keys = {cache_key(sample, PreprocessConfig(window=w)) for w in ("auto", "lung", "-1000,300", "percentile")}
    assert len(keys) == 4


# ---------------------------------------------------------------- DICOM VOI, by the formulas of PS3.3 C.11.2.1


def _radiograph(tmp_path, stored: np.ndarray, photometric="MONOCHROME2", **attributes):
    """A 2D DX image, 16-bit unsigned, modality value = 2 * stored - 100 (a rescale the VOI must come after)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "DX", "P1", generate_uid()
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    folder = tmp_path / photometric
    folder.mkdir(parents=True)
    ds.save_as(folder / "xr.dcm", enforce_file_format=True)
    image = scan_input(_only_scan(folder), PreprocessConfig(input="image", size=SIDE))
    return image[0], 2.0 * stored - 100


STORED = np.arange(SIDE * SIDE, dtype=np.float64).reshape(SIDE, SIDE) * 4  # 0 .. 1020: values 0 .. 1940 after rescale


def test_a_voi_lut_sequence_maps_each_value_through_its_table(tmp_path):
    first, entries = 200, 1024
    table = (np.arange(entries) ** 2 * 65535 // (entries - 1) ** 2).astype(np.uint16)  # a curve, not a line
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first, 16])  # LUTDescriptor
    item.add_new(0x00283006, "US", table.tolist())  # LUTData
    unit, x = _radiograph(tmp_path, STORED, VOILUTSequence=Sequence([item]),
                          WindowCenter=900, WindowWidth=100)  # the table wins over the window (C.11.2)
    index = np.clip(x - first, 0, entries - 1).astype(int)  # below the first mapped value: entry 0; above: the last
    expected = table[index] / 65535.0  # output range 0 .. 2^16 - 1, from the descriptor's 16 bits
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    assert unit.min() == 0 and unit.max() == 1


def test_a_sigmoid_voi(tmp_path):
    center, width = 900.0, 400.0
    unit, x = _radiograph(tmp_path, STORED, WindowCenter=center, WindowWidth=width, VOILUTFunction="SIGMOID")
    expected = 1 / (1 + np.exp(-4 * (x - center) / width))  # C.11.2.1.3.1, output range scaled to [0, 1]
    np.testing.assert_allclose(unit, expected, atol=1e-6)


def test_a_linear_exact_voi(tmp_path):
    center, width = 1000.0, 601.0
    unit, x = _radiograph(tmp_path, STORED, WindowCenter=center, WindowWidth=width, VOILUTFunction="LINEAR_EXACT")
    expected = np.where(x <= center - width / 2, 0.0,
                        np.where(x > center + width / 2, 1.0, (x - center) / width + 0.5))  # C.11.2.1.3.2
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    # LINEAR (C.11.2.1.2.1) differs from it by the half-pixel terms: c - 0.5 and w - 1
    linear, _ = _radiograph(tmp_path / "linear", STORED, WindowCenter=center, WindowWidth=width)
    expected_linear = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(linear, expected_linear, atol=1e-6)
    assert np.abs(linear - unit).max() > 1e-3


def test_monochrome1_is_inverted_once_after_the_voi(tmp_path):
    center, width = 900.0, 400.0
    unit, x = _radiograph(tmp_path, STORED, "MONOCHROME1", WindowCenter=center, WindowWidth=width,
                          VOILUTFunction="SIGMOID")
    # the lowest VOI output is shown white in MONOCHROME1; inputs here are dense-bright
    expected = 1 - 1 / (1 + np.exp(-4 * (x - center) / width))
    np.testing.assert_allclose(unit, expected, atol=1e-6)


def test_a_radiograph_without_voi_uses_its_percentiles(tmp_path):
    unit, x = _radiograph(tmp_path, STORED)
    low, high = np.percentile(x, (0.5, 99.5))
    np.testing.assert_allclose(unit, np.clip((x - low) / (high - low), 0, 1), atol=1e-6)


# ---------------------------------------------------------------- the command line and the run


def test_a_bad_window_through_the_installed_command_is_one_line_and_exit_2(run_installed, knee, tmp_path):
    code, out, err = run_installed("train", knee / "splits.csv", "--out", tmp_path / "run", "--window", "400,-1000")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "LOW below HIGH" in err, err
    assert not (tmp_path / "run").exists()
    scan = next((knee / "data").rglob("*.png"))
    code, out, err = run_installed("preview", scan, "--out", tmp_path / "p", "--window", "lungs")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--window must be" in err, err
    assert not list(tmp_path.glob("p.*"))


def test_the_window_is_recorded_in_config_json_and_used_from_the_run(knee, tmp_path, tiny_run):
    from perceiver_med.run.rundir import load_run_config
    from perceiver_med.workflows.train import TrainRequest, train

    assert json.loads((tiny_run.run / "config.json").read_text())["preprocess"]["window"] == "auto"
    options = {**TINY_PERCEIVER_RUN, "epochs": 1, "size": 16, "window": "20,200"}
    result = train(TrainRequest(knee / "splits.csv", tmp_path / "run", "perceiver", options, CPU))
    assert json.loads((result.run / "config.json").read_text())["preprocess"]["window"] == "20,200"
    config = load_run_config(result.run).preprocess
    scan = discover(next((knee / "data").rglob("*.png"))).scans[0]
    pixels = read_scan(scan).voxels
    assert pixels.min() < 20 or pixels.max() > 200  # the window clips this image
    np.testing.assert_allclose(scan_input(scan, config)[0],
                               scan_input(scan, PreprocessConfig(input="image", size=16, window=(20, 200)))[0])
