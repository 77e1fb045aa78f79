"""The geometry matrix: one anatomy, written as DICOM in every plane and as NIfTI in any storage order, read
back as the same display array and the same affine to patient LPS millimetres.

The anatomy is a display volume (slices inferior -> superior, rows anterior -> posterior, columns patient
right -> left) with one bright voxel, and the affine that places it: display voxel (k, r, c) sits at
LPS ORIGIN + (0.7 c, 0.8 r, 2.0 k) mm. Each writer samples it the way a scanner stores that plane; the
known answer for every reader is the anatomy itself, not a shape.
"""
import itertools

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from perceiver_med.io import discover, read_scan
from perceiver_med.io.orientation import LPS_FROM_RAS, display_affine, to_display
from tests.conftest import ct_slice, index_volume, write_series

SHAPE = (10, 12, 14)  # display (slices, rows, cols)
SPACING = (2.0, 0.8, 0.7)  # mm along slices (z), rows (y), cols (x)
ORIGIN = np.array([-50.0, -40.0, 100.0])  # LPS of display voxel (0, 0, 0)
BRIGHT = (7, 3, 10)  # a superior slice, an anterior row, a column on the patient's left
BRIGHT_HU = 3000.0
# NIfTI stores its affine in float32: millimetres agree to about 1e-5, far inside half a voxel


def anatomy():
    """(display volume, its affine (slice, row, col, 1) -> LPS mm, the bright voxel's LPS point)."""
    volume = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.float32)
    volume[BRIGHT] = BRIGHT_HU
    affine = np.eye(4)
    affine[:3, :3] = [[0, 0, SPACING[2]], [0, SPACING[1], 0], [SPACING[0], 0, 0]]  # columns: slice, row, col
    affine[:3, 3] = ORIGIN
    return volume, affine, affine[:3, :3] @ BRIGHT + ORIGIN


def _stored_to_display(axes, shape):
    """4x4 integer map stored index (a0, a1, a2, 1) -> display index (k, r, c, 1).

    `axes[n]` is (display axis, +1 or -1): stored axis n runs along that display axis, or against it."""
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1
    for stored, (axis, sign) in enumerate(axes):
        matrix[axis, stored] = sign
        if sign < 0:
            matrix[axis, 3] = shape[axis] - 1
    return matrix


def _stored(volume, axes):
    """The volume laid out along the stored axes."""
    out = volume.transpose([axis for axis, _ in axes])
    for n, (_, sign) in enumerate(axes):
        if sign < 0:
            out = np.flip(out, n)
    return np.ascontiguousarray(out)


def _dicom(pixels, series_uid, instance, orientation, position, pixel_spacing, thickness=None):
    ds = ct_slice(pixels, 0.0, series_uid, instance=instance, orientation=orientation)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if thickness is not None:
        ds.SliceThickness = float(thickness)
    return ds


def write_dicom_series(folder, axes, positions=True, orientation=True):
    """The anatomy as single-frame slices: stored axis 0 is the slice, 1 the image row, 2 the image column.

    Returns the ImageOrientationPatient written, for the reader of the test to check by eye."""
    volume, affine, _ = anatomy()
    to_display = _stored_to_display(axes, SHAPE)
    stack = _stored(volume, axes)
    world = affine @ to_display  # stored index -> LPS
    iop = tuple(np.round(np.concatenate([world[:3, 2] / np.linalg.norm(world[:3, 2]),
                                         world[:3, 1] / np.linalg.norm(world[:3, 1])]), 6))
    pixel_spacing = (np.linalg.norm(world[:3, 1]), np.linalg.norm(world[:3, 2]))
    uid = generate_uid()
    folder.mkdir(parents=True)
    for number, n in enumerate(np.random.default_rng(1).permutation(len(stack))):
        ds = _dicom(stack[n], uid, int(n) + 1, iop if orientation else None, world[:3, :3] @ (n, 0, 0) + world[:3, 3],
                    pixel_spacing, thickness=np.linalg.norm(world[:3, 0]))
        if not positions:
            del ds.ImagePositionPatient
        ds.save_as(folder / f"x{number * 7919 % 1000:03d}", enforce_file_format=True)
    return iop


def write_nifti(path, axes):
    volume, affine, _ = anatomy()
    ras = LPS_FROM_RAS @ affine @ _stored_to_display(axes, SHAPE)
    nib.save(nib.Nifti1Image(_stored(volume, axes), ras), path)


def only_scan(folder):
    found = discover(folder)
    assert not found.skipped, found.skipped
    [scan] = found.scans
    return scan


def assert_is_the_anatomy(image):
    volume, affine, point = anatomy()
    # (a) the display convention: the bright voxel where the anatomy has it
    assert np.unravel_index(np.argmax(image.voxels), image.voxels.shape) == BRIGHT
    np.testing.assert_array_equal(image.voxels, volume)
    # the affine: superior slices last, posterior rows down, the patient's left to the right of the image
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    assert image.affine[2, 0] > 0 and image.affine[1, 1] > 0 and image.affine[0, 2] > 0
    assert image.spacing == pytest.approx(SPACING)
    # (b) a point -> voxel -> point round trip lands on the bright voxel
    np.testing.assert_allclose(image.to_voxel(point), BRIGHT, atol=1e-4)
    np.testing.assert_allclose(image.to_patient(BRIGHT), point, atol=1e-4)
    assert image.has_patient_geometry


AXIAL, FEET_FIRST, SAGITTAL, CORONAL = "axial", "feet-first axial", "sagittal", "coronal"
PLANES = {  # stored (slice, image row, image column) -> display axes, and the orientation a scanner writes
    AXIAL: (((0, 1), (1, 1), (2, 1)), (1, 0, 0, 0, 1, 0)),
    # feet first: slices written from the head down, image columns running from the patient's left
    FEET_FIRST: (((0, -1), (1, 1), (2, -1)), (-1, 0, 0, 0, 1, 0)),
    SAGITTAL: (((2, 1), (0, -1), (1, 1)), (0, 1, 0, 0, 0, -1)),
    CORONAL: (((1, 1), (0, -1), (2, 1)), (1, 0, 0, 0, 0, -1)),
}


@pytest.mark.parametrize("plane", PLANES)
def test_a_dicom_series_in_any_plane_reads_as_the_anatomy(tmp_path, plane):
    axes, orientation = PLANES[plane]
    assert write_dicom_series(tmp_path / "s", axes) == orientation
    scan = only_scan(tmp_path)
    image = read_scan(scan)
    assert scan.shape == image.voxels.shape and image.ordering == "position"
    assert_is_the_anatomy(image)


@pytest.mark.parametrize("codes", [((0, 1), (1, 1), (2, 1)), ((2, -1), (0, 1), (1, -1)), ((1, -1), (2, 1), (0, -1))],
                         ids=["display-order", "permuted-flipped", "coronal-like"])
def test_a_nifti_in_any_storage_order_reads_as_the_anatomy(tmp_path, codes):
    write_nifti(tmp_path / "v.nii.gz", codes)
    image = read_scan(only_scan(tmp_path))
    assert image.ordering == "nifti"
    assert_is_the_anatomy(image)


def test_a_dicom_series_and_a_nifti_of_one_anatomy_give_one_array_and_one_affine(tmp_path):
    write_dicom_series(tmp_path / "dicom", PLANES[SAGITTAL][0])
    write_nifti(tmp_path / "v.nii", ((1, -1), (2, 1), (0, -1)))
    images = [read_scan(scan) for scan in discover(tmp_path).scans]
    assert [image.format for image in images] == ["dicom", "nifti"]
    np.testing.assert_array_equal(images[0].voxels, images[1].voxels)
    np.testing.assert_allclose(images[0].affine, images[1].affine, atol=1e-4)


def test_an_oblique_series_keeps_its_tilt_in_the_affine(tmp_path):
    """Tilted 30 degrees about the patient's x axis (a gantry tilt); slices written with decreasing positions."""
    tilt = np.radians(30)
    row_dir = np.array([1.0, 0.0, 0.0])  # along an image row: next column, to the patient's left
    col_dir = np.array([0.0, np.cos(tilt), np.sin(tilt)])  # down the image: posterior and up
    normal = np.cross(row_dir, col_dir)  # (0, -sin, cos): mostly superior
    stack = np.random.default_rng(3).integers(-1000, 1000, (8, 6, 5)).astype(np.float32)
    stack[5, 2, 3] = BRIGHT_HU
    origin, step, spacing = np.array([10.0, 20.0, 30.0]), 2.5, (0.9, 0.6)  # spacing: (between rows, columns)
    uid = generate_uid()
    (tmp_path / "obl").mkdir()
    for n in range(len(stack)):  # file n holds the slice n steps *below* the origin: the reader must sort
        position = origin - n * step * normal
        _dicom(stack[n], uid, n + 1, (*row_dir, *col_dir), position, spacing).save_as(
            tmp_path / "obl" / f"{n:02d}", enforce_file_format=True)
    image = read_scan(only_scan(tmp_path))
    # the tilt is small enough for the axial display: inferior slice (the last written) first, nothing else flipped
    np.testing.assert_array_equal(image.voxels, stack[::-1])
    expected = np.eye(4)
    expected[:3, 0], expected[:3, 1], expected[:3, 2] = normal * step, col_dir * spacing[0], row_dir * spacing[1]
    expected[:3, 3] = origin - (len(stack) - 1) * step * normal
    np.testing.assert_allclose(image.affine, expected, atol=1e-4)
    point = origin - 5 * step * normal + 2 * spacing[0] * col_dir + 3 * spacing[1] * row_dir  # the bright voxel
    voxel = image.to_voxel(point)
    np.testing.assert_allclose(voxel, (len(stack) - 1 - 5, 2, 3), atol=1e-4)
    assert image.voxels[tuple(np.round(voxel).astype(int))] == BRIGHT_HU
    np.testing.assert_allclose(image.to_patient(voxel), point, atol=1e-4)


def _multiframe(path, axes, per_frame_positions=True):
    """The anatomy as one enhanced multi-frame file (frames stored in a shuffled order)."""
    volume, affine, _ = anatomy()
    world = affine @ _stored_to_display(axes, SHAPE)
    stack = _stored(volume, axes)
    order = np.random.default_rng(4).permutation(len(stack)) if per_frame_positions else np.arange(len(stack))
    frames = stack[order]
    ds = ct_slice(frames[0], 0.0, generate_uid(), instance=1, orientation=None)
    del ds.ImagePositionPatient, ds.PixelSpacing
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.NumberOfFrames = len(frames)
    ds.PixelData = (np.round(frames) + 1024).astype(np.uint16).tobytes()
    iop = [float(v) for v in np.concatenate([world[:3, 2] / SPACING[axes[2][0]], world[:3, 1] / SPACING[axes[1][0]]])]
    measures, plane = Dataset(), Dataset()
    measures.PixelSpacing = [SPACING[axes[1][0]], SPACING[axes[2][0]]]
    measures.SliceThickness = SPACING[axes[0][0]]
    plane.ImageOrientationPatient = iop
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if per_frame_positions:
        items = []
        for n in order:
            position, item = Dataset(), Dataset()
            position.ImagePositionPatient = [float(v) for v in world[:3, :3] @ (n, 0, 0) + world[:3, 3]]
            item.PlanePositionSequence = Sequence([position])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    else:
        ds.ImagePositionPatient = [float(v) for v in world[:3, 3]]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_a_multiframe_file_with_per_frame_positions_reads_as_the_anatomy(tmp_path):
    _multiframe(tmp_path / "mf.dcm", PLANES[CORONAL][0])
    scan = only_scan(tmp_path)
    image = read_scan(scan)
    assert scan.shape == image.voxels.shape and image.ordering == "position"
    assert_is_the_anatomy(image)


def test_a_multiframe_file_without_positions_follows_its_normal_and_says_so(tmp_path):
    # sagittal frames from the patient's left to the right: along the normal, row x column = (-1, 0, 0)
    _multiframe(tmp_path / "mf.dcm", ((2, -1), (0, -1), (1, 1)), per_frame_positions=False)
    scan = only_scan(tmp_path)
    image = read_scan(scan)
    assert scan.shape == image.voxels.shape and image.ordering == "frames"
    volume, affine, _ = anatomy()
    np.testing.assert_array_equal(image.voxels, volume)  # not the frames as stored (sagittal, one per column)
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    assert image.assumed == ("slice order",)
    assert any("run along the slice normal" in w for w in image.warnings)


def test_an_instance_ordered_series_with_an_orientation_is_shown_in_the_display_convention(tmp_path):
    axes, _ = PLANES[CORONAL]
    write_dicom_series(tmp_path / "s", axes, positions=False)
    scan = only_scan(tmp_path)
    image = read_scan(scan)
    volume, affine, _ = anatomy()
    assert scan.ordering == image.ordering == "instance" and scan.shape == image.voxels.shape
    np.testing.assert_array_equal(image.voxels, volume)  # coronal slices, shown axial like every other scan
    np.testing.assert_allclose(image.affine[:3, :3], affine[:3, :3], atol=1e-4)  # the position is not known
    assert not image.has_patient_geometry and set(image.assumed) == {"position", "slice order"}


def test_a_series_without_geometry_is_read_as_stored_with_a_stated_affine(tmp_path):
    volume = index_volume(slices=9, rows=6, cols=7)
    volume[4, 1, 5] = 2000
    write_series(tmp_path / "s", volume, order=[3, 1, 4, 0, 5, 8, 2, 6, 7], positions=False, orientation=None)
    image = read_scan(only_scan(tmp_path))
    np.testing.assert_array_equal(image.voxels, volume)
    np.testing.assert_allclose(image.affine, [[0, 0, 0.8, 0], [0, 0.8, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert image.assumed == ("orientation", "position", "slice order", "slice spacing")
    assert any(w.startswith("patient geometry assumed: no ImageOrientationPatient") for w in image.warnings)


# ---------------------------------------------------------------- single planes: DICOM and NIfTI


def _sagittal_plane_dicom(path, column):
    """Display column `column` of the anatomy as one sagittal DICOM image, stored with columns running
    posterior -> anterior (IOP 0,-1,0 / 0,0,-1): the reader must flip it to the display convention."""
    volume, affine, _ = anatomy()
    plane = volume[::-1, ::-1, column]  # image rows: superior first; image columns: posterior first
    top_posterior = affine @ (SHAPE[0] - 1, SHAPE[1] - 1, column, 1)
    _dicom(plane, generate_uid(), 1, (0, -1, 0, 0, 0, -1), top_posterior[:3], (SPACING[0], SPACING[1]),
           thickness=SPACING[2]).save_as(path, enforce_file_format=True)


def _sagittal_plane_nifti(path, column):
    """The same plane as a 2D NIfTI: i anterior -> posterior, j inferior -> superior."""
    volume, affine, _ = anatomy()
    to_display = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, column], [0, 0, 0, 1]], float)  # (i, j, n) -> (k,r,c)
    ras = LPS_FROM_RAS @ affine @ to_display
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume[:, :, column].T), ras), path)


def test_a_single_sagittal_slice_is_the_2d_image_it_is_in_dicom_and_nifti(tmp_path):
    volume, affine, point = anatomy()
    column = BRIGHT[2]
    _sagittal_plane_dicom(tmp_path / "sag.dcm", column)
    _sagittal_plane_nifti(tmp_path / "sag.nii", column)
    images = {scan.format: read_scan(scan) for scan in discover(tmp_path).scans}
    expected = volume[::-1, :, column]  # superior at the top, anterior on the left: not a 1-pixel strip
    bright = (SHAPE[0] - 1 - BRIGHT[0], BRIGHT[1])
    for image in images.values():
        assert image.voxels.shape == (SHAPE[0], SHAPE[1]) and image.spacing == pytest.approx(SPACING[:2])
        np.testing.assert_array_equal(image.voxels, expected)
        np.testing.assert_allclose(image.to_voxel(point), (0, *bright), atol=1e-4)  # on the plane
        np.testing.assert_allclose(image.to_patient(bright), point, atol=1e-4)
        np.testing.assert_allclose(image.to_voxel(point + (2 * SPACING[2], 0, 0)), (2, *bright), atol=1e-4)
    np.testing.assert_allclose(images["dicom"].affine, images["nifti"].affine, atol=1e-4)


def test_a_radiograph_without_geometry_is_as_stored_and_says_it_has_no_patient_geometry(tmp_path):
    pixels = np.arange(30, dtype=np.float32).reshape(5, 6)
    ds = ct_slice(pixels, None, generate_uid(), orientation=None, modality="DX")
    ds.save_as(tmp_path / "knee.dcm", enforce_file_format=True)
    image = read_scan(only_scan(tmp_path))
    np.testing.assert_array_equal(image.voxels, pixels)
    assert image.ordering == "image" and not image.has_patient_geometry
    np.testing.assert_allclose(image.to_patient((2, 3)), (3 * 0.8, 2 * 0.8, 0))


# ---------------------------------------------------------------- refused, or read whole


def test_a_three_plane_localiser_is_refused_with_a_reason(tmp_path):
    uid = generate_uid()
    (tmp_path / "loc").mkdir()
    for n, orientation in enumerate([(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)]):
        _dicom(np.zeros((8, 8)), uid, n + 1, orientation, (0, 0, 0), (1, 1)).save_as(
            tmp_path / "loc" / f"{n}", enforce_file_format=True)
    found = discover(tmp_path)
    assert not found.scans and len(found.skipped) == 3
    assert {skip.reason for skip in found.skipped} == {
        "its series mixes 3 slice orientations (axial, coronal, sagittal: a localiser?), so it is not stacked "
        "into a volume and not read"}


def test_radiographs_of_one_series_in_two_planes_are_two_images_not_a_volume(tmp_path):
    uid = generate_uid()
    (tmp_path / "xr").mkdir()
    for n, orientation in enumerate([(1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1)]):  # frontal and lateral views
        ds = _dicom(np.full((8, 8), 100.0 * n), uid, n + 1, orientation, (0, 10.0 * n, 0), (1, 1))
        ds.Modality = "DX"
        ds.save_as(tmp_path / "xr" / f"{n}", enforce_file_format=True)
    found = discover(tmp_path)
    assert not found.skipped and [scan.kind for scan in found.scans] == ["image", "image"]


def test_a_series_spread_over_two_folders_is_found_and_trained_on_whole(tmp_path):
    from perceiver_med.inputs.loading import load_split_inputs
    from perceiver_med.inputs.arrays import make_grid
    from perceiver_med.inputs.preprocess import PreprocessConfig
    from perceiver_med.inputs.samples import Sample
    from perceiver_med.inputs.splits import read_splits, write_splits

    volume = index_volume(slices=12)
    uid = generate_uid()
    for k in range(12):  # slices 0-5 in one folder, 6-11 in another (as some exports split long series)
        folder = tmp_path / "data" / ("a" if k < 6 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        ct_slice(volume[k], 2.0 * k, uid, instance=k + 1).save_as(folder / f"{k:03d}", enforce_file_format=True)
    other = write_series(tmp_path / "data" / "c", index_volume(slices=9))  # another scan under the same folder
    scans = {scan.series_uid: scan for scan in discover(tmp_path / "data").scans}
    scan = scans[uid]
    assert scan.shape == (12, 16, 16) and scan.path == tmp_path / "data"
    np.testing.assert_array_equal(read_scan(scan).voxels, volume)
    rows = [Sample(scans[u].path, series_uid=u, label=label, patient_id=f"P{n}", split="train")
            for n, (u, label) in enumerate([(uid, "a"), (other, "b")])]
    write_splits(rows, tmp_path / "splits.csv")
    assert (tmp_path / "splits.csv").read_text().splitlines()[0] == "path,label,patient_id,split,series_uid"
    config = PreprocessConfig(input="grid", size=8)
    loaded = load_split_inputs(read_splits(tmp_path / "splits.csv"), config, workers=1)
    assert not loaded.skipped
    np.testing.assert_allclose(loaded.inputs[0], make_grid(volume, config), atol=1e-4)  # slices 2..10: both folders


# ---------------------------------------------------------------- display_affine against to_display itself


def _signed_permutations():
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            yield permutation, signs


@pytest.mark.parametrize("permutation,signs", list(_signed_permutations()))
def test_display_affine_places_every_voxel_to_display_moves(permutation, signs):
    """For all 48 axis orders and flips (and a small rotation), the display voxel that to_display puts a stored
    voxel at is mapped by display_affine to the same point as the stored affine maps the stored voxel."""
    shape = (3, 4, 5)
    angle = np.radians(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ras = np.eye(4)
    for stored, axis in enumerate(permutation):
        ras[:3, stored] = rotation[:, axis] * signs[stored] * (0.5 + stored)
    ras[:3, 3] = (7.0, -3.0, 11.0)
    flat = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for data, stored_shape in ((flat, shape), (flat[:, :, 0], shape[:2])):
        display, _ = to_display(data, ras)
        lps = display_affine(ras, stored_shape)
        for index in np.ndindex(display.shape):
            stored_index = np.unravel_index(int(display[index]), shape)
            full_index = (0, *index) if display.ndim == 2 else index
            np.testing.assert_allclose(lps[:3, :3] @ full_index + lps[:3, 3],
                                       LPS_FROM_RAS[:3, :3] @ (ras[:3, :3] @ stored_index + ras[:3, 3]), atol=1e-9)
