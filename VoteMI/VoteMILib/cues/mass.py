"""Cue ``mass``: soft tissue that no fat plane crosses for centimetres, in any body scan but a chest CT.

Muscles, vessels and nerves are wrapped in fat (fascia, septa, the fat of the neurovascular bundles), so
that no point of normal soft tissue in a limb or a trunk wall lies far from fat; a mass grows through
those planes and pushes them aside, whatever its intensity against the muscle around it (sarcomas are
often within 10 HU of muscle in CT, iso- to hypointense in T1). The depth of each voxel inside fat-free
soft tissue, beyond what normal muscle bundles reach, is the cue. In CT only parts of solid soft-tissue
density count (:data:`SOLID_TISSUE_HU`): fluid and enhanced organs are as free of fat, but no mass.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..preprocess import labels_in
from .evidence import Abnormality, CueInput
from .morphology import inside_distance
from .regions import BONE_HU
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


def mass_map(grid, body: np.ndarray, ct: bool, fat=None) -> np.ndarray:
    """How deep each voxel lies inside fat-free soft tissue (:func:`fat_free_tissue`), beyond
    :data:`MASS_MIN_DEPTH_MM`, in units of :data:`MASS_DEPTH_MM` (1: a mass that stands out).

    The faces of the field of view are no edge (the tissue goes on beyond them), but within
    :data:`MASS_MIN_DEPTH_MM` of a face nothing counts."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    tissue = fat_free_tissue(grid, body, ct, fat)
    depth = inside_distance(tissue, spacing).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0  # no fat anywhere: nothing to measure a mass against
    if ct:
        depth[~solid_parts(depth > MASS_MIN_DEPTH_MM, grid.original_intensities())] = 0.0
    # Beside a face the depth is measured into tissue the scan does not show: no evidence there.
    margin = np.ceil(MASS_MIN_DEPTH_MM / spacing).astype(int)
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = slice(0, margin[axis])
        depth[tuple(index)] = 0.0
        index[axis] = slice(depth.shape[axis] - margin[axis], None)
        depth[tuple(index)] = 0.0
    return np.clip((depth - MASS_MIN_DEPTH_MM) / (MASS_DEPTH_MM - MASS_MIN_DEPTH_MM), 0.0, None)


def solid_parts(deep: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The connected parts of ``deep`` whose median density lies within :data:`SOLID_TISSUE_HU`."""
    labels, count = ndimage.label(deep)
    if count == 0:
        return deep
    index = np.arange(1, count + 1)
    medians = np.asarray(ndimage.median(hu, labels, index), dtype=float)
    low, high = SOLID_TISSUE_HU
    return labels_in(labels, count, index[(medians >= low) & (medians <= high)])


def find(scan: CueInput) -> Abnormality:
    """The ``mass`` evidence of a scan (1: a mass that stands out)."""
    return Abnormality(mass_map(scan.grid, scan.body, scan.ct, scan.fat), scan.spacing, "mass", threshold=1.0,
                       at_lesion_scale=True)
