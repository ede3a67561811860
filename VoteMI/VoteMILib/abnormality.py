"""How abnormal each part of the head looks, without labels.

The brain is nearly symmetric about its midsagittal plane, and most lesions (tumours, metastases,
infarcts, haemorrhages) are not. VoteMI's default score therefore compares every point with its
mirror image across the fitted midsagittal plane, at lesion scale, and gives the difference to the
side whose patches are rarer in feature space (the lesion, not the healthy tissue it displaced).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial import cKDTree

from .geometry import NORMAL_INDEX
from .clustering import LEAF_SIZE

#: Outer rim left out of the comparison: scalp and skull (about 5 + 7 mm in adults), and the head's
#: edge, where a slightly tilted mirror plane compares tissue with air.
RIM_MM = 14.0
#: Gaussian scale (sigma) of the intensities compared across the midline: a lesion is centimetres
#: across, while sulci and small vessels, which never mirror exactly, are millimetres.
LESION_SCALE_MM = 4.0
#: Half-width of the neighbourhood over which patch rarity is spread into a map.
RARITY_SCALE_MM = 10.0
#: A finding is compared with healthy tissue across the midline; where the mirror side is itself
#: rarer than this share of the inner head (skull base, orbits, ears: unusual on both sides), the
#: asymmetry shows anatomy, not disease, and the plane falls back to representative slices.
TYPICAL_MIRROR_QUANTILE = 0.9


@dataclass(frozen=True)
class MidsagittalPlane:
    """A plane through ``centre`` (working-grid voxel coordinates) with its normal turned from +R
    by ``yaw`` (about S) and ``roll`` (about A), in radians."""

    centre: tuple
    yaw: float
    roll: float

    @property
    def normal(self) -> np.ndarray:
        return np.array([np.cos(self.yaw) * np.cos(self.roll), np.sin(self.yaw) * np.cos(self.roll),
                         np.sin(self.roll)])

    def reflect(self, points: np.ndarray) -> np.ndarray:
        """Mirror images of (n, 3) voxel coordinates."""
        normal = self.normal
        # Element-wise rather than a matrix product: called ~100 times on small arrays, where
        # BLAS thread start-up costs more than the arithmetic.
        offset = points - np.asarray(self.centre)
        distance = offset[:, 0] * normal[0] + offset[:, 1] * normal[1] + offset[:, 2] * normal[2]
        return points - 2.0 * distance[:, None] * normal[None, :]


def fit_midsagittal_plane(smooth_data: np.ndarray, mask: np.ndarray, seed: int = 0,
                          max_points: int = 2000) -> MidsagittalPlane:
    """The plane about which the (smoothed) head looks most symmetric.

    Starts at the head's centre of mass with no tilt and minimises the mean absolute difference
    between sampled voxels and their mirror images (Powell's method, so no gradients are needed).
    """
    # The centre of mass from voxel counts, the sample from flat indices: the same points as
    # np.argwhere, without listing every voxel's coordinates.
    inside = np.flatnonzero(mask)
    shape = np.array(mask.shape)
    counts = [mask.sum(axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
    centre = np.array([np.dot(np.arange(n), c) for n, c in zip(shape, counts)], dtype=float) / len(inside)
    rng = np.random.default_rng(seed)
    if len(inside) > max_points:
        inside = inside[rng.choice(len(inside), max_points, replace=False)]
    points = np.stack(np.unravel_index(inside, mask.shape), axis=1).astype(float)
    values = ndimage.map_coordinates(smooth_data, points.T, order=1)

    def asymmetry(params):
        offset, yaw, roll = params
        plane = MidsagittalPlane(tuple(centre + [offset, 0.0, 0.0]), yaw, roll)
        mirrored = ndimage.map_coordinates(smooth_data, plane.reflect(points).T, order=1, mode="constant")
        return float(np.mean(np.abs(values - mirrored)))

    shift = 0.15 * smooth_data.shape[0]  # voxels along R; tilts up to 20 degrees
    fit = optimize.minimize(asymmetry, x0=[0.0, 0.0, 0.0], method="Powell",
                            bounds=[(-shift, shift), (-0.35, 0.35), (-0.35, 0.35)],
                            options={"xtol": 1e-2, "ftol": 1e-3})
    offset, yaw, roll = fit.x
    return MidsagittalPlane(tuple(float(c) for c in centre + [offset, 0.0, 0.0]), float(yaw), float(roll))


def mirrored_values(volume: np.ndarray, plane: MidsagittalPlane, points: np.ndarray) -> np.ndarray:
    """Values of ``volume`` at the mirror images of (n, 3) voxel coordinates (linear interpolation)."""
    return ndimage.map_coordinates(volume, plane.reflect(points).T, order=1, mode="constant")


def _upsample(coarse: np.ndarray, step: int, shape) -> np.ndarray:
    full = coarse.repeat(step, axis=0).repeat(step, axis=1).repeat(step, axis=2)
    return full[: shape[0], : shape[1], : shape[2]]


def inner_region(mask: np.ndarray, spacing_mm, rim_mm: float = RIM_MM) -> np.ndarray:
    """The foreground without its outer ``rim_mm``, counting the field of view's faces as an edge
    (a scan that cuts through the head has no mirror partner beyond its last slice)."""
    # On every second voxel: eight times cheaper, and a voxel of error is nothing beside the rim.
    coarse = np.pad(mask[::2, ::2, ::2], 1, constant_values=False)
    depth = ndimage.distance_transform_edt(coarse, sampling=2 * np.asarray(spacing_mm, dtype=float))
    return (_upsample(depth[1:-1, 1:-1, 1:-1], 2, mask.shape) > rim_mm) & mask


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
        "asymmetry" (head), "lung_nodule" or "tissue_contrast" (body).
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

    @cached_property
    def smoothed(self) -> np.ndarray:
        """The map averaged at lesion scale: high where a lesion-sized region stands out, not a speck."""
        if self.at_lesion_scale:
            return self.map
        return ndimage.gaussian_filter(self.map, _sigma_voxels(LESION_SCALE_MM, self.spacing_mm), truncate=3.0)

    @cached_property
    def evidence(self) -> np.ndarray:
        """Vote weights per voxel: the smoothed map squared (an energy, as the squared difference
        of the head's score), so that one clear finding outweighs many faint specks."""
        return self.smoothed ** 2

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
                                       _sigma_voxels(2 * LESION_SCALE_MM, in_plane))

    @cached_property
    def hemisphere(self) -> np.ndarray:
        """+1 on the side the plane's normal points to (patient right), -1 on the other, per voxel."""
        grid = np.indices(self.map.shape, dtype=np.float32)
        if self.plane is None:
            return np.ones(self.map.shape, np.int8)
        normal = self.plane.normal
        offset = sum((grid[axis] - self.plane.centre[axis]) * normal[axis] for axis in range(3))
        return np.where(offset >= 0, 1, -1).astype(np.int8)


def abnormality_map(grid, channels, patches, features, seed: int = 0) -> Abnormality:
    """Abnormality of every working-grid voxel (0 outside the inner head).

    Parameters
    ----------
    grid : WorkingGrid
    channels : list of ndarray
        Working-grid intensities of each sequence (main first).
    patches : PatchSet
    features : ndarray, shape (n, d)
    seed : int

    Returns
    -------
    Abnormality
        ``map``: squared left-right intensity difference at lesion scale (summed over sequences),
        times the share of it that belongs to this side: rarity / (rarity + mirrored rarity);
        ``plane``: the fitted midsagittal plane; ``rarity``: the rarity map.
    """
    spacing = grid.spacing_mm
    inner = inner_region(grid.mask, spacing)
    if not inner.any():
        inner = grid.mask
    sigma = _sigma_voxels(LESION_SCALE_MM, spacing)
    smooth = [ndimage.gaussian_filter(data, sigma, truncate=3.0) for data in channels]
    plane = fit_midsagittal_plane(smooth[0], grid.mask, seed=seed)
    # Rarity is only compared inside the inner head, so only patches centred there need it.
    central = inner[tuple(patches.center.T)]
    rarity = rarity_map(grid.mask.shape, patches.center[central], feature_rarity(features[central], seed=seed),
                        spacing)
    # Both sides are compared on every second voxel: the maps are smooth at that scale, and it
    # costs an eighth of comparing every voxel.
    step = 2
    coarse_inner = inner[::step, ::step, ::step]
    points = np.argwhere(coarse_inner) * step
    index = tuple(points.T)
    points = points.astype(float)
    difference = sum((data[index] - mirrored_values(data, plane, points)) ** 2 for data in smooth)
    own, other = rarity[index], mirrored_values(rarity, plane, points)
    side = np.divide(own, own + other, out=np.full(own.shape, 0.5, np.float32), where=(own + other) > 0)
    coarse = np.zeros(coarse_inner.shape, dtype=np.float32)
    coarse[coarse_inner] = difference * side
    found = np.where(inner, _upsample(coarse, step, inner.shape), 0.0).astype(np.float32)
    return Abnormality(found, np.asarray(spacing, dtype=float), "asymmetry", plane, rarity)


def feature_rarity(features: np.ndarray, neighbours: int = 8, reference_size: int = 1000, seed: int = 0) -> np.ndarray:
    """Mean feature distance of each patch to its nearest patches: large where few patches look alike.

    Distances are taken to a seeded sample of ``reference_size`` patches (a k-nearest-neighbour
    density estimate), which bounds the cost on large volumes.
    """
    rng = np.random.default_rng(seed)
    reference = features
    if len(features) > reference_size:
        reference = features[rng.choice(len(features), reference_size, replace=False)]
    k = int(min(neighbours, len(reference)))
    distances, _ = cKDTree(reference, leafsize=LEAF_SIZE).query(features, k=k, workers=-1)
    return distances.reshape(len(features), -1).mean(axis=1)


def rarity_map(shape, centers: np.ndarray, rarity: np.ndarray, spacing_mm) -> np.ndarray:
    """Patch rarity spread from the patch centres (n, 3) into a smooth map (a weighted local mean)."""
    flat = np.ravel_multi_index(tuple(centers.T), shape)
    size = int(np.prod(shape))
    total = np.bincount(flat, weights=rarity, minlength=size).reshape(shape).astype(np.float32)
    count = np.bincount(flat, minlength=size).reshape(shape).astype(np.float32)
    # A box of the given width: as good as a Gaussian for a local mean, at a fraction of the cost.
    width = np.maximum(1, np.round(RARITY_SCALE_MM / np.asarray(spacing_mm, dtype=float))).astype(int) * 2 + 1
    total = ndimage.uniform_filter(total, width)
    count = ndimage.uniform_filter(count, width)
    return np.divide(total, count, out=np.zeros(shape, np.float32), where=count > 1e-6)


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


def _sigma_voxels(sigma_mm: float, spacing_mm) -> np.ndarray:
    return sigma_mm / np.asarray(spacing_mm, dtype=float)
