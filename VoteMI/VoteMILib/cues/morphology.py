"""Morphology on working-grid masks, shared by the region test and the cues: balls, depths, boxes.

Balls and depths are in millimetres (anisotropic voxels); large ones are computed on every second
voxel (:func:`half_resolution`), where a voxel of error is nothing beside their size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..preprocess import block_mean, labels_in

#: Erosion or dilation by a ball of up to this many voxels is cheaper than a distance transform
#: (a ball of 2.2 voxels' radius has 57; one of 4.5 voxels, 389, takes twice a transform's time).
SMALL_BALL_VOXELS = 100


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """Each axial slice with its holes filled: the background that does not reach the slice's edge."""
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    background, pieces = ndimage.label(~mask, structure=in_plane)
    edges = np.concatenate([background[[0, -1]].ravel(), background[:, [0, -1]].ravel()])
    return ~labels_in(background, pieces, np.unique(edges[edges > 0]))


def ball_closing(mask: np.ndarray, spacing_mm, radius_mm: float, open_faces: bool = False) -> np.ndarray:
    """Morphological closing by a ball (two distance transforms, cropped to the mask's reach).

    ``open_faces``: beyond the faces of the field of view lies what does not belong to the mask
    (the ball may stand there), rather than nothing."""
    spacing = np.asarray(spacing_mm, dtype=float)
    if not mask.any():
        return mask.copy()
    pad = np.ceil(radius_mm / spacing).astype(int) + 1
    occupied = np.argwhere(mask)
    low = np.maximum(occupied.min(axis=0) - pad, 0)
    high = np.minimum(occupied.max(axis=0) + pad + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    part = np.pad(mask[box], [(p, p) for p in pad]) if open_faces else mask[box]
    grown = ndimage.distance_transform_edt(~part, sampling=spacing) <= radius_mm
    closed = (ndimage.distance_transform_edt(grown, sampling=spacing) > radius_mm) | part
    if open_faces:
        closed = closed[tuple(slice(p, -p) for p in pad)]
    out = np.zeros(mask.shape, bool)
    out[box] = closed
    return out


def ball_opening(mask: np.ndarray, spacing_mm, radius_mm: float) -> np.ndarray:
    """Morphological opening by a ball, on every second voxel (parts thinner than the ball go).

    Computed within the coarse mask's bounding box plus the ball and a voxel of background (no
    distance that decides reaches past it), by erosion and dilation with the ball's voxels when
    the ball is small (:data:`SMALL_BALL_VOXELS`), by distance transforms otherwise. As in
    :func:`depth_mm`, the faces of the field of view are no edge."""
    spacing = 2 * np.asarray(spacing_mm, dtype=float)
    coarse = half_resolution(mask)
    box = bounding_box(coarse, np.floor(radius_mm / spacing).astype(int) + 1)
    if box is None:
        return np.zeros(mask.shape, bool)
    if coarse.all():  # no background: every voxel holds the ball
        return mask.copy()
    part = coarse[box]
    ball = ball_voxels(spacing, radius_mm)
    small = ball.sum() <= SMALL_BALL_VOXELS
    if small:
        core = ndimage.binary_erosion(part, ball, border_value=1)
    else:
        core = ndimage.distance_transform_edt(part, sampling=spacing) > radius_mm
    opened = np.zeros(coarse.shape, bool)
    if core.any():
        if small:
            opened[box] = ndimage.binary_dilation(core, ball)
        else:
            opened[box] = ndimage.distance_transform_edt(~core, sampling=spacing) <= radius_mm
    return mask & full_resolution(opened, mask.shape)


def ball_voxels(spacing_mm, radius_mm: float, dtype=np.float64) -> np.ndarray:
    """The voxels within ``radius_mm`` of the centre of a (2n+1)^3 block, a structuring element.

    Distances are computed as ``distance_transform_edt`` computes them and compared in ``dtype``
    (that of the distances thresholded), so that erosion by the ball keeps exactly the voxels
    whose distance from the background exceeds ``radius_mm``."""
    spacing = np.asarray(spacing_mm, dtype=float)
    half = np.floor(radius_mm / spacing).astype(int) + 1  # a ring to spare: rounding in ``dtype``
    offsets = np.indices(tuple(2 * half + 1), dtype=float) - half.reshape(3, 1, 1, 1)
    offsets *= spacing.reshape(3, 1, 1, 1)
    distance = np.sqrt(np.add.reduce(offsets * offsets, axis=0)).astype(dtype)
    return distance <= radius_mm  # the radius uncast: numpy compares as it does with the distances


def bounding_box(mask: np.ndarray, pad):
    """Slices of the box holding ``mask`` with ``pad`` voxels more on each side (within the grid);
    None when the mask is empty."""
    axes = [np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a))) for a in range(mask.ndim)]
    if any(len(found) == 0 for found in axes):
        return None
    pad = np.broadcast_to(pad, (mask.ndim,))
    return tuple(slice(max(int(found[0]) - int(p), 0), min(int(found[-1]) + int(p) + 1, n))
                 for found, p, n in zip(axes, pad, mask.shape))


def half_resolution(mask: np.ndarray) -> np.ndarray:
    """Every second voxel of a mask: the 2x2x2 blocks of which half or more is set."""
    padded = np.pad(mask, [(0, n % 2) for n in mask.shape], mode="edge")
    return block_mean(padded.astype(np.float32), (2, 2, 2)) >= 0.5


def full_resolution(coarse: np.ndarray, shape) -> np.ndarray:
    """A mask of :func:`half_resolution` blocks back on the full grid."""
    full = coarse.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    return full[: shape[0], : shape[1], : shape[2]]


def depth_mm(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Distance (mm) of every voxel from the background around the foreground (0 outside it).

    The faces of the field of view are no edge here: a body cut by them goes on beyond. Computed
    on every second voxel: eight times cheaper, and a voxel of error is nothing at these depths.
    """
    coarse = inside_distance(mask[::2, ::2, ::2], 2 * np.asarray(spacing_mm, dtype=float))
    full = coarse.astype(np.float32).repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    full = full[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    full[~mask] = 0.0
    return full


def deeper_than(mask: np.ndarray, spacing_mm, depth: float) -> np.ndarray:
    """``depth_mm(mask, spacing_mm) > depth``, decided on the coarse grid so that only a mask, not
    a map of distances, is brought back to the full grid; by erosion with a ball when it is small
    (:data:`SMALL_BALL_VOXELS`)."""
    spacing = 2 * np.asarray(spacing_mm, dtype=float)
    coarse = mask[::2, ::2, ::2]
    ball = ball_voxels(spacing, depth, np.float32)  # depth_mm's distances are float32
    if ball.sum() <= SMALL_BALL_VOXELS:
        deep = ndimage.binary_erosion(coarse, ball, border_value=1)
    else:
        deep = inside_distance(coarse, spacing).astype(np.float32) > depth
    return mask & full_resolution(deep, mask.shape)


def inside_distance(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """``ndimage.distance_transform_edt(mask, sampling=spacing_mm)``, computed within the mask's
    bounding box and a voxel of background around it: the nearest background voxel of every
    voxel inside lies there. The faces of the field of view are no edge: a mask without background
    is infinitely deep."""
    if mask.all():
        return np.full(mask.shape, np.inf)
    box = bounding_box(mask, 1)
    out = np.zeros(mask.shape)
    if box is None:
        return out
    out[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing_mm)
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best separates ``values`` into two classes (Otsu 1979)."""
    counts, edges = np.histogram(values, bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    below = np.cumsum(counts).astype(float)
    moment = np.cumsum(counts * centres)
    total, total_moment = below[-1], moment[-1]
    between = (total_moment * below - moment * total) ** 2 / np.maximum(below * (total - below), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def box_maximum(data: np.ndarray, size) -> np.ndarray:
    """The largest value within a box of ``size`` voxels (odd, per axis or one for all) around each
    voxel, the box cut at the volume's faces: ``ndimage.maximum_filter``'s result, from whole-array
    maxima of shifted views, which is about twice as fast for the few-voxel boxes the cues use."""
    out = data
    for axis, width in enumerate(np.broadcast_to(np.asarray(size, dtype=int), (data.ndim,))):
        half = int(width) // 2
        if half == 0:
            continue
        moved = np.moveaxis(out, axis, 0)
        result = moved.copy()
        for shift in range(1, half + 1):
            np.maximum(result[shift:], moved[:-shift], out=result[shift:])
            np.maximum(result[:-shift], moved[shift:], out=result[:-shift])
        out = np.moveaxis(result, 0, axis)
    return np.array(out, order="C")  # a new array even for a box of one voxel
