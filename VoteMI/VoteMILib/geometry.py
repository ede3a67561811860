"""Anatomical planes from the direction matrix, slice positions in RAS and display orientation.

Every plane is defined by the RAS axis it is normal to (axial: S, coronal: A, sagittal: R).
The IJK axis that runs closest to that RAS axis carries the plane's slices, whatever the order
the axes are stored in (LPS, RAS, LAS, permuted, or oblique).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .names import NORMAL_AXIS, PLANES, PlaneNameError, parse_planes  # noqa: F401 (the engine's names)

_RAS_INDEX = {"R": 0, "A": 1, "S": 2}
#: Index (0=R, 1=A, 2=S) of the RAS axis each plane is normal to: also the axis of a canonical
#: (R, A, S) array that numbers the plane's slices.
NORMAL_INDEX = {plane: _RAS_INDEX[axis] for plane, axis in NORMAL_AXIS.items()}


def ras_axis_assignment(ijk_to_ras) -> tuple[np.ndarray, np.ndarray]:
    """Match each RAS axis with the IJK axis closest to it.

    Returns
    -------
    ijk_axis : ndarray of int, shape (3,)
        ``ijk_axis[r]`` is the IJK axis (0=I, 1=J, 2=K) that runs along RAS axis r (0=R, 1=A, 2=S).
    sign : ndarray of int, shape (3,)
        +1 if increasing that IJK index moves towards +R/+A/+S, else -1.
    """
    directions = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    cosines = np.abs(directions / np.linalg.norm(directions, axis=0))  # [ras, ijk]
    # Best one-to-one match over the six permutations: robust for oblique scans where a
    # per-axis argmax could pick the same RAS axis twice.
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(cosines[r, perm[r]] for r in range(3)))
    ijk_axis = np.array(best)
    sign = np.array([1 if directions[r, ijk_axis[r]] >= 0 else -1 for r in range(3)])
    return ijk_axis, sign


@dataclass(frozen=True)
class PlaneGeometry:
    """How one anatomical plane's slices map to voxel indices and RAS positions.

    Slices are numbered 0..n-1 in ascending RAS position along the plane normal.
    """

    plane: str
    normal_axis: str
    ijk_axis: int  # IJK axis carrying the slices
    ijk_indices: np.ndarray  # IJK index of slice n (ascending position)
    positions_mm: np.ndarray  # ascending RAS coordinate of each slice centre along the normal
    centers_ras: np.ndarray  # (n, 3) RAS point at the centre of each slice

    @property
    def count(self) -> int:
        return len(self.positions_mm)


def plane_geometry(ijk_to_ras, size_ijk, plane: str) -> PlaneGeometry:
    """Slice indices and RAS positions of one anatomical plane of a volume."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    ijk_axis, sign = ras_axis_assignment(matrix)
    ras = NORMAL_INDEX[plane]
    axis = int(ijk_axis[ras])
    n = int(size_ijk[axis])
    ijk_indices = np.arange(n) if sign[ras] > 0 else np.arange(n)[::-1]
    centre = (np.asarray(size_ijk, dtype=float) - 1) / 2
    points = np.tile(centre, (n, 1))
    points[:, axis] = ijk_indices
    centers = points @ matrix[:3, :3].T + matrix[:3, 3]
    return PlaneGeometry(plane, NORMAL_AXIS[plane], axis, ijk_indices.copy(), centers[:, ras].copy(), centers)


def canonical_array(array_kji: np.ndarray, ijk_to_ras) -> np.ndarray:
    """View the voxels with axes ordered (R, A, S), each increasing towards +R, +A, +S.

    Uses only transposes and reversed strides, so no voxel is copied. For oblique scans this is
    the nearest anatomical orientation (no resampling).
    """
    ijk_axis, sign = ras_axis_assignment(ijk_to_ras)
    array_ijk = np.asarray(array_kji).transpose(2, 1, 0)
    view = array_ijk.transpose(tuple(int(a) for a in ijk_axis))
    flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in sign)
    return view[flips]


def canonical_spacing(ijk_to_ras) -> np.ndarray:
    """Voxel spacing (mm) along the canonical (R, A, S) array axes."""
    ijk_axis, _ = ras_axis_assignment(ijk_to_ras)
    spacing = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)
    return spacing[ijk_axis]


def ras_to_ijk(ijk_to_ras, ras) -> np.ndarray:
    """Continuous voxel indices (i, j, k) of a RAS point, or of each row of an (n, 3) array of them."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    inverse = np.linalg.inv(matrix[:3, :3])
    return (np.asarray(ras, dtype=float) - matrix[:3, 3]) @ inverse.T


def display_slice(canonical: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a canonical (R, A, S) array as Slicer shows it, row 0 at the top.

    Axial: anterior up, patient right on the viewer's left. Coronal: superior up, patient right
    on the left. Sagittal: superior up, anterior on the left (Slicer's default slice views).
    ``index`` counts slices in ascending RAS position.
    """
    if plane == "axial":
        return canonical[::-1, ::-1, index].T
    if plane == "coronal":
        return canonical[::-1, index, ::-1].T
    if plane == "sagittal":
        return canonical[index, ::-1, ::-1].T
    raise ValueError(f"unknown plane {plane!r}")


def display_pixel_spacing(ijk_to_ras, plane: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of :func:`display_slice` images."""
    spacing = canonical_spacing(ijk_to_ras)
    rows_cols = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[plane]
    return float(spacing[rows_cols[0]]), float(spacing[rows_cols[1]])
