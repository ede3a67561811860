"""Cue ``asymmetry`` (head): how differently each point of the head looks from its mirror image.

The brain is nearly symmetric about its midsagittal plane, and most lesions (tumours, metastases,
infarcts, haemorrhages) are not. Every point is compared with its mirror image across the fitted
midsagittal plane, at lesion scale, and the difference goes to the side whose patches are rarer in
feature space (the lesion, not the healthy tissue it displaced).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..clustering import LEAF_SIZE
from . import focal
from .evidence import LESION_SCALE_MM, Abnormality, CueInput, sigma_voxels
from .mirror import fit_midsagittal_plane, mirrored_values

#: Outer rim left out of the comparison: scalp and skull (about 5 + 7 mm in adults), and the head's
#: edge, where a slightly tilted mirror plane compares tissue with air.
RIM_MM = 14.0

#: Half-width of the neighbourhood over which patch rarity is spread into a map.
RARITY_SCALE_MM = 10.0


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


def compared_region(grid) -> np.ndarray:
    """The inner head (:func:`inner_region`), or the whole foreground of a head too small to have one."""
    inner = inner_region(grid.mask, grid.spacing_mm)
    return inner if inner.any() else grid.mask


def asymmetry_map(grid, smooth, patches, features, seed: int = 0, inner=None, plane=None) -> Abnormality:
    """Abnormality of every working-grid voxel (0 outside the inner head).

    Parameters
    ----------
    grid : WorkingGrid
    smooth : list of ndarray
        Working-grid intensities of each sequence (main first) at lesion scale (:func:`at_lesion_scale`).
    patches : PatchSet
    features : ndarray, shape (n, d)
    seed : int
    inner : ndarray of bool, optional
        Where both sides are compared (:func:`compared_region`), when the caller has it already.
    plane : MidsagittalPlane, optional
        The plane the head is most symmetric about, when the caller has fitted it already.

    Returns
    -------
    Abnormality
        ``map``: squared left-right intensity difference at lesion scale (summed over sequences),
        times the share of it that belongs to this side: rarity / (rarity + mirrored rarity);
        ``plane``: the fitted midsagittal plane; ``rarity``: the rarity map.
    """
    spacing = grid.spacing_mm
    inner = compared_region(grid) if inner is None else inner
    plane = fit_midsagittal_plane(smooth[0], grid.mask, seed=seed) if plane is None else plane
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


def at_lesion_scale(data: np.ndarray, spacing_mm) -> np.ndarray:
    """Intensities smoothed to :data:`~.evidence.LESION_SCALE_MM`, the scale both sides are compared at."""
    return ndimage.gaussian_filter(data, sigma_voxels(LESION_SCALE_MM, spacing_mm), truncate=3.0)


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


#: Brain tissue in CT spans 0..80 HU (the brain window); bone would otherwise take the whole range.
BRAIN_WINDOW_HU = (0.0, 80.0)


def find(scan: CueInput) -> Abnormality:
    """The head's ``asymmetry`` evidence (in CT, of the brain window), and in MRI the :mod:`.focal`
    evidence of small lesions to try in a plane where the asymmetry shows only anatomy."""
    channels = list(scan.channels)
    if scan.ct:
        low, high = BRAIN_WINDOW_HU
        channels[0] = (np.clip(scan.values, low, high) - np.float32(low)) / np.float32(high - low)
    inner = compared_region(scan.grid)
    smooth = [at_lesion_scale(data, scan.spacing) for data in channels]
    plane = fit_midsagittal_plane(smooth[0], scan.grid.mask, seed=scan.seed)
    # Needed only for a plane where the asymmetry shows anatomy: begun now, on a spare core if there is one.
    small_lesions = scan.start(focal.find, scan, inner, plane)
    found = asymmetry_map(scan.grid, smooth, scan.patches, scan.features, seed=scan.seed, inner=inner, plane=plane)
    found.then = small_lesions.result
    return found
