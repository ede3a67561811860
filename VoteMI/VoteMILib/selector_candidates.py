"""Candidates of the generic selector: blobs of 6-64 mm on the working grid, each described by
scan-normalised descriptors that mean the same in any region and on CT of any phase or MRI of any
weighting (issue 31).

Candidates are the extrema of a scale-normalised difference of Gaussians (bright and dark blobs
alike). Their descriptors compare each blob with its own scan only: with the robust spread of the
body's intensities, with the tissue class its surroundings belong to, with the ring around it and,
where the body has a midline, with its mirror image. The distance to the body surface is a confidence
term capped at a few centimetres, so that it can only doubt a candidate at the skin. There is no
distance to the faces of the field of view: fitted on crops with 5 cm margins it became the largest
weight (+5.8) while adding nothing leave-one-source-out (docs/benchmark.md), that is, a prior on where
the lesion sits in the field of view, which a selection must not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .cues.mirror import fit_midsagittal_plane, mirrored_values
from .cues.morphology import otsu_threshold

#: Blob radii in mm (diameters 6-64 mm, the lesion sizes worth a slice of their own), about 1.6 apart. The
#: 32 mm radius is for tumours above 4 cm (limb sarcomas run 40-150 mm): without it such a tumour is only
#: covered by 20 mm blobs at its rim or in one part of it.
RADII_MM = (3.0, 5.0, 8.0, 12.0, 20.0, 32.0)
#: A scale whose finer Gaussian is at least this many working voxels wide is filtered on a grid of half the
#: sampling (block means of 2 voxels a side): a Gaussian that wide keeps nothing a coarser grid would lose,
#: and the filter costs an eighth. On the 2 mm working grid only the 32 mm radius qualifies.
COARSE_SIGMA_VOXELS = 6.0
#: A candidate's ball and ring are sampled at least this many times along its radius (every voxel up to
#: 20 mm on the 2 mm grid; every second one for the 32 mm radius): enough for their means and spreads.
SAMPLES_PER_RADIUS = 8
#: Candidates kept per radius and sign, strongest first: enough to hold a lesion among the many
#: vessels, bowel loops and bone edges a body shows.
PER_SCALE = 30
#: The distance to the body surface counts up to this far (mm): beyond it a candidate is as trusted deep
#: in the body as anywhere else.
EDGE_MM = 20.0
#: The midline fits where the mean mirror difference is below this share of the body's spread.
MIRROR_FIT = 0.5

#: Descriptor names, in the column order of :attr:`Candidates.descriptors` and of a model file.
DESCRIPTORS = ("response", "ring_contrast", "class_contrast", "class_deviation", "heterogeneity",
               "texture_ratio", "compactness", "extremeness", "mirror_difference", "surface_depth",
               "log_radius", "bright", "cue_evidence")


@dataclass
class Candidates:
    """Blob candidates of one scan on its working grid.

    Attributes
    ----------
    centres : ndarray, shape (n, 3), int
        Working-grid voxel of each candidate, (R, A, S) axes.
    radii_mm : ndarray, shape (n,)
    descriptors : ndarray, shape (n, len(DESCRIPTORS)), float64
    """

    centres: np.ndarray
    radii_mm: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.radii_mm)


@dataclass(frozen=True)
class _ScanStats:
    """Robust per-scan statistics that every descriptor is expressed in."""

    median: float
    spread: float
    class_medians: tuple
    class_spreads: tuple
    sorted_values: np.ndarray


def find_candidates(grid, evidence: np.ndarray | None = None) -> Candidates:
    """Blob candidates of a :class:`~VoteMILib.preprocess.WorkingGrid` with their descriptors.

    ``evidence`` is today's cues' map on the grid (:func:`VoteMILib.selector_cues.cue_evidence`, 1 = a
    cue's threshold); without it the ``cue_evidence`` descriptor is 0.
    """
    data, body, spacing = grid.data, grid.mask, np.asarray(grid.spacing_mm, dtype=float)
    stats = _scan_stats(data, body)
    centres, radii, responses, signs = _blob_extrema(data, body, spacing)
    if not len(radii):
        return Candidates(np.zeros((0, 3), int), np.zeros(0), np.zeros((0, len(DESCRIPTORS))))
    depth = ndimage.distance_transform_edt(body, sampling=spacing)
    mirror = _mirror(data, body, stats)
    rows = [_describe(data, body, spacing, stats, centre, radius, response, sign, depth, mirror)
            for centre, radius, response, sign in zip(centres, radii, responses, signs)]
    cue = np.zeros(len(radii)) if evidence is None else evidence[tuple(centres.T)].astype(np.float64)
    # log1p: a cue's map runs to many times its threshold on a clear finding; 1 (its threshold) maps to 0.69.
    rows = np.column_stack([np.asarray(rows, dtype=np.float64), np.log1p(np.clip(cue, 0.0, None))])
    return Candidates(centres, radii, rows)


def _scan_stats(data: np.ndarray, body: np.ndarray) -> _ScanStats:
    """Median and interquartile spread of the body, and of the two tissue classes Otsu's threshold splits it into."""
    values = data[body] if body.any() else data.ravel()
    low, median, high = np.percentile(values, [25, 50, 75])
    spread = max(float(high - low), 1e-3)
    threshold = otsu_threshold(values)
    medians, spreads = [], []
    for part in (values[values <= threshold], values[values > threshold]):
        part = part if len(part) else values
        q1, q2, q3 = np.percentile(part, [25, 50, 75])
        medians.append(float(q2))
        spreads.append(max(float(q3 - q1), 0.05 * spread))
    # A sorted sample of the body gives each candidate's intensity percentile by a binary search.
    sample = np.sort(values[:: max(1, len(values) // 20000)])
    return _ScanStats(float(median), spread, tuple(medians), tuple(spreads), sample)


def _blob_extrema(data, body, spacing):
    """Centres, radii (mm), strengths and signs (+1 bright, -1 dark) of the strongest local extrema of
    the scale-normalised difference of Gaussians at each of :data:`RADII_MM`."""
    # A ball of radius r answers most to a Laplacian of Gaussian of sigma r / sqrt(3); the difference of
    # two Gaussians a factor k apart approximates it at their geometric mean.
    sigmas = [r / np.sqrt(3.0) for r in RADII_MM]
    k = 1.6
    centres, radii, responses, signs = [], [], [], []
    for radius, sigma in zip(RADII_MM, sigmas):
        factor = 2 if np.all(sigma / np.sqrt(k) / spacing >= COARSE_SIGMA_VOXELS) and min(data.shape) >= 8 else 1
        if factor > 1:
            from .preprocess import block_mean

            image, step = block_mean(data, (factor,) * 3), spacing * factor
            inside = block_mean(body.astype(np.float32), (factor,) * 3) >= 0.5
        else:
            image, step, inside = data, spacing, body
        fine = ndimage.gaussian_filter(image, sigma / np.sqrt(k) / step, truncate=3.0)
        coarse = ndimage.gaussian_filter(image, sigma * np.sqrt(k) / step, truncate=3.0)
        dog = fine - coarse
        # Normalised by its own spread in the body, so that strengths compare across scales and scans.
        scale = max(float(np.percentile(np.abs(dog[inside]), 75)), 1e-6) if inside.any() else 1.0
        dog /= scale
        window = np.maximum(3, np.round(radius / step).astype(int) | 1)
        for sign in (1.0, -1.0):
            signed = sign * dog
            peaks = (signed == ndimage.maximum_filter(signed, size=window, mode="nearest")) & inside & (signed > 0)
            where = np.argwhere(peaks)
            if factor > 1:  # a coarse voxel's first fine voxel, kept where the fine grid's body has it
                strength_all = signed[tuple(where.T)]
                where = where * factor
                kept = body[tuple(where.T)]
                where, strength_all = where[kept], strength_all[kept]
            else:
                strength_all = None
            if not len(where):
                continue
            strength = signed[tuple(where.T)] if strength_all is None else strength_all
            # Strongest first; ties by position in the array so that the order is deterministic.
            keep = np.lexsort((np.arange(len(strength)), -strength))[:PER_SCALE]
            centres.append(where[keep])
            radii.append(np.full(len(keep), radius))
            responses.append(strength[keep])
            signs.append(np.full(len(keep), sign))
    if not centres:
        return np.zeros((0, 3), int), np.zeros(0), np.zeros(0), np.zeros(0)
    return (np.concatenate(centres), np.concatenate(radii), np.concatenate(responses), np.concatenate(signs))


def _mirror(data, body, stats):
    """(plane, smoothed data) when the body has a midline its two sides match across, else None."""
    smooth = ndimage.gaussian_filter(data, 1.0)
    plane = fit_midsagittal_plane(smooth, body)
    points = np.argwhere(body)[:: max(1, int(body.sum()) // 4000)].astype(float)
    difference = np.mean(np.abs(ndimage.map_coordinates(smooth, points.T, order=1) -
                                mirrored_values(smooth, plane, points)))
    return (plane, smooth) if difference < MIRROR_FIT * stats.spread else None


def _describe(data, body, spacing, stats, centre, radius, response, sign, depth, mirror) -> list:
    """The descriptors of one candidate (see :data:`DESCRIPTORS`)."""
    reach = np.ceil(2.0 * radius / spacing).astype(int)
    low = np.maximum(centre - reach, 0)
    high = np.minimum(centre + reach + 1, data.shape)
    # Every stride-th voxel from the centre outwards, so that the centre is always sampled.
    stride = np.maximum(1, np.floor(radius / (SAMPLES_PER_RADIUS * spacing)).astype(int))
    low = centre - ((centre - low) // stride) * stride
    box = tuple(slice(a, b, t) for a, b, t in zip(low, high, stride))
    values, inside = data[box], body[box]
    offsets = [(np.arange(a, b, t) - c) * s for a, b, t, c, s in zip(low, high, stride, centre, spacing)]
    distance = np.sqrt(offsets[0][:, None, None] ** 2 + offsets[1][None, :, None] ** 2
                       + offsets[2][None, None, :] ** 2)
    ball = (distance <= radius) & inside
    ring = (distance > radius) & (distance <= 2.0 * radius) & inside
    if not ball.any():
        ball = np.zeros_like(inside)
        ball[tuple((centre - low) // stride)] = True
    inner = values[ball]
    outer = values[ring] if ring.any() else inner
    inner_mean, outer_mean = float(inner.mean()), float(outer.mean())
    # Its surroundings' tissue class: the class whose median is nearest the ring's mean.
    ring_class = int(np.argmin([abs(outer_mean - m) for m in stats.class_medians]))
    deviation = min(abs(inner_mean - m) / s for m, s in zip(stats.class_medians, stats.class_spreads))
    # Compact: voxels like the blob's inside fill the ball and thin out in the ring around it.
    midpoint = 0.5 * (inner_mean + outer_mean)
    like = (values > midpoint) if inner_mean >= outer_mean else (values < midpoint)
    compactness = float(like[ball].mean() - (like[ring].mean() if ring.any() else 0.0))
    percentile = np.searchsorted(stats.sorted_values, inner_mean) / max(len(stats.sorted_values), 1)
    return [
        float(np.log1p(response)),
        # Magnitudes through log1p: an air pocket or bone in CT lies tens of spreads out, and a few
        # such candidates must not dominate the fit.
        float(np.log1p(abs(inner_mean - outer_mean) / stats.spread)),
        float(np.log1p(abs(inner_mean - stats.class_medians[ring_class]) / stats.class_spreads[ring_class])),
        float(np.log1p(deviation)),
        float(np.log1p(inner.std() / stats.spread)),
        float(np.log((inner.std() + 0.02 * stats.spread) / (outer.std() + 0.02 * stats.spread))),
        compactness,
        abs(2.0 * percentile - 1.0),
        _mirror_difference(mirror, inner_mean, centre, stats),
        min(float(depth[tuple(centre)]), EDGE_MM) / EDGE_MM,
        float(np.log(radius / 10.0)),
        1.0 if sign > 0 else 0.0,
    ]


def _mirror_difference(mirror, inner_mean, centre, stats) -> float:
    """How far the blob differs from the same place on the other side; 0 where no midline fits."""
    if mirror is None:
        return 0.0
    plane, smooth = mirror
    point = np.asarray(centre, dtype=float)[None, :]
    other = float(mirrored_values(smooth, plane, point)[0])
    return float(np.log1p(abs(inner_mean - other) / stats.spread))
