"""Worked examples before the question (few-shot, as in the Vote-MI paper): earlier cases with their reports.

An examples folder holds one folder per case, each with one image (a NIfTI/NRRD/MHA file, or a
``dicom`` folder) and ``report.txt``, the report written for it. VoteMI selects each example's
slices the same way as the query's, sends them in the same form (slices or contact sheets), and puts
the report after them as the model's own earlier answer.

The examples used are the ``k`` closest to the query scan by the distribution of its patch features:
every patch (the selection's 8-voxel patches on its 2 mm working grid, intensities scaled to the
foreground's 1st..99th percentile) is described by its 3x3 lowest-frequency cosine coefficients, all
descriptors of query and candidates are coded by a common k-means codebook (seeded), and each scan
becomes a histogram of codes; scans are compared by the Hellinger distance between histograms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import VLMError

REPORT_FILE = "report.txt"
#: Codebook size of the scan signatures.
CODES = 24
#: Patches per scan used for its signature (drawn with a fixed seed).
SIGNATURE_PATCHES = 3000
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz")


@dataclass
class ExampleCase:
    """One worked example: its image (file or DICOM folder), its report and its name (the folder's)."""

    name: str
    image: str
    report: str


def load_cases(folder: str) -> list:
    """The example cases of ``folder``, sorted by name.

    Raises
    ------
    VLMError
        When the folder is missing, holds no usable case, or a case lacks its image or report.
    """
    folder = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(folder):
        raise VLMError(f"examples folder not found: {folder}")
    cases = []
    for name in sorted(os.listdir(folder)):
        case = os.path.join(folder, name)
        if not os.path.isdir(case) or name.startswith("."):
            continue
        cases.append(_case(name, case))
    if not cases:
        raise VLMError(f"{folder} holds no example cases (one folder per case, each with an image and {REPORT_FILE})")
    return cases


def _case(name: str, case: str) -> ExampleCase:
    report_path = os.path.join(case, REPORT_FILE)
    try:
        with open(report_path, encoding="utf-8") as stream:
            report = stream.read().strip()
    except (OSError, UnicodeDecodeError):
        raise VLMError(f"example {case}: no readable UTF-8 {REPORT_FILE}") from None
    if not report:
        raise VLMError(f"example {case}: {REPORT_FILE} is empty")
    images = [os.path.join(case, entry) for entry in sorted(os.listdir(case))
              if entry.lower().endswith(_IMAGE_SUFFIXES) or os.path.isdir(os.path.join(case, entry))]
    if len(images) != 1:
        found = "no image" if not images else f"{len(images)} images"
        raise VLMError(f"example {case}: {found}; put exactly one image file (NIfTI, NRRD, MHA) or one DICOM folder "
                       f"beside {REPORT_FILE}")
    return ExampleCase(name, images[0], report)


def _descriptors(volume, seed: int = 0) -> np.ndarray:
    """Low-frequency cosine coefficients of the volume's patches, shape (n, 9)."""
    from ..features import PATCH_SIZE, extract_patches
    from ..preprocess import make_working_grid

    grid = make_working_grid(volume)
    patches = extract_patches(grid.data, grid.mask).pixels
    if len(patches) == 0:
        raise VLMError(f"{volume.name or 'volume'}: no foreground patches to compare")
    rng = np.random.default_rng(seed)
    if len(patches) > SIGNATURE_PATCHES:
        patches = patches[np.sort(rng.choice(len(patches), SIGNATURE_PATCHES, replace=False))]
    n = PATCH_SIZE
    basis = np.cos(np.pi * (np.arange(n)[None, :] + 0.5) * np.arange(3)[:, None] / n)  # (3, n)
    return np.einsum("ui,pij,vj->puv", basis, patches.astype(np.float64), basis).reshape(len(patches), 9) / n


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance between two histograms (0 same, 1 disjoint)."""
    return float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(p * q)))))


def signatures(volumes, seed: int = 0) -> np.ndarray:
    """Code histograms of ``volumes`` over one codebook learnt from all of them, shape (len(volumes), CODES)."""
    from scipy.cluster.vq import kmeans2

    descriptors = [_descriptors(volume, seed) for volume in volumes]
    pooled = np.concatenate(descriptors)
    scale = pooled.std(axis=0) + 1e-9
    codes = min(CODES, len(pooled))
    centroids, _ = kmeans2(pooled / scale, codes, minit="++", seed=seed)
    histograms = []
    for d in descriptors:
        nearest = np.argmin((((d / scale)[:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
        counts = np.bincount(nearest, minlength=codes).astype(float)
        histograms.append(counts / counts.sum())
    return np.array(histograms)


def nearest_cases(volume, cases, k: int, seed: int = 0) -> list:
    """The ``k`` cases closest to ``volume`` as (case, its volume, distance), closest first (ties by name)."""
    from ..volumes import VolumeError, load_volume

    loaded = []
    for case in cases:
        try:
            loaded.append(load_volume(case.image))
        except VolumeError as error:
            raise VLMError(f"example {case.name}: {error}") from None
    histograms = signatures([volume, *loaded], seed)
    distances = [hellinger(histograms[0], h) for h in histograms[1:]]
    order = sorted(range(len(cases)), key=lambda n: (round(distances[n], 9), cases[n].name))
    return [(cases[n], loaded[n], distances[n]) for n in order[:int(k)]]
