"""Cue ``mass``: soft tissue that no fat plane crosses for centimetres, in any body scan but a chest CT.

Muscles, vessels and nerves are wrapped in fat (fascia, septa, the fat of the neurovascular bundles), so
that no point of normal soft tissue in a limb or a trunk wall lies far from fat; a mass grows through
those planes and pushes them aside, whatever its intensity against the muscle around it (sarcomas are
often within 10 HU of muscle in CT, iso- to hypointense in T1). The depth of each voxel inside fat-free
soft tissue, beyond what normal muscle bundles reach, is the cue. In CT only parts of solid soft-tissue
density count (:data:`SOLID_TISSUE_HU`): fluid and enhanced organs are as free of fat, but no mass.
Muscles of the trunk that are thick by nature come in pairs (psoas, paraspinal muscles): in a scan that
shows both sides of the body, what the mirror image across the midline shows as deep is subtracted, so
that a mass is judged against the muscle it grows in rather than against fat planes alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..preprocess import labels_in
from .evidence import LESION_SCALE_MM, Abnormality, CueInput
from .mirror import fit_midsagittal_plane, mirror_maximum
from .morphology import inside_distance
from .regions import BONE_HU, CROP_COVERAGE, side_coverage
from .tissue_contrast import SOFT_TISSUE_MAX_HU
from .tissues import FAT_PLANE_HU, mri_fat_class

#: Normal soft tissue lies at most about this far from a fat plane: muscle bundles between septa,
#: vessels and nerves in their fat, a small muscle belly (2 cm across). Shallower depths do not count.
MASS_MIN_DEPTH_MM = 10.0

#: CT: a fat-free part whose median density lies outside this band (HU) is no mass of solid soft tissue:
#: fluid (bladder, gallbladder, cysts, bowel content: 0-20 HU) below it, contrast-enhanced organ parenchyma
#: (liver and spleen 100-130 HU, kidneys 150-250 HU in the portal phase) above it, while muscle and soft-
#: tissue tumours lie at 30-70 HU.
SOLID_TISSUE_HU = (20.0, 90.0)

#: A fat-free region holding a ball of this radius (a mass 4 cm across, near the 5 cm at which a soft-
#: tissue lump is referred as a suspected sarcoma) stands out.
MASS_DEPTH_MM = 20.0


def fat_free_tissue(grid, body: np.ndarray, ct: bool, fat=None) -> np.ndarray:
    """Working voxels of soft tissue behind which no original voxel is fat (or bone, or air).

    CT: fat lies below :data:`FAT_PLANE_HU`, bone above :data:`BONE_HU`. MRI: ``fat`` is
    :func:`mri_fat_class` of the grid's 0..1 intensities (computed unless given)."""
    darkest, brightest = grid.block_extremes()
    if ct:
        return body & (darkest > FAT_PLANE_HU) & (brightest < BONE_HU)
    threshold, fat_is_bright = fat if fat is not None else mri_fat_class(grid.data, body, grid.spacing_mm)
    low, high = grid.intensity_range
    threshold = low + threshold * (high - low)  # the extremes are in the volume's own units
    return body & ((brightest < threshold) if fat_is_bright else (darkest > threshold))


def mass_map(grid, body: np.ndarray, ct: bool, fat=None):
    """How deep each voxel lies inside fat-free soft tissue (:func:`fat_free_tissue`), beyond
    :data:`MASS_MIN_DEPTH_MM`, in units of :data:`MASS_DEPTH_MM` (1: a mass that stands out): in CT
    of solid parts only (:func:`solid_parts`), and of all fat-free tissue (what a mass is compared with
    across the midline, :func:`unpaired`). Two maps.

    The faces of the field of view are no edge (the tissue goes on beyond them), but within
    :data:`MASS_MIN_DEPTH_MM` of a face nothing counts."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    tissue = fat_free_tissue(grid, body, ct, fat)
    depth = inside_distance(tissue, spacing).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0  # no fat anywhere: nothing to measure a mass against
    # Beside a face the depth is measured into tissue the scan does not show: no evidence there.
    margin = np.ceil(MASS_MIN_DEPTH_MM / spacing).astype(int)
    beside_face = np.zeros(depth.shape, bool)
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = slice(0, margin[axis])
        beside_face[tuple(index)] = True
        index[axis] = slice(depth.shape[axis] - margin[axis], None)
        beside_face[tuple(index)] = True
    solid = solid_parts(depth > MASS_MIN_DEPTH_MM, grid.original_intensities()) if ct else True
    deep = np.where(beside_face, 0.0, depth)
    units = MASS_DEPTH_MM - MASS_MIN_DEPTH_MM
    every = np.clip((deep - MASS_MIN_DEPTH_MM) / units, 0.0, None).astype(np.float32)
    return np.where(solid, every, 0.0).astype(np.float32), every


def solid_parts(deep: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The connected parts of ``deep`` whose median density lies within :data:`SOLID_TISSUE_HU`."""
    labels, count = ndimage.label(deep)
    if count == 0:
        return deep
    index = np.arange(1, count + 1)
    medians = np.asarray(ndimage.median(hu, labels, index), dtype=float)
    low, high = SOLID_TISSUE_HU
    return labels_in(labels, count, index[(medians >= low) & (medians <= high)])


#: A muscle and its partner across the midline lie within this distance (mm) of each other's mirror
#: images: the two psoas or paraspinal muscles differ by a centimetre or so in place and thickness.
PAIRED_MM = 15.0


def unpaired(found: np.ndarray, deep: np.ndarray, values: np.ndarray, body: np.ndarray, spacing_mm, ct: bool,
             seed: int = 0):
    """``found`` less the largest ``deep`` (the depth of all fat-free tissue, in the same units) near each
    point's mirror image across the body's midsagittal plane (:data:`PAIRED_MM`), where the scan shows
    both sides of the body: the sides of the field of view cut the body on less than
    :data:`CROP_COVERAGE` of their area (a crop of a limb or of one side has no mirror partner in view,
    and is left as it is)."""
    if not found.max() >= 1.0 or side_coverage(body) >= CROP_COVERAGE:
        return found
    spacing = np.asarray(spacing_mm, dtype=float)
    # The midline from the body's outline, spine and organs at lesion scale (air and fat to soft tissue).
    shown = np.clip(values, -1000.0, SOFT_TISSUE_MAX_HU) if ct else values
    plane = fit_midsagittal_plane(ndimage.gaussian_filter(shown, LESION_SCALE_MM / spacing), body, seed=seed)
    points = np.argwhere(deep > 0)  # every voxel of ``found`` is one of them
    partner = mirror_maximum(deep[tuple(points.T)], points, found.shape, plane, spacing, PAIRED_MM)
    out = np.zeros(found.shape, np.float32)
    out[tuple(points.T)] = np.maximum(found[tuple(points.T)] - partner, 0.0)
    return out


def find(scan: CueInput) -> Abnormality:
    """The ``mass`` evidence of a scan (1: a mass that stands out), less its mirror image's where the
    scan shows both sides of the body (:func:`unpaired`)."""
    found, deep = mass_map(scan.grid, scan.body, scan.ct, scan.fat)
    found = unpaired(found, deep, scan.values, scan.body, scan.spacing, scan.ct, scan.seed)
    return Abnormality(found, scan.spacing, "mass", threshold=1.0, at_lesion_scale=True)
