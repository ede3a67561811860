"""Cue ``tissue_contrast``: bright blobs at lesion scale in a body scan, CT or MRI.

Where the intensity peaks in all three directions against its surroundings (a mass in fat or muscle, a
lesion in breast tissue), which edges (skin, organ borders: plate-like) and vessels and bowel
(tube-like) do not. In CT, air counts as fat and bone or contrast as soft tissue; in an MRI whose fat is
bright, the blob is looked for below fat, so that fat lobules are no blobs.
"""

from __future__ import annotations

import numpy as np

from .blobs import BLOB_ANSWER, blob_strength
from .evidence import Abnormality, CueInput
from .morphology import deeper_than

#: The outer layer of the body left out: skin and subcutaneous tissue, the contact with the table,
#: where intensity changes most and which no cue should point at.
BODY_RIM_MM = 10.0

#: Radii of the lesions looked for by ``tissue_contrast``: a 1.4 cm nodule to a 5.5 cm mass
#: (Gaussian scales radius / sqrt(3), at which a sphere of that radius answers most).
BLOB_RADII_MM = (7.0, 14.0, 28.0)

#: ``tissue_contrast`` stands out for a blob at least this much brighter than its surroundings:
#: soft tissue against fat (about 100 HU) in CT, a fifth of the foreground's intensity range in MRI.
MIN_CONTRAST_HU = 100.0

MIN_CONTRAST_MRI = 0.2

#: Fat in CT (about -100 HU) is the darkest tissue ``tissue_contrast`` compares (darker voxels that are
#: not air, the partial volume of air and tissue, count as fat).
FAT_HU = -150.0

#: Muscle and solid organs in CT.
SOFT_TISSUE_HU = 40.0

#: Soft tissue stops here: bone and contrast-enhanced vessels above it are expected anatomy, so
#: ``tissue_contrast`` sees them as soft tissue (:data:`SOFT_TISSUE_HU`) rather than as the brightest
#: blobs of the scan.
SOFT_TISSUE_MAX_HU = 100.0


def tissue_contrast_map(values: np.ndarray, body: np.ndarray, spacing_mm, ct: bool) -> np.ndarray:
    """Bright-blob strength at lesion scales (:data:`BLOB_RADII_MM`), in the intensity units of
    ``values``, deeper than :data:`BODY_RIM_MM` inside ``body`` (0 elsewhere).

    Parameters
    ----------
    values : ndarray
        Working-grid intensities: Hounsfield units for CT, the grid's 0..1 scaled intensities for
        MRI. In CT, air (around the body, in bowel) counts as fat, so that the skin and gas make no
        bright edges, and bone and contrast-filled vessels as soft tissue, so that a clavicle or a
        vertebra in fat is no bright blob.
    body : ndarray of bool
        The part of the body looked at.
    ct : bool
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    if ct:
        data = np.where(values > SOFT_TISSUE_MAX_HU, SOFT_TISSUE_HU, np.maximum(values, FAT_HU)).astype(np.float32)
    else:
        data = values.astype(np.float32)
    points = np.argwhere(deeper_than(body, spacing, BODY_RIM_MM))
    out = np.zeros(data.shape, np.float32)
    out[tuple(points.T)] = blob_strength(data, spacing, BLOB_RADII_MM, points)
    return out


def find(scan: CueInput) -> Abnormality:
    """The ``tissue_contrast`` evidence of a scan, in units of what stands out (:data:`MIN_CONTRAST_HU` in
    CT, :data:`MIN_CONTRAST_MRI` in MRI)."""
    values = scan.values
    if scan.fat is not None and scan.fat[1]:
        # Fat is the brightest tissue: a bright blob is looked for below it (as CT sees bone as soft
        # tissue), so that fat lobules and the subcutaneous layer are no blobs.
        values = np.minimum(values, np.float32(scan.fat[0]))
    threshold = BLOB_ANSWER * (MIN_CONTRAST_HU if scan.ct else MIN_CONTRAST_MRI)
    return Abnormality(tissue_contrast_map(values, scan.body, scan.spacing, scan.ct) / np.float32(threshold),
                       scan.spacing, "tissue_contrast", threshold=1.0, at_lesion_scale=True)
