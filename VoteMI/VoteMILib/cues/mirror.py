"""The midsagittal plane and mirror images across it: what the two sides of a head or a chest share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from .morphology import box_maximum


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


def mirror_maximum(strength: np.ndarray, points: np.ndarray, shape, plane: MidsagittalPlane, spacing,
                   reach_mm: float) -> np.ndarray:
    """The largest ``strength`` within ``reach_mm`` of each of the (n, 3) ``points``' mirror images
    across ``plane`` (what the other side shows there: paired vessels, hila, muscles).

    Near the midline the mirror image falls on the point's own neighbourhood, so its weight fades
    from 1 (at ``reach_mm`` from the plane) to 0 (at half of that).
    """
    size = np.maximum(1, np.round(2.0 * reach_mm / spacing)).astype(int) | 1
    nearby = np.zeros(shape, np.float32)
    # 0 away from the points: the filter runs on their bounding box and its reach only.
    low = np.maximum(points.min(axis=0) - size // 2, 0)
    high = np.minimum(points.max(axis=0) + size // 2 + 1, shape)
    volume = np.zeros(tuple(high - low), np.float32)
    volume[tuple((points - low).T)] = strength
    nearby[tuple(slice(a, b) for a, b in zip(low, high))] = box_maximum(volume, size)
    coordinates = points.astype(float)
    offset_mm = ((coordinates - np.asarray(plane.centre)) @ plane.normal) * float(np.mean(spacing))
    weight = np.clip((2.0 * np.abs(offset_mm) - reach_mm) / reach_mm, 0.0, 1.0)
    return weight * mirrored_values(nearby, plane, coordinates)
