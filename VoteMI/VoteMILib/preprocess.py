"""The working grid: the volume resampled to near-isotropic voxels in canonical (R, A, S) order.

Selection runs on this grid so that every plane is cut into square patches of the same size in
millimetres, and so that a 512x512x400 CT costs about as much as a 240x240x155 MRI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .features import PATCH_SIZE
from .geometry import NORMAL_INDEX, PLANES, canonical_array, canonical_spacing, plane_geometry
from .volumes import VolumeError

#: Working voxel size in mm: fine enough for lesions of a centimetre, coarse enough to be fast.
TARGET_SPACING_MM = 2.0
#: Longest side of the working grid; large field-of-view scans get coarser voxels instead.
MAX_WORKING_SIZE = 144



@dataclass
class WorkingGrid:
    """A volume on the working grid.

    Attributes
    ----------
    data : ndarray, shape (X, Y, Z), float32
        Intensities along (R, A, S), scaled so the foreground's 1st..99th percentile spans 0..1.
    mask : ndarray of bool, same shape
        Foreground (head or body), without the air around it.
    spacing_mm : ndarray, shape (3,)
    positions_mm : dict
        For each plane, the RAS position of every working slice along the plane normal.
    """

    data: np.ndarray
    mask: np.ndarray
    spacing_mm: np.ndarray
    positions_mm: dict
    #: (low, high) original intensities that ``data`` maps to 0 and 1 (CT: Hounsfield units).
    intensity_range: tuple = (0.0, 1.0)
    #: The canonical original voxels and the averaging that made ``data`` from them, for
    #: :meth:`block_extremes` (None for grids made otherwise).
    source: tuple | None = field(default=None, repr=False, compare=False)

    def original_intensities(self) -> np.ndarray:
        """``data`` in the volume's own units (Hounsfield units for CT)."""
        low, high = self.intensity_range
        return self.data * np.float32(high - low) + np.float32(low)

    def block_extremes(self):
        """The darkest and the brightest original voxel behind each working voxel (two arrays in
        the volume's own units, on the working grid).

        Averaging hides structures thinner than a working voxel (a fat plane of a millimetre
        between two muscles); the extremes of the original voxels keep them. The voxels are first
        smoothed by a binomial [1, 2, 1] / 4 kernel along the axes that a block spans, which keeps
        a millimetre plane and lowers the noise (30-40 HU per voxel in CT) that the extremes of a
        block would otherwise pick. Computed on first use; the grid's own averages stand in when
        it was not made from original voxels."""
        if self.source is None:
            values = self.original_intensities()
            return values, values
        if self._extremes is None:
            canonical, factors, shape = self.source
            denoised = binomial_smooth(canonical, [axis for axis in range(3) if factors[axis] > 1])
            self._extremes = tuple(resample_linear(block_reduce(denoised, factors, reduce), shape)
                                   for reduce in (np.minimum, np.maximum))
        return self._extremes

    _extremes: tuple | None = field(default=None, init=False, repr=False, compare=False)


def block_mean(view: np.ndarray, factors) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels; trailing voxels that do not fill a
    block are dropped. Reduces one axis at a time, so the largest temporary is the input over its
    first factor."""
    return _fold_blocks(view, factors, np.add, mean=True)


def block_reduce(view: np.ndarray, factors, reduce) -> np.ndarray:
    """Reduce non-overlapping blocks of ``factors`` voxels with a binary ufunc (``np.minimum``,
    ``np.maximum``), axis by axis as :func:`block_mean` does; trailing voxels are dropped."""
    return _fold_blocks(view, factors, reduce, mean=False)


def _fold_blocks(view: np.ndarray, factors, reduce, mean: bool) -> np.ndarray:
    out = view
    for axis, factor in enumerate(int(f) for f in factors):
        if factor == 1:
            continue
        count = out.shape[axis] // factor
        index = [slice(None)] * 3
        index[axis] = slice(0, count * factor, factor)
        total = np.array(out[tuple(index)], dtype=np.float32)  # a copy: the input is never written
        for offset in range(1, factor):
            index[axis] = slice(offset, offset + count * factor, factor)
            reduce(total, out[tuple(index)], out=total)
        out = total / np.float32(factor) if mean else total
    return contiguous_float32(out)


def binomial_smooth(view: np.ndarray, axes) -> np.ndarray:
    """``view`` smoothed by the kernel [1, 2, 1] / 4 along each of ``axes`` (edges repeated), in float32."""
    out = np.array(view, dtype=np.float32)
    for axis in axes:
        if out.shape[axis] < 3:
            continue
        moved = np.moveaxis(out, axis, 0)
        smooth = np.empty_like(moved)
        smooth[1:-1] = moved[:-2] + moved[2:]
        smooth[1:-1] += 2.0 * moved[1:-1]
        smooth[0] = 3.0 * moved[0] + moved[1]
        smooth[-1] = 3.0 * moved[-1] + moved[-2]
        smooth *= np.float32(0.25)
        out = np.moveaxis(smooth, 0, axis)
    return out


def contiguous_float32(view: np.ndarray, tile: int = 32) -> np.ndarray:
    """``np.ascontiguousarray(view, dtype=np.float32)``, copied in tiles of ``tile`` x ``tile``
    voxels along the first two axes: a volume's canonical view is usually its file's voxel
    order transposed, which a plain copy reads with a stride of whole slices (twice slower)."""
    if view.flags.c_contiguous or view.ndim != 3:
        return np.ascontiguousarray(view, dtype=np.float32)
    out = np.empty(view.shape, np.float32)
    for i in range(0, view.shape[0], tile):
        for j in range(0, view.shape[1], tile):
            out[i:i + tile, j:j + tile] = view[i:i + tile, j:j + tile]
    return out


def part_volumes_ml(labels: np.ndarray, spacing_mm) -> np.ndarray:
    """Volume in mL of each label of ``labels`` (from ``ndimage.label``); the background's is 0."""
    volumes = np.bincount(labels.ravel()) * (float(np.prod(spacing_mm)) / 1000.0)
    volumes[0] = 0.0
    return volumes


def parts_of_at_least(mask: np.ndarray, spacing_mm, min_ml: float) -> np.ndarray:
    """The connected parts of ``mask`` (face connectivity) of ``min_ml`` millilitres or more."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    return labels_in(labels, count, np.flatnonzero(part_volumes_ml(labels, spacing_mm) >= min_ml))


def labels_in(labels: np.ndarray, count: int, wanted) -> np.ndarray:
    """Where ``labels`` (from ``ndimage.label``, ``count`` labels) is one of ``wanted``: the same
    mask as ``np.isin`` by a lookup table, which reads each voxel once instead of sorting them."""
    table = np.zeros(int(count) + 1, bool)
    table[np.asarray(wanted, dtype=np.intp)] = True
    return table[labels]


def resample_linear(data: np.ndarray, shape) -> np.ndarray:
    """Linear interpolation onto ``shape`` voxels covering the same extent (voxel centres at
    (i + 0.5) * old / new - 0.5, edges repeated), axis by axis and only along axes whose size
    changes: the same values as ``ndimage.zoom(order=1, grid_mode=True, mode="nearest")`` at a
    fraction of its cost when, as usual, one axis gains or loses a voxel."""
    out = data
    for axis, (old, new) in enumerate(zip(data.shape, shape)):
        if old == new:
            continue
        position = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
        below = np.floor(position).astype(int)
        above = np.minimum(below + 1, old - 1)
        weight = (position - below).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        low = np.take(out, below, axis=axis)
        out = low + weight * (np.take(out, above, axis=axis) - low)
    return np.ascontiguousarray(out, dtype=np.float32)


def working_shape(shape, spacing, target_mm=TARGET_SPACING_MM, max_size=MAX_WORKING_SIZE):
    """Integer pre-averaging factors, the final working shape and the working spacing."""
    shape = np.asarray(shape)
    spacing = np.asarray(spacing, dtype=float)
    extent = shape * spacing
    work_spacing = max(target_mm, float(extent.max()) / max_size)
    # Never average more voxels than an axis holds: a thin axis would otherwise average to nothing.
    factors = np.clip(np.floor(work_spacing / spacing + 1e-6), 1, shape).astype(int)
    out_shape = np.maximum(2, np.round(extent / work_spacing)).astype(int)
    return factors, out_shape, extent / out_shape


def check_extent(shape, spacing, name: str = "", target_mm=TARGET_SPACING_MM, max_size=MAX_WORKING_SIZE,
                 patch_size: int = PATCH_SIZE) -> None:
    """Refuse a volume too thin along some axis to be cut into patches in every plane.

    Each plane's slices are cut into ``patch_size`` working voxels square, so every axis must
    span at least one patch: a slab of a few thin slices has no coronal or sagittal patches, and
    nothing to tell its axial slices apart.

    Parameters
    ----------
    shape, spacing : sequence of 3
        Voxel counts and voxel sizes (mm) along the canonical (R, A, S) axes.

    Raises
    ------
    VolumeError
        Naming the thin axis, its extent and the extent needed.
    """
    shape = np.asarray(shape)
    spacing = np.asarray(spacing, dtype=float)
    extent = shape * spacing
    work_spacing = max(target_mm, float(extent.max()) / max_size)
    patch_mm = patch_size * work_spacing
    thin = int(np.argmin(extent))
    if extent[thin] >= patch_mm - 1e-6:
        return
    where = f"{name or 'volume'} spans only {extent[thin]:.3g} mm along {'RAS'[thin]} " \
            f"({shape[thin]} voxels of {spacing[thin]:.3g} mm), too thin to score: "
    if work_spacing > target_mm:  # large fields of view get coarser working voxels, hence larger patches
        raise VolumeError(
            where + f"at its {extent.max():.0f} mm field of view VoteMI cuts every plane into {patch_mm:.3g} mm "
            f"patches ({patch_size} voxels of a {work_spacing:.3g} mm working grid), so it needs at least "
            f"{patch_mm:.3g} mm in every direction; crop it to the body part")
    raise VolumeError(where + f"VoteMI cuts every plane into {patch_mm:.3g} mm patches, so it needs at least "
                      f"{patch_mm:.3g} mm in every direction")


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """The head or body: above a low threshold, holes filled, largest connected part.

    The threshold sits a tenth of the way from the darkest voxel to the 99th percentile:
    above MRI background noise and CT air, below every tissue.
    """
    low = float(data.min())
    high = float(np.percentile(data, 99))
    mask = data > low + 0.1 * (high - low)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    # Holes are background parts that do not reach the volume's faces (cheaper than binary_fill_holes).
    background, pieces = ndimage.label(~mask)
    faces = np.concatenate([background[[0, -1]].ravel(), background[:, [0, -1]].ravel(),
                            background[:, :, [0, -1]].ravel()])
    outside = labels_in(background, pieces, np.unique(faces[faces > 0]))
    return ~outside


def make_working_grid(volume, target_mm=TARGET_SPACING_MM, max_size=MAX_WORKING_SIZE) -> WorkingGrid:
    """Resample a :class:`~VoteMILib.volumes.Volume` onto the working grid."""
    canonical = canonical_array(volume.array, volume.ijk_to_ras)
    spacing = canonical_spacing(volume.ijk_to_ras)
    check_extent(canonical.shape, spacing, volume.name, target_mm, max_size)
    factors, out_shape, work_spacing = working_shape(canonical.shape, spacing, target_mm, max_size)
    averaged = block_mean(canonical, factors)
    data = resample_linear(averaged, out_shape)
    mask = foreground_mask(data)
    data, intensity_range = _normalise(data, mask)

    positions = {}
    size_ijk = volume.size_ijk
    for plane in PLANES:
        axis = NORMAL_INDEX[plane]
        geometry = plane_geometry(volume.ijk_to_ras, size_ijk, plane)
        n_blocks = averaged.shape[axis]
        n_work = data.shape[axis]
        # Centre of working slice j in original slice units (grid_mode zoom after block averaging).
        block_coord = (np.arange(n_work) + 0.5) * n_blocks / n_work - 0.5
        original_index = block_coord * factors[axis] + (factors[axis] - 1) / 2
        original = geometry.positions_mm
        step = (original[-1] - original[0]) / max(len(original) - 1, 1)
        positions[plane] = original[0] + original_index * step
    return WorkingGrid(data=data, mask=mask, spacing_mm=np.asarray(work_spacing), positions_mm=positions,
                       intensity_range=intensity_range, source=(canonical, factors, tuple(int(n) for n in out_shape)))


def _normalise(data: np.ndarray, mask: np.ndarray):
    """Scale the foreground's 1st..99th percentile to 0..1; returns (scaled, (low, high))."""
    values = data[mask] if mask.any() else data.ravel()
    low, high = np.percentile(values, [1, 99])
    if high <= low:
        low, high = float(values.min()), float(values.max()) + 1e-6
    return ((data - low) / (high - low)).astype(np.float32), (float(low), float(high))
