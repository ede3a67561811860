"""Anatomical planes and RAS positions come from the direction matrix, whatever the storage order.

A real case is rewritten in other orientations (RAS, LAS, permuted axes, flipped, oblique) that keep
its physical space; the engine must report the same planes, positions and picks. Positions are
checked against ITK's own index-to-physical transform, and display orientation against a
synthetic volume with a marker at a known RAS location.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib.geometry import (NORMAL_AXIS, PLANES, canonical_array, parse_planes, plane_geometry,
                                ras_axis_assignment)
from VoteMILib.render import Windowing, percentile_window, render_windowed, slice_pixels
from VoteMILib.selection import select_slices
from VoteMILib.volumes import load_volume, volume_from_array

sitk = pytest.importorskip("SimpleITK")

RAS_INDEX = {"R": 0, "A": 1, "S": 2}


def itk_header(path):
    """A voxel-less image with the geometry of ``path`` (ITK's view of its index-to-physical map)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    reader.ReadImageInformation()
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image, reader.GetSize()


def check_positions_against_itk(volume, header, size):
    """Every slice's position is the RAS coordinate, by ITK, of that slice's centre along the normal."""
    direction_ras = np.array(header.GetDirection()).reshape(3, 3) * np.array([[-1], [-1], [1]])
    centre = (np.array(size, dtype=float) - 1) / 2
    for plane in PLANES:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        ras = RAS_INDEX[NORMAL_AXIS[plane]]
        assert geometry.normal_axis == NORMAL_AXIS[plane]
        # The IJK axis closest to the plane normal carries the slices.
        assert geometry.ijk_axis == int(np.argmax(np.abs(direction_ras[ras])))
        assert geometry.count == size[geometry.ijk_axis]
        assert np.all(np.diff(geometry.positions_mm) > 0), f"{plane} positions not ascending"
        assert sorted(geometry.ijk_indices.tolist()) == list(range(geometry.count))
        expected = []
        for index in geometry.ijk_indices:
            point = centre.copy()
            point[geometry.ijk_axis] = index
            expected.append(ef.physical_ras(header, point))
        expected = np.array(expected)
        np.testing.assert_allclose(geometry.positions_mm, expected[:, ras], atol=1e-3)
        np.testing.assert_allclose(geometry.centers_ras, expected, atol=1e-3)


# --- positions of the real cases, as stored -----------------------------------------------------


@pytest.mark.parametrize("case", ef.case_names())
def test_positions_are_ras_mm_of_slice_centres(case):
    path = ef.cases()[case]["image"]
    header, size = itk_header(path)
    check_positions_against_itk(ef.volume(case), header, size)


def test_known_orientations_of_shared_cases():
    # README of ../shared/data: tcga cases LPS, aurora RAS, pyradiomics LAS; axial slices run along K.
    for case, signs in (("tcga_du_7294", (-1, -1, 1)), ("aurora_met", (1, 1, 1)), ("pyradiomics_brain1", (-1, 1, 1))):
        axes, sign = ras_axis_assignment(ef.volume(case).ijk_to_ras)
        assert axes.tolist() == [0, 1, 2], case
        assert tuple(sign.tolist()) == signs, case
    # 25 thick axial slices in pyradiomics_brain1: the axial plane has 25 positions 6.5 mm apart.
    brain1 = ef.volume("pyradiomics_brain1")
    axial = plane_geometry(brain1.ijk_to_ras, brain1.size_ijk, "axial")
    assert axial.count == 25
    np.testing.assert_allclose(np.diff(axial.positions_mm), 6.5, atol=1e-3)


# --- the same scan stored differently -----------------------------------------------------------

# name -> (how to rewrite the SimpleITK image keeping physical space, file suffix)
REORIENTATIONS = {
    "RAS": (lambda image: sitk.DICOMOrient(image, "RAS"), ".nii"),
    "LAS": (lambda image: sitk.DICOMOrient(image, "LAS"), ".nrrd"),
    "PIR": (lambda image: sitk.DICOMOrient(image, "PIR"), ".mha"),
    "permuted": (lambda image: sitk.PermuteAxes(image, [2, 0, 1]), ".nii"),
    "flipped": (lambda image: sitk.Flip(image, [False, True, True]), ".nrrd"),
}


@pytest.fixture(scope="module")
def original_image():
    return sitk.ReadImage(os.fspath(ef.cases()[ef.MAIN_CASE]["image"]))


@pytest.fixture(scope="module")
def reoriented(tmp_path_factory, original_image):
    """Files of the main case rewritten in each orientation, and their selections (made on demand)."""
    folder = tmp_path_factory.mktemp("reoriented")
    made = {}

    def get(name):
        if name not in made:
            rewrite, suffix = REORIENTATIONS[name]
            image = rewrite(original_image)
            path = folder / f"{ef.MAIN_CASE}_{name}{suffix}"
            sitk.WriteImage(image, os.fspath(path))
            volume = load_volume(path)
            made[name] = (image, path, volume, select_slices(volume))
        return made[name]

    return get


@pytest.mark.parametrize("name", sorted(REORIENTATIONS))
def test_rewritten_copy_keeps_physical_space(name, original_image):
    # Guard for the test itself: resampling the rewritten copy onto the original grid gives back
    # the original voxels, so the copies differ only in storage order.
    image = REORIENTATIONS[name][0](original_image)
    assert image.GetDirection() != original_image.GetDirection()
    back = sitk.Resample(image, original_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(original_image))


@pytest.mark.parametrize("name", sorted(REORIENTATIONS))
def test_reoriented_scan_gives_same_planes_positions_and_picks(name, reoriented):
    image, path, volume, result = reoriented(name)
    reference = ef.selection(ef.MAIN_CASE)
    original = ef.volume(ef.MAIN_CASE)
    assert not np.allclose(volume.ijk_to_ras, original.ijk_to_ras), "the copy should be stored differently"
    assert sorted(volume.size_ijk) == sorted(original.size_ijk)
    header, size = itk_header(path)
    check_positions_against_itk(volume, header, size)
    assert list(result.planes) == list(PLANES)
    for plane in PLANES:
        mine, theirs = result.planes[plane], reference.planes[plane]
        assert mine.normal_axis == theirs.normal_axis == NORMAL_AXIS[plane]
        np.testing.assert_allclose(mine.positions_mm, theirs.positions_mm, atol=1e-3)
        # float32 sums in another memory order differ in the last digits.
        np.testing.assert_allclose(mine.scores, theirs.scores, atol=1e-3)
        assert [s.index for s in mine.selected] == [s.index for s in theirs.selected], plane
        for a, b in zip(mine.selected, theirs.selected):
            assert a.position_mm == pytest.approx(b.position_mm, abs=1e-3)
            np.testing.assert_allclose(a.center_ras, b.center_ras, atol=1e-3)
            # ijk_index names the same physical slice in the rewritten storage.
            point = (np.array(size, dtype=float) - 1) / 2
            point[mine.ijk_axis] = a.ijk_index
            assert ef.physical_ras(header, point)[RAS_INDEX[mine.normal_axis]] == pytest.approx(a.position_mm, abs=1e-3)
        # The slice at the pick holds the same voxels, read through the rewritten storage.
        top = mine.selected[0]
        np.testing.assert_array_equal(slice_pixels(volume, plane, top.index), slice_pixels(original, plane, top.index))


def rotated(image, degrees, axis="R"):
    """A copy whose direction matrix is rotated about a physical axis (voxels untouched: an oblique scan)."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    rotation = {"R": [[1, 0, 0], [0, c, -s], [0, s, c]], "A": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
                "S": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    copy = sitk.Image(image)
    copy.SetDirection((np.array(rotation) @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return copy


def test_oblique_scan_uses_closest_axes(tmp_path, original_image):
    image = rotated(original_image, 10, "R")
    path = tmp_path / "oblique.nii"
    sitk.WriteImage(image, os.fspath(path))
    volume = load_volume(path)
    header, size = itk_header(path)
    check_positions_against_itk(volume, header, size)
    result = select_slices(volume)
    reference = ef.selection(ef.MAIN_CASE)
    for plane in PLANES:
        mine, theirs = result.planes[plane], reference.planes[plane]
        assert mine.ijk_axis == theirs.ijk_axis, plane
        np.testing.assert_array_equal(mine.ijk_indices, theirs.ijk_indices)
        assert len(mine.scores) == len(theirs.scores)
        # Same voxels, same nearest-axis slicing: the score profiles agree, the best slice is within 2 slices.
        assert np.corrcoef(mine.scores, theirs.scores)[0, 1] > 0.99, plane
        assert abs(mine.selected[0].ijk_index - theirs.selected[0].ijk_index) <= 2, plane
    # Tilting about R leaves sagittal positions alone but moves axial and coronal ones.
    np.testing.assert_allclose(result.planes["sagittal"].positions_mm, reference.planes["sagittal"].positions_mm,
                               atol=1e-3)
    assert not np.allclose(result.planes["axial"].positions_mm, reference.planes["axial"].positions_mm, atol=1)


@pytest.mark.parametrize("degrees, axial_axis, coronal_axis", [(30, 2, 1), (60, 1, 2), (-60, 1, 2), (120, 1, 2)])
def test_strong_tilt_switches_to_the_closest_axis(original_image, degrees, axial_axis, coronal_axis):
    from VoteMILib.volumes import ijk_to_ras_from_image

    image = rotated(original_image, degrees, "R")
    matrix = ijk_to_ras_from_image(image)
    size = image.GetSize()
    axial = plane_geometry(matrix, size, "axial")
    coronal = plane_geometry(matrix, size, "coronal")
    sagittal = plane_geometry(matrix, size, "sagittal")
    assert (axial.ijk_axis, coronal.ijk_axis, sagittal.ijk_axis) == (axial_axis, coronal_axis, 0)
    header = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    header.SetDirection(image.GetDirection())
    header.SetOrigin(image.GetOrigin())
    header.SetSpacing(image.GetSpacing())
    for geometry, ras in ((axial, 2), (coronal, 1), (sagittal, 0)):
        assert np.all(np.diff(geometry.positions_mm) > 0)
        first = (np.array(size, dtype=float) - 1) / 2
        first[geometry.ijk_axis] = geometry.ijk_indices[0]
        assert ef.physical_ras(header, first)[ras] == pytest.approx(geometry.positions_mm[0], abs=1e-3)


def test_axis_match_is_one_to_one_when_columns_compete():
    # Columns I and J both lean most towards R; a per-axis argmax would give R two IJK axes.
    columns = np.array([[0.80, 0.55, 0.24], [0.75, -0.60, 0.28], [0.0, 0.3, 0.95]]).T  # [ras, ijk]
    matrix = np.eye(4)
    matrix[:3, :3] = columns / np.linalg.norm(columns, axis=0)
    axes, _ = ras_axis_assignment(matrix)
    assert axes.tolist() == [0, 1, 2]


def test_canonical_array_is_a_view_in_ras_order():
    volume = ef.volume(ef.MAIN_CASE)  # LPS: I runs towards L, J towards P
    canonical = canonical_array(volume.array, volume.ijk_to_ras)
    assert np.shares_memory(canonical, volume.array), "canonical_array must not copy the voxels"
    i, j, k = volume.size_ijk
    assert canonical.shape == (i, j, k)
    assert canonical[0, 0, 0] == volume.array[0, j - 1, i - 1]
    assert canonical[i - 1, 5, 7] == volume.array[7, j - 1 - 5, 0]


def test_parse_planes():
    assert parse_planes("sagittal, axial") == ("axial", "sagittal")
    assert parse_planes("c") == ("coronal",)
    assert parse_planes(["coronal", "AXIAL"]) == ("axial", "coronal")
    for bad in ("", "axial,foo", "transverse"):
        with pytest.raises(ValueError):
            parse_planes(bad)


# --- DICOM series -------------------------------------------------------------------------------


def test_dicom_series_folder_reads_like_the_nifti(tmp_path):
    # aurora_met is int16 and stored RAS (not ITK's default LPS): a non-trivial orientation for DICOM.
    source = sitk.ReadImage(os.fspath(ef.cases()["aurora_met"]["image"]))
    assert source.GetPixelID() == sitk.sitkInt16
    crop = source[:, :, 55:95]  # 40 axial slices, plenty in every direction
    ef.write_dicom_series(crop, tmp_path / "series")
    nifti = tmp_path / "crop.nii"
    sitk.WriteImage(crop, os.fspath(nifti))
    assert len(list((tmp_path / "series").glob("*.dcm"))) == 40

    from_dicom, from_nifti = load_volume(tmp_path / "series"), load_volume(nifti)
    assert from_dicom.size_ijk == from_nifti.size_ijk == (240, 240, 40)
    np.testing.assert_allclose(from_dicom.ijk_to_ras, from_nifti.ijk_to_ras, atol=1e-3)
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    # The crop starts 55 slices up the original: its axial positions are the original's 55..94.
    full = ef.volume("aurora_met")
    full_axial = plane_geometry(full.ijk_to_ras, full.size_ijk, "axial").positions_mm
    for plane in PLANES:
        a = plane_geometry(from_dicom.ijk_to_ras, from_dicom.size_ijk, plane).positions_mm
        b = plane_geometry(from_nifti.ijk_to_ras, from_nifti.size_ijk, plane).positions_mm
        np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(plane_geometry(from_dicom.ijk_to_ras, from_dicom.size_ijk, "axial").positions_mm,
                               full_axial[55:95], atol=1e-3)
    picks_dicom = select_slices(from_dicom, planes=("axial", "sagittal"))
    picks_nifti = select_slices(from_nifti, planes=("axial", "sagittal"))
    for plane in ("axial", "sagittal"):
        assert ([s.index for s in picks_dicom.planes[plane].selected]
                == [s.index for s in picks_nifti.planes[plane].selected])
        np.testing.assert_allclose(picks_dicom.planes[plane].scores, picks_nifti.planes[plane].scores, atol=1e-6)


# --- display orientation ------------------------------------------------------------------------

GRID = (30, 36, 26)  # voxels along R, A, S
MARKER = (slice(22, 26), slice(27, 31), slice(17, 21))  # patient's right, anterior, superior
# name -> (RAS axis carried by I, J, K; direction sign of I, J, K)
STORAGES = {"LPS": ((0, 1, 2), (-1, -1, 1)), "RAS": ((0, 1, 2), (1, 1, 1)), "PIR": ((1, 2, 0), (-1, -1, 1)),
            "SAL": ((2, 1, 0), (1, 1, -1))}


def marker_volume(storage, spacing=(2.0, 2.0, 2.0)):
    """A volume with a bright cube at a known RAS place, stored in the given axis order and signs.

    Returns the volume and the RAS bounds (lowest and highest voxel edge) of the grid and the marker.
    """
    perm, signs = STORAGES[storage]
    canonical = np.full(GRID, 100.0, dtype=np.float32)
    canonical[MARKER] = 1000.0
    spacing = np.asarray(spacing, dtype=float)
    low = -np.asarray(GRID) * spacing / 2  # RAS of canonical voxel 0's centre
    array_ijk = canonical.transpose(perm)
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for t in range(3):
        a = perm[t]
        if signs[t] < 0:
            array_ijk = np.flip(array_ijk, axis=t)
        matrix[a, t] = signs[t] * spacing[a]
        matrix[a, 3] = low[a] if signs[t] > 0 else low[a] + (GRID[a] - 1) * spacing[a]
    volume = volume_from_array(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)), matrix, name=storage)
    edges = np.stack([low - spacing / 2, low + (np.asarray(GRID) - 0.5) * spacing])
    marker_centre = np.array([low[a] + (MARKER[a].start + MARKER[a].stop - 1) / 2 * spacing[a] for a in range(3)])
    return volume, edges, marker_centre


def render_grey(volume, plane, index):
    """A slice as the PNGs show it, windowed by the volume's percentiles (the default of an MRI)."""
    windowing = Windowing(modality="MRI", windows=(percentile_window(volume.array),), source="percentiles")
    return render_windowed(volume, plane, index, windowing)


def marker_fraction(image):
    """(row, column) centroid of the bright marker as fractions of image height and width."""
    pixels = np.asarray(image, dtype=float)
    rows, cols = np.nonzero(pixels > 128)
    assert rows.size, "marker not visible in the rendered slice"
    return (rows.mean() + 0.5) / pixels.shape[0], (cols.mean() + 0.5) / pixels.shape[1]


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.0, 2.0, 3.0)])
@pytest.mark.parametrize("storage", sorted(STORAGES))
def test_render_slice_shows_slicer_orientation(storage, spacing):
    volume, edges, centre = marker_volume(storage, spacing)
    low, high = edges
    extent = high - low
    # Expected centroid fractions by plain anatomy (viewer's left = patient right = high R; up = A or S).
    from_right = (high[0] - centre[0]) / extent[0]
    from_anterior = (high[1] - centre[1]) / extent[1]
    from_superior = (high[2] - centre[2]) / extent[2]
    expected = {"axial": (from_anterior, from_right), "coronal": (from_superior, from_right),
                "sagittal": (from_superior, from_anterior)}
    mm = {"axial": (extent[1], extent[0]), "coronal": (extent[2], extent[0]), "sagittal": (extent[2], extent[1])}
    for plane in PLANES:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        ras = RAS_INDEX[NORMAL_AXIS[plane]]
        index = int(np.argmin(np.abs(geometry.positions_mm - centre[ras])))
        image = render_grey(volume, plane, index)
        assert image.mode == "L"
        # Square pixels: the image has the slice's aspect ratio in millimetres.
        height_mm, width_mm = mm[plane]
        assert image.height / image.width == pytest.approx(height_mm / width_mm, rel=0.03)
        row, col = marker_fraction(image)
        tolerance = 1.0 / min(GRID)  # about one voxel
        assert row == pytest.approx(expected[plane][0], abs=tolerance), f"{plane}: marker row"
        assert col == pytest.approx(expected[plane][1], abs=tolerance), f"{plane}: marker column"
        # In words: right-anterior-superior marker sits left (viewer) and up in axial and coronal views,
        # up and on the left (anterior) in the sagittal view.
        assert row < 0.5 and col < 0.5, plane
        # A slice far from the marker does not show it.
        far = int(np.argmin(np.abs(geometry.positions_mm - (low[ras] + 0.1 * extent[ras]))))
        assert np.asarray(render_grey(volume, plane, far)).max() < 128


def test_render_is_independent_of_storage():
    images = {}
    for storage in STORAGES:
        volume, _, _ = marker_volume(storage, (1.0, 2.0, 3.0))
        images[storage] = {plane: np.asarray(render_grey(volume, plane, 10)) for plane in PLANES}
    first = images["LPS"]
    for storage, planes in images.items():
        for plane in PLANES:
            np.testing.assert_array_equal(planes[plane], first[plane], err_msg=f"{storage} {plane}")


@pytest.mark.parametrize("case, flip", [("tcga_du_7294", False), ("aurora_met", True)])
def test_real_scan_axial_display_matches_storage(case, flip):
    # LPS storage (tcga): row j runs from anterior (j=0) to posterior and column i from the patient's
    # right (i=0) to left -- already Slicer's axial display. RAS storage (aurora) is the mirror image
    # on both axes.
    volume = ef.volume(case)
    geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, "axial")
    index = geometry.count // 2
    stored = volume.array[geometry.ijk_indices[index]]  # (J, I)
    expected = stored[::-1, ::-1] if flip else stored
    np.testing.assert_array_equal(slice_pixels(volume, "axial", index), expected)
