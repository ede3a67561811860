"""The head's small-lesion cue (``cues/focal.py``) on a real normal brain (Colin27) with lesions put in."""

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import synthetic
from VoteMILib.cues import focal
from VoteMILib.cues.asymmetry import inner_region
from VoteMILib.cues.evidence import LESION_SCALE_MM, sigma_voxels
from VoteMILib.cues.mirror import fit_midsagittal_plane
from VoteMILib.preprocess import make_working_grid
from VoteMILib.selection import select_slices
from VoteMILib.volumes import load_volume, volume_from_array


@pytest.fixture(scope="module")
def colin27():
    assert ef.COLIN27.exists(), "apt-get install mricron-data"
    return load_volume(ef.COLIN27)


def _focal_of(volume):
    from scipy import ndimage

    grid = make_working_grid(volume)
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    smooth = ndimage.gaussian_filter(grid.data, sigma_voxels(LESION_SCALE_MM, spacing), truncate=3.0)
    return grid, focal.focal_map(grid.data, inner_region(grid.mask, spacing), fit_midsagittal_plane(smooth, grid.mask),
                                 spacing)


def _with_lesion(brain, centre_ras, diameter_mm, kind):
    grid = make_working_grid(brain)
    site = synthetic.Site("brain", f"{kind} 1", tuple(centre_ras), diameter_mm / 2.0)
    value, noise = synthetic.brain_lesion_value(grid, brain, site)
    voxels = brain.array.copy()
    synthetic.insert_sphere(voxels, brain.ijk_to_ras, site, value, noise, np.random.default_rng(0))
    return volume_from_array(voxels, brain.ijk_to_ras, name=f"colin27 with a {diameter_mm:.0f} mm {kind} lesion")


def test_a_normal_brain_has_no_small_lesion(colin27):
    _, found = _focal_of(colin27)
    assert 0 < found.max() < focal.FOCAL_Z


#: Deep white matter of each hemisphere (RAS mm; Colin27 is in MNI space): frontal right, parietal left.
SITES_RAS = ((24.0, 20.0, 28.0), (-26.0, -40.0, 34.0))


@pytest.mark.parametrize("centre_ras", SITES_RAS)
@pytest.mark.parametrize("kind", ["bright", "dark"])
def test_a_10_mm_lesion_stands_out_where_it_is(colin27, centre_ras, kind):
    grid, found = _focal_of(_with_lesion(colin27, centre_ras, 10.0, kind))
    peak = np.unravel_index(int(np.argmax(found)), found.shape)
    peak_ras = [grid.positions_mm[plane][v] for plane, v in zip(("sagittal", "coronal", "axial"), peak)]
    assert found.max() >= focal.FOCAL_Z
    assert np.linalg.norm(np.subtract(peak_ras, centre_ras)) <= 8.0


@pytest.mark.parametrize("centre_ras", SITES_RAS)
def test_findings_picks_show_a_small_lesion_the_asymmetry_misses(colin27, centre_ras):
    """Without the cue the planes fall back or pick normal anatomy; with it every top pick holds the lesion."""
    result = select_slices(_with_lesion(colin27, centre_ras, 10.0, "dark"))
    for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        best = result.planes[plane].selected[0]
        assert abs(best.position_mm - centre_ras[axis]) <= 4.0, f"{plane} pick misses the lesion"
        assert result.planes[plane].cue in ("focal", "asymmetry")


def test_the_cue_is_not_used_in_ct(colin27):
    from VoteMILib.cues import CueInput
    from VoteMILib.cues.regions import Region

    grid = make_working_grid(colin27)
    scan = CueInput(grid, Region("CT", "head"), [grid.data])
    assert focal.find(scan, grid.mask, None) is None


def test_brain_sites_lie_deep_in_tissue_and_follow_the_seed(colin27):
    from VoteMILib.cues.morphology import depth_mm

    grid = make_working_grid(colin27)
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    depth = depth_mm(grid.mask, spacing)
    sites = synthetic.brain_sites(grid, 5.0, np.random.default_rng(3))
    again = synthetic.brain_sites(grid, 5.0, np.random.default_rng(3))
    assert [s.centre_ras for s in sites] == [s.centre_ras for s in again]
    assert sorted({s.name.split()[0] for s in sites}) == ["bright", "dark"] and len(sites) == 2 * synthetic.BRAIN_SITES
    fluid = np.percentile(grid.data[depth >= synthetic.BRAIN_DEPTH_MM], 10.0)
    for site in sites:
        voxel = synthetic.grid_index(grid, site.centre_ras)
        assert depth[voxel] >= 5.0 + synthetic.BRAIN_DEPTH_MM - 2.0  # a working voxel of rounding
        assert grid.data[voxel] > fluid


def test_head_mri_takes_brain_lesions_and_head_ct_none():
    from VoteMILib.cues.regions import Region

    assert synthetic.kinds_for(Region("MRI", "head")) == ("brain",)
    assert synthetic.kinds_for(Region("CT", "head")) == ()
