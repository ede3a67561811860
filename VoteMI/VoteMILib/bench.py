"""``votemi bench``: selection quality on cases with lesion masks, against naive baselines, and speed."""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
import tracemalloc
import zlib

import numpy as np

from .datasets import Case, load_mask
from .geometry import NORMAL_INDEX, PLANES, canonical_array, plane_geometry
from .preprocess import foreground_mask
from .volumes import VolumeError, load_volume

METRICS = ("hit_any", "hit_half", "distance_mm")
#: Scored for the selection modes only (a baseline picks one slice): any of a plane's top 3 picks holds
#: at least half of the largest lesion section.
TOP3 = "hit_half_top3"
#: Naive baselines: a random slice (expected value over the slices holding the head or body), the
#: middle of its extent, and its largest cross-section.
BASELINES = ("random", "middle", "largest_section")
#: Case groups of the means: the region scanned (bench_split; for a case it does not hold, the region
#: the selection detected), then "body", every region but the head together.
GROUPS = ("head", "chest", "extremity", "breast", "body")
#: A pick under a field-of-view cut is stable when within this many slices or millimetres (the larger)
#: of the pick on the whole scan: two slices is a step through the stack, 5 mm the scale of a lesion
#: edge a reader would still call the same view.
FOV_STABLE_SLICES, FOV_STABLE_MM = 2, 5.0
#: Share of the margin between the lesion's bounding box and the face of the volume that a field-of-view
#: cut removes (drawn uniformly per case): enough to move the centre of the field of view by several cm on
#: a full-field scan, never touching the lesion.
FOV_CUT_SHARE = (0.3, 0.5)


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


def top3_hit_half(plane_result, lesion: np.ndarray, positions: np.ndarray) -> float:
    """1.0 when any of a plane's picks (the top 3 the bench asks for) holds half the largest lesion section."""
    return max(score_slice(pick.index, lesion, positions)["hit_half"] for pick in plane_result.selected)


def evaluate_case(case: Case, planes=PLANES, modes=("findings",), seed=0, use_extras=False, encoder=None,
                  fov_check=False, perturb=None) -> dict:
    """Run selection in each mode on one case and score it (if it has a mask) beside the baselines.

    Timing and memory are those of the first mode; ``region`` and ``cues`` come from it too. With
    ``fov_check`` (and a mask) the first mode is run again on the case cut on one side
    (:func:`fov_cut`) and ``row["fov"]`` says per plane whether its top pick stayed; ``perturb`` (with
    ``fov_check``), a callable such as :func:`VoteMILib.bench_perturb.perturbation_rows` called with the
    case name, volume, lesion mask, the whole scan's selection (None when extra sequences voted), planes,
    mode, seed and encoder, fills ``row["perturb"]``.
    """
    from .bench_sources import source_of
    from .bench_split import half_of, region_of
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
    row = {"case": case.name, "half": half_of(case.name), "scanned": region_of(case.name),
           "source": source_of(case.name, case.source), "load_s": load_s, "select_s": times[modes[0]],
           "select_s_by_mode": times, "peak_mb": peak_mb, "volume_mb": volume.array.nbytes / 2 ** 20, "region": first.region.get("name", ""),
           "cues": {plane: first.planes[plane].cue for plane in planes}, "planes": {}}
    if case.mask:
        lesion_kji = load_mask(case.mask, volume)
        head_kji = foreground_mask(volume.array)
        for plane in planes:
            positions = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).positions_mm
            lesion, head = plane_profiles(volume, lesion_kji, head_kji, plane)
            scores = {mode: {**score_slice(result.planes[plane].selected[0].index, lesion, positions),
                             TOP3: top3_hit_half(result.planes[plane], lesion, positions)}
                      for mode, result in results.items()}
            row["planes"][plane] = {**scores, **baseline_scores(lesion, head, positions)}
        if fov_check:
            row["fov"] = fov_stability(case.name, volume, lesion_kji, first, planes, modes[0], seed, extras, encoder)
            if perturb is not None:
                row["perturb"] = perturb(case.name, volume, lesion_kji, None if extras else first, planes,
                                         modes[0], seed, encoder)
    if case.key_images:
        row["key_images"] = score_key_images(case, volume, results, planes)
    return row


def score_key_images(case: Case, volume, results: dict, planes) -> dict:
    """The case's picks scored against its key images (:mod:`VoteMILib.keyimages`)."""
    from . import keyimages

    found = keyimages.load_key_images(case.key_images, volume.metadata.get("dicom_files"), case.name)
    return keyimages.score_case(volume, found, results, planes, foreground_mask(volume.array))


def fov_cut(volume, lesion_kji: np.ndarray, rng, share=FOV_CUT_SHARE):
    """The volume cut on one side: part of the margin between the lesion's bounding box and one face removed.

    The axis and side are drawn from those with a margin of 2 voxels or more, the share of that
    margin uniformly from ``share``; the cut is made in index space and the origin moved with it, so
    every kept voxel keeps its RAS position and the lesion stays whole.

    Returns
    -------
    cut : Volume or None
        None when no face has a margin to cut.
    offset_ijk : ndarray of int
        Index of the cut volume's voxel (0, 0, 0) in the original.
    what : str
        Which face was cut and by how much, e.g. "K low 12 of 30 voxels".
    """
    from .volumes import volume_from_array

    present = np.nonzero(lesion_kji)
    low = np.array([int(p.min()) for p in present])
    high = np.array([int(p.max()) for p in present])
    shape = np.array(lesion_kji.shape)
    faces = [(axis, side, int(margin)) for axis in range(3)
             for side, margin in (("low", low[axis]), ("high", shape[axis] - 1 - high[axis])) if margin >= 2]
    if not faces:
        return None, np.zeros(3, int), "no margin to cut"
    axis, side, margin = faces[int(rng.integers(len(faces)))]
    removed = max(1, int(round(rng.uniform(*share) * margin)))
    box = [slice(None)] * 3
    box[axis] = slice(removed, None) if side == "low" else slice(0, shape[axis] - removed)
    offset_ijk = np.zeros(3, int)
    if side == "low":
        offset_ijk[2 - axis] = removed  # array axis (K, J, I) -> IJK axis
    matrix = np.array(volume.ijk_to_ras, dtype=float)
    matrix[:3, 3] = matrix[:3, :3] @ offset_ijk + matrix[:3, 3]
    cut = volume_from_array(np.ascontiguousarray(volume.array[tuple(box)]), matrix, name=volume.name)
    return cut, offset_ijk, f"{'KJI'[axis]} {side} {removed} of {margin} voxels"


def fov_rng(seed: int, case: str):
    """The seeded generator of one case's cut: the same cut whatever else is run."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode())])


def fov_stability(name, volume, lesion_kji, whole, planes, mode, seed=0, extras=(), encoder=None) -> dict:
    """Select on the case cut on one side and compare each plane's top pick with ``whole``'s.

    Returns
    -------
    dict
        ``cut`` (what was cut) and per plane: ``stable`` (1.0 when within max(2 slices, 5 mm) of the
        whole scan's pick), ``shift_mm`` and ``hit_half`` of the cut scan's pick; empty planes when
        there was nothing to cut.
    """
    from .selection import select_slices

    cut, offset_ijk, what = fov_cut(volume, lesion_kji, fov_rng(seed, name))
    out = {"cut": what, "planes": {}}
    if cut is None:
        return out
    # An extra sequence off the image grid cannot be cut with it and is left out (counted in "extras").
    same_grid = [e for e in extras if tuple(e.size_ijk) == tuple(volume.size_ijk)
                 and np.allclose(e.ijk_to_ras, volume.ijk_to_ras, atol=1e-3)]
    cut_extras = [fov_cut_like(e, cut, offset_ijk) for e in same_grid]
    out["extras"] = f"{len(cut_extras)} of {len(extras)}"
    result = select_slices(cut, planes=planes, top_k=3, seed=seed, mode=mode, extra_volumes=cut_extras,
                           encoder=encoder)
    cut_lesion = lesion_kji[tuple(slice(o, o + n) for o, n in zip(offset_ijk[::-1], cut.array.shape))]
    for plane in planes:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        position_of = dict(zip(geometry.ijk_indices.tolist(), geometry.positions_mm.tolist()))
        pick = result.planes[plane].selected[0]
        before = position_of[whole.planes[plane].selected[0].ijk_index]
        after = position_of[pick.ijk_index + int(offset_ijk[geometry.ijk_axis])]
        step = float(np.linalg.norm(np.asarray(volume.ijk_to_ras)[:3, geometry.ijk_axis]))
        shift = abs(after - before)
        cut_positions = plane_geometry(cut.ijk_to_ras, cut.size_ijk, plane).positions_mm
        out["planes"][plane] = {
            "stable": float(shift <= max(FOV_STABLE_SLICES * step, FOV_STABLE_MM) + 1e-6), "shift_mm": shift,
            "hit_half": score_slice(pick.index, section_areas(cut, cut_lesion, plane), cut_positions)["hit_half"]}
    return out


def fov_cut_like(extra, cut, offset_ijk):
    """An extra sequence on the image grid, cut as the image was."""
    from .volumes import volume_from_array

    box = tuple(slice(o, o + n) for o, n in zip(offset_ijk[::-1], cut.array.shape))
    return volume_from_array(np.ascontiguousarray(extra.array[box]), cut.ijk_to_ras, name=extra.name)


def groups_of(row) -> tuple:
    """The groups a case is averaged in: its region (the one scanned, from the split; else the one the
    selection detected, shown per case so a wrong one is seen), and "body" for every region but the head."""
    region = row.get("scanned") or row.get("region") or "body"
    return (region,) if region in ("head", "body") else (region, "body")


def sources_of(row) -> tuple:
    """The group a case is averaged in by source: its collection and acquisition (:mod:`bench_sources`)."""
    return (row.get("source") or "unlisted",)


def summarise(rows: list, planes=PLANES, methods=("findings", *BASELINES), by="region") -> dict:
    """Mean of each metric per half ("design", "check", "unsplit"), group, plane and method over the cases
    with masks; with the field-of-view check, "fov" per plane: share of stable top picks, and their hit_half.

    ``by="region"`` groups by the region scanned (:data:`GROUPS`, :func:`groups_of`); ``by="source"`` by
    collection and acquisition (:func:`sources_of`), in alphabetical order.
    """
    group_of = groups_of if by == "region" else sources_of
    order = GROUPS if by == "region" else sorted({g for row in rows for g in group_of(row)})
    means = {}
    for half in ("design", "check", "unsplit"):
        for group in order:
            scored = [row for row in rows if row["planes"] and row.get("half", "unsplit") == half
                      and group in group_of(row)]
            if not scored:
                continue
            entry = {"cases": len(scored)}
            for plane in planes:
                entry[plane] = {method: {metric: float(np.mean([r["planes"][plane][method][metric] for r in scored]))
                                         for metric in scored[0]["planes"][plane][method]} for method in methods}
            cut = [r for r in scored if r.get("fov", {}).get("planes")]
            if cut:
                entry["fov"] = {"cases": len(cut), **{plane: {key: float(np.mean([r["fov"]["planes"][plane][key]
                                                                                   for r in cut]))
                                                              for key in ("stable", "hit_half")} for plane in planes}}
            means.setdefault(half, {})[group] = entry
    return means


def format_headline_table(means: dict, planes=PLANES, mode="findings", label="region") -> str:
    """Markdown: per half and group (``label``: region or source), the first mode's top-1 hit_half,
    any-of-top-3 hit_half and, with the field-of-view check, the share of top picks that stay, per plane;
    then the top-1 hit_half of each baseline the means hold, all planes in one cell (a / c / s)."""
    with_fov = any("fov" in entry for groups in means.values() for entry in groups.values())
    some = next((entry for groups in means.values() for entry in groups.values()), None)
    baselines = [b for b in BASELINES if some and b in some[planes[0]]]
    columns = [f"top-1 {p}" for p in planes] + [f"top-3 {p}" for p in planes]
    columns += [f"FOV stable {p}" for p in planes] if with_fov else []
    columns += [f"{b.replace('_', ' ')} top-1 ({' / '.join(p[0] for p in planes)})" for b in baselines]
    lines = [f"| half | {label} | cases | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    for half, groups in means.items():
        for group, entry in groups.items():
            cells = [f"{entry[p][mode]['hit_half']:.2f}" for p in planes]
            cells += [f"{entry[p][mode][TOP3]:.2f}" for p in planes]
            if with_fov:
                cells += ([f"{entry['fov'][p]['stable']:.2f}" for p in planes] if "fov" in entry
                          else ["-"] * len(planes))
            cells += [" / ".join(f"{entry[p][b]['hit_half']:.2f}" for p in planes) for b in baselines]
            lines.append(f"| {half} | {group} | {entry['cases']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_quality_table(means: dict) -> str:
    """Markdown table per half and group (region or source): per plane, hit_any / hit_half / distance for each
    method, and the any-of-top-3 hit_half of each selection mode."""
    lines = []
    for half, groups in means.items():
        for group, entry in groups.items():
            if group == "body" and any(g != "head" and e["cases"] == entry["cases"] for g, e in groups.items()
                                       if g != "body"):
                continue  # one body region only: its table already shows these cases
            by_plane = {plane: scores for plane, scores in entry.items() if plane not in ("cases", "fov")}
            methods = list(next(iter(by_plane.values())))
            modes = [m for m in methods if m not in BASELINES]
            lines += [f"{half} half, {group} ({entry['cases']} cases):",
                      "| plane | " + " | ".join(m.replace("_", " ") for m in methods) + " | "
                      + " | ".join(f"{m} top-3 hit_half" for m in modes) + " |",
                      "|---" * (len(methods) + len(modes) + 1) + "|"]
            for plane, scores in by_plane.items():
                cells = [f"{m['hit_any']:.2f} / {m['hit_half']:.2f} / {m['distance_mm']:.0f} mm"
                         for m in scores.values()]
                cells += [f"{scores[m][TOP3]:.2f}" for m in modes]
                lines.append(f"| {plane} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip()


def format_fov_table(rows: list, planes=PLANES) -> str:
    """Markdown: per case, the cut and per plane whether the top pick stayed (shift in mm)."""
    lines = ["| case | half | cut | " + " | ".join(f"{p} stable (shift mm, hit_half)" for p in planes) + " |",
             "|---" * (len(planes) + 3) + "|"]
    for row in rows:
        fov = row.get("fov")
        if not fov:
            continue
        cells = [f"{int(fov['planes'][p]['stable'])} ({fov['planes'][p]['shift_mm']:.0f}, "
                 f"{int(fov['planes'][p]['hit_half'])})" if p in fov["planes"] else "-" for p in planes]
        lines.append(f"| {row['case']} | {row.get('half', '')} | {fov['cut']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_case_table(rows: list, planes=PLANES, methods=("findings", *BASELINES)) -> str:
    """Markdown table: one row per case and method, hit_any/hit_half and distance per plane."""
    lines = ["| case | half | region (detected) | method | "
             + " | ".join(f"{p} hit_any/half, mm" for p in planes) + " |", "|---" * (len(planes) + 4) + "|"]
    for row in rows:
        for method in methods:
            cells = []
            for plane in planes:
                scores = row["planes"].get(plane, {}).get(method)
                cue = f" ({row['cues'][plane]})" if method == methods[0] and row.get("cues") else ""
                cue += f", top-3 {scores[TOP3]:.0f}" if scores and TOP3 in scores else ""
                cells.append(f"{scores['hit_any']:.0f}/{scores['hit_half']:.0f}, {scores['distance_mm']:.0f}{cue}"
                             if scores and method != "random" else
                             f"{scores['hit_any']:.2f}/{scores['hit_half']:.2f}, {scores['distance_mm']:.0f}"
                             if scores else "no mask")
            region = f"{row.get('scanned') or '-'} ({row.get('region', '')})"
            lines.append(f"| {row['case']} | {row.get('half', '')} | {region} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The speed targets (docs/benchmark.md): (scan, size IJK, findings-mode budget in s on 2 cores, runs as
#: a share of --repeats). The two brain sizes are made from Colin27 (or --source), the chest CT from a
#: real full-field thorax CT (or --chest-source).
SPEED_TARGETS = (("brain MRI", (240, 240, 155), 0.5, 1.0), ("brain MRI", (512, 512, 400), 3.0, 0.5),
                 ("chest CT", (512, 512, 130), 1.5, 1.0))
BRAIN_SOURCE = "/usr/share/mricron/templates/ch2.nii.gz"
#: ../shared/data beside the repository (VoteMI/VoteMILib/bench.py -> the repository root's parent).
SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "shared", "data")
CHEST_SOURCE = os.path.join(SHARED_DATA, "mirp_nsclc_lung1-001", "image.nii.gz")


def speed_benchmark(repeats: int = 5, source: str | None = None, modes=("findings", "representative"),
                    chest_source: str | None = None) -> list:
    """Time reading and selecting on each of :data:`SPEED_TARGETS`, made from a real scan.

    Each is written to a NIfTI file in a temporary folder so that selection time can be put beside
    the time to read the same file.
    """
    import SimpleITK as sitk

    sources = {"brain MRI": (source or BRAIN_SOURCE, "apt-get install mricron-data, or pass --source"),
               "chest CT": (chest_source or CHEST_SOURCE, "pass --chest-source")}
    for path, hint in sources.values():
        if not os.path.exists(path):
            raise VolumeError(f"speed benchmark source {path} not found ({hint})")
    originals = {scan: sitk.ReadImage(path, sitk.sitkFloat32) for scan, (path, _) in sources.items()}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for scan, size, target, share in SPEED_TARGETS:
            resampled = _resample_to_size(sitk, originals[scan], size)
            path = os.path.join(folder, f"speed_{'x'.join(map(str, size))}.nii")
            sitk.WriteImage(resampled, path)
            del resampled
            row = _time_one(path, max(1, int(round(repeats * share))), modes)
            rows.append({"scan": scan, "size": "x".join(map(str, size)), "source": sources[scan][0],
                         "target_s": target, "within_target": row["select_s"] <= target, **row})
    return rows


def _time_one(path, count: int, modes) -> dict:
    """Median read and select times of one file over ``count`` runs, and the selection's peak memory."""
    from .selection import select_slices

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
    select_slices(volume, mode=modes[0])
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    volume_mb = volume.array.nbytes / 2 ** 20
    medians = {mode: statistics.median(times) for mode, times in selects.items()}
    return {"runs": count, "load_s": statistics.median(loads), "select_s": medians[modes[0]],
            "select_s_by_mode": medians, "ratio_to_load": medians[modes[0]] / statistics.median(loads),
            "peak_mb": peak, "volume_mb": volume_mb, "total_mb": volume_mb + peak,
            "memory_limit_mb": 4 * volume_mb + 300}


def _resample_to_size(sitk, image, size):
    spacing = [sz * sp / n for sz, sp, n in zip(image.GetSize(), image.GetSpacing(), size)]
    return sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def format_speed_table(rows: list) -> str:
    modes = list(rows[0]["select_s_by_mode"]) if rows else []
    lines = ["| scan | volume | runs | read s (median) | " + " | ".join(f"select s {m} (median)" for m in modes)
             + f" | target s ({modes[0] if modes else ''}) | select / read | volume MB | selection peak MB | "
               "total MB | limit MB (4x volume + 300) |",
             "|---" * (len(modes) + 10) + "|"]
    for r in rows:
        per_mode = " | ".join(f"{r['select_s_by_mode'][m]:.2f}" for m in modes)
        verdict = "within" if r["within_target"] else "OVER"
        lines.append(f"| {r['scan']} | {r['size']} | {r['runs']} | {r['load_s']:.2f} | {per_mode} | "
                     f"{r['target_s']:g} ({verdict}) | {r['ratio_to_load']:.1f} | {r['volume_mb']:.0f} | "
                     f"{r['peak_mb']:.0f} | {r['total_mb']:.0f} | {r['memory_limit_mb']:.0f} |")
    return "\n".join(lines)
