"""Key images as ground truth: the slices a radiologist marked, read from a DICOM Key Object Selection document
or from report texts that cite "series 3, image 42", resolved to slices of the case's DICOM series, and each
plane's picks scored by their distance to the nearest key image.

Sites rarely have lesion masks, but their archives hold key images. A case names its key-image source in the
``key_images`` column of ``cases.tsv``, or with a ``key_images.dcm`` or ``reports.csv`` file in its folder
(:mod:`VoteMILib.datasets`); its image must be a DICOM series folder, since the references are to its instances.
Key images are slices of the acquired series, so only the plane of acquisition (the one whose slices are the
series' own, from the direction matrix) is scored; the other planes have no key image.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
from dataclasses import dataclass, field
from math import comb

import numpy as np

from .geometry import NORMAL_INDEX, PLANES, canonical_array, plane_geometry, ras_to_ijk
from .volumes import VolumeError

#: File names that make a case folder's key-image source (datasets.find_cases reads them).
SOURCE_FILES = ("key_images.dcm", "reports.csv")
#: SOP Class UID of a Key Object Selection document.
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
#: Columns a reports CSV must have: the case's name and the report's text.
REPORT_COLUMNS = ("case", "report")
#: A pick hits when it lies within this many slices or millimetres (the larger) of a key image: the same
#: tolerance as the bench's field-of-view check, a step through the stack or a lesion edge's scale.
HIT_SLICES, HIT_MM = 2, 5.0
#: Baselines scored beside the selection: a random slice of the head or body (expected values) and the
#: middle of its extent.
BASELINES = ("random", "middle")

_NUMBER = r"\.?\s*(?:no\.?|number|nr\.?|#|:)?\s*(\d+)"
_SERIES = r"\b(?:series|ser|se)"
_IMAGE = r"\b(?:image|img|im)"
#: "image 42 of series 3" first: scanning left to right, it must win over a "series 3, image 50" that
#: would otherwise join one reference's series to the next reference's image.
_REFERENCE = re.compile(rf"{_IMAGE}{_NUMBER}\s*(?:of|in|on|from)\s+{_SERIES}{_NUMBER}"
                        rf"|{_SERIES}{_NUMBER}\s*[,;/]?\s*{_IMAGE}{_NUMBER}", re.IGNORECASE)


class KeyImageError(VolumeError):
    """Key images that cannot be read or resolved; the message is one line for the user."""


@dataclass(frozen=True)
class Instance:
    """One image of the case's DICOM series, as the references name it."""

    sop_uid: str
    series_uid: str
    series_number: int | None
    instance_number: int | None
    position_lps: tuple


@dataclass
class KeyImages:
    """The key images of one case, resolved to positions in the patient."""

    source: str
    kind: str  # "kos" or "report"
    title: str
    labels: list
    positions_ras: np.ndarray  # (n, 3)
    notes: list = field(default_factory=list)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise KeyImageError("reading key images needs pydicom: pip install pydicom (or votemi's [dicom] extra)") \
            from None
    return pydicom


def _number(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def series_instances(files) -> list:
    """The :class:`Instance` of every file of a DICOM series (headers only)."""
    pydicom = _pydicom()
    instances = []
    for name in files:
        header = pydicom.dcmread(name, stop_before_pixels=True)
        position = header.get("ImagePositionPatient")
        if position is None:
            raise KeyImageError(f"{name} has no ImagePositionPatient: its key images cannot be placed")
        instances.append(Instance(str(header.SOPInstanceUID), str(header.get("SeriesInstanceUID", "")),
                                  _number(header.get("SeriesNumber")), _number(header.get("InstanceNumber")),
                                  tuple(float(v) for v in position)))
    return instances


def read_kos(path) -> tuple:
    """Title and references ``[(series_uid or None, sop_uid), ...]`` of a Key Object Selection document.

    The content tree's IMAGE items are the selection; the evidence sequence says which series each instance is
    in (and stands for the selection when the tree has no IMAGE item).
    """
    pydicom = _pydicom()
    try:
        document = pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
    except Exception as error:  # pydicom raises many types for files that are not DICOM
        raise KeyImageError(f"{path} is not a readable DICOM file ({type(error).__name__})") from None
    sop_class = str(document.get("SOPClassUID", ""))
    if sop_class != KOS_SOP_CLASS:
        raise KeyImageError(f"{path} is not a DICOM Key Object Selection document (SOP class {sop_class or 'none'},"
                            f" modality {document.get('Modality', 'none')})")
    concept = document.get("ConceptNameCodeSequence") or []
    title = str(concept[0].get("CodeMeaning", "")) if concept else ""
    series_of = {}
    for study in document.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for item in series.get("ReferencedSOPSequence") or []:
                series_of[str(item.ReferencedSOPInstanceUID)] = str(series.SeriesInstanceUID)
    selected = [str(ref.ReferencedSOPInstanceUID) for item in document.get("ContentSequence") or []
                if item.get("ValueType") == "IMAGE" for ref in item.get("ReferencedSOPSequence") or []]
    selected = list(dict.fromkeys(selected or series_of))
    if not selected:
        raise KeyImageError(f"{path}: the Key Object Selection document references no image")
    return title, [(series_of.get(uid), uid) for uid in selected]


def parse_references(text: str) -> list:
    """``[(series_number, image_number), ...]`` cited in a report, in the order they appear.

    Reads "series 3, image 42", "Se 3 Im 42", "ser. 3 / img. 42", "series #3 image no. 42" and "image 42 of
    series 3", in any case; a report may cite several.
    """
    references = []
    for match in _REFERENCE.finditer(text or ""):
        image_first, series_after, series, image = match.groups()
        references.append((int(series_after), int(image_first)) if image_first else (int(series), int(image)))
    return references


def read_reports(path, case: str) -> list:
    """The report texts of ``case`` in a CSV with (at least) the columns ``case`` and ``report``."""
    try:
        with open(os.fspath(path), newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            missing = [name for name in REPORT_COLUMNS if name not in columns]
            if missing:
                found = ", ".join(repr(name) for name in reader.fieldnames or []) or "none"
                raise KeyImageError(f"{path} has no {' or '.join(repr(m) for m in missing)} column (columns: {found});"
                                    f" a reports CSV needs {' and '.join(REPORT_COLUMNS)}")
            texts = [row[columns["report"]] or "" for row in reader
                     if (row[columns["case"]] or "").strip() == case]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise KeyImageError(f"cannot read the reports CSV {path}: {error}") from None
    if not texts:
        raise KeyImageError(f"{path} holds no report for case {case}")
    return texts


def _resolve_kos(references, instances, path) -> tuple:
    """Instances of the case's series that a KOS references, and notes on the references to other series."""
    by_uid = {instance.sop_uid: instance for instance in instances}
    own = {instance.series_uid for instance in instances}
    found = [by_uid[uid] for _, uid in references if uid in by_uid]
    # An instance the KOS places in this series (or in no series) but that is not there: the wrong series
    # folder or a broken document, never to be silently dropped.
    missing = [uid for series, uid in references if uid not in by_uid and (series is None or series in own)]
    if missing:
        raise KeyImageError(f"{path}: {len(missing)} referenced instance(s) are not in the case's DICOM series "
                            f"(first: {missing[0]})")
    others = sorted({series for series, uid in references if uid not in by_uid})
    if not found:
        raise KeyImageError(f"{path} references no instance of the case's DICOM series (it references series "
                            f"{', '.join(others)})")
    notes = [f"{path}: {len(references) - len(found)} key image(s) of other series ignored"] if others else []
    return found, notes


def _resolve_report(references, instances, path, case) -> tuple:
    """Instances of the case's series that report references name by series and image number."""
    by_number = {(i.series_number, i.instance_number): i for i in instances}
    numbers = sorted({i.series_number for i in instances if i.series_number is not None})
    found, others = [], []
    for series, image in references:
        if (series, image) in by_number:
            found.append(by_number[(series, image)])
        elif series in numbers:
            images = sorted(i.instance_number for i in instances if i.instance_number is not None) or ["none"]
            raise KeyImageError(f"{path}: the report of case {case} cites series {series}, image {image}, but that "
                                f"series holds images {images[0]}-{images[-1]}")
        else:
            others.append(series)
    if not found:
        own = ", ".join(str(n) for n in numbers) or "unnumbered"
        raise KeyImageError(f"{path}: the report of case {case} cites series {', '.join(map(str, sorted(set(others))))}"
                            f"; the case's DICOM series is series {own}")
    notes = [f"{path}: {len(others)} reference(s) to other series ignored"] if others else []
    return found, notes


def read_source(path, case: str) -> tuple:
    """(kind, title, references) of a case's key-image source: a reports CSV (``.csv``) or a KOS (any other file).

    Read before any selection runs (``votemi bench`` checks every case first), so that a bad source fails fast.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KeyImageError(f"no such key-image file: {path}")
    if path.lower().endswith(".csv"):
        references = [ref for text in read_reports(path, case) for ref in parse_references(text)]
        if not references:
            raise KeyImageError(f"{path}: the report of case {case} cites no image (write e.g. 'series 3, image 42',"
                                " 'Se 3 Im 42' or 'image 42 of series 3')")
        return "report", "", references
    title, references = read_kos(path)
    return "kos", title, references


def load_key_images(path, dicom_files, case: str) -> KeyImages:
    """The key images of ``case`` from a KOS or a reports CSV, resolved on its DICOM series files."""
    path = os.fspath(path)
    if not dicom_files:
        raise KeyImageError(f"key images of case {case} need its image to be a DICOM series folder (they cite its "
                            "instances)")
    kind, title, references = read_source(path, case)
    instances = series_instances(dicom_files)
    if kind == "report":
        found, notes = _resolve_report(references, instances, path, case)
    else:
        found, notes = _resolve_kos(references, instances, path)
    found = list(dict.fromkeys(found))  # a report may cite one image twice
    labels = [f"series {i.series_number}, image {i.instance_number}" for i in found]
    positions = np.array([i.position_lps for i in found], dtype=float) * np.array([-1.0, -1.0, 1.0])
    return KeyImages(path, kind, title, labels, positions, notes)


def acquisition_plane(ijk_to_ras, size_ijk) -> str:
    """The anatomical plane whose slices are the series' own: the one carried by the K (slice) axis."""
    return next(plane for plane in PLANES if plane_geometry(ijk_to_ras, size_ijk, plane).ijk_axis == 2)


def _score_slice(index: int, geometry, keys_k: np.ndarray, spacing: float) -> dict:
    """Distance (slices and mm) from slice ``index`` of a plane to the nearest key image, and whether it hits."""
    slices = float(np.min(np.abs(geometry.ijk_indices[index] - keys_k)))
    millimetres = slices * spacing
    hit = millimetres <= max(HIT_SLICES * spacing, HIT_MM) + 1e-6
    return {"index": int(index), "distance_slices": slices, "distance_mm": millimetres, "hit": float(hit)}


def _baselines(geometry, keys_k, spacing, body_profile) -> dict:
    """A random slice of the head or body (expected hit, any of 3 and distance) and the middle of its extent."""
    inside = np.flatnonzero(body_profile > 0)
    if not len(inside):
        inside = np.arange(geometry.count)
    each = [_score_slice(i, geometry, keys_k, spacing) for i in inside]
    hits, count = int(sum(s["hit"] for s in each)), len(inside)
    random = {"hit": hits / count, "hit_top3": 1.0 - comb(count - hits, 3) / comb(count, 3) if count >= 3 else
              float(hits > 0), "distance_mm": float(np.mean([s["distance_mm"] for s in each])),
              "distance_slices": float(np.mean([s["distance_slices"] for s in each]))}
    positions = geometry.positions_mm
    middle_mm = 0.5 * (positions[inside[0]] + positions[inside[-1]])
    middle = _score_slice(int(inside[np.argmin(np.abs(positions[inside] - middle_mm))]), geometry, keys_k, spacing)
    return {"random": random, "middle": middle}


def score_case(volume, key_images: KeyImages, results: dict, planes=PLANES, body_kji=None) -> dict:
    """Score each mode's picks in the plane of acquisition against the key images, beside the baselines.

    Parameters
    ----------
    volume : Volume
        The case's volume (the DICOM series the key images cite).
    key_images : KeyImages
        From :func:`load_key_images`.
    results : dict
        Mode -> SelectionResult (top 3 picks per plane).
    planes : sequence of str
        Planes selected; those other than the plane of acquisition get None ("no key image in this plane").
    body_kji : ndarray of bool, optional
        The head or body (K, J, I) for the baselines; every slice when None.
    """
    plane = acquisition_plane(volume.ijk_to_ras, volume.size_ijk)
    geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
    keys_k = ras_to_ijk(volume.ijk_to_ras, key_images.positions_ras)[:, 2]
    spacing = float(np.linalg.norm(np.asarray(volume.ijk_to_ras, dtype=float)[:3, 2]))
    row = {"source": key_images.source, "kind": key_images.kind, "title": key_images.title,
           "labels": key_images.labels, "notes": key_images.notes, "plane": plane,
           "key_slices": sorted({int(np.argmin(np.abs(geometry.ijk_indices - k))) for k in keys_k}), "planes": {}}
    for name in planes:
        if name != plane:
            row["planes"][name] = None
            continue
        scores = {}
        for mode, result in results.items():
            picks = [_score_slice(pick.index, geometry, keys_k, spacing) for pick in result.planes[name].selected]
            scores[mode] = {**picks[0], "hit_top3": max(p["hit"] for p in picks[:3])}
        axis = NORMAL_INDEX[name]
        others = tuple(a for a in range(3) if a != axis)
        profile = (canonical_array(body_kji, volume.ijk_to_ras).sum(axis=others) if body_kji is not None
                   else np.ones(geometry.count))
        row["planes"][name] = {**scores, **_baselines(geometry, keys_k, spacing, profile)}
    return row


def summarise(rows: list, methods) -> dict:
    """Per method: cases, top-1 hit rate, any-of-3 hit rate (None for the middle slice) and median distances."""
    scored = [plane for row in rows if row.get("key_images") for plane in row["key_images"]["planes"].values()
              if plane]
    table = {}
    for method in methods:
        values = [plane[method] for plane in scored if method in plane]
        if not values:
            continue
        table[method] = {"cases": len(values), "hit": statistics.fmean(v["hit"] for v in values),
                         "hit_top3": (statistics.fmean(v["hit_top3"] for v in values)
                                      if all("hit_top3" in v for v in values) else None),
                         "median_mm": statistics.median(v["distance_mm"] for v in values),
                         "median_slices": statistics.median(v["distance_slices"] for v in values)}
    return table


def format_table(table: dict) -> str:
    """The summary as a text table: a row per method."""
    lines = [f"{'method':<16}{'cases':>6}{'top-1 hit':>11}{'any of 3':>10}{'median mm':>11}{'median slices':>15}"]
    for method, values in table.items():
        top3 = f"{values['hit_top3']:.2f}" if values["hit_top3"] is not None else "-"
        lines.append(f"{method:<16}{values['cases']:>6}{values['hit']:>11.2f}{top3:>10}"
                     f"{values['median_mm']:>11.1f}{values['median_slices']:>15.1f}")
    return "\n".join(lines)


def format_cases(rows: list, methods) -> str:
    """One line per case: its key-image source and slices, then each method's top pick (slice, mm, hit)."""
    lines = []
    for row in rows:
        keys = row.get("key_images")
        if not keys:
            continue
        title = f" '{keys['title']}'" if keys["kind"] == "kos" and keys["title"] else ""
        lines.append(f"{row['case']}: {keys['kind']}{title}, {len(keys['labels'])} key image(s) at {keys['plane']} "
                     f"slice(s) {', '.join(map(str, keys['key_slices']))}; "
                     + "; ".join(f"{name}: no key image in this plane" for name, plane in keys["planes"].items()
                                 if plane is None))
        scores = keys["planes"].get(keys["plane"])
        for method in methods if scores else ():
            if method in scores and "index" in scores[method]:
                s = scores[method]
                lines.append(f"  {method:<16} slice {s['index']:>4}  {s['distance_mm']:6.1f} mm  "
                             f"{s['distance_slices']:5.1f} slices  {'hit' if s['hit'] else 'miss'}")
        lines += [f"  note: {note}" for note in keys["notes"]]
    return "\n".join(lines)
