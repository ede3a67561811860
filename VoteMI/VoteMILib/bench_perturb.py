"""``votemi bench --fov-check`` perturbations: does a case's top pick stay put when the scan is padded with air,
cut hard beside the lesion, cut to one side of the body, resliced, or (MRI) rescaled or made noisy?

Each perturbation builds a new volume and its lesion mask on the new grid, with the IJK-to-RAS matrix
adjusted so that every voxel that is kept stays at the same RAS position; selection is run again and its
top pick per plane is compared with the whole scan's, in RAS mm along the slice normal (so oblique grids
are measured as they lie). The numbers are reported per half, region and source (docs/benchmark.md).

Per case the perturbations are a deterministic subset (:func:`perturbations`): air padding on
:data:`PAD_FACES_PER_CASE` of the six faces (drawn per case with the seeded generator, so that the six
faces are all met over a folder), a hard cut, a one-sided field of view, 1, 3 and 5 mm slices, and for MRI
an intensity rescale and Gaussian noise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .bench import FOV_STABLE_MM, FOV_STABLE_SLICES, GROUPS, groups_of, score_slice, section_areas, sources_of
from .geometry import plane_geometry, ras_axis_assignment
from .modality import detect_modality
from .preprocess import foreground_mask
from .volumes import Volume, volume_from_array

#: Air written by the padding: -1000 HU on CT; on MRI the scan's own background (:func:`air_value`).
CT_AIR_HU = -1000.0
#: Thickness of the air padding on one face, in mm along that face's normal.
PAD_MM = 40.0
#: Faces padded per case (of 6): two runs instead of six keep the check half within minutes on 2 cores.
PAD_FACES_PER_CASE = 2
#: Share of the margin between the lesion's bounding box and the face with the most margin that the
#: hard cut removes (drawn uniformly per case): the lesion ends up a few slices from the edge.
HARD_CUT_SHARE = (0.85, 0.95)
#: Slice spacings the scan is resampled to along its slice axis.
RESLICE_MM = (1.0, 3.0, 5.0)
#: A spacing within this share of the scan's own is not resampled (it would be the scan itself).
SAME_SPACING_SHARE = 0.05
#: MRI intensities rescaled as a * x + b: an arbitrary scanner scale and offset.
RESCALE = (3.0, 200.0)
#: Gaussian noise sigma as a share of the robust intensity range (1st to 99th percentile).
NOISE_SHARE = 0.05
#: Perturbations in the order of the tables; "pad" pools the padded faces.
KINDS = ("pad", "hard cut", "one-sided", "1 mm slices", "3 mm slices", "5 mm slices", "rescaled", "noise")
#: Salt of the perturbations' generator, so that its draws differ from the field-of-view cut's.
_SALT = 30


@dataclass
class Perturbed:
    """One perturbed copy of a case.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    what : str
        What was done, e.g. "pad K high 12 voxels of -1000".
    volume : Volume
        The perturbed scan.
    lesion_kji : ndarray of bool
        The lesion mask on the perturbed scan's grid.
    """

    kind: str
    what: str
    volume: Volume
    lesion_kji: np.ndarray


def air_value(volume, modality: str) -> float:
    """The value of air: -1000 HU on CT; on MRI the median outside the head or body (its minimum when the
    field of view holds no background, as in a crop inside a limb)."""
    if modality == "CT":
        return CT_AIR_HU
    outside = ~foreground_mask(volume.array)
    return float(np.median(volume.array[outside])) if outside.any() else float(volume.array.min())


def slice_normal(ijk_to_ras, ijk_axis: int) -> np.ndarray:
    """Unit normal of the slices that hold ``ijk_axis`` constant (the other two columns span them)."""
    matrix = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    first, second = (a for a in range(3) if a != ijk_axis)
    normal = np.cross(matrix[:, first], matrix[:, second])
    return normal / np.linalg.norm(normal)


def slice_step_mm(ijk_to_ras, ijk_axis: int) -> float:
    """Distance between neighbouring slices of ``ijk_axis``, measured along their normal."""
    column = np.asarray(ijk_to_ras, dtype=float)[:3, ijk_axis]
    return float(abs(slice_normal(ijk_to_ras, ijk_axis) @ column))


def slice_position_mm(ijk_to_ras, ijk_axis: int, ijk_index: int, normal: np.ndarray) -> float:
    """Where a slice lies along ``normal`` (RAS mm): any point of the slice gives the same value when the
    normal is the slices' own, so two grids with the same directions are compared plane to plane."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    return float(normal @ (matrix[:3, 3] + ijk_index * matrix[:3, ijk_axis]))


def shifted_origin(ijk_to_ras, offset_ijk) -> np.ndarray:
    """The matrix of a grid whose voxel (0, 0, 0) is voxel ``offset_ijk`` of this one."""
    matrix = np.array(ijk_to_ras, dtype=float)
    matrix[:3, 3] = matrix[:3, :3] @ np.asarray(offset_ijk, dtype=float) + matrix[:3, 3]
    return matrix


def pad_face(volume, lesion_kji, ijk_axis: int, side: str, fill: float, mm: float = PAD_MM) -> Perturbed:
    """Air added beyond one face: ``mm`` of ``fill`` on the ``low`` or ``high`` side of ``ijk_axis``; padding
    the low side moves the origin back by as many voxels, so the anatomy keeps its RAS position."""
    count = max(2, int(np.ceil(mm / slice_step_mm(volume.ijk_to_ras, ijk_axis))))
    widths = [(0, 0)] * 3
    widths[2 - ijk_axis] = (count, 0) if side == "low" else (0, count)  # IJK axis -> array axis (K, J, I)
    offset = np.zeros(3)
    if side == "low":
        offset[ijk_axis] = -count
    array = np.pad(volume.array, widths, constant_values=np.float32(fill))
    padded = volume_from_array(array, shifted_origin(volume.ijk_to_ras, offset), name=volume.name)
    return Perturbed("pad", f"pad {'IJK'[ijk_axis]} {side} {count} voxels of {fill:g}", padded,
                     np.pad(lesion_kji, widths, constant_values=False))


def crop_axis(volume, lesion_kji, ijk_axis: int, start: int, stop: int) -> tuple:
    """The volume and mask with only slices ``start`` to ``stop - 1`` of ``ijk_axis`` kept, origin moved."""
    box = [slice(None)] * 3
    box[2 - ijk_axis] = slice(start, stop)
    offset = np.zeros(3)
    offset[ijk_axis] = start
    cropped = volume_from_array(np.ascontiguousarray(volume.array[tuple(box)]),
                                shifted_origin(volume.ijk_to_ras, offset), name=volume.name)
    return cropped, np.ascontiguousarray(lesion_kji[tuple(box)])


def lesion_extent(lesion_kji, ijk_axis: int) -> tuple:
    """First and last slice of ``ijk_axis`` that hold lesion."""
    held = np.flatnonzero(lesion_kji.any(axis=tuple(a for a in range(3) if a != 2 - ijk_axis)))
    return int(held[0]), int(held[-1])


def hard_cut(volume, lesion_kji, rng, share=HARD_CUT_SHARE) -> Perturbed | None:
    """Most of the margin beside the lesion removed (a share drawn from ``share``), on the face with the
    most margin in mm; None when no face has 2 voxels of margin."""
    faces = []
    for axis in range(3):
        first, last = lesion_extent(lesion_kji, axis)
        step = slice_step_mm(volume.ijk_to_ras, axis)
        faces += [(first * step, axis, "low", first), ((volume.size_ijk[axis] - 1 - last) * step, axis, "high",
                                                        volume.size_ijk[axis] - 1 - last)]
    _, axis, side, margin = max(faces)  # ties: the later axis and the high side, deterministically
    if margin < 2:
        return None
    removed = min(margin, max(1, int(round(rng.uniform(*share) * margin))))
    n = volume.size_ijk[axis]
    start, stop = (removed, n) if side == "low" else (0, n - removed)
    cut, lesion = crop_axis(volume, lesion_kji, axis, start, stop)
    return Perturbed("hard cut", f"cut {'IJK'[axis]} {side} {removed} of {margin} voxels", cut, lesion)


def one_sided(volume, lesion_kji) -> Perturbed | None:
    """The half of the body (along the left-right axis) that does not hold the lesion's centre removed, the
    cut moved outwards as far as needed to keep the lesion whole; None when that leaves under 2 slices to
    remove."""
    axis = int(ras_axis_assignment(volume.ijk_to_ras)[0][0])  # the IJK axis running left-right
    other_axes = tuple(a for a in range(3) if a != 2 - axis)
    body = np.flatnonzero(foreground_mask(volume.array).any(axis=other_axes))
    middle = 0.5 * (body[0] + body[-1])
    centre = float(np.argwhere(lesion_kji)[:, 2 - axis].mean())
    first, last = lesion_extent(lesion_kji, axis)
    n = volume.size_ijk[axis]
    if centre >= middle:
        start, stop = min(int(np.ceil(middle)), first), n
    else:
        start, stop = 0, max(int(np.floor(middle)), last) + 1
    if n - (stop - start) < 2:
        return None
    kept = max(0, min(stop, body[-1] + 1) - max(start, body[0])) / len(body)
    cut, lesion = crop_axis(volume, lesion_kji, axis, start, stop)
    side = "low" if start > 0 else "high"
    return Perturbed("one-sided", f"{'IJK'[axis]} {side} side removed, {1 - kept:.0%} of the body's extent",
                     cut, lesion)


def slice_axis(volume) -> int:
    """The acquisition's slice axis: the IJK axis with the widest spacing (K on a tie, as DICOM stacks are)."""
    spacing = np.round(volume.spacing_mm, 3)
    return int(max(range(3), key=lambda a: (spacing[a], a)))


def reslice(volume, lesion_kji, spacing_mm: float) -> Perturbed | None:
    """The scan resampled to ``spacing_mm`` slices along its slice axis, the first slice kept in place.

    Thicker slices average their neighbours over the new slice profile (a Gaussian whose variance adds
    what a box of the new thickness has over the old) before linear interpolation; the mask is sampled
    at the nearest old slice. None when the scan already has that spacing.
    """
    from scipy import ndimage

    axis = slice_axis(volume)
    old = volume.spacing_mm[axis]
    if abs(spacing_mm - old) <= SAME_SPACING_SHARE * old:
        return None
    array_axis = 2 - axis
    n = volume.array.shape[array_axis]
    ratio = spacing_mm / old
    positions = np.arange(int(np.floor((n - 1) / ratio + 1e-6)) + 1) * ratio  # in old slice indices
    data = volume.array
    if ratio > 1:
        data = ndimage.gaussian_filter1d(data, np.sqrt((ratio ** 2 - 1) / 12.0), axis=array_axis, mode="nearest")
    below = np.minimum(np.floor(positions).astype(int), n - 1)
    above = np.minimum(below + 1, n - 1)
    weight = (positions - below).astype(np.float32)
    shape = [1, 1, 1]
    shape[array_axis] = -1
    weight = weight.reshape(shape)
    array = np.take(data, below, axis=array_axis) * (1 - weight) + np.take(data, above, axis=array_axis) * weight
    lesion = np.take(lesion_kji, np.minimum(np.round(positions).astype(int), n - 1), axis=array_axis)
    matrix = np.array(volume.ijk_to_ras, dtype=float)
    matrix[:3, axis] *= ratio
    resliced = volume_from_array(array, matrix, name=volume.name)
    return Perturbed(f"{spacing_mm:g} mm slices", f"{'IJK'[axis]} {old:.2f} -> {spacing_mm:g} mm, "
                     f"{n} -> {len(positions)} slices", resliced, lesion)


def rescaled(volume, lesion_kji, scale=RESCALE) -> Perturbed:
    """Intensities mapped to a * x + b (MRI has no absolute scale)."""
    a, b = scale
    array = volume.array.astype(np.float64) * a + b
    return Perturbed("rescaled", f"{a:g} x + {b:g}", volume_from_array(array, volume.ijk_to_ras, name=volume.name),
                     lesion_kji)


def noisy(volume, lesion_kji, rng, share=NOISE_SHARE) -> Perturbed:
    """Gaussian noise of sigma ``share`` of the robust range (1st to 99th percentile), from ``rng``."""
    low, high = np.percentile(volume.array, (1, 99))
    sigma = share * float(high - low)
    array = volume.array + rng.normal(0.0, sigma, volume.array.shape).astype(np.float32)
    return Perturbed("noise", f"sigma {sigma:.3g}", volume_from_array(array, volume.ijk_to_ras, name=volume.name),
                     lesion_kji)


def perturbation_rng(seed: int, case: str):
    """The seeded generator of one case's perturbations (faces, cut share, noise): the same whatever else runs."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode()), _SALT])


def perturbations(volume, lesion_kji, rng, modality: str | None = None):
    """Yield the case's perturbed copies one at a time (so that only one is in memory): air padding on
    :data:`PAD_FACES_PER_CASE` faces drawn from ``rng``, the hard cut, the one-sided field of view, each of
    :data:`RESLICE_MM`, and on MRI the rescale and the noise. A perturbation that cannot be made (no margin
    to cut, the spacing the scan has) is left out."""
    modality = modality or detect_modality(volume)
    fill = air_value(volume, modality)
    faces = [(axis, side) for axis in range(3) for side in ("low", "high")]
    for face in sorted(rng.choice(len(faces), PAD_FACES_PER_CASE, replace=False)):
        yield pad_face(volume, lesion_kji, *faces[int(face)], fill)
    made = [hard_cut(volume, lesion_kji, rng), one_sided(volume, lesion_kji)]
    yield from (p for p in made if p is not None)
    for spacing in RESLICE_MM:
        perturbed = reslice(volume, lesion_kji, spacing)
        if perturbed is not None:
            yield perturbed
    if modality == "MRI":
        yield rescaled(volume, lesion_kji)
        yield noisy(volume, lesion_kji, rng)


def compare_picks(volume, lesion_kji, whole, perturbed: Perturbed, result, planes) -> dict:
    """Per plane: ``stable`` (1.0 when the perturbed scan's top pick lies within max(2 slices, 5 mm) of the
    whole scan's, slices of the whole scan), ``shift_mm``, the perturbed pick's ``hit_half``, and the cue that
    decided each pick (``cue``, ``cue_whole``: a pick that moves because a cue stopped firing says so)."""
    out = {}
    for plane in planes:
        axis = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).ijk_axis
        moved = plane_geometry(perturbed.volume.ijk_to_ras, perturbed.volume.size_ijk, plane)
        normal = slice_normal(volume.ijk_to_ras, axis)
        before = slice_position_mm(volume.ijk_to_ras, axis, whole.planes[plane].selected[0].ijk_index, normal)
        pick = result.planes[plane].selected[0]
        after = slice_position_mm(perturbed.volume.ijk_to_ras, moved.ijk_axis, pick.ijk_index, normal)
        shift = abs(after - before)
        limit = max(FOV_STABLE_SLICES * slice_step_mm(volume.ijk_to_ras, axis), FOV_STABLE_MM)
        lesion = section_areas(perturbed.volume, perturbed.lesion_kji, plane)
        out[plane] = {"stable": float(shift <= limit + 1e-6), "shift_mm": shift,
                      "hit_half": score_slice(pick.index, lesion, moved.positions_mm)["hit_half"],
                      "cue": result.planes[plane].cue, "cue_whole": whole.planes[plane].cue}
    return out


def perturbation_rows(name, volume, lesion_kji, whole, planes, mode, seed=0, encoder=None) -> list:
    """Select on every perturbed copy of one case (on the image alone: extra sequences are left out) and
    compare with ``whole``, the selection on the whole image alone (made here when None).

    Returns
    -------
    list of dict
        One per perturbation: ``kind``, ``what`` and ``planes`` (:func:`compare_picks`), or ``skipped`` (the
        one-line reason) when the perturbed scan cannot be scored, e.g. a cut leaving a crop thinner than a
        patch; a skipped run counts in no mean.
    """
    from .selection import select_slices
    from .volumes import VolumeError

    if whole is None:
        whole = select_slices(volume, planes=planes, top_k=3, seed=seed, mode=mode, encoder=encoder)
    rows = []
    for perturbed in perturbations(volume, lesion_kji, perturbation_rng(seed, name)):
        try:
            result = select_slices(perturbed.volume, planes=planes, top_k=3, seed=seed, mode=mode, encoder=encoder)
        except VolumeError as error:
            rows.append({"kind": perturbed.kind, "what": perturbed.what, "skipped": str(error)})
            continue
        rows.append({"kind": perturbed.kind, "what": perturbed.what,
                     "planes": compare_picks(volume, lesion_kji, whole, perturbed, result, planes)})
    return rows


def summarise_perturbations(rows: list, planes, mode: str, by: str = "region") -> dict:
    """Per half, group (region or source, as the bench's other tables) and perturbation: ``cases``, ``runs``
    and per plane the share of stable top picks, their hit_half, and the whole scan's top-1 hit_half on the
    same cases (``mode``)."""
    group_of = groups_of if by == "region" else sources_of
    out = {}
    for row in rows:
        for group in group_of(row):
            for run in (r for r in row.get("perturb", []) if "planes" in r):
                entry = out.setdefault(row.get("half", "unsplit"), {}).setdefault(group, {}).setdefault(
                    run["kind"], {"cases": set(), "runs": [], "whole": {}})
                entry["cases"].add(row["case"])
                entry["runs"].append(run["planes"])
                entry["whole"][row["case"]] = {p: row["planes"][p][mode]["hit_half"] for p in planes}
    means = {}
    for half in ("design", "check", "unsplit"):
        for group in sorted(out.get(half, {}), key=lambda g: (GROUPS.index(g) if g in GROUPS else len(GROUPS), g)
                            if by == "region" else g):
            for kind in (k for k in KINDS if k in out[half][group]):
                entry = out[half][group][kind]
                means.setdefault(half, {}).setdefault(group, {})[kind] = {
                    "cases": len(entry["cases"]), "runs": len(entry["runs"]),
                    **{p: {"stable": float(np.mean([r[p]["stable"] for r in entry["runs"]])),
                           "hit_half": float(np.mean([r[p]["hit_half"] for r in entry["runs"]])),
                           "hit_half_whole": float(np.mean([w[p] for w in entry["whole"].values()]))}
                       for p in planes}}
    return means


def format_perturbation_table(means: dict, planes, label: str = "region") -> str:
    """Markdown: per half, group and perturbation, the share of stable top picks and the hit_half after
    (and on the whole scan), all planes in one cell (a / c / s)."""
    short = " / ".join(p[0] for p in planes)
    lines = [f"| half | {label} | perturbation | cases | runs | stable ({short}) | hit_half after ({short}) "
             f"| hit_half whole ({short}) |", "|---" * 8 + "|"]
    for half, groups in means.items():
        for group, kinds in groups.items():
            for kind, entry in kinds.items():
                cells = [" / ".join(f"{entry[p][key]:.2f}" for p in planes)
                         for key in ("stable", "hit_half", "hit_half_whole")]
                lines.append(f"| {half} | {group} | {kind} | {entry['cases']} | {entry['runs']} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def _case_cell(scores: dict) -> str:
    """"stable (shift mm, hit_half)", with "cue before -> cue after" when the deciding cue changed."""
    cue = f", {scores['cue_whole']} -> {scores['cue']}" if scores["cue"] != scores["cue_whole"] else ""
    return f"{int(scores['stable'])} ({scores['shift_mm']:.0f}, {int(scores['hit_half'])}{cue})"


def format_perturbation_cases(rows: list, planes) -> str:
    """Markdown: per case and perturbation, what was done and per plane stable (shift mm, hit_half after, and
    the deciding cue before -> after when it changed)."""
    lines = ["| case | half | perturbation | done | " + " | ".join(f"{p} stable (shift mm, hit_half)" for p in planes)
             + " |", "|---" * (len(planes) + 4) + "|"]
    for row in rows:
        for run in row.get("perturb", []):
            cells = ([_case_cell(run["planes"][p]) for p in planes] if "planes" in run
                     else [f"not scored: {run['skipped']}"] + ["-"] * (len(planes) - 1))
            lines.append(f"| {row['case']} | {row.get('half', '')} | {run['kind']} | {run['what']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)
