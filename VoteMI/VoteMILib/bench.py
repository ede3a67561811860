"""``votemi bench``: selection quality on cases with lesion masks, against naive baselines, and speed."""

from __future__ import annotations

import csv
import gc
import glob
import os
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from .geometry import NORMAL_INDEX, PLANES, canonical_array, plane_geometry
from .preprocess import foreground_mask
from .volumes import VolumeError, load_volume

METRICS = ("hit_any", "hit_half", "distance_mm")
#: Naive baselines: a random slice (expected value over the slices holding the head or body), the
#: middle of its extent, and its largest cross-section.
BASELINES = ("random", "middle", "largest_section")
#: Case groups of the means: heads, and every other region the selection detected.
GROUPS = ("head", "body")


@dataclass
class Case:
    name: str
    image: str
    mask: str | None = None
    extras: list = field(default_factory=list)


def find_cases(folder) -> list:
    """Cases of a folder: rows of its ``cases.tsv`` (case, image, mask, extra), or sub-folders holding
    ``image.*`` and optional ``mask.*`` and other sequences."""
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
                cases.append(Case(row["case"], os.path.join(base, row["image"]), mask, extras))
        return cases
    for sub in sorted(os.listdir(folder)):
        images = sorted(glob.glob(os.path.join(folder, sub, "image.*")))
        if not images:
            continue
        masks = sorted(glob.glob(os.path.join(folder, sub, "mask.*")))
        others = sorted(p for p in glob.glob(os.path.join(folder, sub, "*.*")) if p not in images + masks)
        cases.append(Case(sub, images[0], masks[0] if masks else None, others))
    if not cases:
        raise VolumeError(f"{folder} holds no cases (no cases.tsv and no sub-folder with an image.* file)")
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


def section_areas(volume, mask_kji: np.ndarray, plane: str) -> np.ndarray:
    """Cross-section area (voxels) of a mask in every slice of a plane, in ascending RAS order."""
    axis = NORMAL_INDEX[plane]
    others = tuple(a for a in range(3) if a != axis)
    return canonical_array(mask_kji, volume.ijk_to_ras).sum(axis=others).astype(float)


def plane_profiles(volume, lesion_kji: np.ndarray, head_kji: np.ndarray, plane: str):
    """Lesion and head cross-section area (voxels) of every slice, in ascending RAS order."""
    return section_areas(volume, lesion_kji, plane), section_areas(volume, head_kji, plane)


def score_slice(index: int, lesion: np.ndarray, positions: np.ndarray) -> dict:
    """hit_any, hit_half and distance to the slice of largest lesion cross-section, for one slice."""
    best = int(np.argmax(lesion))
    return {"hit_any": float(lesion[index] > 0), "hit_half": float(lesion[index] >= 0.5 * lesion[best]),
            "distance_mm": float(abs(positions[index] - positions[best]))}


def baseline_scores(lesion: np.ndarray, head: np.ndarray, positions: np.ndarray) -> dict:
    """random (expected over slices inside the head or body), middle of its extent, largest section."""
    inside = np.flatnonzero(head > 0)
    each = [score_slice(i, lesion, positions) for i in inside]
    random = {metric: float(np.mean([s[metric] for s in each])) for metric in METRICS}
    middle_position = 0.5 * (positions[inside[0]] + positions[inside[-1]])
    middle = int(inside[np.argmin(np.abs(positions[inside] - middle_position))])
    return {"random": random, "middle": score_slice(middle, lesion, positions),
            "largest_section": score_slice(int(np.argmax(head)), lesion, positions)}


def evaluate_case(case: Case, planes=PLANES, modes=("findings",), seed=0, use_extras=False, encoder=None) -> dict:
    """Run selection in each mode on one case and score it (if it has a mask) beside the baselines.

    Timing and memory are those of the first mode; ``region`` and ``cues`` come from it too.
    """
    from .selection import select_slices

    gc.collect()
    started = time.perf_counter()
    volume = load_volume(case.image)
    load_s = time.perf_counter() - started
    extras = [load_volume(p) for p in case.extras] if use_extras else []
    results, times = {}, {}
    for mode in modes:
        started = time.perf_counter()
        results[mode] = select_slices(volume, planes=planes, top_k=3, seed=seed, mode=mode, extra_volumes=extras,
                                      encoder=encoder)
        times[mode] = time.perf_counter() - started
    # Memory in a second run: tracing allocations slows the timed one.
    tracemalloc.start()
    select_slices(volume, planes=planes, top_k=3, seed=seed, mode=modes[0], extra_volumes=extras, encoder=encoder)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    first = results[modes[0]]
    row = {"case": case.name, "load_s": load_s, "select_s": times[modes[0]], "select_s_by_mode": times,
           "peak_mb": peak_mb, "volume_mb": volume.array.nbytes / 2 ** 20, "region": first.region.get("name", ""),
           "cues": {plane: first.planes[plane].cue for plane in planes}, "planes": {}}
    if case.mask:
        lesion_kji = load_mask(case.mask, volume)
        head_kji = foreground_mask(volume.array)
        for plane in planes:
            positions = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).positions_mm
            lesion, head = plane_profiles(volume, lesion_kji, head_kji, plane)
            scores = {mode: score_slice(result.planes[plane].selected[0].index, lesion, positions)
                      for mode, result in results.items()}
            row["planes"][plane] = {**scores, **baseline_scores(lesion, head, positions)}
    return row


def group_of(row) -> str:
    """"head" or "body": the region the selection detected (shown per case, so a wrong one is seen)."""
    return "head" if row.get("region") == "head" else "body"


def summarise(rows: list, planes=PLANES, methods=("findings", *BASELINES)) -> dict:
    """Mean of each metric per group ("head", "body"), plane and method over the cases with masks."""
    means = {}
    for group in GROUPS:
        scored = [row for row in rows if row["planes"] and group_of(row) == group]
        if scored:
            means[group] = {plane: {method: {metric: float(np.mean([r["planes"][plane][method][metric]
                                                                      for r in scored])) for metric in METRICS}
                                    for method in methods} for plane in planes}
    return means


def format_quality_table(means: dict) -> str:
    """Markdown table per group: per plane, hit_any / hit_half / distance for each method."""
    lines = []
    for group, by_plane in means.items():
        methods = list(next(iter(by_plane.values())))
        lines += [f"{group}:", "| plane | " + " | ".join(m.replace("_", " ") for m in methods) + " |",
                  "|---" * (len(methods) + 1) + "|"]
        for plane, scores in by_plane.items():
            cells = [f"{m['hit_any']:.2f} / {m['hit_half']:.2f} / {m['distance_mm']:.0f} mm" for m in scores.values()]
            lines.append(f"| {plane} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def format_case_table(rows: list, planes=PLANES, methods=("findings", *BASELINES)) -> str:
    """Markdown table: one row per case and method, hit_any/hit_half and distance per plane."""
    lines = ["| case | region | method | " + " | ".join(f"{p} hit_any/half, mm" for p in planes) + " |",
             "|---" * (len(planes) + 3) + "|"]
    for row in rows:
        for method in methods:
            cells = []
            for plane in planes:
                scores = row["planes"].get(plane, {}).get(method)
                cue = f" ({row['cues'][plane]})" if method == methods[0] and row.get("cues") else ""
                cells.append(f"{scores['hit_any']:.0f}/{scores['hit_half']:.0f}, {scores['distance_mm']:.0f}{cue}"
                             if scores and method != "random" else
                             f"{scores['hit_any']:.2f}/{scores['hit_half']:.2f}, {scores['distance_mm']:.0f}"
                             if scores else "no mask")
            lines.append(f"| {row['case']} | {row.get('region', '')} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_benchmark(repeats: int = 5, source: str | None = None, modes=("findings", "representative")) -> list:
    """Time reading and selecting on a 240x240x155 and a 512x512x400 volume made from a real scan.

    Both are written to NIfTI files in a temporary folder so that selection time can be put beside
    the time to read the same file.
    """
    import SimpleITK as sitk

    from .selection import select_slices

    source = source or "/usr/share/mricron/templates/ch2.nii.gz"
    if not os.path.exists(source):
        raise VolumeError(f"speed benchmark source {source} not found (apt-get install mricron-data, or pass --source)")
    original = sitk.ReadImage(source, sitk.sitkFloat32)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size, count in (((240, 240, 155), repeats), ((512, 512, 400), max(1, repeats // 2))):
            resampled = _resample_to_size(sitk, original, size)
            path = os.path.join(folder, f"speed_{'x'.join(map(str, size))}.nii")
            sitk.WriteImage(resampled, path)
            del resampled
            loads, selects = [], {mode: [] for mode in modes}
            for _ in range(count):
                gc.collect()
                started = time.perf_counter()
                volume = load_volume(path)
                loads.append(time.perf_counter() - started)
                for mode in modes:
                    started = time.perf_counter()
                    select_slices(volume, mode=mode)
                    selects[mode].append(time.perf_counter() - started)
            tracemalloc.start()
            select_slices(volume)
            peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
            volume_mb = volume.array.nbytes / 2 ** 20
            medians = {mode: statistics.median(times) for mode, times in selects.items()}
            rows.append({"size": "x".join(map(str, size)), "runs": count, "load_s": statistics.median(loads),
                         "select_s": medians[modes[0]], "select_s_by_mode": medians,
                         "ratio_to_load": medians[modes[0]] / statistics.median(loads), "peak_mb": peak,
                         "volume_mb": volume_mb,
                         "total_mb": volume_mb + peak,
                         "memory_limit_mb": 4 * volume_mb + 300})
            del volume
    return rows


def _resample_to_size(sitk, image, size):
    spacing = [sz * sp / n for sz, sp, n in zip(image.GetSize(), image.GetSpacing(), size)]
    return sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def format_speed_table(rows: list) -> str:
    modes = list(rows[0]["select_s_by_mode"]) if rows else []
    lines = ["| volume | runs | read s (median) | " + " | ".join(f"select s {m} (median)" for m in modes)
             + " | select / read | volume MB | selection peak MB | total MB | limit MB (4x volume + 300) |",
             "|---" * (len(modes) + 8) + "|"]
    for r in rows:
        per_mode = " | ".join(f"{r['select_s_by_mode'][m]:.2f}" for m in modes)
        lines.append(f"| {r['size']} | {r['runs']} | {r['load_s']:.2f} | {per_mode} | "
                     f"{r['ratio_to_load']:.1f} | {r['volume_mb']:.0f} | {r['peak_mb']:.0f} | {r['total_mb']:.0f} | "
                     f"{r['memory_limit_mb']:.0f} |")
    return "\n".join(lines)
