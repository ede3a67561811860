"""Guided selection: the slices that show segments of a label map, or that pass through points, the user gives.

A radiologist who already segmented the lesion (TotalSegmentator, MONAI Auto3DSeg, Segment Editor) or can click
on it wants those slices described, not the ones an unsupervised vote finds. For every plane:

* segments: each chosen segment's largest cross-section first (distinct segments before repeats), then the
  next-largest sections of the biggest segment, then of the next, at least max(10 mm, 2 slices) apart while that
  is possible; the mark sits at the segment's centre in that slice;
* points: the slice through each point, the mark on the point.

:func:`combine_with_unsupervised` appends the best unsupervised pick lying outside the guided structures, so that a
second lesion the user did not segment is not hidden. Results have the shape of unsupervised ones
(:class:`~VoteMILib.results.SelectionResult`); every pick names what guided it in ``guide``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

# GuideError is defined beside the DICOM reader that raises it too, so that neither module imports the other.
from .dicom_guides import GuideError, read_dicom_guide
from .geometry import (NORMAL_AXIS, NORMAL_INDEX, PLANES, parse_planes, plane_geometry, ras_axis_assignment,
                       ras_to_ijk)
from .results import PlaneResult, SelectedSlice, SelectionResult

#: Unsupervised picks of combined mode keep at least this distance (mm) from a guided segment or point.
OUTSIDE_MARGIN_MM = 10.0
#: Cue of planes picked from segments, from points, or from both.
CUE_SEGMENTATION, CUE_POINT = "segmentation", "point"


@dataclass(frozen=True)
class Structure:
    """One thing to show: a segment of the label map or a point.

    Attributes
    ----------
    kind : {"segmentation", "point"}
    key : int
        The label value (segments) or the point's number, 1 first (points).
    name : str
        ``"label 3"`` or the segment's name; ``"point 2"``.
    ras : tuple of float or None
        The point (RAS mm); None for a segment.
    voxels : int
        The segment's size in voxels (0 for a point).
    """

    kind: str
    key: int
    name: str
    ras: tuple | None = None
    voxels: int = 0

    def phrase(self, points: int = 1) -> str:
        """How the prompt names it: ``the segment 'liver'``, ``the marked point`` (``the marked point 2`` of several)."""
        if self.kind == CUE_POINT:
            return "the marked point" if points == 1 else f"the marked point {self.key}"
        return f"the segment '{self.name}'"

    def to_dict(self, points: int = 1) -> dict:
        data = {"kind": self.kind, "name": self.name, "phrase": self.phrase(points)}
        if self.kind == CUE_POINT:
            data.update(point=self.key, ras=[round(float(c), 3) for c in self.ras])
        else:
            data.update(label=self.key, voxels=self.voxels)
        return data


@dataclass(frozen=True)
class LabelVoxels:
    """The voxels of the chosen segments: (K, J, I) indices, one row per voxel, and each one's label."""

    kji: np.ndarray
    labels: np.ndarray

    def section_areas(self, label: int, geometry) -> np.ndarray:
        """Voxels of ``label`` in every slice of a plane, in ascending position order."""
        return np.bincount(self.slice_indices(geometry)[self.labels == label], minlength=geometry.count).astype(float)

    def slice_indices(self, geometry) -> np.ndarray:
        """The plane's slice (ascending position order) of every voxel."""
        ijk = self.kji[:, 2 - geometry.ijk_axis]
        ascending = geometry.ijk_indices[0] == 0
        return ijk if ascending else geometry.count - 1 - ijk

    def centre_ras(self, label: int, geometry, index: int, ijk_to_ras) -> tuple:
        """RAS point of a segment's centre in one slice: its centroid, or the section's voxel nearest the
        centroid when the centroid falls outside it (a crescent)."""
        inside = (self.labels == label) & (self.slice_indices(geometry) == index)
        voxels = self.kji[inside].astype(float)
        centre = voxels.mean(axis=0)
        nearest = voxels[int(np.argmin(((voxels - centre) ** 2).sum(axis=1)))]
        at_centre = (np.abs(self.kji[inside] - np.round(centre)).sum(axis=1) == 0).any()
        chosen = centre if at_centre else nearest
        ijk = chosen[::-1].copy()
        ijk[geometry.ijk_axis] = geometry.ijk_indices[index]  # exactly on the slice
        matrix = np.asarray(ijk_to_ras, dtype=float)
        return tuple(float(c) for c in matrix[:3, :3] @ ijk + matrix[:3, 3])


@dataclass
class Guide:
    """What guides a selection: segments of a label map on the volume's grid and/or points.

    Build it with :func:`make_guide`, which checks everything against the volume.
    """

    structures: list
    labels_kji: np.ndarray | None = field(default=None, repr=False)
    source: str = ""
    #: The voxels of the chosen segments (see :class:`LabelVoxels`).
    voxels: LabelVoxels | None = field(default=None, repr=False)

    @property
    def segments(self) -> list:
        return [s for s in self.structures if s.kind == CUE_SEGMENTATION]

    @property
    def points(self) -> list:
        return [s for s in self.structures if s.kind == CUE_POINT]

    @property
    def cue(self) -> str:
        kinds = [kind for kind in (CUE_SEGMENTATION, CUE_POINT) if any(s.kind == kind for s in self.structures)]
        return "+".join(kinds)

    def describe(self) -> str:
        """The guided structures in words: ``the segment 'label 1'``, ``the segments 'a' and 'b'``,
        ``the marked point``, ``the 2 marked points``, or both joined by "and"."""
        parts = []
        names = [f"'{s.name}'" for s in self.segments]
        if names:
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            parts.append(f"the segment{'s' if len(names) > 1 else ''} {listed}")
        if self.points:
            parts.append("the marked point" if len(self.points) == 1 else f"the {len(self.points)} marked points")
        return " and ".join(parts)

    def to_dict(self) -> dict:
        return {"cue": self.cue, "source": self.source, "guided_by": self.describe(),
                "structures": [s.to_dict(len(self.points)) for s in self.structures]}


# --------------------------------------------------------------------------------------------
# Reading and checking the guide


def load_label_map(path, volume) -> np.ndarray:
    """A label map file on the voxel grid of ``volume`` (K, J, I; int32), resampled nearest-neighbour if needed.

    Raises
    ------
    GuideError
        Missing or unreadable file, not a 3D single-component image, voxels that are not whole numbers, a
        DICOM SEG or RTSTRUCT that cannot be read here, or no overlap with the volume's field of view.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise GuideError(f"no such mask file or folder: {path}")
    dicom = read_dicom_guide(path, volume)
    if dicom is not None:
        return dicom
    if os.path.isdir(path):
        raise GuideError(f"mask {path} is a folder without a DICOM SEG or RTSTRUCT; give a label map file "
                         "(NIfTI, NRRD, ...)")
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        raise GuideError(f"cannot read mask {path}: {lines[-1] if lines else 'unknown reason'}") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise GuideError(f"mask {path} is not a 3D label map ({image.GetDimension()}D, "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel)")
    values = sitk.GetArrayViewFromImage(image)  # a view: used only while ``image`` holds the voxels
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise GuideError(f"mask {path} holds fractional values (a probability map?); VoteMI needs a label map "
                             "of whole numbers (threshold it first)")
    labelled = bool((values > 0).any())
    del values
    image = sitk.Cast(image, sitk.sitkInt32)
    reference = reference_image(volume)
    if not _same_grid(image, reference):
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
        resampled = sitk.GetArrayFromImage(image)
        if labelled and not (resampled > 0).any():
            raise GuideError(f"mask {path} lies outside the field of view of {volume.name or 'the image'} "
                             "(no labelled voxel falls inside it); is it the mask of another scan?")
        return resampled
    return sitk.GetArrayFromImage(image)


def reference_image(volume):
    """An empty SimpleITK image with the volume's grid (ITK's LPS space), to resample onto."""
    import SimpleITK as sitk

    matrix = np.asarray(volume.ijk_to_ras, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    image = sitk.Image([int(n) for n in volume.size_ijk], sitk.sitkUInt8)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (lps @ matrix[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(o) for o in lps @ matrix[:3, 3]])
    return image


def _same_grid(image, reference) -> bool:
    from .volumes import ijk_to_ras_from_image

    return (tuple(image.GetSize()) == tuple(reference.GetSize())
            and np.allclose(ijk_to_ras_from_image(image), ijk_to_ras_from_image(reference), atol=1e-3))


def make_guide(volume, labels_kji=None, labels=None, points=(), names=None, source: str = "", foreground=None) -> Guide:
    """Check a label map and/or points against ``volume`` and list the structures to show.

    Parameters
    ----------
    volume : Volume
    labels_kji : ndarray (K, J, I) of int, optional
        A label map on the volume's grid (see :func:`load_label_map`); 0 is background.
    labels : sequence of int, optional
        Labels to show, in this order; default every label present, the biggest first.
    points : sequence of (R, A, S)
        Points in RAS mm, shown after the segments.
    names : dict, optional
        Label value -> segment name (default ``"label N"``).
    source : str
        Where the label map came from (file or node name), for messages and the JSON.
    foreground : ndarray (K, J, I) of bool, optional
        The head or body on the volume's grid; a label map that does not touch it is refused (another
        patient's mask). Default: :func:`body_on_volume_grid`.

    Raises
    ------
    GuideError
        An empty label map, a label that is not there (or 0), a label map outside the body, a point outside the
        volume, or nothing to guide by.
    """
    names = dict(names or {})
    what = source or "the mask"
    structures = []
    voxels = None
    if labels_kji is not None:
        labels_kji = np.asarray(labels_kji)
        if labels_kji.shape != volume.array.shape:
            raise GuideError(f"{what} has {labels_kji.shape[::-1]} voxels, the image {volume.array.shape[::-1]}")
        where = np.nonzero(labels_kji > 0)  # labelled voxels only: a lesion is a small part of the volume
        values = labels_kji[where]
        counts = np.bincount(values) if len(values) else np.zeros(1, dtype=int)
        present = [int(v) for v in np.flatnonzero(counts) if v > 0]
        if not present:
            raise GuideError(f"{what} is empty: no voxel holds a label above 0")
        if labels:
            wanted = [int(v) for v in labels]
            if 0 in wanted:
                raise GuideError("label 0 is the background; choose labels above 0")
            missing = [v for v in wanted if v not in present]
            if missing:
                raise GuideError(f"{what} holds no label {', '.join(map(str, missing))}; it holds "
                                 f"{_short_list(present)}")
            order = list(dict.fromkeys(wanted))
        else:
            order = sorted(present, key=lambda v: (-counts[v], v))
        keep = np.isin(values, order)
        voxels = LabelVoxels(np.stack(where, axis=1)[keep], values[keep])
        body = body_on_volume_grid(volume) if foreground is None else foreground
        if not body[tuple(voxels.kji.T)].any():
            raise GuideError(f"{what} does not overlap the body in {volume.name or 'the image'}: is it another "
                             "patient's or another scan's mask?")
        structures += [Structure(CUE_SEGMENTATION, v, str(names.get(v) or f"label {v}"), voxels=int(counts[v]))
                       for v in order]
    for number, point in enumerate(points, start=1):
        ras = check_point(volume, point)
        structures.append(Structure(CUE_POINT, number, f"point {number}", ras=ras))
    if not structures:
        raise GuideError("nothing to guide the selection: give a mask or a point")
    return Guide(structures=structures, labels_kji=labels_kji, source=source, voxels=voxels)


def _short_list(values) -> str:
    return ", ".join(map(str, values[:20])) + (f", ... ({len(values)} labels)" if len(values) > 20 else "")


def check_point(volume, point) -> tuple:
    """A point (RAS mm) as a tuple of floats; GuideError if it is not three numbers or lies outside the volume."""
    try:
        ras = tuple(float(c) for c in point)
    except (TypeError, ValueError):
        raise GuideError(f"point {point!r} is not three numbers R,A,S") from None
    if len(ras) != 3 or not np.isfinite(ras).all():
        raise GuideError(f"point {point!r} is not three finite numbers R,A,S")
    ijk = ras_to_ijk(volume.ijk_to_ras, ras)
    size = np.asarray(volume.size_ijk, dtype=float)
    if ((ijk < -0.5) | (ijk > size - 0.5)).any():
        low, high = volume_extent_ras(volume)
        extent = ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, lo, hi in zip("RAS", low, high))
        raise GuideError(f"point {_format_point(ras)} (RAS mm) lies outside {volume.name or 'the image'} "
                         f"({extent} mm)")
    return ras


def _format_point(ras) -> str:
    return ",".join(f"{c:g}" for c in ras)


def volume_extent_ras(volume):
    """(low, high) RAS corners of the volume's voxel centres."""
    size = np.asarray(volume.size_ijk) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], dtype=float)
    ras = corners @ volume.ijk_to_ras[:3, :3].T + volume.ijk_to_ras[:3, 3]
    return ras.min(axis=0), ras.max(axis=0)


def body_on_volume_grid(volume) -> np.ndarray:
    """The head or body (:func:`~VoteMILib.preprocess.foreground_mask`) on every few voxels, spread back onto
    the volume's grid (K, J, I): cheap, and exact enough to tell a mask inside the body from one outside it."""
    from .preprocess import foreground_mask

    step = np.maximum(1, np.floor(3.0 / np.asarray(volume.spacing_mm)[::-1]).astype(int))  # about 3 mm, K J I
    coarse = volume.array[::step[0], ::step[1], ::step[2]]
    body = foreground_mask(np.ascontiguousarray(coarse, dtype=np.float32))
    for axis, factor in enumerate(step):
        body = np.repeat(body, factor, axis=axis)
    return body[:volume.array.shape[0], :volume.array.shape[1], :volume.array.shape[2]]


# --------------------------------------------------------------------------------------------
# Picking


def guided_selection(volume, guide: Guide, planes=PLANES, top_k: int = 3, min_spacing_mm=None) -> SelectionResult:
    """Each plane's slices showing the guide's structures (see the module docstring).

    ``score`` of a slice is its largest share of one segment's largest section (1 at each segment's largest)
    and, near a point, 1 minus the distance over 10 mm; a pick's ``focus_ras`` is the segment's centre in that
    slice or the point.
    """
    started = time.perf_counter()
    if int(top_k) < 1:
        raise ValueError("top_k must be at least 1")
    planes = parse_planes(planes)
    results = {}
    for plane in planes:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        positions = geometry.positions_mm
        spacing = min_spacing_mm if min_spacing_mm is not None else _default_spacing(positions)
        sections = {s.key: guide.voxels.section_areas(s.key, geometry) for s in guide.segments}
        point_slices = {s.key: _point_slice(volume, geometry, s.ras) for s in guide.points}
        scores = _plane_scores(plane, positions, sections, guide.points)
        chosen = _pick(guide, sections, point_slices, positions, int(top_k), spacing)
        selected = []
        for rank, (index, structure) in enumerate(chosen, start=1):
            if structure.kind == CUE_POINT:
                focus = structure.ras
                score = float(scores[index])
            else:
                focus = guide.voxels.centre_ras(structure.key, geometry, index, volume.ijk_to_ras)
                score = float(sections[structure.key][index] / sections[structure.key].max())
            selected.append(SelectedSlice(plane=plane, rank=rank, index=int(index),
                                          ijk_index=int(geometry.ijk_indices[index]),
                                          position_mm=float(positions[index]),
                                          center_ras=tuple(float(c) for c in geometry.centers_ras[index]),
                                          score=score, focus_ras=tuple(float(c) for c in focus),
                                          guide=structure.to_dict(len(guide.points))))
        results[plane] = PlaneResult(plane=plane, normal_axis=NORMAL_AXIS[plane], ijk_axis=geometry.ijk_axis,
                                     positions_mm=positions, ijk_indices=geometry.ijk_indices, scores=scores,
                                     selected=selected, cue=guide.cue)
    settings = {"mode": "guided", "top_k": int(top_k), "planes": list(planes), "guide": guide.to_dict(),
                "guided_by": guide.describe(), "sequences": [volume.name]}
    return SelectionResult(planes=results, settings=settings, size_ijk=volume.size_ijk, spacing_mm=volume.spacing_mm,
                           timing_s={"select": time.perf_counter() - started})


def _default_spacing(positions) -> float:
    """max(10 mm, 2 slices), as unsupervised picks."""
    step = abs(positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    return max(10.0, 2.0 * step)


def _point_slice(volume, geometry, ras) -> int:
    """Index (ascending position) of the plane's slice through a point."""
    ijk = ras_to_ijk(volume.ijk_to_ras, ras)
    voxel = int(np.clip(np.round(ijk[geometry.ijk_axis]), 0, geometry.count - 1))
    return int(np.flatnonzero(geometry.ijk_indices == voxel)[0])


def _plane_scores(plane, positions, sections, points) -> np.ndarray:
    scores = np.zeros(len(positions))
    for areas in sections.values():
        if areas.max() > 0:
            scores = np.maximum(scores, areas / areas.max())
    for point in points:
        distance = np.abs(positions - point.ras[NORMAL_INDEX[plane]])
        scores = np.maximum(scores, np.clip(1.0 - distance / 10.0, 0.0, 1.0))
    return scores


def _pick(guide, sections, point_slices, positions, top_k, spacing) -> list:
    """(slice index, structure) pairs, best first: every structure once, then more sections of the biggest."""
    picks = []

    def spaced(index):
        return all(abs(positions[index] - positions[p]) >= spacing - 1e-6 for p, _ in picks)

    def free(index):
        return all(index != p for p, _ in picks)

    def candidates(structure):
        if structure.kind == CUE_POINT:
            return [point_slices[structure.key]]
        areas = sections[structure.key]
        order = np.lexsort((np.arange(len(areas)), -areas))  # largest first, ties to the lower slice
        return [int(i) for i in order if areas[i] > 0]

    def take(structure, test) -> bool:
        for index in candidates(structure):
            if test(index):
                picks.append((index, structure))
                return True
        return False

    for structure in guide.structures:  # distinct structures first
        if len(picks) < top_k:
            take(structure, spaced) or take(structure, free)
    by_size = sorted(guide.segments, key=lambda s: -s.voxels)
    for test in (spaced, free):  # then more sections of the biggest segments, apart while possible
        for structure in by_size:
            while len(picks) < top_k and take(structure, test):
                pass
    return picks[:top_k]


# --------------------------------------------------------------------------------------------
# Guided and unsupervised together

#: Unsupervised picks per plane looked at for one outside the guided structures.
CANDIDATES = 8


def select_guided(volume, guide: Guide, planes=PLANES, top_k: int = 3, mode: str | None = None, seed: int = 0,
                  extra_volumes=(), encoder=None, progress=None, cancel=None) -> SelectionResult:
    """Guided picks; with ``mode`` ("findings" or "representative") also the best unsupervised pick of each plane
    that lies outside the guided structures (see :func:`combine_with_unsupervised`).

    Without ``mode`` the region (head, chest, body) is still detected, so that describing windows a CT as
    unsupervised picks would be.
    """
    from .preprocess import make_working_grid
    from .cues import detect_region
    from .modality import detect_modality
    from .selection import select_slices

    started = time.perf_counter()
    if progress is not None:
        progress(0.05, f"Finding the slices of {guide.describe()}")
    guided = guided_selection(volume, guide, planes, top_k)
    if mode is None:
        guided.region = detect_region(make_working_grid(volume), detect_modality(volume)).to_dict()
        if progress is not None:
            progress(1.0, "Done")
        guided.timing_s = {"select": time.perf_counter() - started}
        return guided
    unsupervised = select_slices(volume, planes=planes, top_k=int(top_k) + CANDIDATES, seed=seed, mode=mode,
                                 extra_volumes=extra_volumes, encoder=encoder, progress=progress, cancel=cancel)
    combined = combine_with_unsupervised(volume, guide, guided, unsupervised)
    combined.timing_s = {"select": time.perf_counter() - started}
    return combined


def combine_with_unsupervised(volume, guide: Guide, guided: SelectionResult, unsupervised: SelectionResult,
                              margin_mm: float = OUTSIDE_MARGIN_MM) -> SelectionResult:
    """The guided picks of every plane, then the best unsupervised pick outside the guided structures.

    A pick is outside when its mark (or, without a mark, its whole slice) is more than ``margin_mm`` from every
    guided segment and point, and it keeps the plane's spacing from the guided picks. A plane where no such pick
    exists keeps its guided picks only. The plane's scores stay the guided ones; the added pick's score and
    ``guide`` (``{"kind": "unsupervised", "cue": ...}``) are its own.
    """
    planes = {}
    for plane, result in guided.planes.items():
        other = unsupervised.planes[plane]
        spacing = _default_spacing(result.positions_mm)
        extra = next((pick for pick in other.selected
                      if _apart(pick, result.selected, spacing) and _outside(volume, guide, plane, pick, margin_mm)),
                     None)
        selected = list(result.selected)
        if extra is not None:
            selected.append(replace(extra, rank=len(selected) + 1,
                                    guide={"kind": "unsupervised", "cue": other.cue, "name": "unsupervised",
                                           "phrase": f"the best unsupervised pick ({other.cue}) outside "
                                                     f"{guide.describe()}"}))
        planes[plane] = replace(result, selected=selected)
    settings = dict(unsupervised.settings)
    settings.update(mode=f"guided+{unsupervised.settings['mode']}", unsupervised_mode=unsupervised.settings["mode"],
                    top_k=guided.settings["top_k"], guide=guided.settings["guide"],
                    guided_by=guided.settings["guided_by"])
    return SelectionResult(planes=planes, settings=settings, size_ijk=guided.size_ijk, spacing_mm=guided.spacing_mm,
                           region=dict(unsupervised.region))


def _apart(pick, selected, spacing) -> bool:
    return all(abs(pick.position_mm - chosen.position_mm) >= spacing - 1e-6 for chosen in selected)


def _outside(volume, guide: Guide, plane, pick, margin_mm) -> bool:
    """True if a pick's mark (its slice, when it has no mark) is more than ``margin_mm`` from every guided
    structure: no chosen label within a box of that half-width around the mark, and no point that near."""
    axis = NORMAL_INDEX[plane]
    for point in guide.points:
        if pick.focus_ras is None:
            if abs(point.ras[axis] - pick.position_mm) <= margin_mm:
                return False
        elif np.linalg.norm(np.subtract(point.ras, pick.focus_ras)) <= margin_mm:
            return False
    if not guide.segments:
        return True
    ijk = guide.voxels.kji[:, ::-1]
    if pick.focus_ras is None:
        geometry_axis = int(ras_axis_assignment(volume.ijk_to_ras)[0][axis])
        centre = ras_to_ijk(volume.ijk_to_ras, pick.center_ras)[geometry_axis]
        half = margin_mm / volume.spacing_mm[geometry_axis]
        return not (np.abs(ijk[:, geometry_axis] - centre) <= half).any()
    centre = ras_to_ijk(volume.ijk_to_ras, pick.focus_ras)
    half = margin_mm / np.asarray(volume.spacing_mm)
    return not (np.abs(ijk - centre) <= half).all(axis=1).any()
