"""Cue ``focal`` (head MRI): a small lesion, bright or dark, that the other side of the brain does not show.

The asymmetry cue compares both sides at lesion scale (centimetres), where a lesion under about
15 mm is lost among the sulci and vessels that never mirror exactly. This cue looks for compact
blobs instead: the scale-normalised Laplacian of the brain at small lesion radii, bright and dark
apart, minus the strongest blob of the same sign near the mirror image (the choroid plexus, paired
vessels and the horns of the ventricles have one there). What is left is measured against how much
the two sides differ in its own neighbourhood, so that regions that are never quite symmetric (the
temporal poles and orbitofrontal cortex over the skull base) need more. It counts only where it
stands out by :data:`FOCAL_Z` such spreads, and decides a plane's picks where the asymmetry shows
nothing but anatomy there: a large lesion, found by the asymmetry, shifts the ventricles and sulci
of the other side, which this cue would take for small lesions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .evidence import Abnormality, CueInput, sigma_voxels
from .morphology import box_maximum

#: Lesion radii looked for (mm): metastases, small infarcts and demyelinating plaques 8-18 mm across.
#: A smaller lesion spans one or two voxels of the 2 mm working grid; a larger one the asymmetry sees.
RADII_MM = (4.0, 6.0, 9.0)
#: A blob is compared with its mirror image only when the midsagittal plane lies beyond its radius plus
#: this margin (mm): nearer, the blob and its mirror image overlap (the falx, midline vessels).
MIDLINE_MARGIN_MM = 2.0
#: The mirror side's strongest blob is looked for this far around the mirror image (mm): the plane's
#: fit and normal left-right differences in anatomy shift paired structures by a few millimetres.
MIRROR_REACH_MM = 4.0
#: The neighbourhood (mm, a cube's side: about a lobe's width) over which the usual size of left-right
#: blob differences is measured.
LOCAL_MM = 40.0
#: A small lesion stands out when its blob exceeds what the mirror side shows by this many local spreads
#: (root mean square of the left-right differences around it). On the design half a normal brain
#: (Colin27) peaks at 1.1 and the bed of an erased glioma (tcga_fg_6692) at 1.9.
FOCAL_Z = 2.5


def focal_map(data: np.ndarray, inner: np.ndarray, plane, spacing_mm) -> np.ndarray:
    """Local spreads by which each inner-head voxel's blob (bright or dark, the best radius) exceeds the
    strongest blob of the same sign around its mirror image (0 elsewhere).

    Parameters
    ----------
    data : ndarray
        Working-grid intensities.
    inner : ndarray of bool
        The head without its scalp and skull (:func:`~VoteMILib.cues.asymmetry.inner_region`).
    plane : MidsagittalPlane
    spacing_mm : sequence of float
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    # Compared on every second voxel, as the asymmetry is: a lesion of the smallest radius still spans
    # two of them, and it costs an eighth.
    step = 2
    coarse = inner[::step, ::step, ::step]
    points = np.argwhere(coarse) * step
    index = tuple(points.T)
    coordinates = points.astype(float)
    mirror = plane.reflect(coordinates).T
    from_midline = np.abs((coordinates - np.asarray(plane.centre)) @ (plane.normal * spacing))
    reach = np.maximum(1, np.round(2.0 * MIRROR_REACH_MM / spacing)).astype(int) | 1
    best = np.zeros(len(points), np.float32)
    for radius in RADII_MM:
        sigma = radius / np.sqrt(3.0)  # where a sphere of this radius answers most
        # Smoothed once, then the Laplacian by central differences: a third of the cost of
        # gaussian_laplace, which filters the volume once per axis.
        smooth = ndimage.gaussian_filter(data, sigma_voxels(sigma, spacing), truncate=3.0)
        blob = -np.float32(sigma ** 2) * _laplacian(smooth, spacing)
        compared = from_midline > radius + MIDLINE_MARGIN_MM
        differences = []
        for signed in (np.maximum(blob, 0.0), np.maximum(-blob, 0.0)):  # bright, dark
            other = ndimage.map_coordinates(box_maximum(signed, reach), mirror, order=1, mode="constant")
            differences.append(signed[index] - other)
        spread = _local_spread(differences, compared, coarse, spacing * step)
        excess = np.maximum(np.maximum(differences[0], differences[1]), 0.0)
        best = np.maximum(best, np.where(compared, excess, 0.0) / spread)
    found = np.zeros(coarse.shape, np.float32)
    found[coarse] = best
    full = found.repeat(step, axis=0).repeat(step, axis=1).repeat(step, axis=2)
    return np.where(inner, full[: inner.shape[0], : inner.shape[1], : inner.shape[2]], 0.0).astype(np.float32)


def _laplacian(data: np.ndarray, spacing) -> np.ndarray:
    """Sum of second derivatives by central differences (mm^-2), the faces repeated."""
    padded = np.pad(data, 1, mode="edge")
    total = np.zeros(data.shape, np.float32)
    core = tuple(slice(1, -1) for _ in range(3))
    for axis in range(3):
        before, after = list(core), list(core)
        before[axis], after[axis] = slice(0, -2), slice(2, None)
        total += (padded[tuple(before)] + padded[tuple(after)] - 2.0 * data) / np.float32(spacing[axis] ** 2)
    return total


def _local_spread(differences, compared, coarse, spacing) -> np.ndarray:
    """Root mean square of the left-right blob differences (both signs) over the compared voxels within
    :data:`LOCAL_MM`, at each compared voxel; no less than their robust spread over the whole head
    (a quiet neighbourhood cannot make a faint blob stand out)."""
    size = np.maximum(1, np.round(LOCAL_MM / spacing)).astype(int) | 1
    energy, weight = np.zeros(coarse.shape, np.float32), np.zeros(coarse.shape, np.float32)
    energy[coarse] = np.where(compared, (differences[0] ** 2 + differences[1] ** 2) / 2.0, 0.0)
    weight[coarse] = compared
    mean = ndimage.uniform_filter(energy, size)[coarse] / np.maximum(ndimage.uniform_filter(weight, size)[coarse], 1e-3)
    values = np.concatenate([d[compared] for d in differences])
    floor = 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0
    return np.maximum(np.sqrt(np.maximum(mean, 0.0)), max(floor, 1e-12))


def find(scan: CueInput, inner: np.ndarray, plane) -> Abnormality | None:
    """The head's ``focal`` evidence where a small lesion stands out (None where none does, or in CT)."""
    if scan.ct:
        return None
    found = focal_map(scan.channels[0], inner, plane, scan.spacing)
    if not found.max() >= FOCAL_Z:
        return None
    # Only what stands out votes: the many faint left-right differences of a normal brain would
    # otherwise outvote one small lesion.
    found = np.where(found >= FOCAL_Z, found, 0.0).astype(np.float32)
    return Abnormality(found, np.asarray(scan.spacing, dtype=float), "focal", plane, threshold=FOCAL_Z,
                       at_lesion_scale=True)
