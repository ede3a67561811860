"""The ``organ_lesion`` cue: lesions of either sign inside contrast-enhanced solid organs in CT.

Measured on the working grid of the design host ``abdomen/crlm_1004`` (docs/benchmark.md); the
selection-level test (a liver cyst found in every plane) is in ``test_engine_synthetic.py``."""

from __future__ import annotations

import functools

import numpy as np

import engine_fixtures as ef
from VoteMILib import synthetic
from VoteMILib.datasets import find_cases
from VoteMILib.cues import CueInput, detect_region, organ_lesion
from VoteMILib.preprocess import make_working_grid
from VoteMILib.volumes import load_volume, volume_from_array


@functools.lru_cache(maxsize=None)
def host() -> synthetic.Scan:
    return synthetic.prepare_scan({c.name: c for c in find_cases(ef.DATA / "abdomen")}["crlm_1004"])


def evidence_with(site: synthetic.Site):
    """The cue's map with one synthetic lesion put into the host, and the lesion on the working grid."""
    scan = host()
    work = scan.base.array.copy()
    sphere = synthetic.insert_sphere(work, scan.volume.ijk_to_ras, site, synthetic.organ_lesion_value(scan.grid, site),
                                     synthetic.ORGAN_NOISE_HU, np.random.default_rng(0))
    grid = make_working_grid(volume_from_array(work, scan.volume.ijk_to_ras))
    found = organ_lesion.find(CueInput(grid, detect_region(grid, "CT")))
    return found.map, synthetic.working_mask(grid, scan.volume, sphere)


def test_a_hyperdense_liver_lesion_stands_out_above_everything_else_in_the_host():
    """Brighter than the liver by 50 HU, 3 cm: the other sign of contrast from a metastasis or cyst, and
    brighter than the hepatic vessels (tubes) around it, which do not stand out."""
    site = {s.name: s for s in synthetic.scan_sites(host(), "organ", 30.0)}["hyperdense right 2"]
    found, lesion = evidence_with(site)
    assert found[lesion].max() >= 1.0
    assert found[lesion].max() > found[~lesion].max()


def test_the_organs_are_the_enhanced_liver_and_spleen_and_nothing_stands_out_in_an_unenhanced_limb():
    scan = host()
    hu = scan.grid.original_intensities()
    parenchyma = organ_lesion.enhanced_parenchyma(hu, scan.region.masks["body"], scan.region.masks["lungs"])
    labels, count = organ_lesion.organs(parenchyma, scan.grid.spacing_mm)
    volumes_ml = np.bincount(labels.ravel())[1:] * np.prod(scan.grid.spacing_mm) / 1000.0
    assert count >= 2 and volumes_ml.max() > 800.0, "the liver, and the spleen beside it"
    heart = organ_lesion.between_lungs(scan.region.masks["lungs"])
    assert not (labels > 0)[heart].any(), "the heart's blood pool enhances as much but is no organ"
    # An extremity CT: muscle and fat, no enhanced organ, no evidence.
    grid = make_working_grid(load_volume(ef.DATA / "sarcoma" / "sts005_ct" / "image.nii.gz"))
    assert not organ_lesion.find(CueInput(grid, detect_region(grid, "CT"))).map.any()


def test_thorax_levels_reach_the_chest_wall_below_the_lowest_lung_slice():
    from VoteMILib.cues.lung_nodule import THORAX_BELOW_MM, thorax_levels

    cavity = np.zeros((8, 8, 40), bool)
    cavity[2:6, 2:6, 20:35] = True
    levels = thorax_levels(cavity, (2.0, 2.0, 2.5))
    below = int(round(THORAX_BELOW_MM / 2.5))
    assert levels[20 - below:].all() and not levels[: 20 - below].any()
    assert not thorax_levels(np.zeros((8, 8, 40), bool), (2.0, 2.0, 2.5)).any(), "no cavity, no chest"


def test_a_chest_ct_down_to_the_kidneys_ranks_what_stands_out_below_the_chest_after_its_organs():
    """The design host is a chest CT that goes on to the kidneys. Its strongest soft-tissue blob (a
    bowel loop at about 66 HU) lies 7 cm below the lung bases: no chest-wall mass, so it is kept out of
    the chest's evidence and ranked after the organs' lesions, as in a body scan."""
    from VoteMILib.cues import find_abnormality, lung_nodule
    from VoteMILib.cues.lung_nodule import LUNG_NODULE_MIN, thorax_levels
    from VoteMILib.cues.regions import lung_envelopes, thoracic_cavity

    scan = host()
    cue_input = CueInput(scan.grid, scan.region)
    assert scan.region.name == "chest"
    chest, below = lung_nodule.find(cue_input), lung_nodule.find_below_thorax(cue_input)
    assert lung_nodule.find(cue_input) is chest, "the chest's maps are computed once per scan"
    lungs = scan.region.masks.get("lungs")
    levels = thorax_levels(thoracic_cavity(lung_envelopes(lungs, cue_input.spacing), cue_input.spacing),
                           cue_input.spacing)
    assert levels.any() and not levels.all()
    assert not chest.map[:, :, ~levels].any() and not below.map[:, :, levels].any()
    assert below.map.max() >= LUNG_NODULE_MIN and below.cue == "tissue_contrast"
    joined = find_abnormality(cue_input)
    assert joined.cues == ("lung_nodule", "tissue_contrast", "organ_lesion", "tissue_contrast")
    # The host's own liver lesions stand out more than the bowel loop, which then no longer counts.
    assert organ_lesion.find(cue_input).map.max() > below.map.max() / LUNG_NODULE_MIN
    assert joined.map[np.unravel_index(int(np.argmax(below.map)), below.map.shape)] == 0.0
