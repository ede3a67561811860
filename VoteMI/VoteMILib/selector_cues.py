"""Today's cues as one descriptor map for the generic selector (issue 31): each cue of the scan's
region, in its own units of what stands out (1 = its threshold), joined by the maximum.

The cues are used as descriptors, never as gates: a cue that fires on normal anatomy only adds one
column the combiner may learn to trust less. The head's asymmetry needs the patch features of the
representative vote, which the selector does not compute, so a head contributes the cue the
asymmetry falls back to for small lesions (:mod:`.cues.focal`) instead.
"""

from __future__ import annotations

import numpy as np

from .cues import CUES_BY_REGION, CueInput
from .cues import focal
from .cues.asymmetry import at_lesion_scale, compared_region
from .cues.mirror import fit_midsagittal_plane


def cue_evidence(grid, region) -> np.ndarray:
    """Working-grid map of the strongest cue's evidence in units of its threshold (0 where none fires)."""
    scan = CueInput(grid, region, [grid.data])
    if region.name == "head":
        found = [_small_lesions(scan)]
    else:
        found = [find(scan) for find in CUES_BY_REGION[region.name]]
    evidence = np.zeros(grid.data.shape, np.float32)
    for abnormality in found:
        if abnormality is not None and abnormality.threshold > 0:
            np.maximum(evidence, abnormality.smoothed / np.float32(abnormality.threshold), out=evidence)
    return evidence


def _small_lesions(scan: CueInput):
    """The head's focal evidence, on the midline the asymmetry cue would mirror across."""
    plane = fit_midsagittal_plane(at_lesion_scale(scan.grid.data, scan.spacing), scan.grid.mask, seed=scan.seed)
    return focal.find(scan, compared_region(scan.grid), plane)
