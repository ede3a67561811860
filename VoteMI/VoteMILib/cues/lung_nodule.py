"""Cue ``lung_nodule`` (chest CT): compact solid blobs inside the lungs' envelopes, and masses in the
tissue outside the thoracic cavity (``tissue_contrast``): in the chest wall at the chest's levels, and,
ranked after the organs' lesions as in a body scan, in the upper abdomen a chest CT may show below them.

Each lung's dents up to the size of a large mass are filled (a nodule against the chest wall or the
mediastinum sits in such a dent; the heart and the mediastinum are broader and stay out); inside those
envelopes everything but lung and soft tissue (so bone and contrast-enhanced blood too) is shown as aerated
lung, so that a nodule stands free, and a blob filter at nodule scales answers to compact blobs, not to
vessels and bronchial walls (tubes), the hila (branching tubes) or the lung's rim (plates). What its mirror image across the midline also shows (both
hila, paired vessels) is subtracted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..background import start
from .blobs import BLOB_ANSWER, blob_strength
from .evidence import LESION_SCALE_MM, Abnormality, CueInput
from .mirror import fit_midsagittal_plane, mirror_maximum
from .morphology import ball_opening
from .regions import AERATED_HU, ct_body_mask, lung_envelopes, lung_mask, thoracic_cavity
from .tissue_contrast import MIN_CONTRAST_HU, SOFT_TISSUE_HU, SOFT_TISSUE_MAX_HU, tissue_contrast_map

#: Outside the lungs (the chest wall, the mediastinum) the blob filter sees aerated lung of this density.
LUNG_FILL_HU = -850.0

#: Radii of the nodules looked for: a 1.4 cm nodule to a 5.6 cm mass.
NODULE_RADII_MM = (7.0, 10.0, 14.0, 20.0, 28.0, 40.0)

#: Contrast of a solid nodule against aerated lung (about 30 HU against -850 HU), the unit of the
#: ``lung_nodule`` map before it is mapped to 0..1.
NODULE_CONTRAST_HU = 900.0

#: Blob strength beyond the mirror image's, as a share of a nodule's answer, mapped to 0..1 between
#: these: paired vessels and hila stay below the first, a solid nodule of 1.5 cm reaches the second.
NODULE_STRENGTH = (0.2, 0.5)

#: The mirror image's strength is the largest within this distance (mm) of the mirrored point: the
#: two hila, paired vessels and bronchi lie within a centimetre or two of each other's mirror images.
MIRROR_MM = 15.0

#: Solid tissue in a lung's envelope that holds a ball of this radius (mm) is a mass, whatever its
#: shape (the hila, vessels and the dents of the aorta and heart are thinner).
BULK_MM = 20.0

#: The chest wall reaches this far (mm) below the lowest axial slice of the thoracic cavity: the lowest
#: ribs and the diaphragm's costal attachments lie a few centimetres under the costophrenic recesses.
#: Further down a chest CT shows the upper abdomen, whose bowel and vessels are no chest-wall masses.
THORAX_BELOW_MM = 30.0

#: ``lung_nodule`` stands out where its 0..1 map reaches this (a blob halfway between the two
#: :data:`NODULE_STRENGTH` bounds).
LUNG_NODULE_MIN = 0.8


def chest_abnormality(hu: np.ndarray, spacing_mm, seed: int = 0, body=None, lungs=None, background=None) -> tuple:
    """Nodules in the lungs (``lung_nodule``, 0..1) and masses in the chest wall (``tissue_contrast``,
    0..1: :data:`MIN_CONTRAST_HU` maps to :data:`LUNG_NODULE_MIN`), in one map; and the masses below the
    chest (:func:`thorax_levels`) in another, to be ranked after the organs of the upper abdomen. The
    mediastinum, full of vessels and nodes that look like blobs, is left out. ``body`` (the patient
    without the couch) and ``lungs`` are computed unless given. With a ``background`` executor
    (:attr:`.CueInput.background`) the masses' map is made there while this thread makes the nodules';
    without one, the two are made one after the other."""
    spacing = np.asarray(spacing_mm, dtype=float)
    body = ct_body_mask(hu, spacing) if body is None else body
    lungs = lung_mask(hu, body, spacing) if lungs is None else lungs
    envelope = lung_envelopes(lungs, spacing)
    # The two maps are independent and scipy.ndimage runs without the GIL: given a spare core, the
    # masses are measured there while this thread looks for nodules (the cue in about 60 % of the time).
    pending = start(background, _masses_and_levels, hu, body, envelope, spacing)
    nodules = lung_nodule_map(hu, body, lungs, envelope, spacing, seed)
    masses, levels = pending.result()
    in_thorax = levels[None, None, :]
    below = np.where(in_thorax, 0.0, masses).astype(np.float32)
    masses = np.where(in_thorax, masses, 0.0).astype(np.float32)
    found = np.maximum(nodules, masses)
    labels = (masses > nodules).astype(np.int8)
    return (Abnormality(found, spacing, "lung_nodule", threshold=LUNG_NODULE_MIN, at_lesion_scale=True,
                        labels=labels, cues=("lung_nodule", "tissue_contrast")),
            Abnormality(below, spacing, "tissue_contrast", threshold=LUNG_NODULE_MIN, at_lesion_scale=True))


def thorax_levels(cavity: np.ndarray, spacing_mm) -> np.ndarray:
    """Which axial slices (along S) show the chest: from :data:`THORAX_BELOW_MM` under the thoracic
    cavity's lowest slice up; none when there is no cavity."""
    levels = cavity.any(axis=(0, 1))
    if not levels.any():
        return levels
    lowest = int(np.flatnonzero(levels)[0]) - int(round(THORAX_BELOW_MM / float(spacing_mm[2])))
    levels[max(lowest, 0):] = True
    return levels


def _masses_and_levels(hu, body, envelope, spacing):
    cavity = thoracic_cavity(envelope, spacing)
    return chest_mass_map(hu, body, envelope, cavity, spacing), thorax_levels(cavity, spacing)


def chest_mass_map(hu: np.ndarray, body: np.ndarray, envelope: np.ndarray, cavity: np.ndarray,
                   spacing_mm) -> np.ndarray:
    """Masses outside a chest CT's thoracic cavity (``tissue_contrast``, 0..1: :data:`MIN_CONTRAST_HU`
    maps to :data:`LUNG_NODULE_MIN`)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    # The lungs shown as soft tissue: organs under the diaphragm make no edge against them.
    solid_chest = np.where(envelope, SOFT_TISSUE_HU, hu)
    contrast = tissue_contrast_map(solid_chest, body & ~cavity, spacing, ct=True) / BLOB_ANSWER
    # Only masses that stand out vote (0 below 90 % of that contrast, LUNG_NODULE_MIN at it): faint
    # blobs over a large area (organs, bowel, breast tissue) must not outvote one nodule.
    low = 0.9 * MIN_CONTRAST_HU
    return np.clip((contrast - low) / ((MIN_CONTRAST_HU - low) / LUNG_NODULE_MIN), 0.0, 1.0)


def lung_nodule_map(hu: np.ndarray, body: np.ndarray, lungs: np.ndarray, envelope: np.ndarray, spacing_mm,
                    seed: int = 0) -> np.ndarray:
    """How much each solid voxel inside the lungs' envelopes looks like part of a nodule (0..1).

    Parameters
    ----------
    hu : ndarray
        Working-grid intensities in Hounsfield units, axes (R, A, S).
    body, lungs, envelope : ndarray of bool
        The patient (without the couch), the aerated lungs, and the lungs' envelopes
        (:func:`~VoteMILib.regions.lung_envelopes`).
    spacing_mm : sequence of float
    seed : int
        Seeds the points the midsagittal plane is fitted on.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    out = np.zeros(hu.shape, np.float32)
    # Bone and contrast-enhanced blood (vessels, the heart's chambers) are expected anatomy, shown as
    # lung like everything else that is no nodule tissue: an enhanced vein at the heart's border is
    # as compact as a nodule.
    solid = envelope & ~lungs & (hu >= AERATED_HU) & (hu < SOFT_TISSUE_MAX_HU)
    if not solid.any():
        return out
    shown = np.where(solid | lungs, np.clip(hu, -1000.0, SOFT_TISSUE_MAX_HU), LUNG_FILL_HU).astype(np.float32)
    points = np.argwhere(solid)
    strength = blob_strength(shown, spacing, NODULE_RADII_MM, points, compact=True)
    strength /= BLOB_ANSWER * NODULE_CONTRAST_HU
    # The midline of the chest from its outline, spine and lungs at lesion scale (air to soft tissue).
    outline = ndimage.gaussian_filter(np.clip(hu, -1000.0, SOFT_TISSUE_MAX_HU), LESION_SCALE_MM / spacing)
    plane = fit_midsagittal_plane(outline, body, seed=seed)
    excess = strength - mirror_maximum(strength, points, hu.shape, plane, spacing, MIRROR_MM)
    low, high = NODULE_STRENGTH
    nodule = np.clip((excess - low) / (high - low), 0.0, 1.0)
    bulk = ball_opening(solid, spacing, BULK_MM)[tuple(points.T)].astype(np.float32)
    if bulk.any():
        bulk = np.clip(bulk - mirror_maximum(bulk, points, hu.shape, plane, spacing, MIRROR_MM), 0.0, 1.0)
    out[tuple(points.T)] = np.maximum(nodule, bulk)
    return out


def find(scan: CueInput) -> Abnormality:
    """The chest CT's evidence: nodules in the lungs and masses in the chest wall."""
    return scan.shared(_chest_maps)[0]


def find_below_thorax(scan: CueInput) -> Abnormality:
    """Masses a chest CT shows below the chest (``tissue_contrast``): in the upper abdomen, where they
    rank after the organs' lesions as in a body scan (bowel loops and vessels stand out there too)."""
    return scan.shared(_chest_maps)[1]


def _chest_maps(scan: CueInput) -> tuple:
    return chest_abnormality(scan.values, scan.spacing, scan.seed, scan.body, scan.region.masks.get("lungs"),
                             background=scan.background)
