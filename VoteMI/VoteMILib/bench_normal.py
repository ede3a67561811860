"""``votemi bench --normal``: how often findings mode claims that something stood out where nothing should.

The lesion-free scans are Colin27 (a normal brain from Debian's ``mricron-data``, when installed) and, for
every benched case with a mask, a slab of the scan cut by the bench itself at least
:data:`NORMAL_MARGIN_MM` from every mask voxel. The share of planes whose findings pick says
``stood_out`` is reported per region and per source (docs/benchmark.md). A slab is lesion-free only as far
as its mask knows: a second, unmasked lesion (a metastasis) would count as a false positive.
"""

from __future__ import annotations

import os

import numpy as np

from .geometry import PLANES

#: Every kept voxel is at least this far from every mask voxel: beyond the reach of the cues' largest
#: scales (a 18 mm blob radius, a 20 mm mass depth), so nothing of the lesion is in view.
NORMAL_MARGIN_MM = 30.0
#: A slab thinner than this many slices is not kept: a handful of slices is no scan a reader would be shown.
MIN_SLAB_SLICES = 8
COLIN27 = "/usr/share/mricron/templates/ch2.nii.gz"


def slab_spacing(ijk_to_ras, array_axis: int) -> float:
    """Distance in mm between neighbouring slices across one array axis (K, J, I), also on a sheared grid:
    the voxel volume over the area the two other axes span."""
    columns = np.asarray(ijk_to_ras, float)[:3, :3]
    axis = 2 - array_axis  # array axis (K, J, I) -> IJK column
    others = [columns[:, a] for a in range(3) if a != axis]
    return float(abs(np.linalg.det(columns)) / np.linalg.norm(np.cross(*others)))


def lesion_free_slabs(volume, lesion_kji: np.ndarray, margin_mm: float = NORMAL_MARGIN_MM):
    """The slabs of ``volume`` whose every voxel lies ``margin_mm`` or more from every lesion voxel, thickest
    first.

    A slab runs from one face of the volume up to ``margin_mm`` short of the lesion's bounding box across that
    axis (the distance between slice planes is a lower bound of the distance in space), with at least
    :data:`MIN_SLAB_SLICES` slices. The cut is made in index space with the origin moved, so every kept voxel
    keeps its RAS position.

    Returns
    -------
    list of (Volume, str)
        Each slab and which face it keeps, e.g. "K low 41 slices, 82 mm (lesion 30 mm away)"; empty when no
        face is that far from the lesion. A slab of one constant value (background only) is left out.
    """
    from .volumes import VolumeError, volume_from_array

    present = np.nonzero(lesion_kji)
    shape = lesion_kji.shape
    found = []
    for axis in range(3 if present[0].size else 0):
        step = slab_spacing(volume.ijk_to_ras, axis)
        gap = int(np.ceil(margin_mm / step - 1e-9))  # slice steps from the lesion's first slice to the slab
        low, high = int(present[axis].min()), int(present[axis].max())
        for side, count in (("low", low - gap + 1), ("high", shape[axis] - high - gap)):
            if count >= MIN_SLAB_SLICES:
                found.append((count * step, axis, side, count, gap * step))
    slabs = []
    for thickness, axis, side, count, away in sorted(found, key=lambda f: -f[0]):
        box = [slice(None)] * 3
        box[axis] = slice(0, count) if side == "low" else slice(shape[axis] - count, shape[axis])
        offset_ijk = np.zeros(3, int)
        offset_ijk[2 - axis] = 0 if side == "low" else shape[axis] - count
        matrix = np.array(volume.ijk_to_ras, dtype=float)
        matrix[:3, 3] = matrix[:3, :3] @ offset_ijk + matrix[:3, 3]
        try:
            slab = volume_from_array(np.ascontiguousarray(volume.array[tuple(box)]), matrix, name=volume.name)
        except VolumeError:  # all background (a skull-stripped brain's margin): no scan to show anyone
            continue
        slabs.append((slab, f"{'KJI'[axis]} {side} {count} slices, {thickness:.0f} mm (lesion {away:.0f} mm away)"))
    return slabs


def lesion_free_slab(volume, lesion_kji: np.ndarray, margin_mm: float = NORMAL_MARGIN_MM):
    """The thickest of :func:`lesion_free_slabs`, or (None, why there is none)."""
    if not np.any(lesion_kji):
        return None, "empty mask"
    slabs = lesion_free_slabs(volume, lesion_kji, margin_mm)
    return slabs[0] if slabs else (None, f"no {MIN_SLAB_SLICES} slices {margin_mm:g} mm from the lesion")


def _area(shape, axis: int) -> int:
    return int(np.prod([n for a, n in enumerate(shape) if a != axis]))


def claims(volume, planes=PLANES, seed: int = 0) -> dict:
    """Findings-mode selection on a lesion-free volume: per plane, whether it says something stood out, the
    cue that decided and its confidence; and the region the selection detected."""
    from .selection import select_slices

    result = select_slices(volume, planes=planes, top_k=3, seed=seed, mode="findings")
    return {"detected": result.region.get("name", ""),
            "planes": {plane: {"stood_out": bool(result.planes[plane].stood_out), "cue": result.planes[plane].cue,
                               "confidence": float(result.planes[plane].confidence)} for plane in planes}}


def normal_rows(cases, planes=PLANES, seed: int = 0, colin27: str | None = COLIN27, progress=None) -> list:
    """Findings-mode claims on Colin27 (when the file exists) and on a lesion-free slab of every case with a
    mask; one row per scan with its region (the one scanned; else the one detected) and source."""
    from .bench_sources import source_of
    from .bench_split import region_of
    from .datasets import load_mask
    from .volumes import load_volume

    rows = []
    if colin27 and os.path.exists(colin27):
        rows.append({"case": "colin27", "scan": "whole", "scanned": "head", "source": source_of("colin27"),
                     **claims(load_volume(colin27), planes, seed)})
    for case in cases:
        if not case.mask:
            continue
        volume = load_volume(case.image)
        row = {"case": case.name, "scanned": region_of(case.name), "source": source_of(case.name, case.source)}
        scored, what = first_scorable(lesion_free_slabs(volume, load_mask(case.mask, volume)), planes, seed)
        if scored:
            rows.append({**row, "scan": what, **scored})
        if progress:
            progress(f"normal {case.name}: {what}")
    return rows


def first_scorable(slabs, planes=PLANES, seed: int = 0):
    """The claims on the thickest slab that selection accepts (a slab thinner than one patch, or with too
    little body to cut into patches, is refused), and which slab it was; (None, why) when none is."""
    why = "no slab far enough from the lesion"
    for slab, what in slabs:
        try:
            return claims(slab, planes, seed), what
        except ValueError as error:  # too thin, or too little body, to cut into patches: try the next slab
            why = f"no slab thick enough to score ({what}: {str(error).split(':')[0]})"
    return None, why


def summarise_normal(rows: list, planes=PLANES, by="region") -> dict:
    """Share of planes that claim ``stood_out``, per group (region scanned, else detected; or source) and
    plane, and over all planes."""
    def group(row):
        if by == "source":
            return row.get("source") or "unlisted"
        return row.get("scanned") or row["detected"]

    out = {}
    for name in sorted({group(row) for row in rows}):
        mine = [row for row in rows if group(row) == name]
        entry = {"scans": len(mine)}
        for plane in planes:
            entry[plane] = float(np.mean([row["planes"][plane]["stood_out"] for row in mine]))
        entry["all"] = float(np.mean([entry[plane] for plane in planes]))
        out[name] = entry
    return out


def format_normal_table(summary: dict, planes=PLANES, label="region") -> str:
    """Markdown: per group, the scans and the share of planes claiming that something stood out."""
    lines = [f"| {label} | lesion-free scans | " + " | ".join(f"stood out {p}" for p in planes) + " | all planes |",
             "|---" * (len(planes) + 3) + "|"]
    for name, entry in summary.items():
        lines.append(f"| {name} | {entry['scans']} | " + " | ".join(f"{entry[p]:.2f}" for p in planes)
                     + f" | {entry['all']:.2f} |")
    return "\n".join(lines)


def format_normal_cases(rows: list, planes=PLANES) -> str:
    """Markdown: per lesion-free scan, what was kept and per plane the claim (1/0) and the deciding cue."""
    lines = ["| case | scan | region (detected) | source | " + " | ".join(planes) + " |",
             "|---" * (len(planes) + 4) + "|"]
    for row in rows:
        cells = [f"{int(row['planes'][p]['stood_out'])} ({row['planes'][p]['cue']})" for p in planes]
        lines.append(f"| {row['case']} | {row['scan']} | {row.get('scanned') or '-'} ({row['detected']}) | "
                     f"{row['source']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
