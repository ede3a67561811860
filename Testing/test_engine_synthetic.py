"""Synthetic lesions in real scans (``VoteMILib.synthetic``, ``votemi bench --synthetic``): the sphere's
partial volume, the erased real lesion, the seeded sites, and the body cues finding lesions at places
nobody looked at while designing them.

Each selection on a chest CT takes about a second, so only a few sites run here; the bench runs the
whole grid (README, "Synthetic lesions")."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

import engine_fixtures as ef
from VoteMILib import synthetic
from VoteMILib.datasets import find_cases
from VoteMILib.geometry import PLANES
from VoteMILib.cues.regions import lung_mask


@functools.lru_cache(maxsize=None)
def scan(case: str, keep_lesion: bool = False) -> synthetic.Scan:
    """A shared case prepared once per session (its lesion erased unless ``keep_lesion``)."""
    return synthetic.prepare_scan({c.name: c for c in find_cases(ef.DATA)}[case], keep_lesion=keep_lesion)


def named_site(prepared, kind: str, diameter_mm: float, name: str) -> synthetic.Site:
    sites = {site.name: site for site in synthetic.scan_sites(prepared, kind, diameter_mm)}
    assert name in sites, f"the seeded rule gives no '{name}' site of {diameter_mm} mm: {sorted(sites)}"
    return sites[name]


def assert_found_in_every_plane(row, cue: str, site: synthetic.Site) -> None:
    """The top slice of every plane holds half of the lesion's largest section, ``cue`` decided it,
    and the mark lies on the lesion."""
    for plane in PLANES:
        scores = row["planes"][plane]
        assert scores["cue"] == cue, (plane, scores)
        assert scores["hit_half"] == 1.0, (plane, scores)
        assert scores["focus_mm"] <= site.radius_mm + 5.0, (plane, scores)


def test_sphere_fraction_holds_the_sphere_volume_on_an_oblique_anisotropic_grid():
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation @ np.diag([0.7, 0.9, 3.0])
    ijk_to_ras[:3, 3] = (-20.0, 5.0, -40.0)
    centre = tuple((ijk_to_ras @ np.array([30.0, 25.0, 12.0, 1.0]))[:3])
    for radius in (4.0, 12.5):
        box, fraction = synthetic.sphere_fraction((25, 60, 70), ijk_to_ras, centre, radius)
        volume_mm3 = fraction.sum() * np.prod([0.7, 0.9, 3.0])
        assert volume_mm3 == pytest.approx(4.0 / 3.0 * np.pi * radius ** 3, rel=0.03)
        assert fraction.max() == 1.0 and fraction.min() == 0.0
        assert 0.0 < np.mean((fraction > 0) & (fraction < 1)) < 0.6, "partial volume only at the edge"


def test_erasing_the_real_mass_fills_it_with_lung_and_touches_nothing_else():
    prepared = scan("pyrad_lung2")
    lesion, before, after = prepared.lesion, prepared.volume.array, prepared.base.array
    grown = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3), bool))
    assert np.array_equal(before[~grown], after[~grown])
    assert np.median(before[lesion]) > -100 and np.median(after[lesion]) < -700  # soft tissue became lung
    assert 20.0 < np.std(after[lesion]) < 200.0  # noise, not a flat patch


def test_lung_sites_follow_their_rule_and_the_seed():
    prepared = scan("pyrad_lung2")
    radius = 10.0
    sites = synthetic.scan_sites(prepared, "lung", 2 * radius)
    assert [s.name for s in sites] == [f"{side} {height} {place}" for side in ("right", "left")
                                      for height in ("upper", "lower") for place in ("central", "wall", "mediastinum")]
    assert sites == synthetic.scan_sites(prepared, "lung", 2 * radius)
    assert sites != synthetic.scan_sites(prepared, "lung", 2 * radius, seed=1)
    grid = prepared.grid
    lungs = lung_mask(grid.original_intensities(), grid.mask, grid.spacing_mm)
    coordinates = np.meshgrid(*(grid.positions_mm[p] for p in ("sagittal", "coronal", "axial")), indexing="ij")
    middle = np.mean(grid.positions_mm["sagittal"][np.flatnonzero(lungs.any(axis=(1, 2)))])
    for site in sites:
        inside = sum((c - x) ** 2 for c, x in zip(coordinates, site.centre_ras)) <= radius ** 2
        in_lung = lungs[inside].mean()
        assert (site.centre_ras[0] > middle) == site.name.startswith("right"), site
        if site.name.endswith("central"):
            assert in_lung > 0.85, site  # vessels inside are part of the lung a nodule grows over
        else:
            assert 0.4 < in_lung < 0.97, site  # touching the wall or mediastinum, mostly in lung


@pytest.mark.parametrize("case, diameter, name", [
    ("pyrad_lung2", 20.0, "right upper wall"), ("pyrad_lung2", 30.0, "left lower mediastinum"),
    ("pyrad_lung2", 45.0, "right lower central"), ("pyrad_lung2", 60.0, "left upper mediastinum"),
    ("mirp_nsclc_lung1-001", 45.0, "left upper mediastinum"), ("mirp_nsclc_lung1-001", 60.0, "right lower wall")])
def test_lung_cue_finds_a_synthetic_nodule(case, diameter, name):
    """A soft-tissue nodule (30 HU) where the seeded rule puts it, in a chest CT whose real mass was
    erased: the top slice of every plane holds at least half of its largest section, the lung cue
    decided, and the mark sits on the nodule."""
    prepared = scan(case)
    site = named_site(prepared, "lung", diameter, name)
    row = synthetic.try_site(prepared, site)
    assert_found_in_every_plane(row, "lung_nodule", site)


def test_a_chest_with_nothing_in_its_lungs_falls_back_to_representative_slices():
    """pyrad_lung2 with its mass erased and nothing put in: no plane claims a nodule."""
    reference = scan("pyrad_lung2").reference
    assert {reference.planes[p].cue for p in PLANES} == {"representative"}
    assert all(s.focus_ras is None for s in reference.selected())


@pytest.mark.parametrize("case, kind, diameter, name", [
    ("mirp_sts002_ct", "tissue", 30.0, "fat 2"), ("pyrad_lung2", "tissue", 50.0, "fat 1"),
    ("mirp_nsclc_lung1-001", "tissue", 30.0, "fat 1"), ("pyrad_breast1_mr", "bright", 10.0, "foreground 3")])
def test_tissue_cue_finds_a_synthetic_mass(case, kind, diameter, name):
    """An enhancing soft-tissue mass (100 HU) in the fat of an extremity crop, of a chest wall or of
    the upper abdomen, and a bright lesion in a breast MRI crop: found in every plane by
    ``tissue_contrast``, the mark on it."""
    prepared = scan(case)
    site = named_site(prepared, kind, diameter, name)
    row = synthetic.try_site(prepared, site)
    assert_found_in_every_plane(row, "tissue_contrast", site)


@pytest.mark.parametrize("case", ["mirp_sts002_ct", "pyrad_breast1_mr"])
def test_a_body_scan_with_its_lesion_erased_shows_no_bright_blob(case):
    """The eraser fills the lesion with the tissue around it: no blob is left for ``tissue_contrast``.
    The ``mass`` cue may still answer there (a ball of muscle several centimetres across with no fat
    plane through it is what a mass looks like; erasing a mass does not restore the planes it pushed
    aside), so each plane is decided by ``mass`` or falls back to representative slices."""
    reference = scan(case).reference
    assert {reference.planes[p].cue for p in PLANES} <= {"representative", "mass"}


@pytest.mark.parametrize("case", ["mirp_nsclc_lung1-001", "pyrad_lung2", "mirp_sts002_ct", "pyrad_breast1_mr"])
def test_no_body_cue_points_at_the_couch_the_skin_or_the_faces_of_the_scan(case):
    """mirp_nsclc_lung1-001 lies on the couch (its shell joins the body in the foreground mask); the
    others are cut by the field of view. Every body cue is 0 on the couch, outside the patient, within
    its outer 10 mm and on the faces of the field of view, and each pick's mark lies inside the patient."""
    from VoteMILib.cues import CueInput, find_abnormality
    from VoteMILib.cues.tissue_contrast import BODY_RIM_MM
    from VoteMILib.preprocess import make_working_grid
    from VoteMILib.cues.morphology import depth_mm
    from VoteMILib.cues.regions import ct_body_mask, detect_region
    from VoteMILib.modality import detect_modality

    volume = ef.volume(case)
    grid = make_working_grid(volume)
    region = detect_region(grid, detect_modality(volume))
    found = find_abnormality(CueInput(grid, region))
    assert found.map.max() > 0, "the real lesion stands out"
    body = ct_body_mask(grid.original_intensities(), grid.spacing_mm) if region.modality == "CT" else grid.mask
    if case == "mirp_nsclc_lung1-001":
        couch = grid.mask & ~body
        assert couch.sum() * np.prod(grid.spacing_mm) > 20_000, "the couch (20 mL or more) is not the patient"
    assert not found.map[depth_mm(body, grid.spacing_mm) <= BODY_RIM_MM].any()
    for face in (found.map[0], found.map[-1], found.map[:, 0], found.map[:, -1], found.map[:, :, 0],
                 found.map[:, :, -1]):
        assert not face.any()
    result = ef.selection(case)
    for pick in result.selected():
        voxel = [int(np.argmin(np.abs(grid.positions_mm[p] - c)))
                 for p, c in zip(("sagittal", "coronal", "axial"), pick.mark_ras)]
        assert body[tuple(voxel)], (pick.label, pick.mark_ras)


@functools.lru_cache(maxsize=None)
def abdomen_host(case: str = "crlm_1004") -> synthetic.Scan:
    """A real abdominal CT without a mask, prepared as a host for organ lesions (nothing erased)."""
    return synthetic.prepare_scan({c.name: c for c in find_cases(ef.DATA / "abdomen")}[case])


def test_organ_sites_lie_in_enhanced_parenchyma_of_a_host_without_mask():
    """The seeded organ sites of the design host: every lesion kind at every size, each centred in
    contrast-enhanced parenchyma (not the heart between the lungs), and the lesion's density set
    against the parenchyma around it."""
    host = abdomen_host()
    assert not host.lesion.any() and not host.avoid.any(), "no mask: no real lesion to erase or avoid"
    grid = host.grid
    hu = grid.original_intensities()
    heart = synthetic.between_lungs(host.region.masks["lungs"])
    for diameter in synthetic.DIAMETERS_MM["organ"]:
        sites = synthetic.scan_sites(host, "organ", diameter)
        assert {site.name.split()[0] for site in sites} == set(synthetic.ORGAN_LESIONS), (diameter, sites)
        for site in sites:
            voxel = synthetic.grid_index(grid, site.centre_ras)
            near = hu[tuple(slice(max(v - 1, 0), v + 2) for v in voxel)]
            low, high = synthetic.PARENCHYMA_HU
            assert low <= np.median(near) <= high, (site, np.median(near))
            assert not heart[voxel], site
            value = synthetic.organ_lesion_value(grid, site)
            kind = site.name.split()[0]
            if kind == "cyst":
                assert value == synthetic.ORGAN_LESIONS["cyst"][1]
            else:
                parenchyma = value - synthetic.ORGAN_LESIONS[kind][0]
                assert low <= parenchyma <= high, (site, value)
    assert synthetic.scan_sites(host, "organ", 20.0) == synthetic.scan_sites(host, "organ", 20.0), "seeded"


def test_an_organ_lesion_is_written_at_its_density_and_scored_beside_the_baselines():
    host = abdomen_host()
    site = synthetic.scan_sites(host, "organ", 30.0)[0]
    assert site.name.startswith("hypodense")
    row = synthetic.try_site(host, site)
    assert row["kind"] == "organ" and row["diameter_mm"] == 30.0
    for plane in PLANES:
        scores = row["planes"][plane]
        assert set(scores["baselines"]) == {"random", "middle", "largest_section"}
        assert 0.0 <= scores["baselines"]["random"] < 1.0, "a 3 cm sphere is not in most slices of the abdomen"
        assert scores["hit_half"] in (0.0, 1.0) and "real_hit_half" not in scores
    # The sphere as written: the lesion's density (parenchyma - 50 HU) with the host's voxel noise.
    work = host.base.array.copy()
    value = synthetic.organ_lesion_value(host.grid, site)
    sphere = synthetic.insert_sphere(work, host.volume.ijk_to_ras, site, value, synthetic.ORGAN_NOISE_HU,
                                     np.random.default_rng(0))
    core = ndimage.binary_erosion(sphere, iterations=2)
    assert abs(float(np.median(work[core])) - value) < 5.0
    assert float(np.median(host.base.array[core])) - value > 30.0, "darker than the parenchyma it replaced"


def test_a_liver_cyst_in_the_design_host_is_found_in_every_plane_by_organ_lesion():
    """A 2 cm cyst inside the liver of the design host (crlm_1004, a chest CT down to the kidneys): no
    fat plane, no bright blob and no lung around it; the ``organ_lesion`` cue decides every plane and
    marks the cyst."""
    host = abdomen_host()
    site = named_site(host, "organ", 20.0, "cyst right 1")
    assert_found_in_every_plane(synthetic.try_site(host, site), "organ_lesion", site)
