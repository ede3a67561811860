"""Cue ``organ_lesion`` (CT): a compact region inside a contrast-enhanced solid organ whose density
differs from the parenchyma around it, darker or brighter.

In a contrast CT the liver, spleen and kidneys are the large smooth soft tissue that enhances above
muscle. Their parenchyma is found from the body's own soft-tissue histogram (the brighter of its two
classes, in parts thick and large enough to be organs), and each organ is measured against itself: its
median and robust spread. A lesion is a compact blob (1-4 cm across) of departure from that median, of
either sign, whose strength is counted in units of the organ's spread (a noise-scaled margin), and which
typical parenchyma wraps nearly all round: tubes (vessels) answer the compact blob filter weakly, and the
organ's edge, the gallbladder in its fossa, the renal sinus, bowel against an organ, a kidney merged with
the liver and bone marrow are not wrapped in typical parenchyma of the organ.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .blobs import BLOB_ANSWER, blob_strength
from .evidence import Abnormality, CueInput
from .morphology import ball_closing, ball_opening, bounding_box, fill_holes_in_plane, otsu_threshold
from .regions import BONE_HU
from .tissues import FAT_PLANE_HU
from ..preprocess import part_volumes_ml

#: Contrast-enhanced parenchyma is at least this dense (HU): portal-phase liver and spleen 100-130 HU,
#: renal cortex 150-250 HU, while unenhanced muscle and organs lie at 40-70 HU. Below it (a non-contrast
#: CT) no organ is looked at.
ENHANCED_MIN_HU = 80.0

#: An organ holds a ball of this radius (mm): liver, spleen and kidneys (5 cm thick) do; vessels (the
#: aorta is 2.5 cm across), bowel walls and the enhancing rims of muscle do not.
ORGAN_CORE_MM = 12.0

#: ... and at least this volume (mL): a kidney is 150 mL, the spleen 150-250 mL, the liver 1.5 L.
ORGAN_MIN_ML = 50.0

#: Radii of the lesions looked for (mm): 1 cm to 4 cm across.
LESION_RADII_MM = (5.0, 8.0, 12.0, 18.0)

#: Departures beyond this (HU) count as this: a cyst (100 HU below liver) stands out as much as any
#: lesion, and calcification or excreted contrast do not outshine it.
DEPARTURE_MAX_HU = 120.0

#: Typical parenchyma lies within this many robust standard deviations of its organ's median (99 % of a
#: normal organ's voxels); vessels, lesions and tissue of another organ lie beyond.
MARGIN_SIGMAS = 2.5

#: A lesion stands out (1 on the map) when it answers the blob filter as a blob this many robust standard
#: deviations of its organ from the organ's median would (its contrast over the organ's own
#: heterogeneity and noise; a normal voxel lies that far out on one side with odds of about 1 in 700).
LESION_SIGMAS = 3.0

#: Share of typical parenchyma in the shell around a lesion (out to twice its radius): a lesion inside an
#: organ is wrapped in parenchyma nearly all round; the organ's edge, the gallbladder, the renal sinus,
#: bowel against an organ, a kidney against the liver and bone marrow have other tissue on half of their
#: surroundings or more.
ENCLOSED_SHARE = 0.65


def enhanced_parenchyma(hu: np.ndarray, body: np.ndarray, lungs=None) -> np.ndarray:
    """Voxels of the brighter class of the body's soft tissue (between fat planes and bone), at least
    :data:`ENHANCED_MIN_HU`: enhanced organs, vessels and bowel wall; not between the lungs (the heart's
    blood pool and wall enhance as much)."""
    soft = body & (hu > FAT_PLANE_HU) & (hu < BONE_HU)
    if lungs is not None and lungs.any():
        soft &= ~between_lungs(lungs)
    if not soft.any():
        return soft
    threshold = max(otsu_threshold(hu[soft]), ENHANCED_MIN_HU)
    return soft & (hu >= threshold)


def between_lungs(lungs: np.ndarray) -> np.ndarray:
    """Voxels with lung on both sides along patient left-right in their axial row (axis 0): the heart
    and mediastinum, not the liver dome or spleen beside a single lung base."""
    rows = lungs.any(axis=0)
    first = np.argmax(lungs, axis=0)  # the lung voxel furthest to the patient's left in each row
    last = lungs.shape[0] - 1 - np.argmax(lungs[::-1], axis=0)
    place = np.arange(lungs.shape[0]).reshape(-1, 1, 1)
    return rows & (place > first) & (place < last) & ~lungs


def organs(parenchyma: np.ndarray, spacing_mm):
    """Labelled organs (0: none) and their count: the parts of the parenchyma that hold a ball of
    :data:`ORGAN_CORE_MM` (opened by it), of :data:`ORGAN_MIN_ML` or more."""
    spacing = np.asarray(spacing_mm, dtype=float)
    core = ball_opening(parenchyma, spacing, ORGAN_CORE_MM)
    labels, count = ndimage.label(core)
    if count == 0:
        return labels, 0
    keep = np.flatnonzero(part_volumes_ml(labels, spacing) >= ORGAN_MIN_ML)
    table = np.zeros(count + 1, labels.dtype)
    table[keep] = np.arange(1, len(keep) + 1)
    return table[labels], len(keep)


def organ_lesion_map(hu: np.ndarray, body: np.ndarray, spacing_mm, lungs=None) -> np.ndarray:
    """How much each voxel of an enhanced organ looks like part of a lesion (1: a compact blob of
    :data:`LESION_SIGMAS` of its organ's spread, enclosed by typical parenchyma); 0 elsewhere.
    ``lungs``: the aerated lungs, if any."""
    spacing = np.asarray(spacing_mm, dtype=float)
    out = np.zeros(hu.shape, np.float32)
    parenchyma = enhanced_parenchyma(hu, body, lungs)
    labels, count = organs(parenchyma, spacing)
    if count == 0:
        return out
    # Measured in the organs' bounding box and the reach of the largest lesion's surroundings.
    box = bounding_box(labels > 0, np.ceil(2 * LESION_RADII_MM[-1] / spacing).astype(int) + 1)
    hu, body, parenchyma, labels = hu[box], body[box], parenchyma[box], labels[box]
    # Each organ's outline with the lesions in it: its parenchyma closed by the largest lesion, and the
    # holes it leaves in axial slices (a lesion inside the organ, whatever its size), each voxel
    # measured against the nearest organ.
    organ = labels > 0
    outline = (ball_closing(organ, spacing, LESION_RADII_MM[-1]) | fill_holes_in_plane(organ)) & body
    nearest = ndimage.distance_transform_edt(labels == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
    owner = np.where(outline, labels[tuple(nearest)], 0)
    level, sigma = organ_levels(hu, parenchyma & (owner > 0), owner, count)
    # Typical parenchyma: within the margin of its organ's median (a kidney merged with the liver,
    # bone marrow, vessels and lesions are not).
    typical = parenchyma & (owner > 0) & (np.abs(hu - level[owner]) <= MARGIN_SIGMAS * sigma[owner])
    # The departure from the organ's median in HU, none outside the outlines and at fat (fissures, the
    # renal sinus), so that an organ's edge makes no blob.
    inside = (owner > 0) & (hu > FAT_PLANE_HU) & (hu < BONE_HU)
    departure = np.where(inside, np.clip(hu - level[owner], -DEPARTURE_MAX_HU, DEPARTURE_MAX_HU), 0.0)
    departure = departure.astype(np.float32)
    points = np.argwhere(inside)
    unit = BLOB_ANSWER * LESION_SIGMAS * sigma[owner[tuple(points.T)]]
    typical = typical.astype(np.float32)
    best = np.zeros(len(points), np.float32)
    for radius in LESION_RADII_MM:
        strength = blob_strength(departure, spacing, (radius,), points, compact=True, either_sign=True)
        np.maximum(best, np.where(wrapping(typical, spacing, radius, points) >= ENCLOSED_SHARE, strength / unit,
                                  0.0), out=best)
    found = np.zeros(hu.shape, np.float32)
    found[tuple(points.T)] = best
    out[box] = found
    return out


def organ_levels(hu: np.ndarray, own: np.ndarray, owner: np.ndarray, count: int):
    """Median and robust standard deviation (1.4826 MAD, at least 1 HU) of each organ's parenchyma,
    indexed by organ label (0: none)."""
    level = np.zeros(count + 1, np.float32)
    sigma = np.ones(count + 1, np.float32)
    for organ in range(1, count + 1):
        values = hu[own & (owner == organ)]
        if values.size:
            level[organ] = np.median(values)
            sigma[organ] = max(1.4826 * float(np.median(np.abs(values - level[organ]))), 1.0)
    return level, sigma


def wrapping(typical: np.ndarray, spacing, radius_mm: float, points: np.ndarray) -> np.ndarray:
    """Share of typical parenchyma in the shell from ``radius_mm`` to twice that around each point:
    the Gaussian mean at twice the scale with the mean at the lesion's own scale taken out (a Gaussian's
    weight grows as its sigma cubed)."""
    sigma = radius_mm / np.sqrt(3.0) / np.asarray(spacing, dtype=float)
    near = ndimage.gaussian_filter(typical, sigma)[tuple(points.T)]
    around = ndimage.gaussian_filter(typical, 2.0 * sigma)[tuple(points.T)]
    return (8.0 * around - near) / 7.0


def find(scan: CueInput) -> Abnormality:
    """The ``organ_lesion`` evidence of a CT (nothing in MRI, whose organs have no fixed density)."""
    if not scan.ct:
        return Abnormality(np.zeros(scan.values.shape, np.float32), scan.spacing, "organ_lesion", threshold=1.0,
                           at_lesion_scale=True)
    found = organ_lesion_map(scan.values, scan.body, scan.spacing, scan.region.masks.get("lungs"))
    return Abnormality(found, scan.spacing, "organ_lesion", threshold=1.0, at_lesion_scale=True)
