"""Tissue classes of a body scan: fat, soft tissue and bone, by Hounsfield units in CT and by the two
intensity classes of an MRI's body voxels."""

from __future__ import annotations

import numpy as np

from .morphology import deeper_than, otsu_threshold

#: A fat plane in CT: fat is -150..-50 HU (typically -100), muscle and organs +20..+80 HU (typically
#: +50). A plane one original voxel thick, after the binomial smoothing of
#: :meth:`~VoteMILib.preprocess.WorkingGrid.block_extremes`, reads as the mean of fat and muscle
#: (-25 HU): the threshold sits just above it, five noise deviations of smoothed muscle below muscle.
FAT_PLANE_HU = -20.0

#: MRI: subcutaneous fat is the body's outer layer this deep (skin is 1-3 mm; fat under it several mm
#: in every region), which tells which intensity class is fat.
SUBCUTANEOUS_MM = 5.0

#: Under fat suppression the subcutaneous layer is dark: less than this share of it in the bright
#: class. Skin, partial volume with the air and crops that leave little skin in view keep the share
#: of a T1's bright fat layer low (0.07-0.7 on the design scans), so only a nearly all-dark rim counts.
FAT_SUPPRESSED_RIM = 0.05


def mri_fat_class(values: np.ndarray, body: np.ndarray, spacing_mm):
    """(threshold, fat_is_bright) of an MRI's body voxels, in the units of ``values``.

    MRI has no fixed scale: the body's voxels fall into two classes at Otsu's threshold; fat is the
    bright one (T1 and T2 fast spin echo, the usual anatomical sequences) unless the body's outer
    :data:`SUBCUTANEOUS_MM`, where subcutaneous fat lies in every region, is nearly all dark
    (:data:`FAT_SUPPRESSED_RIM`): a fat-suppressed sequence."""
    threshold = otsu_threshold(values[body])
    rim = body & ~deeper_than(body, spacing_mm, SUBCUTANEOUS_MM)
    fat_is_bright = not (rim.any() and np.mean(values[rim] > threshold) < FAT_SUPPRESSED_RIM)
    return threshold, fat_is_bright
