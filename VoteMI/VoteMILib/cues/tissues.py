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

#: MRI: skin is 1-3 mm thick; the subcutaneous fat under it, present in every region, is looked at from
#: this depth ...
SKIN_MM = 3.0
#: ... to this one (the layer is several millimetres thick even in lean patients), which tells which
#: intensity class is fat.
SUBCUTANEOUS_MM = 10.0

#: Under fat suppression the subcutaneous layer is dark: less than this share of it in the bright class.
#: With fat bright (T1) the share is 0.33-0.72 on the design scans (0.23-0.76 with the layer's depths
#: at 70-130 %): skin folds, vessels and crops that cut the layer keep it well below 1.
FAT_SUPPRESSED_SHARE = 0.15


def mri_fat_class(values: np.ndarray, body: np.ndarray, spacing_mm):
    """(threshold, fat_is_bright) of an MRI's body voxels, in the units of ``values``.

    MRI has no fixed scale: the body's voxels fall into two classes at Otsu's threshold; fat is the
    bright one (T1 and T2 fast spin echo, the usual anatomical sequences) unless the subcutaneous layer
    (:data:`SKIN_MM` to :data:`SUBCUTANEOUS_MM` under the body's surface) is nearly all dark
    (:data:`FAT_SUPPRESSED_SHARE`): a fat-suppressed sequence."""
    threshold = otsu_threshold(values[body])
    layer = body & deeper_than(body, spacing_mm, SKIN_MM) & ~deeper_than(body, spacing_mm, SUBCUTANEOUS_MM)
    fat_is_bright = not (layer.any() and np.mean(values[layer] > threshold) < FAT_SUPPRESSED_SHARE)
    return threshold, fat_is_bright
