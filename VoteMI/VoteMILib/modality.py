"""CT or MRI, from the voxels: Hounsfield units or not (numpy only, so that the command line and the
VLM package can name it without loading scipy)."""

from __future__ import annotations

import numpy as np


def looks_like_ct(array: np.ndarray) -> bool:
    """Whether intensities are Hounsfield units.

    A CT has air near -1000 HU around or inside the body, a floor no lower than the -3024 HU
    padding scanners write, and no values beyond a few thousand HU. MRI intensities are arbitrary
    but not negative by hundreds.
    """
    flat = np.asarray(array).ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    low, p1, p99 = np.percentile(sample, (0, 1, 99))
    return bool(low >= -3100 and p1 <= -500 and p99 <= 4000 and np.mean(sample <= -900) >= 0.01)


def detect_modality(volume) -> str:
    """"CT" or "MRI" from the intensities; a volume's own ``metadata["modality"]`` (e.g. DICOM) wins."""
    declared = str(getattr(volume, "metadata", {}).get("modality", "")).upper()
    if declared in ("CT", "MR", "MRI"):
        return "CT" if declared == "CT" else "MRI"
    return "CT" if looks_like_ct(volume.array) else "MRI"
