"""How abnormal each patch looks, without labels: rarity in feature space and left-right asymmetry."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_R_AXIS = 0


def patch_weights(grid, channels, patches, features, neighbours) -> np.ndarray:
    """Vote weight of every patch: rarity times asymmetry, each relative to the volume's median."""
    rarity = feature_rarity(features, neighbours)
    asymmetry = sample_at_patches(asymmetry_map(channels, grid.mask), patches)
    return _relative(rarity) * _relative(asymmetry)


def feature_rarity(features: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Mean feature distance of each patch to its nearest neighbours: large where few patches look alike."""
    differences = features[neighbours[:, 1:]] - features[:, None, :]
    return np.sqrt((differences ** 2).sum(axis=2)).mean(axis=1)


def midsagittal_offset(data: np.ndarray, mask: np.ndarray, search_voxels: int = 10) -> float:
    """R index of the plane of best left-right symmetry (half-voxel steps around the head's centre)."""
    profile = mask.sum(axis=(1, 2)).astype(float)
    centre = float((profile * np.arange(len(profile))).sum() / max(profile.sum(), 1))
    best, best_score = centre, -np.inf
    for mirror in np.arange(centre - search_voxels, centre + search_voxels + 0.25, 0.5):
        mirrored = mirror_r(data, mirror)
        score = -float(np.abs(data - mirrored)[mask].mean())
        if score > best_score:
            best, best_score = mirror, score
    return best


def mirror_r(data: np.ndarray, centre: float) -> np.ndarray:
    """Reflect a (R, A, S) array across the sagittal plane at R index ``centre`` (linear interpolation)."""
    n = data.shape[_R_AXIS]
    source = np.clip(2 * centre - np.arange(n), 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    t = (source - low)[:, None, None]
    return data[low] * (1 - t) + data[high] * t


def asymmetry_map(channels, mask: np.ndarray) -> np.ndarray:
    """Absolute left-right difference of smoothed intensities, summed over sequences."""
    centre = midsagittal_offset(ndimage.gaussian_filter(channels[0], 1.0), mask)
    total = np.zeros(mask.shape, dtype=np.float32)
    for data in channels:
        smooth = ndimage.gaussian_filter(data, 1.0)
        total += np.abs(smooth - mirror_r(smooth, centre))
    return np.where(mask, total, 0.0)


def sample_at_patches(volume_map: np.ndarray, patches, size: int | None = None) -> np.ndarray:
    """Mean of a working-grid map over a cube around each patch centre."""
    size = size or patches.pixels.shape[1]
    local = ndimage.uniform_filter(volume_map, size=size, mode="constant")
    x, y, z = patches.center.T
    return local[np.clip(x, 0, local.shape[0] - 1), np.clip(y, 0, local.shape[1] - 1),
                 np.clip(z, 0, local.shape[2] - 1)]


def _relative(values: np.ndarray) -> np.ndarray:
    median = float(np.median(values))
    return values / median if median > 0 else values
