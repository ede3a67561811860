"""Cases on disk: a folder of scans with lesion masks (``cases.tsv`` or case sub-folders), the masks read on
the image grid, and the cases of several folders by half of the design/check split.

Read by ``votemi bench`` (:mod:`VoteMILib.bench`), the synthetic lesions (:mod:`VoteMILib.synthetic`) and
encoder training (:mod:`VoteMILib.training`).
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass, field

import numpy as np

from .volumes import VolumeError


@dataclass
class Case:
    name: str
    image: str
    mask: str | None = None
    extras: list = field(default_factory=list)
    #: Collection and acquisition (:func:`VoteMILib.bench_sources.source_of`); None: from the repository's table.
    source: str | None = None
    #: Key-image ground truth instead of a mask: a DICOM Key Object Selection document or a reports CSV
    #: (:mod:`VoteMILib.keyimages`); the image is then a DICOM series folder.
    key_images: str | None = None


def find_cases(folder) -> list:
    """Cases of a folder: rows of its ``cases.tsv`` (case, image, mask, extra, optional source and key_images), or
    sub-folders holding ``image.*`` (or a DICOM ``series/`` folder), optional ``mask.*``, a key-image source
    (``key_images.dcm`` or ``reports.csv``) and other sequences."""
    from .keyimages import SOURCE_FILES

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VolumeError(f"no such folder: {folder}")
    table = os.path.join(folder, "cases.tsv")
    cases = []
    if os.path.exists(table):
        with open(table, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                base = os.path.join(folder, row["case"])
                extras = [os.path.join(base, e) for e in (row.get("extra") or "").split(",") if e.strip()]
                mask = os.path.join(base, row["mask"]) if (row.get("mask") or "").strip() else None
                keys = (row.get("key_images") or "").strip()
                cases.append(Case(row["case"], os.path.join(base, row["image"]), mask, extras,
                                  (row.get("source") or "").strip() or None,
                                  os.path.join(base, keys) if keys else None))
        return cases
    for sub in sorted(os.listdir(folder)):
        images = sorted(glob.glob(os.path.join(folder, sub, "image.*")))
        series = os.path.join(folder, sub, "series")
        images = images or ([series] if os.path.isdir(series) else [])
        if not images:
            continue
        masks = sorted(glob.glob(os.path.join(folder, sub, "mask.*")))
        keys = [os.path.join(folder, sub, name) for name in SOURCE_FILES
                if os.path.isfile(os.path.join(folder, sub, name))]
        others = sorted(p for p in glob.glob(os.path.join(folder, sub, "*.*")) if p not in images + masks + keys)
        cases.append(Case(sub, images[0], masks[0] if masks else None, others, key_images=keys[0] if keys else None))
    if not cases:
        raise VolumeError(f"{folder} holds no cases (no cases.tsv and no sub-folder with an image.* file or a "
                          "series/ folder)")
    return cases


def bench_cases(folders, half: str = "all") -> list:
    """The cases of every folder, of one half of the split (or all); a scan met twice (mirp_sts002_ct is
    sarcoma/sts002_ct) is scored once."""
    from .bench_split import SAME_SCAN, half_of

    cases = [case for folder in folders for case in find_cases(folder)]
    names = {case.name for case in cases}
    cases = [case for case in cases if SAME_SCAN.get(case.name) not in names]
    if half != "all":
        cases = [case for case in cases if half_of(case.name) == half]
    return cases


def load_mask(path, volume) -> np.ndarray:
    """A lesion mask (label > 0) on the voxel grid of ``volume``, in (K, J, I) order."""
    import SimpleITK as sitk

    from .volumes import ijk_to_ras_from_image

    image = sitk.ReadImage(os.fspath(path))
    same_grid = (tuple(image.GetSize()) == tuple(volume.size_ijk)
                 and np.allclose(ijk_to_ras_from_image(image), volume.ijk_to_ras, atol=1e-3))
    if not same_grid:
        reference = sitk.ReadImage(volume.path) if volume.path else None
        if reference is None:
            raise VolumeError(f"mask {path} is not on the image grid and the image has no file to resample to")
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(image) > 0
