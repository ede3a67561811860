"""The evidence every cue returns: a map on the working grid, how to tell where it stands out, and
the vote weight each patch gets from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from ..background import start
from ..geometry import NORMAL_INDEX
from .mirror import MidsagittalPlane, mirrored_values

#: Gaussian scale (sigma) of the intensities compared across the midline: a lesion is centimetres
#: across, while sulci and small vessels, which never mirror exactly, are millimetres.
LESION_SCALE_MM = 4.0

#: A finding is compared with healthy tissue across the midline; where the mirror side is itself
#: rarer than this share of the inner head (skull base, orbits, ears: unusual on both sides), the
#: asymmetry shows anatomy, not disease, and the plane falls back to representative slices.
TYPICAL_MIRROR_QUANTILE = 0.9


@dataclass
class Abnormality:
    """What stands out in a working grid, as a map, and how to tell whether it stands out enough.

    Attributes
    ----------
    map : ndarray
        The cue's map (0 where nothing stands out).
    spacing_mm : ndarray
        Working-grid spacing.
    cue : str
        The cue's name (:data:`VoteMILib.cues.CUES`); with several joined, the first of :attr:`cues`.
    plane : MidsagittalPlane or None
        The plane the head was mirrored across (asymmetry only).
    rarity : ndarray or None
        Patch rarity spread into a map (asymmetry only): tells a finding from unusual anatomy.
    threshold : float
        Body cues: the least peak of :attr:`smoothed` that stands out.
    at_lesion_scale : bool
        The map is already measured at lesion scales (body cues) and is not smoothed again.
    labels : ndarray of int8 or None
        When the map joins several cues (a chest: lung nodules and chest-wall masses), the index in
        :attr:`cues` of the cue each voxel's value comes from.
    cues : tuple of str
    then : Abnormality, callable or None
        Evidence of another cue to try in a plane where this one does not stand out, before the plane
        falls back to representative slices (the head's small lesions, :mod:`.focal`), or a function
        that computes it when first needed (:meth:`following`).
    """

    map: np.ndarray
    spacing_mm: np.ndarray
    cue: str = "asymmetry"
    plane: MidsagittalPlane | None = None
    rarity: np.ndarray | None = None
    threshold: float = 0.0
    at_lesion_scale: bool = False
    labels: np.ndarray | None = None
    cues: tuple = ()
    then: object = None

    @cached_property
    def smoothed(self) -> np.ndarray:
        """The map averaged at lesion scale: high where a lesion-sized region stands out, not a speck."""
        if self.at_lesion_scale:
            return self.map
        return ndimage.gaussian_filter(self.map, sigma_voxels(LESION_SCALE_MM, self.spacing_mm), truncate=3.0)

    @cached_property
    def evidence(self) -> np.ndarray:
        """Vote weights per voxel: the smoothed map squared (an energy, as the squared difference
        of the head's score), so that one clear finding outweighs many faint specks."""
        return self.smoothed ** 2

    def following(self) -> "Abnormality | None":
        """The evidence to try where this one does not stand out (:attr:`then`, computed once)."""
        if callable(self.then):
            self.then = self.then()
        return self.then

    def stands_out(self, axis: int, index: int) -> bool:
        """Whether the working slice ``index`` along ``axis`` shows a finding rather than anatomy.

        Asymmetry: the mirror image of the slice's strongest point must look like typical tissue
        (rarity below :data:`TYPICAL_MIRROR_QUANTILE` of the inner head). Body cues: the slice's
        strongest point must reach :attr:`threshold`.
        """
        section = np.take(self.smoothed, index, axis=axis)
        if not section.max() > 0:
            return False
        if self.rarity is None:
            return bool(section.max() >= self.threshold)
        in_plane = list(np.unravel_index(int(np.argmax(section)), section.shape))
        point = np.array([in_plane.pop(0) if a != axis else index for a in range(3)], dtype=float)
        mirror = mirrored_values(self.rarity, self.plane, point[None])[0]
        inner = self.rarity[self.map > 0]
        return bool(np.mean(inner < mirror) < TYPICAL_MIRROR_QUANTILE) if inner.size else False

    def cue_at(self, axis: int, index: int) -> str:
        """The cue that decided a working slice: the one of its strongest point."""
        if self.labels is None:
            return self.cue
        section = np.take(self.smoothed, index, axis=axis)
        return self.cues[int(np.take(self.labels, index, axis=axis).flat[int(np.argmax(section))])]

    def focus_section(self, axis: int, index: int) -> np.ndarray:
        """The map of one working slice that a pick's mark is placed on: the map itself for the
        asymmetry (already at lesion scale), the vote weights spread over a lesion's width for the
        body cues (whose 0..1 maps are flat across a lesion and would tie anywhere on it)."""
        if not self.at_lesion_scale:
            return np.take(self.map, index, axis=axis)
        in_plane = [s for a, s in enumerate(self.spacing_mm) if a != axis]
        return ndimage.gaussian_filter(np.take(self.evidence, index, axis=axis),
                                       sigma_voxels(2 * LESION_SCALE_MM, in_plane))

    @cached_property
    def hemisphere(self) -> np.ndarray:
        """+1 on the side the plane's normal points to (patient right), -1 on the other, per voxel."""
        grid = np.indices(self.map.shape, dtype=np.float32)
        if self.plane is None:
            return np.ones(self.map.shape, np.int8)
        normal = self.plane.normal
        offset = sum((grid[axis] - self.plane.centre[axis]) * normal[axis] for axis in range(3))
        return np.where(offset >= 0, 1, -1).astype(np.int8)


def patch_votes(volume_map: np.ndarray, patches, planes) -> np.ndarray:
    """Mean of a map over each patch's own square (in its slice): the patch's vote weight."""
    size = patches.pixels.shape[-1]
    weights = np.zeros(len(patches), dtype=np.float64)
    for plane_id, plane in enumerate(planes):
        axis = NORMAL_INDEX[plane]
        window = [size, size, size]
        window[axis] = 1
        local = ndimage.uniform_filter(volume_map, size=window, mode="constant")
        mine = patches.plane == plane_id
        weights[mine] = local[tuple(patches.center[mine].T)]
    return weights


def sigma_voxels(sigma_mm: float, spacing_mm) -> np.ndarray:
    return sigma_mm / np.asarray(spacing_mm, dtype=float)


@dataclass
class CueInput:
    """What every cue is a function of: a working grid, what the scan shows, and the patches selection
    cut from it. The masks and tissue classes several cues need are computed once, on first use.

    Attributes
    ----------
    grid : WorkingGrid
    region : Region
    channels : list of ndarray
        Working-grid intensities of each sequence (main first).
    patches : PatchSet or None
    features : ndarray or None
        Patch features, one row per patch.
    seed : int
    background : concurrent.futures.Executor or None
        Where a cue may start work that is needed only later, if at all (:meth:`start`).
    """

    grid: object
    region: object
    channels: list = field(default_factory=list)
    patches: object = None
    features: np.ndarray | None = None
    seed: int = 0
    background: object = None
    _shared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def start(self, function, *args):
        """``function(*args)`` begun on :attr:`background`, or put off until first asked for; an
        object whose ``result()`` returns its value."""
        return start(self.background, function, *args)

    def shared(self, function):
        """``function(self)``, computed once per scan: evidence that two cues split between them."""
        if function not in self._shared:
            self._shared[function] = function(self)
        return self._shared[function]

    @property
    def ct(self) -> bool:
        return self.region.modality == "CT"

    @cached_property
    def spacing(self) -> np.ndarray:
        return np.asarray(self.grid.spacing_mm, dtype=float)

    @cached_property
    def values(self) -> np.ndarray:
        """Hounsfield units in CT, the grid's 0..1 scaled intensities in MRI."""
        return self.grid.original_intensities() if self.ct else self.grid.data

    @cached_property
    def body(self) -> np.ndarray:
        """The patient: in CT without the couch (as the region test found it), in MRI the foreground."""
        if not self.ct:
            return self.grid.mask
        from .regions import ct_body_mask

        found = self.region.masks.get("body")
        return found if found is not None else ct_body_mask(self.values, self.spacing)

    @cached_property
    def fat(self):
        """MRI: (threshold, fat_is_bright) of :func:`~VoteMILib.cues.tissues.mri_fat_class`; None in CT."""
        if self.ct:
            return None
        from .tissues import mri_fat_class

        return mri_fat_class(self.grid.data, self.body, self.spacing)


def ranked(findings) -> Abnormality:
    """Several cues' evidence on one grid (each in units of what stands out: threshold 1), in order of
    rank: where an earlier cue stands out anywhere, a later one counts only where it exceeds the earlier
    one's peak, so that many lesser blobs cannot outvote one clear finding. Each voxel's label says
    which cue its value comes from (a finding that joins cues itself keeps its own labels)."""
    findings = list(findings)
    if len(findings) == 1:
        return findings[0]
    combined = np.zeros(findings[0].map.shape, np.float32)
    labels = np.zeros(combined.shape, np.int8)
    names = []
    bar = 0.0
    for found in findings:
        value = found.map / np.float32(found.threshold)
        value = np.where(value > bar, value, 0.0).astype(np.float32)
        own = np.int8(len(names)) + (found.labels if found.labels is not None else np.int8(0))
        names += list(found.cues) if found.labels is not None else [found.cue]
        np.copyto(labels, own, where=value > combined)
        np.maximum(combined, value, out=combined)
        peak = float(value.max()) if value.size else 0.0
        if peak >= 1.0:
            bar = max(bar, peak)
    first = findings[0]
    return Abnormality(combined, first.spacing_mm, first.cue, threshold=1.0, at_lesion_scale=True, labels=labels,
                       cues=tuple(names))
