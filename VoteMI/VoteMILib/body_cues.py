"""What stands out within its tissue in a body scan, without labels.

Outside the head the body is not mirror-symmetric as a whole (heart, liver, bowel), so the
default score cannot compare left with right everywhere. Two cues take its place:

- ``lung_nodule`` (chest CT): solid tissue where aerated lung surrounds it on most sides and the
  mirror image across the midline is aerated lung. The lungs are a pair, so a nodule or mass is
  solid where the other lung is air; the heart and mediastinum are not surrounded by lung, and
  both hila, which hold large vessels, mirror each other.
- ``tissue_contrast`` (any other body scan, CT or MRI): bright blobs at lesion scale: where the
  intensity peaks in all three directions against its surroundings (a mass in fat or muscle,
  a lesion in breast tissue), which edges (skin, organ borders: plate-like) and vessels and
  bowel (tube-like) do not.

Both give a map on the working grid; :func:`VoteMILib.abnormality.evidence` turns it into vote
weights. The scales are anatomical (HU bands of air, soft tissue and bone; lesion sizes in mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .abnormality import LESION_SCALE_MM, Abnormality, fit_midsagittal_plane, mirrored_values
from .preprocess import block_mean
from .regions import AERATED_HU, BONE_HU, depth_mm, lung_mask

#: The outer layer of the body left out: skin and subcutaneous tissue, the contact with the table,
#: where intensity changes most and which no cue should point at.
BODY_RIM_MM = 10.0
#: A nodule is surrounded by lung when lung lies within this distance in most directions: a mass
#: up to 6 cm across still reaches lung from its centre.
ENCLOSURE_MM = 30.0
#: Of the six directions along the anatomical axes, lung must be reached in at least this many
#: (more than half: a mass against the chest wall has lung on five sides, the chest wall on one).
ENCLOSURE_SIDES = 4
#: Radii of the lesions looked for by ``tissue_contrast``: a 1.4 cm nodule to a 5.5 cm mass
#: (Gaussian scales radius / sqrt(3), at which a sphere of that radius answers most).
BLOB_RADII_MM = (7.0, 14.0, 28.0)
#: ``lung_nodule`` stands out where at least half of a lesion-scale neighbourhood is such tissue
#: (a nodule of about 1 cm).
LUNG_NODULE_MIN = 0.5
#: ``tissue_contrast`` stands out for a blob at least this much brighter than its surroundings:
#: soft tissue against fat (about 100 HU) in CT, a fifth of the foreground's intensity range in MRI.
MIN_CONTRAST_HU = 100.0
MIN_CONTRAST_MRI = 0.2
#: What a Gaussian blob of contrast 1 answers at its own scale (see :func:`tissue_contrast_map`).
BLOB_ANSWER = 0.18
#: Soft tissue stops here: bone and contrast-enhanced vessels above it are expected anatomy, so
#: ``tissue_contrast`` sees them as soft tissue rather than as the brightest blobs of the scan.
SOFT_TISSUE_MAX_HU = 100.0


def body_abnormality(grid, region, seed: int = 0) -> Abnormality:
    """The body cue of a region ("chest": ``lung_nodule``; else ``tissue_contrast``) on a working grid."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    ct = region.modality == "CT"
    if region.name == "chest":
        found = lung_nodule_map(grid.original_intensities(), grid.mask, spacing, seed=seed)
        return Abnormality(found, spacing, "lung_nodule", threshold=LUNG_NODULE_MIN)
    values = grid.original_intensities() if ct else grid.data
    threshold = BLOB_ANSWER * (MIN_CONTRAST_HU if ct else MIN_CONTRAST_MRI)
    return Abnormality(tissue_contrast_map(values, grid.mask, spacing, ct), spacing, "tissue_contrast",
                       threshold=threshold, at_lesion_scale=True)


def lung_nodule_map(hu: np.ndarray, body: np.ndarray, spacing_mm, seed: int = 0) -> np.ndarray:
    """Solid tissue enclosed by lung whose mirror image is aerated lung (0..1 per voxel).

    Parameters
    ----------
    hu : ndarray
        Working-grid intensities in Hounsfield units, axes (R, A, S).
    body : ndarray of bool
        The body (foreground).
    spacing_mm : sequence of float
    seed : int
        Seeds the points the midsagittal plane is fitted on.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    lungs = lung_mask(hu, body, spacing)
    solid = (hu >= AERATED_HU) & (hu < BONE_HU) & (depth_mm(body, spacing) > BODY_RIM_MM)
    enclosed = solid & (directions_reaching(lungs, spacing, ENCLOSURE_MM) >= ENCLOSURE_SIDES)
    out = np.zeros(hu.shape, np.float32)
    if not enclosed.any():
        return out
    sigma = LESION_SCALE_MM / spacing
    # The midline of the chest from its outline, spine and lungs at lesion scale (air to soft tissue).
    outline = ndimage.gaussian_filter(np.clip(hu, -1000.0, SOFT_TISSUE_MAX_HU), sigma)
    plane = fit_midsagittal_plane(outline, body, seed=seed)
    aerated = ndimage.gaussian_filter(lungs.astype(np.float32), sigma)
    out[enclosed] = mirrored_values(aerated, plane, np.argwhere(enclosed).astype(float))
    return out


def directions_reaching(target: np.ndarray, spacing_mm, distance_mm: float) -> np.ndarray:
    """For every voxel, in how many of the six axis directions ``target`` lies within ``distance_mm``."""
    count = np.zeros(target.shape, np.int8)
    far = np.iinfo(np.int32).max // 2
    for axis in range(3):
        index = np.arange(target.shape[axis], dtype=np.int32).reshape([-1 if a == axis else 1 for a in range(3)])
        reach = distance_mm / float(spacing_mm[axis])
        below = np.maximum.accumulate(np.where(target, index, -far), axis=axis)
        above = np.flip(np.minimum.accumulate(np.flip(np.where(target, index, far), axis), axis=axis), axis)
        count += (index - below <= reach).astype(np.int8)
        count += (above - index <= reach).astype(np.int8)
    return count


def tissue_contrast_map(values: np.ndarray, body: np.ndarray, spacing_mm, ct: bool) -> np.ndarray:
    """Bright-blob strength at lesion scales, in the intensity units of ``values``.

    At each scale the Hessian of the smoothed intensities is taken; a bright blob curves down in
    all three directions, so the least curvature (the largest eigenvalue, negated) measures it,
    scale-normalised (times sigma^2) so that scales compare. A Gaussian blob of contrast C answers
    with about 0.18 C at its own scale. Coarser scales run on block-averaged copies (two voxels
    per sigma), which keeps the cost at that of the finest scale.

    Parameters
    ----------
    values : ndarray
        Working-grid intensities: Hounsfield units for CT (clipped to air..soft tissue here),
        the grid's 0..1 scaled intensities for MRI.
    ct : bool
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    data = np.clip(values, -1000.0, SOFT_TISSUE_MAX_HU).astype(np.float32) if ct else values.astype(np.float32)
    extent = np.asarray(data.shape) * spacing
    out = np.zeros(data.shape, np.float32)
    level, factor = data, 1
    for radius in BLOB_RADII_MM:
        sigma = radius / np.sqrt(3.0)
        if 2 * radius > extent.min():  # the field of view must hold the lesion
            break
        while sigma / (spacing.min() * factor * 2) >= 1.0 and min(level.shape) >= 16:
            level, factor = block_mean(level, (2, 2, 2)), factor * 2
        step = spacing * factor
        smooth = ndimage.gaussian_filter(level, sigma / step, mode="nearest")
        strength = np.maximum(-largest_hessian_eigenvalue(smooth, step), 0.0) * sigma ** 2
        # Within one sigma of a face the field of view cuts what the blob is compared with.
        margin = np.ceil(sigma / step).astype(int)
        edge = np.zeros(strength.shape, bool)
        edge[margin[0]:-margin[0] or None, margin[1]:-margin[1] or None, margin[2]:-margin[2] or None] = True
        out = np.maximum(out, _upsample(np.where(edge, strength, 0.0), factor, data.shape))
    return np.where(depth_mm(body, spacing) > BODY_RIM_MM, out, 0.0).astype(np.float32)


def largest_hessian_eigenvalue(data: np.ndarray, spacing) -> np.ndarray:
    """Largest eigenvalue of the Hessian (finite differences) at every voxel, in closed form."""
    first = np.gradient(data, *spacing)
    hxx, hxy, hxz = np.gradient(first[0], *spacing)
    hyy, hyz = np.gradient(first[1], *spacing[1:], axis=(1, 2))
    hzz = np.gradient(first[2], spacing[2], axis=2)
    # Eigenvalues of a symmetric 3x3 matrix by the trigonometric method (Smith, 1961).
    mean = (hxx + hyy + hzz) / 3.0
    off = hxy ** 2 + hxz ** 2 + hyz ** 2
    scale = np.sqrt(((hxx - mean) ** 2 + (hyy - mean) ** 2 + (hzz - mean) ** 2 + 2.0 * off) / 6.0) + 1e-12
    bxx, byy, bzz = (hxx - mean) / scale, (hyy - mean) / scale, (hzz - mean) / scale
    bxy, bxz, byz = hxy / scale, hxz / scale, hyz / scale
    det = bxx * (byy * bzz - byz ** 2) - bxy * (bxy * bzz - byz * bxz) + bxz * (bxy * byz - byy * bxz)
    angle = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    return (mean + 2.0 * scale * np.cos(angle)).astype(np.float32)


def _upsample(coarse: np.ndarray, factor: int, shape) -> np.ndarray:
    """Repeat each voxel ``factor`` times per axis and fit to ``shape`` (edge voxels repeated)."""
    if factor == 1:
        return coarse
    full = coarse.repeat(factor, axis=0).repeat(factor, axis=1).repeat(factor, axis=2)
    pad = [(0, max(0, shape[a] - full.shape[a])) for a in range(3)]
    return np.pad(full, pad, mode="edge")[: shape[0], : shape[1], : shape[2]]
