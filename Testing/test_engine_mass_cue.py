"""The ``mass`` body cue (soft tissue that no fat plane crosses), the extremes of the original voxels
behind the working grid, and a chest cut through one lung still read as a chest.

The sarcoma cases used here are on the *design* side of the bench split (docs/benchmark.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import engine_fixtures as ef
from VoteMILib.bench import section_areas
from VoteMILib.datasets import load_mask
from VoteMILib.cues.tissues import FAT_PLANE_HU
from VoteMILib.geometry import PLANES
from VoteMILib.preprocess import block_reduce, make_working_grid
from VoteMILib.cues import detect_region
from VoteMILib.selection import select_slices
from VoteMILib.volumes import Volume, load_volume

SARCOMA = ef.DATA / "sarcoma"


def test_block_extremes_keep_a_fat_plane_thinner_than_a_working_voxel():
    """A 0.5 mm plane of fat (-100 HU) between two blocks of muscle (+50 HU) on a 0.5 mm grid: averaged
    four voxels at a time onto the 2 mm working grid it is gone (the mean stays above
    :data:`FAT_PLANE_HU`), while the darkest original voxel behind each working voxel still shows it."""
    array = np.full((80, 80, 80), 50.0, np.float32)
    array[:, :, 41] = -100.0  # one voxel thick, across I (R)
    array[:4], array[-4:] = -1000.0, -1000.0  # some air, so that a foreground exists
    volume = Volume(array=array, ijk_to_ras=np.diag([0.5, 0.5, 0.5, 1.0]), name="plane")
    grid = make_working_grid(volume)
    darkest, brightest = grid.block_extremes()
    middle = grid.data.shape[1] // 2
    plane_column = darkest[:, middle, middle]
    assert plane_column.min() < FAT_PLANE_HU, "the fat plane is seen through the darkest original voxel"
    averaged = grid.original_intensities()[:, middle, middle]
    assert averaged.min() > FAT_PLANE_HU, "averaging alone would hide it"
    assert brightest.max() <= 50.0 + 1e-3


def test_block_reduce_matches_a_reshaped_minimum():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(9, 8, 7)).astype(np.float32)
    expected = data[:8, :8, :6].reshape(4, 2, 4, 2, 2, 3).min(axis=(1, 3, 5))
    np.testing.assert_array_equal(block_reduce(data, (2, 2, 3), np.minimum), expected)


@pytest.mark.parametrize("case", ["sts031_ct", "sts031_mr_t1", "sts047_ct", "sts005_mr_t1"])
def test_a_sarcoma_that_parts_the_fat_planes_is_found_by_the_mass_cue(case):
    """Extremity sarcomas near muscle in intensity (CT) or iso- to hypointense (T1): the top slice of
    every plane holds at least half of the lesion's largest section, decided by ``mass``."""
    folder = SARCOMA / case
    volume = load_volume(folder / "image.nii.gz")
    result = select_slices(volume)
    lesion = load_mask(folder / "mask.nii.gz", volume)
    for plane in PLANES:
        assert result.planes[plane].cue == "mass", plane
        areas = section_areas(volume, lesion, plane)
        top = result.planes[plane].selected[0].index
        assert areas[top] >= 0.5 * areas.max(), (plane, areas[top], areas.max())


def test_a_chest_cut_through_one_lung_is_still_a_chest(tmp_path):
    """Half of a thorax CT (the field of view cut at the midline, through the mediastinum): its lung
    opens onto the face of the field of view, yet the scan is a chest, and its lung nodule cue runs."""
    image = sitk.ReadImage(str(ef.cases()["mirp_nsclc_lung1-001"]["image"]))
    half = image[: image.GetSize()[0] // 2, :, :]
    path = tmp_path / "half_chest.nii.gz"
    sitk.WriteImage(half, str(path))
    volume = load_volume(path)
    region = detect_region(make_working_grid(volume), "CT")
    assert region.name == "chest", region.measures
    assert region.measures["lung_fraction"] >= 0.10


def test_extremity_cts_are_not_taken_for_a_chest():
    """Foam pads under a limb are as dense as lung but lie against the outside air, not the body."""
    for case in ("sts005_ct", "sts031_ct", "sts041_ct"):
        volume = load_volume(SARCOMA / case / "image.nii.gz")
        assert detect_region(make_working_grid(volume), "CT").name == "body", case


def test_enhanced_organs_and_fluid_are_no_mass(tmp_path):
    """An abdominal CT below the lungs (portal phase): the liver and spleen are free of fat planes over many
    centimetres but enhanced above muscle, so no ``mass`` evidence lies in them (nor in fluid)."""
    from VoteMILib.cues import CueInput, detect_region, mass
    from VoteMILib.cues.mass import MASS_MIN_DEPTH_MM, SOLID_TISSUE_HU, fat_free_tissue
    from VoteMILib.cues.morphology import inside_distance

    image = sitk.ReadImage(str(ef.DATA / "abdomen" / "crlm_1004" / "image.nii.gz"))
    path = tmp_path / "abdomen_below_lungs.nii.gz"
    sitk.WriteImage(image[:, :, 0:18], str(path))
    grid = make_working_grid(load_volume(path))
    region = detect_region(grid, "CT")
    assert region.name == "body"
    scan = CueInput(grid, region)
    found = mass.find(scan)
    hu = grid.original_intensities()
    tissue = fat_free_tissue(grid, scan.body, True)
    deep = inside_distance(tissue, grid.spacing_mm) > 2 * MASS_MIN_DEPTH_MM
    organ = deep & (hu > SOLID_TISSUE_HU[1] + 20.0)
    assert organ.sum() * np.prod(grid.spacing_mm) > 20_000, "the liver is deep inside fat-free tissue"
    assert not found.map[organ].any()


def test_paired_trunk_muscles_are_no_mass_in_an_abdomen_without_lungs(tmp_path):
    """The abdomen below the lungs (design host crlm_1004): the psoas and back muscles are centimetres
    deep in fat-free tissue, so the depth alone reads them as a mass; their partners across the midline
    are as deep, so nothing stands out. A crop of one limb (no partner in view) keeps its mass."""
    from VoteMILib.cues import CueInput, mass

    image = sitk.ReadImage(str(ef.DATA / "abdomen" / "crlm_1004" / "image.nii.gz"))
    path = tmp_path / "abdomen_below_lungs.nii.gz"
    sitk.WriteImage(image[:, :, 0:18], str(path))
    grid = make_working_grid(load_volume(path))
    scan = CueInput(grid, detect_region(grid, "CT"))
    depth_alone, _ = mass.mass_map(grid, scan.body, True)
    assert depth_alone.max() >= 1.0, "without its partner a paraspinal muscle or psoas would stand out"
    assert mass.find(scan).map.max() < 1.0

    crop = load_volume(SARCOMA / "sts005_ct" / "image.nii.gz")
    grid = make_working_grid(crop)
    scan = CueInput(grid, detect_region(grid, "CT"))
    depth_alone, _ = mass.mass_map(grid, scan.body, True)
    assert np.array_equal(mass.find(scan).map, depth_alone), "no mirror partner in a crop of one limb"
    assert depth_alone.max() >= 1.0
