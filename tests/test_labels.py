import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from perceiver_med.errors import UserError
from perceiver_med.io import discover
from perceiver_med.inputs.labels import label_scans
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
    assert sorted((i.label, i.patient_id) for i in labelled.samples) == [
        ("left", "OAI9062645"), ("right", "OAI9011111"), ("right", "OAI9062645")]


def test_dicom_laterality_tag_and_patient_id(tmp_path):
    for k, side in enumerate("LR"):
        ds = ct_slice(np.zeros((4, 4)), None, f"1.2.{k}", orientation=None, patient_id=f"PX{k}", modality="DX")
        ds.ImageLaterality = side
        ds.save_as(tmp_path / f"img{k}", enforce_file_format=True)
    labelled = label_scans(discover(tmp_path), label_from="laterality")
    assert sorted((i.label, i.patient_id) for i in labelled.samples) == [("left", "PX0"), ("right", "PX1")]


def test_class_folders_and_scans_outside_them(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    _png(tmp_path / "malignant" / "b.png")
    _png(tmp_path / "loose.png")
    labelled = label_scans(discover(tmp_path), label_from="folder")
    assert sorted(i.label for i in labelled.samples) == ["benign", "malignant"]
    assert [s.file.name for s in labelled.skipped] == ["loose.png"]
    assert any("own patient" in note for note in labelled.notes)


def test_labels_csv_with_patient_and_slice_columns(tmp_path):
    _png(tmp_path / "data" / "a.png")
    _png(tmp_path / "data" / "b.png")
    (tmp_path / "labels.csv").write_text("path,label,patient_id,slice\ndata/a.png,yes,P1,4\ndata/b.png,no,P2,\n")
    labelled = label_scans(discover(tmp_path / "data"), labels_csv=tmp_path / "labels.csv")
    got = sorted((i.path.name, i.label, i.patient_id, i.slice) for i in labelled.samples)
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
    assert {i.patient_id for i in labelled.samples} == {"07"}


def _radiograph(path, side, patient):
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ct_slice(np.zeros((4, 4)), None, generate_uid(), orientation=None, patient_id=patient, modality="MG")
    ds.ImageLaterality = side
    ds.save_as(path, enforce_file_format=True)


def test_class_folders_win_over_laterality_unless_they_are_patient_or_side_folders(tmp_path):
    # mammograms sorted into benign/ and malignant/ carry ImageLaterality too: the folders are the labels
    for k in range(6):
        _radiograph(tmp_path / "mammo" / ("benign", "malignant")[k % 2] / f"m{k}.dcm", "LR"[k // 2 % 2], f"P{k % 3}")
    labelled = label_scans(discover(tmp_path / "mammo"))
    assert labelled.label_source == "folder" and labelled.classes == ["benign", "malignant"]
    assert any("laterality was ignored" in note for note in labelled.notes)
    # folders of one patient each (the DICOM knee phantoms, PACS exports) name patients: laterality
    for k in range(4):
        _radiograph(tmp_path / "knees" / f"OAI900000{k}" / "IMG0.dcm", "LR"[k % 2], f"OAI900000{k}")
        _radiograph(tmp_path / "knees" / f"OAI900000{k}" / "IMG1.dcm", "LR"[k % 2], f"OAI900000{k}")
    labelled = label_scans(discover(tmp_path / "knees"))
    assert labelled.label_source == "laterality" and labelled.classes == ["left", "right"] and not labelled.notes
    # folders called Left/Right agree with the tags
    for k in range(4):
        _radiograph(tmp_path / "sides" / ("Left", "Right")[k % 2] / f"x{k}.dcm", "LR"[k % 2], "P1")
    assert label_scans(discover(tmp_path / "sides")).label_source == "laterality"


def test_one_class_folder_is_named_in_the_error(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    _png(tmp_path / "benign" / "b.png")
    with pytest.raises(UserError, match=r"only one class folder \(benign\) was found"):
        label_scans(discover(tmp_path))
