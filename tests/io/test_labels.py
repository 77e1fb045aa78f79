import numpy as np
import pytest
from PIL import Image

from perceiver_med.errors import UserError
from perceiver_med.io import discover
from perceiver_med.io.labels import label_scans
from tests.conftest import ct_slice


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_akoa_names_give_laterality_and_oai_patient_ids(tmp_path):
    _png(tmp_path / "OAI9062645_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_0.png")
    _png(tmp_path / "OAI9062645_BaseLine_3_de3d1_SAG_3D_DESS_WE_RIGHT.nii.gz_1.png")
    _png(tmp_path / "OAI9011111_BaseLine_3_de3d1_SAG_3D_DESS_WE_Right.nii.gz_4.png")
    labelled = label_scans(discover(tmp_path))
    assert labelled.label_source == "laterality"
    assert sorted((i.label, i.patient_id) for i in labelled.items) == [
        ("left", "OAI9062645"), ("right", "OAI9011111"), ("right", "OAI9062645")]


def test_dicom_laterality_tag_and_patient_id(tmp_path):
    for k, side in enumerate("LR"):
        ds = ct_slice(np.zeros((4, 4)), None, f"1.2.{k}", orientation=None, patient_id=f"PX{k}", modality="DX")
        ds.ImageLaterality = side
        ds.save_as(tmp_path / f"img{k}", enforce_file_format=True)
    labelled = label_scans(discover(tmp_path), label_from="laterality")
    assert sorted((i.label, i.patient_id) for i in labelled.items) == [("left", "PX0"), ("right", "PX1")]


def test_class_folders_and_scans_outside_them(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    _png(tmp_path / "malignant" / "b.png")
    _png(tmp_path / "loose.png")
    labelled = label_scans(discover(tmp_path), label_from="folder")
    assert sorted(i.label for i in labelled.items) == ["benign", "malignant"]
    assert [s.file.name for s in labelled.skipped] == ["loose.png"]
    assert any("own patient" in note for note in labelled.notes)


def test_labels_csv_with_patient_and_slice_columns(tmp_path):
    _png(tmp_path / "data" / "a.png")
    _png(tmp_path / "data" / "b.png")
    (tmp_path / "labels.csv").write_text("path,label,patient_id,slice\ndata/a.png,yes,P1,4\ndata/b.png,no,P2,\n")
    labelled = label_scans(discover(tmp_path / "data"), labels_csv=tmp_path / "labels.csv")
    got = sorted((i.scan.id, i.label, i.patient_id, i.slice) for i in labelled.items)
    assert got == [("a.png", "yes", "P1", 4), ("b.png", "no", "P2", None)]


def test_labels_csv_naming_missing_files_is_a_user_error(tmp_path):
    _png(tmp_path / "data" / "a.png")
    (tmp_path / "labels.csv").write_text("path,label\ndata/a.png,yes\ndata/gone.png,no\n")
    with pytest.raises(UserError, match="1 file.*do not exist.*gone.png"):
        label_scans(discover(tmp_path / "data"), labels_csv=tmp_path / "labels.csv")


def test_patient_regex_overrides(tmp_path):
    _png(tmp_path / "subj-07_LEFT_a.png")
    _png(tmp_path / "subj-07_RIGHT_b.png")
    labelled = label_scans(discover(tmp_path), patient_regex=r"subj-(\d+)")
    assert {i.patient_id for i in labelled.items} == {"07"}
