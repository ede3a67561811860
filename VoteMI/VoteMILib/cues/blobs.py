"""Blob filters at lesion scales: where the intensity curves down (a bright blob) in all three
directions, from the Hessian of the smoothed image, on block-averaged levels for coarse scales."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..preprocess import block_mean
from .morphology import bounding_box

#: What a Gaussian blob of contrast 1 answers at its own scale (see :func:`blob_strength`).
BLOB_ANSWER = 0.18


def blob_strength(data: np.ndarray, spacing_mm, radii_mm, points: np.ndarray, compact: bool = False,
                  either_sign: bool = False) -> np.ndarray:
    """Bright-blob strength at (n, 3) voxel ``points``, the largest over lesion radii.

    At each radius the image is smoothed at sigma = radius / sqrt(3), at which a sphere of that
    radius answers most, and the Hessian's eigenvalues l1 <= l2 <= l3 are taken. A bright blob
    curves down in all three directions; its strength is the least curvature, -l3, or with
    ``compact`` l3^2 / |l1|, which also weighs down blobs that are much longer than wide (the
    junctions of vessels; the "dot" filter of Li, Sone and Doi, 2003). Strengths are scale-
    normalised (times sigma^2) so that radii compare: a Gaussian blob of contrast C answers about
    0.18 C at its own scale (:data:`BLOB_ANSWER`). With ``either_sign`` a dark blob (curving up in
    all three directions) answers as a bright one of the same contrast: the strength of ``-data`` from
    the same eigenvalues. Coarser scales run on block-averaged copies
    (two voxels per sigma); within one sigma of a face of the field of view, which cuts what a
    blob is compared with, a scale gives nothing.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    extent = np.asarray(data.shape) * spacing
    best = np.zeros(len(points), np.float32)
    columns = [np.ascontiguousarray(points[:, axis]) for axis in range(3)]  # read once per level, not strided
    level, factor = data, 1
    for radius in radii_mm:
        sigma = radius / np.sqrt(3.0)
        if 2 * radius > extent.min():  # the field of view must hold the lesion
            break
        while sigma / (spacing.min() * factor * 2) >= 1.0 and min(level.shape) >= 16:
            level, factor = block_mean(level, (2, 2, 2)), factor * 2
        step = spacing * factor
        shape = np.asarray(level.shape)
        at = level_indices(columns, factor, shape)
        margin = np.ceil(sigma / step).astype(int)
        wanted = np.zeros(level.shape, bool)
        wanted.ravel()[at] = True
        wanted[: margin[0]], wanted[shape[0] - margin[0]:] = False, False
        wanted[:, : margin[1]], wanted[:, shape[1] - margin[1]:] = False, False
        wanted[:, :, : margin[2]], wanted[:, :, shape[2] - margin[2]:] = False, False
        voxels = np.flatnonzero(wanted)
        smooth = smoothed_near(level, sigma / step, wanted)
        low, _, high = hessian_eigenvalues(smooth, step, voxels)
        strength = _bright(low, high, compact)
        if either_sign:  # -data has the eigenvalues -high <= ... <= -low
            np.maximum(strength, _bright(-high, -low, compact), out=strength)
        answer = np.zeros(level.size, np.float32)
        answer[voxels] = strength * sigma ** 2
        np.maximum(best, answer[at], out=best)
    return best


def _bright(low: np.ndarray, high: np.ndarray, compact: bool) -> np.ndarray:
    """Bright-blob strength from the least and largest Hessian eigenvalues (see :func:`blob_strength`)."""
    if compact:
        return np.where(high < 0, high ** 2 / np.minimum(low, -1e-12) * -1.0, 0.0)
    return np.maximum(-high, 0.0)


def smoothed_near(level: np.ndarray, sigma, wanted: np.ndarray) -> np.ndarray:
    """``ndimage.gaussian_filter(level, sigma, mode="nearest")`` where the Hessian at the ``wanted``
    voxels reads it (within a voxel of them; 0 elsewhere): filtered within their bounding box
    plus the kernel's reach, which gives the same values there at a fraction of the grid."""
    sigma = np.asarray(sigma, dtype=float)
    reach = (4.0 * sigma + 0.5).astype(int)  # gaussian_filter's kernel radius (truncate=4)
    near = bounding_box(wanted, 1)
    if near is None:
        return np.zeros(level.shape, level.dtype)
    box = tuple(slice(max(part.start - r, 0), min(part.stop + r, n))
                for part, r, n in zip(near, reach, level.shape))
    smooth = np.zeros(level.shape, level.dtype)
    smooth[box] = ndimage.gaussian_filter(level[box], sigma, mode="nearest")
    return smooth


def level_indices(columns, factor: int, shape) -> np.ndarray:
    """Flat (C-order) indices on a level averaged by ``factor`` of the voxels whose coordinates
    are ``columns`` (one integer array per axis), the last partial block taken as the last
    level voxel; each level voxel is then computed once. Axis by axis: an integer matrix
    product has no fast path in numpy."""
    flat = None
    for column, size in zip(columns, shape):
        index = np.minimum(column // factor, size - 1) if factor > 1 else column
        flat = index.copy() if flat is None else flat * int(size) + index
    return flat


def hessian_eigenvalues(data: np.ndarray, spacing, at: np.ndarray):
    """Eigenvalues (ascending: three arrays) of the Hessian of ``data`` at interior voxels given by
    their flat (C-order) indices, from central differences, in closed form (the trigonometric
    method, Smith 1961)."""
    flat = np.ascontiguousarray(data, dtype=np.float32).ravel()
    spacing = np.asarray(spacing, dtype=np.float32)  # float32 arithmetic throughout: half the memory traffic
    strides = np.array([data.shape[1] * data.shape[2], data.shape[2], 1])
    centre = flat[at]  # neighbours lie at fixed offsets from each voxel's flat index

    def value(offset):
        return flat[at + int(np.dot(offset, strides))]

    unit = np.eye(3, dtype=int)

    def second(axis):
        return (value(unit[axis]) - 2.0 * centre + value(-unit[axis])) / spacing[axis] ** 2

    def mixed(a, b):
        plus, minus = unit[a] + unit[b], unit[a] - unit[b]
        return (value(plus) - value(minus) - value(-minus) + value(-plus)) / (4.0 * spacing[a] * spacing[b])

    hxx, hyy, hzz = second(0), second(1), second(2)
    hxy, hxz, hyz = mixed(0, 1), mixed(0, 2), mixed(1, 2)
    mean = (hxx + hyy + hzz) / 3.0
    off = hxy ** 2 + hxz ** 2 + hyz ** 2
    scale = np.sqrt(((hxx - mean) ** 2 + (hyy - mean) ** 2 + (hzz - mean) ** 2 + 2.0 * off) / 6.0) + 1e-12
    bxx, byy, bzz = (hxx - mean) / scale, (hyy - mean) / scale, (hzz - mean) / scale
    bxy, bxz, byz = hxy / scale, hxz / scale, hyz / scale
    det = bxx * (byy * bzz - byz ** 2) - bxy * (bxy * bzz - byz * bxz) + bxz * (bxy * byz - byy * bxz)
    angle = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    high = mean + 2.0 * scale * np.cos(angle)
    low = mean + 2.0 * scale * np.cos(angle + 2.0 * np.pi / 3.0)
    return low, 3.0 * mean - high - low, high
