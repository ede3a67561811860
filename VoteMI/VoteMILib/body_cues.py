"""What stands out within its tissue in a body scan, without labels.

Outside the head the body is not mirror-symmetric as a whole (heart, liver, bowel), so the
default score cannot compare left with right everywhere. Two cues take its place:

- ``lung_nodule`` (chest CT): compact solid blobs inside the lungs' envelopes. Each lung's dents
  up to the size of a large mass are filled (a nodule against the chest wall or the mediastinum
  sits in such a dent; the heart and the mediastinum are broader and stay out); inside those
  envelopes, everything but lung is shown as aerated lung, so that a nodule stands free, and a
  blob filter at nodule scales answers to compact blobs, not to vessels and bronchial walls
  (tubes), the hila (branching tubes) or the lung's rim (plates). What its mirror image across the
  midline also shows (both hila, paired vessels) is subtracted.
- ``tissue_contrast`` (any other body scan, CT or MRI): bright blobs at lesion scale: where the
  intensity peaks in all three directions against its surroundings (a mass in fat or muscle,
  a lesion in breast tissue), which edges (skin, organ borders: plate-like) and vessels and
  bowel (tube-like) do not.

- ``mass`` (any body scan but a chest CT, CT or MRI): soft tissue that no fat plane crosses for
  centimetres. Muscles, vessels and nerves are wrapped in fat (fascia, septa, the neurovascular
  bundles' fat), so that no point of normal soft tissue in a limb or a trunk wall lies far from
  fat; a mass grows through those planes and pushes them aside, whatever its intensity against the
  muscle around it (sarcomas are often within 10 HU of muscle in CT, iso- to hypointense in T1).
  The depth of each voxel inside fat-free soft tissue, beyond what normal muscle bundles reach,
  is the cue.

Each gives a map on the working grid; :func:`VoteMILib.abnormality.evidence` turns it into vote
weights. The scales are anatomical (HU bands of air, soft tissue and bone; lesion sizes in mm).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from .abnormality import LESION_SCALE_MM, Abnormality, fit_midsagittal_plane, mirrored_values
from .preprocess import block_mean
from .regions import (AERATED_HU, BONE_HU, ball_opening, bounding_box, ct_body_mask, deeper_than, inside_distance,
                      lung_envelopes, lung_mask, thoracic_cavity)

#: The outer layer of the body left out: skin and subcutaneous tissue, the contact with the table,
#: where intensity changes most and which no cue should point at.
BODY_RIM_MM = 10.0
#: Outside the lungs (the chest wall, the mediastinum) the blob filter sees aerated lung of this density.
LUNG_FILL_HU = -850.0
#: Radii of the nodules looked for: a 1.4 cm nodule to a 5.6 cm mass.
NODULE_RADII_MM = (7.0, 10.0, 14.0, 20.0, 28.0, 40.0)
#: Contrast of a solid nodule against aerated lung (about 30 HU against -850 HU), the unit of the
#: ``lung_nodule`` map before it is mapped to 0..1.
NODULE_CONTRAST_HU = 900.0
#: Blob strength beyond the mirror image's, as a share of a nodule's answer, mapped to 0..1 between
#: these: paired vessels and hila stay below the first, a solid nodule of 1.5 cm reaches the second.
NODULE_STRENGTH = (0.2, 0.5)
#: The mirror image's strength is the largest within this distance (mm) of the mirrored point: the
#: two hila, paired vessels and bronchi lie within a centimetre or two of each other's mirror images.
MIRROR_MM = 15.0
#: Solid tissue in a lung's envelope that holds a ball of this radius (mm) is a mass, whatever its
#: shape (the hila, vessels and the dents of the aorta and heart are thinner).
BULK_MM = 20.0
#: ``lung_nodule`` stands out where its 0..1 map reaches this (a blob halfway between the two
#: :data:`NODULE_STRENGTH` bounds).
LUNG_NODULE_MIN = 0.8
#: Radii of the lesions looked for by ``tissue_contrast``: a 1.4 cm nodule to a 5.5 cm mass
#: (Gaussian scales radius / sqrt(3), at which a sphere of that radius answers most).
BLOB_RADII_MM = (7.0, 14.0, 28.0)
#: ``tissue_contrast`` stands out for a blob at least this much brighter than its surroundings:
#: soft tissue against fat (about 100 HU) in CT, a fifth of the foreground's intensity range in MRI.
MIN_CONTRAST_HU = 100.0
MIN_CONTRAST_MRI = 0.2
#: What a Gaussian blob of contrast 1 answers at its own scale (see :func:`blob_strength`).
BLOB_ANSWER = 0.18
#: Fat in CT (about -100 HU) is the darkest tissue ``tissue_contrast`` compares (darker voxels that are
#: not air, the partial volume of air and tissue, count as fat).
FAT_HU = -150.0
#: Muscle and solid organs in CT.
SOFT_TISSUE_HU = 40.0
#: A fat plane in CT: fat is -150..-50 HU (typically -100), muscle and organs +20..+80 HU (typically
#: +50). A plane one original voxel thick, after the binomial smoothing of
#: :meth:`~VoteMILib.preprocess.WorkingGrid.block_extremes`, reads as the mean of fat and muscle
#: (-25 HU): the threshold sits just above it, five noise deviations of smoothed muscle below muscle.
FAT_PLANE_HU = -20.0
#: MRI: subcutaneous fat is the body's outer layer this deep (skin is 1-3 mm; fat under it several mm
#: in every region), which tells which intensity class is fat.
SUBCUTANEOUS_MM = 5.0
#: Under fat suppression the subcutaneous layer is dark: less than this share of it in the bright
#: class. Skin, partial volume with the air and crops that leave little skin in view keep the share
#: of a T1's bright fat layer low (0.07-0.7 on the design scans), so only a nearly all-dark rim counts.
FAT_SUPPRESSED_RIM = 0.05
#: Normal soft tissue lies at most about this far from a fat plane: muscle bundles between septa,
#: vessels and nerves in their fat, a small muscle belly (2 cm across). Shallower depths do not count.
MASS_MIN_DEPTH_MM = 10.0
#: A fat-free region holding a ball of this radius (a mass 4 cm across, near the 5 cm at which a soft-
#: tissue lump is referred as a suspected sarcoma) stands out.
MASS_DEPTH_MM = 20.0
#: Soft tissue stops here: bone and contrast-enhanced vessels above it are expected anatomy, so
#: ``tissue_contrast`` sees them as soft tissue (:data:`SOFT_TISSUE_HU`) rather than as the brightest
#: blobs of the scan.
SOFT_TISSUE_MAX_HU = 100.0


def body_abnormality(grid, region, seed: int = 0) -> Abnormality:
    """The body cue of a region on a working grid: in a chest CT ``lung_nodule`` in the lungs and
    ``tissue_contrast`` in the chest wall and whatever lies above and below the thorax (each voxel
    says which); elsewhere the stronger of ``tissue_contrast`` and ``mass`` (each in units of what
    stands out)."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    ct = region.modality == "CT"
    values = grid.original_intensities() if ct else grid.data
    body = region.masks.get("body") if ct else grid.mask
    if ct and body is None:
        body = ct_body_mask(values, spacing)
    if region.name == "chest":
        return chest_abnormality(values, spacing, seed, body, region.masks.get("lungs"))
    fat = None if ct else mri_fat_class(grid.data, body, spacing)
    if fat is not None and fat[1]:
        # Fat is the brightest tissue: a bright blob is looked for below it (as CT sees bone as soft
        # tissue), so that fat lobules and the subcutaneous layer are no blobs.
        values = np.minimum(values, np.float32(fat[0]))
    threshold = BLOB_ANSWER * (MIN_CONTRAST_HU if ct else MIN_CONTRAST_MRI)
    contrast = tissue_contrast_map(values, body, spacing, ct) / np.float32(threshold)
    mass = mass_map(grid, body, ct, fat)
    if mass.max() >= 1.0:
        # A mass that parts the fat planes over centimetres is the finding to show first: the blobs of
        # tissue_contrast count only as far as they stand out beyond it.
        contrast = np.where(contrast > mass.max(), contrast, 0.0).astype(np.float32)
    labels = (mass > contrast).astype(np.int8)
    return Abnormality(np.maximum(contrast, mass), spacing, "tissue_contrast", threshold=1.0, at_lesion_scale=True,
                       labels=labels, cues=("tissue_contrast", "mass"))


def mri_fat_class(values: np.ndarray, body: np.ndarray, spacing_mm):
    """(threshold, fat_is_bright) of an MRI's body voxels, in the units of ``values``.

    MRI has no fixed scale: the body's voxels fall into two classes at Otsu's threshold; fat is the
    bright one (T1 and T2 fast spin echo, the usual anatomical sequences) unless the body's outer
    :data:`SUBCUTANEOUS_MM`, where subcutaneous fat lies in every region, is nearly all dark
    (:data:`FAT_SUPPRESSED_RIM`): a fat-suppressed sequence."""
    threshold = otsu_threshold(values[body])
    rim = body & ~deeper_than(body, spacing_mm, SUBCUTANEOUS_MM)
    fat_is_bright = not (rim.any() and np.mean(values[rim] > threshold) < FAT_SUPPRESSED_RIM)
    return threshold, fat_is_bright


def fat_free_tissue(grid, body: np.ndarray, ct: bool, fat=None) -> np.ndarray:
    """Working voxels of soft tissue behind which no original voxel is fat (or bone, or air).

    CT: fat lies below :data:`FAT_PLANE_HU`, bone above :data:`BONE_HU`. MRI: ``fat`` is
    :func:`mri_fat_class` of the grid's 0..1 intensities (computed unless given)."""
    darkest, brightest = grid.block_extremes()
    if ct:
        return body & (darkest > FAT_PLANE_HU) & (brightest < BONE_HU)
    threshold, fat_is_bright = fat if fat is not None else mri_fat_class(grid.data, body, grid.spacing_mm)
    low, high = grid.intensity_range
    threshold = low + threshold * (high - low)  # the extremes are in the volume's own units
    return body & ((brightest < threshold) if fat_is_bright else (darkest > threshold))


def mass_map(grid, body: np.ndarray, ct: bool, fat=None) -> np.ndarray:
    """How deep each voxel lies inside fat-free soft tissue (:func:`fat_free_tissue`), beyond
    :data:`MASS_MIN_DEPTH_MM`, in units of :data:`MASS_DEPTH_MM` (1: a mass that stands out).

    The faces of the field of view are no edge (the tissue goes on beyond them), but within
    :data:`MASS_MIN_DEPTH_MM` of a face nothing counts."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    tissue = fat_free_tissue(grid, body, ct, fat)
    depth = inside_distance(tissue, spacing).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0  # no fat anywhere: nothing to measure a mass against
    # Beside a face the depth is measured into tissue the scan does not show: no evidence there.
    margin = np.ceil(MASS_MIN_DEPTH_MM / spacing).astype(int)
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = slice(0, margin[axis])
        depth[tuple(index)] = 0.0
        index[axis] = slice(depth.shape[axis] - margin[axis], None)
        depth[tuple(index)] = 0.0
    return np.clip((depth - MASS_MIN_DEPTH_MM) / (MASS_DEPTH_MM - MASS_MIN_DEPTH_MM), 0.0, None)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best separates ``values`` into two classes (Otsu 1979)."""
    counts, edges = np.histogram(values, bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    below = np.cumsum(counts).astype(float)
    moment = np.cumsum(counts * centres)
    total, total_moment = below[-1], moment[-1]
    between = (total_moment * below - moment * total) ** 2 / np.maximum(below * (total - below), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def chest_abnormality(hu: np.ndarray, spacing_mm, seed: int = 0, body=None, lungs=None) -> Abnormality:
    """Nodules in the lungs (``lung_nodule``, 0..1) and masses in the tissue outside the thoracic
    cavity (``tissue_contrast``, 0..1: :data:`MIN_CONTRAST_HU` maps to :data:`LUNG_NODULE_MIN`), in
    one map; the mediastinum, full of vessels and nodes that look like blobs, is left out.
    ``body`` (the patient without the couch) and ``lungs`` are computed unless given."""
    spacing = np.asarray(spacing_mm, dtype=float)
    body = ct_body_mask(hu, spacing) if body is None else body
    lungs = lung_mask(hu, body, spacing) if lungs is None else lungs
    envelope = lung_envelopes(lungs, spacing)
    # The two maps are independent and scipy.ndimage runs without the GIL: the masses are measured
    # in a second thread while this one looks for nodules (a chest CT's cue in about 60 % of the time).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(chest_mass_map, hu, body, envelope, spacing)
        nodules = lung_nodule_map(hu, body, lungs, envelope, spacing, seed)
        masses = pending.result()
    found = np.maximum(nodules, masses)
    labels = (masses > nodules).astype(np.int8)
    return Abnormality(found, spacing, "lung_nodule", threshold=LUNG_NODULE_MIN, at_lesion_scale=True,
                       labels=labels, cues=("lung_nodule", "tissue_contrast"))


def chest_mass_map(hu: np.ndarray, body: np.ndarray, envelope: np.ndarray, spacing_mm) -> np.ndarray:
    """Masses outside a chest CT's thoracic cavity (``tissue_contrast``, 0..1: :data:`MIN_CONTRAST_HU`
    maps to :data:`LUNG_NODULE_MIN`)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    cavity = thoracic_cavity(envelope, spacing)
    # The lungs shown as soft tissue: organs under the diaphragm make no edge against them.
    solid_chest = np.where(envelope, SOFT_TISSUE_HU, hu)
    contrast = tissue_contrast_map(solid_chest, body & ~cavity, spacing, ct=True) / BLOB_ANSWER
    # Only masses that stand out vote (0 below 90 % of that contrast, LUNG_NODULE_MIN at it): faint
    # blobs over a large area (organs, bowel, breast tissue) must not outvote one nodule.
    low = 0.9 * MIN_CONTRAST_HU
    return np.clip((contrast - low) / ((MIN_CONTRAST_HU - low) / LUNG_NODULE_MIN), 0.0, 1.0)


def lung_nodule_map(hu: np.ndarray, body: np.ndarray, lungs: np.ndarray, envelope: np.ndarray, spacing_mm,
                    seed: int = 0) -> np.ndarray:
    """How much each solid voxel inside the lungs' envelopes looks like part of a nodule (0..1).

    Parameters
    ----------
    hu : ndarray
        Working-grid intensities in Hounsfield units, axes (R, A, S).
    body, lungs, envelope : ndarray of bool
        The patient (without the couch), the aerated lungs, and the lungs' envelopes
        (:func:`~VoteMILib.regions.lung_envelopes`).
    spacing_mm : sequence of float
    seed : int
        Seeds the points the midsagittal plane is fitted on.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    out = np.zeros(hu.shape, np.float32)
    solid = envelope & ~lungs & (hu >= AERATED_HU) & (hu < BONE_HU)
    if not solid.any():
        return out
    shown = np.where(solid | lungs, np.clip(hu, -1000.0, SOFT_TISSUE_MAX_HU), LUNG_FILL_HU).astype(np.float32)
    points = np.argwhere(solid)
    strength = blob_strength(shown, spacing, NODULE_RADII_MM, points, compact=True)
    strength /= BLOB_ANSWER * NODULE_CONTRAST_HU
    # The midline of the chest from its outline, spine and lungs at lesion scale (air to soft tissue).
    outline = ndimage.gaussian_filter(np.clip(hu, -1000.0, SOFT_TISSUE_MAX_HU), LESION_SCALE_MM / spacing)
    plane = fit_midsagittal_plane(outline, body, seed=seed)
    excess = strength - mirror_strength(strength, points, hu.shape, plane, spacing)
    low, high = NODULE_STRENGTH
    nodule = np.clip((excess - low) / (high - low), 0.0, 1.0)
    bulk = ball_opening(solid, spacing, BULK_MM)[tuple(points.T)].astype(np.float32)
    if bulk.any():
        bulk = np.clip(bulk - mirror_strength(bulk, points, hu.shape, plane, spacing), 0.0, 1.0)
    out[tuple(points.T)] = np.maximum(nodule, bulk)
    return out


def mirror_strength(strength: np.ndarray, points: np.ndarray, shape, plane, spacing) -> np.ndarray:
    """The strongest blob near each point's mirror image on the other side of the midline.

    Near the midline the mirror image falls on the point's own neighbourhood, so its weight fades
    from 1 (at :data:`MIRROR_MM` from the plane) to 0 (at half of that).
    """
    size = np.maximum(1, np.round(2.0 * MIRROR_MM / spacing)).astype(int) | 1
    nearby = np.zeros(shape, np.float32)
    # 0 away from the points: the filter runs on their bounding box and its reach only.
    low = np.maximum(points.min(axis=0) - size // 2, 0)
    high = np.minimum(points.max(axis=0) + size // 2 + 1, shape)
    volume = np.zeros(tuple(high - low), np.float32)
    volume[tuple((points - low).T)] = strength
    nearby[tuple(slice(a, b) for a, b in zip(low, high))] = ndimage.maximum_filter(volume, size=size)
    coordinates = points.astype(float)
    offset_mm = ((coordinates - np.asarray(plane.centre)) @ plane.normal) * float(np.mean(spacing))
    weight = np.clip((2.0 * np.abs(offset_mm) - MIRROR_MM) / MIRROR_MM, 0.0, 1.0)
    return weight * mirrored_values(nearby, plane, coordinates)


def tissue_contrast_map(values: np.ndarray, body: np.ndarray, spacing_mm, ct: bool) -> np.ndarray:
    """Bright-blob strength at lesion scales (:data:`BLOB_RADII_MM`), in the intensity units of
    ``values``, deeper than :data:`BODY_RIM_MM` inside ``body`` (0 elsewhere).

    Parameters
    ----------
    values : ndarray
        Working-grid intensities: Hounsfield units for CT, the grid's 0..1 scaled intensities for
        MRI. In CT, air (around the body, in bowel) counts as fat, so that the skin and gas make no
        bright edges, and bone and contrast-filled vessels as soft tissue, so that a clavicle or a
        vertebra in fat is no bright blob.
    body : ndarray of bool
        The part of the body looked at.
    ct : bool
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    if ct:
        data = np.where(values > SOFT_TISSUE_MAX_HU, SOFT_TISSUE_HU, np.maximum(values, FAT_HU)).astype(np.float32)
    else:
        data = values.astype(np.float32)
    points = np.argwhere(deeper_than(body, spacing, BODY_RIM_MM))
    out = np.zeros(data.shape, np.float32)
    out[tuple(points.T)] = blob_strength(data, spacing, BLOB_RADII_MM, points)
    return out


def blob_strength(data: np.ndarray, spacing_mm, radii_mm, points: np.ndarray, compact: bool = False) -> np.ndarray:
    """Bright-blob strength at (n, 3) voxel ``points``, the largest over lesion radii.

    At each radius the image is smoothed at sigma = radius / sqrt(3), at which a sphere of that
    radius answers most, and the Hessian's eigenvalues l1 <= l2 <= l3 are taken. A bright blob
    curves down in all three directions; its strength is the least curvature, -l3, or with
    ``compact`` l3^2 / |l1|, which also weighs down blobs that are much longer than wide (the
    junctions of vessels; the "dot" filter of Li, Sone and Doi, 2003). Strengths are scale-
    normalised (times sigma^2) so that radii compare: a Gaussian blob of contrast C answers about
    0.18 C at its own scale (:data:`BLOB_ANSWER`). Coarser scales run on block-averaged copies
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
        if compact:
            strength = np.where(high < 0, high ** 2 / np.minimum(low, -1e-12) * -1.0, 0.0)
        else:
            strength = np.maximum(-high, 0.0)
        answer = np.zeros(level.size, np.float32)
        answer[voxels] = strength * sigma ** 2
        np.maximum(best, answer[at], out=best)
    return best


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
