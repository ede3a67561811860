"""Selection beyond the brain: the region detected from the voxels, the body cues on real CT and MRI,
the fallback to representative slices on a normal brain, the per-plane cue in the JSON and
region-fitting CT windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import cli
from VoteMILib.geometry import PLANES
from VoteMILib.preprocess import make_working_grid
from VoteMILib.cues import CUES, detect_region
from VoteMILib.modality import detect_modality
from VoteMILib.render import choose_windowing, render_windowed
from VoteMILib.selection import select_slices
from VoteMILib.volumes import load_volume, volume_from_array

#: What each shared case shows (from the data's README): brains, two chest CTs, an extremity CT crop
#: and a breast MRI crop.
EXPECTED_REGION = {"pyradiomics_brain1": ("MRI", "head"), "pyradiomics_brain2": ("MRI", "head"),
                   "tcga_du_7294": ("MRI", "head"), "tcga_fg_6692": ("MRI", "head"), "aurora_met": ("MRI", "head"),
                   "brats_gli_00001": ("MRI", "head"), "pyrad_lung2": ("CT", "chest"),
                   "mirp_nsclc_lung1-001": ("CT", "chest"), "mirp_sts002_ct": ("CT", "body"),
                   "pyrad_breast1_mr": ("MRI", "body")}


def region_of(volume):
    return detect_region(make_working_grid(volume), detect_modality(volume))


@pytest.mark.parametrize("case", sorted(EXPECTED_REGION))
def test_region_of_every_shared_case(case):
    assert case in ef.cases(), f"{case} missing from ../shared/data"
    region = region_of(ef.volume(case))
    assert (region.modality, region.name) == EXPECTED_REGION[case], region.measures


def test_colin27_is_a_head_and_a_reoriented_copy_too():
    brain = load_volume(ef.COLIN27)
    assert region_of(brain).name == "head"
    # The same voxels stored with I and J swapped and K reversed (a permuted, flipped copy).
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, brain.size_ijk[2] - 1], [0, 0, 0, 1]], float)
    copy = volume_from_array(np.ascontiguousarray(brain.array.transpose(0, 2, 1)[::-1]),
                             brain.ijk_to_ras @ swap, name="colin27 permuted")
    assert region_of(copy).name == "head"


def test_every_case_gives_finite_scores_and_names_its_cue():
    for case in sorted(EXPECTED_REGION):
        result = ef.selection(case)
        assert result.region["name"] == EXPECTED_REGION[case][1]
        for plane in PLANES:
            assert np.isfinite(result.planes[plane].scores).all(), (case, plane)
            assert result.planes[plane].cue in CUES


@pytest.mark.parametrize("case, cue", [("pyrad_lung2", "lung_nodule"), ("mirp_nsclc_lung1-001", "lung_nodule"),
                                       ("mirp_sts002_ct", "tissue_contrast"), ("pyrad_breast1_mr", "tissue_contrast")])
def test_body_cue_finds_the_real_lesion(case, cue):
    """On the non-brain cases the top slice of every plane holds at least half the lesion's largest section."""
    from VoteMILib.bench import plane_profiles, score_slice
    from VoteMILib.datasets import load_mask
    from VoteMILib.preprocess import foreground_mask

    volume, result = ef.volume(case), ef.selection(case)
    lesion = load_mask(ef.cases()[case]["mask"], volume)
    body = foreground_mask(volume.array)
    for plane in PLANES:
        assert result.planes[plane].cue == cue
        profile, _ = plane_profiles(volume, lesion, body, plane)
        scores = score_slice(result.planes[plane].selected[0].index, profile, result.planes[plane].positions_mm)
        assert scores["hit_half"] == 1.0, (plane, scores)


def test_normal_brain_falls_back_to_representative_slices():
    """Colin27 (a normal brain): nothing stands out, so every plane is representative and the axial pick
    lies at the basal ganglia / lateral ventricle level, not at the skull base.

    The level is taken from the head's own extent: the basal ganglia and the bodies of the lateral
    ventricles lie 65 to 110 mm below the vertex of the scalp in adults (the brain reaches about
    110 mm below the vertex at the temporal lobes, 150 mm at the cerebellum; the skull base,
    orbits and sinuses lie lower)."""
    brain = load_volume(ef.COLIN27)
    result = select_slices(brain)
    assert {result.planes[p].cue for p in PLANES} == {"representative"}
    from VoteMILib.preprocess import foreground_mask
    from VoteMILib.geometry import canonical_array

    head = canonical_array(foreground_mask(brain.array), brain.ijk_to_ras)
    axial = result.planes["axial"]
    vertex = axial.positions_mm[np.flatnonzero(head.any(axis=(0, 1)))[-1]]
    depth = vertex - axial.selected[0].position_mm
    assert 65.0 <= depth <= 110.0, f"axial pick {depth:.0f} mm below the vertex"
    assert all(s.focus_ras is None for s in result.selected())


def test_select_json_names_region_cues_and_the_window(tmp_path):
    out, pngs = tmp_path / "chest.json", tmp_path / "png"
    image = ef.cases()["mirp_sts002_ct"]["image"]
    assert cli.main(["select", str(image), "--slices-per-plane", "1", "--json", str(out), "--png-dir", str(pngs),
                     "--quiet"]) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["region"]["modality"] == "CT" and document["region"]["name"] == "body"
    assert {document["planes"][p]["cue"] for p in PLANES} == {"tissue_contrast"}
    assert document["windowing"]["source"] == "preset:soft_tissue"
    assert len(document["pngs"]) == 3


def test_chest_ct_pngs_are_in_the_lung_window(tmp_path):
    """The PNG of a chest CT is the slice in the lung window (W1500/L-600), not the brain window; the
    options choose another preset, an explicit window, or three-window RGB."""
    from PIL import Image

    case = "pyrad_lung2"
    volume, result = ef.volume(case), ef.selection(case)
    image = ef.cases()[case]["image"]
    for options, source, mode in (([], "preset:lung", "L"), (["--ct-preset", "soft_tissue"], "preset:soft_tissue", "L"),
                                  (["--window", "-1000", "400"], "display", "L"),
                                  (["--ct-preset", "three_window"], "three_window", "RGB")):
        folder, out = tmp_path / source.replace(":", "_"), tmp_path / f"{source.replace(':', '_')}.json"
        assert cli.main(["select", str(image), "--planes", "axial", "--slices-per-plane", "1", "--png-dir", str(folder),
                         "--json", str(out), "--quiet", *options]) == 0
        document = json.loads(out.read_text(encoding="utf-8"))
        assert document["windowing"]["source"] == source
        png = Image.open(document["pngs"][0])
        assert png.mode == mode
        windows = [tuple(w) for w in document["windowing"]["windows"]]
        expected = render_windowed(volume, "axial", result.planes["axial"].selected[0].index,
                                   choose_windowing(volume, ct_preset=None, window=windows[0])
                                   if len(windows) == 1 else choose_windowing(volume, ct_preset="three_window"))
        assert np.array_equal(np.asarray(png), np.asarray(expected))
    lung = choose_windowing(volume, region="chest")
    assert lung.windows == ((-1350.0, 150.0),)
    assert choose_windowing(volume).source == "preset:lung"  # region detected from the volume itself


def test_body_selection_is_deterministic():
    volume = ef.volume("mirp_sts002_ct")
    first, second = select_slices(volume, seed=4), select_slices(volume, seed=4)
    for plane in PLANES:
        assert np.array_equal(first.planes[plane].scores, second.planes[plane].scores)
        assert [s.index for s in first.planes[plane].selected] == [s.index for s in second.planes[plane].selected]
