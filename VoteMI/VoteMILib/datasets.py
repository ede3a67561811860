"""Cases on disk, the one reader of case folders and case tables.

* :func:`discover_cases`: the inputs of ``votemi batch`` (folders holding ``image.*``, a DICOM series, loose
  image files or sub-folders; tables, ``cases.tsv`` of ``votemi bench`` or any CSV with an ``image`` column;
  single image files), and through :func:`read_case_table` the datasets of ``votemi eval``
  (:mod:`VoteMILib.evaluate`).
* :func:`find_cases` and :func:`bench_cases`: folders of scans with lesion masks (``cases.tsv`` or case
  sub-folders), by half of the design/check split, read by ``votemi bench`` (:mod:`VoteMILib.bench`), the synthetic
  lesions (:mod:`VoteMILib.synthetic`) and encoder training (:mod:`VoteMILib.training`).
* :func:`load_mask`: a lesion mask on the image grid.

Both read tables with :func:`_read_rows` and give :class:`Case`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .volumes import VolumeError

#: Image files a folder may hold (DICOM series are recognised by content).
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Names of files that are labels of an image, never cases of their own.
LABEL_PREFIXES = ("mask", "label", "seg")
#: The longest part of a case name, in bytes: file systems allow 255 per name, and the outputs add ``.json``
#: and a temporary file's ``.<name>.XXXXXXXX.part`` (:func:`~VoteMILib.outputs.write_atomic`) to it.
MAX_NAME_BYTES = 200


class CaseError(ValueError):
    """Inputs that give no usable list of cases (no such input, an unreadable table, two cases of one name)."""


@dataclass
class Case:
    """One scan.

    Attributes
    ----------
    name : str
        Unique within a batch; names the output files (``cases/<name>.json``), so it may hold ``/``.
    image : str
        Image file or DICOM folder.
    mask : str or None
        Lesion mask (``votemi bench``).
    extras : list of str
        Other sequences of the same patient to vote with (``votemi select --extra``).
    source : str or None
        Collection and acquisition (:func:`VoteMILib.bench_sources.source_of`); None: from the repository's table.
    key_images : str or None
        Key-image ground truth instead of a mask: a DICOM Key Object Selection document or a reports CSV
        (:mod:`VoteMILib.keyimages`); the image is then a DICOM series folder.
    fields : dict
        The other columns of the case's table row (``votemi eval`` reads its questions from them).
    """

    name: str
    image: str
    mask: str | None = None
    extras: list = field(default_factory=list)
    source: str | None = None
    key_images: str | None = None
    fields: dict = field(default_factory=dict)

    def input_files(self) -> list:
        """Every file the case reads (the files of a DICOM folder, then the extras)."""
        return [*files_of(self.image), *(path for extra in self.extras for path in files_of(extra))]


# ---------------------------------------------------------------------------------------------
# Files and names


def files_of(path) -> list:
    """The files of a folder (a DICOM series), sorted; a file alone."""
    if os.path.isdir(path):
        return sorted(os.path.join(path, name) for name in os.listdir(path)
                      if os.path.isfile(os.path.join(path, name)))
    return [path]


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _is_label(name: str) -> bool:
    return os.path.basename(name).lower().startswith(LABEL_PREFIXES)


def _is_dicom_file(path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series_folder(folder) -> bool:
    """Whether ``folder`` holds at least two DICOM files (one file alone is an RTSTRUCT or a report)."""
    found = 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and _is_dicom_file(path):
            found += 1
            if found == 2:
                return True
    return False


def case_name(text: str) -> str:
    """A safe relative name: path separators kept as ``/``, no ``..``, nothing outside ``[\\w.-]``, and no
    part longer than :data:`MAX_NAME_BYTES` (see :func:`_short_part`)."""
    parts = [re.sub(r"[^\w.-]", "_", part) for part in re.split(r"[\\/]+", text) if part not in ("", ".")]
    parts = [_short_part("_" if part == ".." else part) for part in parts]
    return "/".join(parts) or "case"


def _short_part(part: str) -> str:
    """``part``, or when its UTF-8 form is over :data:`MAX_NAME_BYTES`, its start and a digest of the whole.

    The digest is of the whole part, so the name is the same on every run (resume finds the case again) and two
    long names that share their start stay distinct.
    """
    data = part.encode("utf-8")
    if len(data) <= MAX_NAME_BYTES:
        return part
    digest = hashlib.blake2b(data, digest_size=8).hexdigest()
    start = data[:MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")  # never half a character
    return f"{start}-{digest}"


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _name_of_image(path) -> str:
    """``brain1`` for ``.../brain1.nii.gz``, and for ``.../brain1/image.nii.gz`` (or a DICOM folder) too."""
    stem = _strip_suffix(os.path.basename(os.path.normpath(path)))
    generic = stem.lower() in ("image", "series", "dicom")
    return os.path.basename(os.path.dirname(os.path.normpath(path))) if generic else stem


# ---------------------------------------------------------------------------------------------
# Case tables


def _read_rows(path) -> list:
    """The rows of a case table, as dicts: tab-separated for ``.tsv``, else comma-separated."""
    delimiter = "\t" if os.fspath(path).lower().endswith(".tsv") else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CaseError(f"cannot read the case table {path}: {getattr(error, 'strerror', None) or error}") from None


def _row_text(row, column) -> str | None:
    return (row.get(column) or "").strip() or None


def _row_path(base, row, column) -> str | None:
    """A row's path in ``column``, relative to ``base``; None when empty."""
    text = _row_text(row, column)
    return os.path.join(base, text) if text else None


def _row_case(name, base, row, image, fields=None) -> Case:
    """The case of a table row, its paths relative to ``base``; several extras are separated by ``|`` or ``,``."""
    extras = [os.path.join(base, part.strip()) for part in re.split(r"[|,]", row.get("extra") or "") if part.strip()]
    return Case(name, os.path.join(base, image), mask=_row_path(base, row, "mask"), extras=extras,
                source=_row_text(row, "source"), key_images=_row_path(base, row, "key_images"), fields=fields or {})


def read_case_table(path) -> list:
    """Cases of a CSV/TSV with an ``image`` column (optional ``case``, ``extra``, ``mask``, ``source``,
    ``key_images``; every column but case, image and extra also kept in :attr:`Case.fields`).

    Paths are relative to the table's folder; in a ``cases.tsv`` of ``votemi bench`` (a ``case``
    column naming a sub-folder) they are relative to that sub-folder. Several extras are separated by
    ``|`` or ``,``. Names are made safe for file names (:func:`case_name`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    rows = _read_rows(path)
    if not rows or "image" not in rows[0]:
        raise CaseError(f"{path} has no 'image' column (columns: {', '.join(rows[0]) if rows else 'none'})")
    cases = []
    for number, row in enumerate(rows, 2):
        image = (row.get("image") or "").strip()
        if not image:
            raise CaseError(f"{path} line {number}: the image column is empty")
        base = _row_folder(folder, row, image)
        name = (row.get("case") or "").strip() or _name_of_image(os.path.join(base, image))
        others = {key: value for key, value in row.items() if key not in ("case", "image", "extra") and key}
        cases.append(_row_case(case_name(name), base, row, image, others))
    return cases


def _row_folder(folder, row, image) -> str:
    """The folder a row's paths are relative to: the table's, or its case sub-folder (bench's cases.tsv)."""
    case = (row.get("case") or "").strip()
    if case and not os.path.exists(os.path.join(folder, image)) and os.path.isdir(os.path.join(folder, case)):
        return os.path.join(folder, case)
    return folder


# ---------------------------------------------------------------------------------------------
# The inputs of votemi batch


def _walk(root, folder) -> list:
    """Cases under ``folder``: itself if it is a DICOM series or holds ``image.*``, else its loose images,
    then its sub-folders."""
    relative = os.path.relpath(folder, root)
    name = case_name(_name_of_image(root) if relative == "." else relative)
    if is_dicom_series_folder(folder):
        return [Case(name, folder)]
    entries = sorted(os.listdir(folder))
    images = [e for e in entries if os.path.isfile(os.path.join(folder, e)) and is_image_file(e)]
    main = [e for e in images if _strip_suffix(e).lower() == "image"]
    if main:
        return [Case(name, os.path.join(folder, main[0]))]
    prefix = "" if relative == "." else relative + "/"
    cases = [Case(case_name(prefix + _strip_suffix(e)), os.path.join(folder, e))
             for e in images if not _is_label(e)]
    for entry in entries:
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and not entry.startswith("."):
            cases.extend(_walk(root, path))
    return cases


def discover_cases(inputs) -> list:
    """The cases of every INPUT of ``votemi batch``, in order.

    Raises
    ------
    CaseError
        For an input that does not exist, holds no case, or two cases of the same name.
    """
    cases = []
    for item in inputs:
        path = os.path.abspath(item)
        if os.path.isdir(path):
            table = os.path.join(path, "cases.tsv")
            found = read_case_table(table) if os.path.isfile(table) else _walk(path, path)
        elif os.path.isfile(path) and path.lower().endswith((".csv", ".tsv")):
            found = read_case_table(path)
        elif os.path.isfile(path) and is_image_file(path):
            found = [Case(case_name(_name_of_image(path)), path)]
        else:
            raise CaseError(f"{item}: no such folder, case table (.csv, .tsv) or image file")
        if not found:
            raise CaseError(f"{item} holds no case (no cases.tsv, DICOM series or image file)")
        cases.extend(found)
    seen = {}
    for case in cases:
        if case.name in seen:
            raise CaseError(f"two cases are named '{case.name}' ({seen[case.name]} and {case.image}); "
                            "give them a 'case' column in a CSV")
        seen[case.name] = case.image
    return cases


# ---------------------------------------------------------------------------------------------
# Bench folders (scans with lesion masks)


def find_cases(folder) -> list:
    """Cases of a folder: rows of its ``cases.tsv`` (case, image, mask, extra, optional source and key_images;
    paths relative to the case's sub-folder, names as written), or sub-folders holding ``image.*`` (or a DICOM
    ``series/`` folder), optional ``mask.*``, a key-image source (``key_images.dcm`` or ``reports.csv``) and other
    sequences."""
    from .keyimages import SOURCE_FILES

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VolumeError(f"no such folder: {folder}")
    table = os.path.join(folder, "cases.tsv")
    cases = []
    if os.path.exists(table):
        for row in _read_rows(table):
            cases.append(_row_case(row["case"], os.path.join(folder, row["case"]), row, row["image"]))
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
