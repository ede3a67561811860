"""Fitting and judging the generic selector (issue 31): candidates of scans with lesion masks labelled
by the mask, lesion-free scans as hard negatives, and leave-one-source-out scores.

Used by ``votemi train-selector`` and ``Testing/bench_selector.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .bench import baseline_scores, score_slice, section_areas
from .bench_sources import source_of
from .cues import detect_region
from .datasets import bench_cases, load_mask
from .geometry import NORMAL_INDEX, PLANES, canonical_array, canonical_spacing, plane_geometry
from .modality import detect_modality
from .preprocess import block_mean, foreground_mask, make_working_grid, resample_linear, working_shape
from .selector_candidates import find_candidates
from .selector_cues import cue_evidence
from .selector_model import fit_logistic, plane_picks, plane_scores
from .volumes import load_volume

#: Source of lesion-free scans given as negatives (never held out: they have no lesion to score).
NORMAL_SOURCE = "lesion-free"
#: Name suffix of a case's lesion-free slab (:func:`slab_record`).
SLAB_SUFFIX = " (lesion-free slab)"


@dataclass
class ScanRecord:
    """One scan's candidates, their labels, and what scoring its picks needs."""

    name: str
    source: str
    descriptors: np.ndarray
    labels: np.ndarray
    #: Whether each candidate's ball is clear of the lesion (no voxel of it in the mask): what a
    #: lesion-free scan's candidates are like.
    clear: np.ndarray
    centres: np.ndarray
    radii_mm: np.ndarray
    grid_shape: tuple
    grid_spacing: np.ndarray
    work_positions: dict
    positions: dict = field(default_factory=dict)
    lesion_areas: dict = field(default_factory=dict)
    random: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def has_lesion(self) -> bool:
        return bool(self.lesion_areas)


def mask_on_grid(volume, mask_kji: np.ndarray, grid_shape) -> np.ndarray:
    """A (K, J, I) lesion mask brought onto the working grid as the image was (block mean, linear resampling)."""
    canonical = canonical_array(mask_kji.astype(np.float32), volume.ijk_to_ras)
    factors, _, _ = working_shape(canonical.shape, canonical_spacing(volume.ijk_to_ras))
    return resample_linear(block_mean(canonical, factors), grid_shape) >= 0.5


#: A candidate is about the lesion when at least this share of its ball lies inside the mask: a blob
#: half outside is an edge response, not a finding.
INSIDE_SHARE = 0.5
#: What the benchmark counts as a hit: the slice holds at least this share of the lesion's largest section.
HALF_SECTION = 0.5


def overlap_labels(centres, radii_mm, lesion: np.ndarray, spacing) -> np.ndarray:
    """Soft labels (0, 1/3, 2/3 or 1) of candidates from a working-grid lesion mask.

    A candidate counts only when at least :data:`INSIDE_SHARE` of its ball lies in the lesion (so a blob
    straddling the lesion's edge is not taught as one); it then earns a third for each plane in which the
    slice through its centre holds at least :data:`HALF_SECTION` of the lesion's largest section there,
    the very test a pick is scored by. A small blob at the lesion's rim is thus taught as a non-finding
    in the planes where its slice misses the lesion's middle, and one at the lesion's centre as a finding.
    """
    spacing = np.asarray(spacing, dtype=float)
    labels = np.zeros(len(radii_mm))
    sections = [lesion.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
    for n, (centre, radius) in enumerate(zip(np.asarray(centres), radii_mm)):
        if inside_share(centre, radius, lesion, spacing) < INSIDE_SHARE:
            continue
        hits = [sections[axis][centre[axis]] >= HALF_SECTION * sections[axis].max() for axis in range(3)]
        labels[n] = sum(hits) / 3.0
    return labels


def inside_share(centre, radius: float, lesion: np.ndarray, spacing: np.ndarray) -> float:
    """Share of a candidate's ball (voxels within ``radius`` mm of ``centre``) that lies in ``lesion``."""
    reach = np.ceil(radius / spacing).astype(int)
    low = np.maximum(np.asarray(centre) - reach, 0)
    high = np.minimum(np.asarray(centre) + reach + 1, lesion.shape)
    offsets = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(low, high, centre, spacing)],
                          indexing="ij", sparse=True)
    ball = sum(o ** 2 for o in offsets) <= radius ** 2
    box = lesion[tuple(slice(a, b) for a, b in zip(low, high))]
    return float(box[ball].mean()) if ball.any() else float(box.flat[0])


def scan_record(name: str, volume, mask_kji=None, source: str | None = None) -> ScanRecord:
    """Candidates of one scan, labelled by its lesion mask (all negative without one)."""
    started = time.perf_counter()
    grid = make_working_grid(volume)
    candidates = find_candidates(grid, cue_evidence(grid, detect_region(grid, detect_modality(volume))))
    seconds = time.perf_counter() - started
    labels = np.zeros(len(candidates))
    record = ScanRecord(name, source or source_of(name), candidates.descriptors, labels,
                        np.ones(len(candidates), bool), candidates.centres,
                        candidates.radii_mm, grid.data.shape, np.asarray(grid.spacing_mm, float),
                        grid.positions_mm, seconds=seconds)
    if mask_kji is not None and mask_kji.any():
        lesion = mask_on_grid(volume, mask_kji, grid.data.shape)
        if len(candidates):
            record.labels = overlap_labels(candidates.centres, candidates.radii_mm, lesion, record.grid_spacing)
            record.clear = np.array([inside_share(c, r, lesion, record.grid_spacing) == 0.0
                                     for c, r in zip(candidates.centres, candidates.radii_mm)])
        body = foreground_mask(volume.array)
        for plane in PLANES:
            positions = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).positions_mm
            record.positions[plane] = positions
            record.lesion_areas[plane] = section_areas(volume, mask_kji, plane)
            record.random[plane] = baseline_scores(record.lesion_areas[plane], section_areas(volume, body, plane),
                                                   positions)["random"]["hit_half"]
    return record


def slab_record(name: str, volume, mask_kji: np.ndarray, source: str) -> ScanRecord | None:
    """Candidates of the thickest slab of a lesion scan whose every voxel lies at least
    :data:`~VoteMILib.bench_normal.NORMAL_MARGIN_MM` (30 mm) from every mask voxel, all negative; None when
    the scan has no such slab or it is too thin for a working grid.

    The slab keeps its case's ``source`` (and has no lesion, so it is never scored): a fit that holds the
    source out leaves its slabs out too. It teaches what the same scanner, region and contrast look like
    without the lesion, which the few lesion-free whole scans (Colin27) cannot for bodies and limbs.
    """
    from .bench_normal import lesion_free_slab
    from .volumes import VolumeError

    slab, _ = lesion_free_slab(volume, mask_kji)
    if slab is None:
        return None
    try:
        return scan_record(name + SLAB_SUFFIX, slab, None, source)
    except VolumeError:  # thinner than the working grid's patches in some direction
        return None


def collect_records(folders, normals=(), log=None, slabs: bool = True) -> list:
    """Records of every case with a mask in ``folders`` (cases without one are skipped: an unmarked lesion
    would be taught as normal), with its lesion-free slab (:func:`slab_record`) unless ``slabs`` is false,
    and of every lesion-free scan in ``normals``."""
    records = []
    for case in bench_cases(folders):
        if not case.mask:
            continue
        volume = load_volume(case.image)
        mask, source = load_mask(case.mask, volume), source_of(case.name, case.source)
        records.append(scan_record(case.name, volume, mask, source))
        _say(log, f"{case.name}: {len(records[-1].labels)} candidates, {int(records[-1].labels.sum())} in the lesion")
        slab = slab_record(case.name, volume, mask, source) if slabs else None
        if slab is not None:
            records.append(slab)
            _say(log, f"{slab.name}: {len(slab.labels)} candidates, lesion-free")
    for path in normals:
        volume = load_volume(path)
        records.append(scan_record(volume.name or str(path), volume, None, NORMAL_SOURCE))
        _say(log, f"{path}: {len(records[-1].labels)} candidates, lesion-free")
    return records


def fit_records(records, l2: float = 1.0, note: str = ""):
    """The combiner fitted on ``records``; each scan's positive label mass weighs 1 in all, and so does its
    negative mass.

    A candidate with soft label ``y`` enters twice, as a positive of weight ``y`` and a negative of weight
    ``1 - y`` (each scaled by its scan's mass), which is the logistic loss of the soft label itself.
    """
    features, labels, weights = [], [], []
    for record in records:
        if not len(record.labels):
            continue
        y = np.asarray(record.labels, dtype=float)
        positive_mass, negative_mass = float(y.sum()), float((1.0 - y).sum())
        for target, share, mass in ((1.0, y, positive_mass), (0.0, 1.0 - y, negative_mass)):
            keep = share > 0  # rows of no weight would only dilute the penalty's scale
            if mass > 0 and keep.any():
                features.append(record.descriptors[keep])
                labels.append(np.full(int(keep.sum()), target))
                weights.append(share[keep] / mass)
    if not features:
        raise ValueError("no candidates to fit the selector on: give folders of scans with lesion masks")
    model = fit_logistic(np.vstack(features), np.concatenate(labels), np.concatenate(weights), l2=l2, note=note)
    return replace(model, stands_out=stands_out_threshold(records, model))


def stands_out_threshold(records, model) -> float:
    """The probability from which a scan's best candidate says that something stood out, fitted on the
    training scans: the threshold that best separates (balanced accuracy) each lesion's best-scored
    positive candidate from each scan's best candidate clear of any lesion (what a lesion-free scan
    would offer); of equally good cuts the lowest wins, so the fit is deterministic."""
    lesions, normals = [], []
    for record in records:
        if not len(record.labels):
            continue
        probabilities = model.probabilities(record.descriptors)
        if (record.labels > 0).any():
            lesions.append(float(probabilities[record.labels > 0].max()))
        if record.clear.any():
            normals.append(float(probabilities[record.clear].max()))
    if not lesions or not normals:
        return 0.5
    values = np.unique(np.concatenate([lesions, normals]))
    cuts = np.concatenate([[0.0], 0.5 * (values[1:] + values[:-1]), [1.0]]) if len(values) > 1 else values
    lesions, normals = np.asarray(lesions), np.asarray(normals)
    accuracy = [np.mean(lesions >= t) + np.mean(normals < t) for t in cuts]
    return float(cuts[int(np.argmax(accuracy))])


def train_selector(folders, out, normals=(), l2: float = 1.0, log=None, slabs: bool = True):
    """Fit the selector on ``folders`` (with each case's lesion-free slab unless ``slabs`` is false, and
    lesion-free ``normals``) and write it to ``out``; returns the model."""
    records = collect_records(folders, normals, log, slabs)
    if not any(record.labels.any() for record in records):
        raise ValueError("no candidate fell inside a lesion mask: give folders of scans with lesion masks")
    sources = sorted({record.source for record in records})
    count = sum(record.name.endswith(SLAB_SUFFIX) for record in records)
    model = fit_records(records, l2, note=f"fitted on {len(records) - count} scans and {count} lesion-free slabs "
                                          f"of {', '.join(sources)}")
    model.save(out)
    _say(log, f"wrote {out} ({len(records)} scans, {sum(len(r.labels) for r in records)} candidates)")
    return model


def record_picks(record: ScanRecord, model, top_k: int = 3) -> dict:
    """Each plane's picks (original slice indices, best first) on a scored record."""
    logits = model.logits(record.descriptors) if len(record.labels) else np.zeros(0)
    picks = {}
    for plane in PLANES:
        axis = NORMAL_INDEX[plane]
        scores = plane_scores(record.centres, record.radii_mm, logits, axis, record.grid_shape[axis],
                              float(record.grid_spacing[axis]), record.work_positions[plane], record.positions[plane])
        picks[plane] = plane_picks(scores, record.positions[plane], top_k)[0]
    return picks


def score_record(record: ScanRecord, model) -> dict:
    """Per plane: top-1 hit_half and any-of-top-3 hit_half of the selector's picks."""
    out = {}
    for plane, picks in record_picks(record, model).items():
        areas, positions = record.lesion_areas[plane], record.positions[plane]
        hits = [score_slice(index, areas, positions)["hit_half"] for index in picks]
        out[plane] = {"top1": hits[0], "top3": max(hits)}
    return out


def leave_one_source_out(records, l2: float = 1.0) -> dict:
    """Scores of every scan with a lesion from a combiner fitted without its source: {case: scores}."""
    results = {}
    for source in sorted({r.source for r in records if r.has_lesion}):
        model = fit_records([r for r in records if r.source != source], l2)
        for record in records:
            if record.source == source and record.has_lesion:
                results[record.name] = score_record(record, model)
    return results


def _say(log, message: str) -> None:
    if log is not None:
        log(message)
