"""Synthetic lesions put into real scans: is a lesion found where nobody looked while designing the cues?

A sphere of known size and place, with partial-volume edges and voxel noise, is put into a real
scan, the scan's own lesion first erased (filled with the tissue around it plus noise) or left in
place; selection then runs as on any scan and the top slice of each plane is scored as the bench
scores a real lesion (hit_half: at least half of the sphere's largest cross-section).

Sites are drawn by a seeded rule from the scan's own tissue on the working grid, never by hand:

- ``lung`` (chest CT): a soft-tissue nodule in each lung, upper and lower half, deep in aerated
  lung (``central``), against the chest wall (``wall``) and against the mediastinum
  (``mediastinum``), touching them over a broad base;
- ``tissue`` (CT outside the lungs and the mediastinum: an extremity, the chest wall, the upper
  abdomen): an enhancing soft-tissue mass in fat and in soft tissue (muscle or a solid organ), deep
  inside the body and away from the faces of the field of view;
- ``bright`` (body MRI): a lesion as bright as the brightest tissue, anywhere in the foreground;
- ``organ`` (CT with contrast-enhanced solid organs: liver, spleen, kidneys): a hypodense lesion (a
  metastasis), a cyst and a hyperdense lesion, each mostly inside the parenchyma of a large organ, its
  density set against the parenchyma around it. Hosts need no mask (nothing is erased);
- ``brain`` (head MRI): a small enhancing lesion (a metastasis, as bright as the brightest brain
  tissue) and a small dark one (a cyst, necrosis or an infarct, at the level of the cerebrospinal
  fluid), deep in the brain, away from the skull and from the ventricles.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .names import PLANES, SYNTHETIC_KINDS
from .cues.morphology import ball_closing, ball_opening, depth_mm
from .preprocess import parts_of_at_least
from .cues.regions import AERATED_HU, ct_body_mask, lung_envelopes, lung_mask, thoracic_cavity

#: Kinds of synthetic lesion, and the diameters (mm) each is tried at.
KINDS = SYNTHETIC_KINDS
DIAMETERS_MM = {"lung": (15.0, 20.0, 30.0, 45.0, 60.0), "tissue": (20.0, 30.0, 50.0), "bright": (6.0, 10.0),
                "organ": (12.0, 20.0, 30.0, 40.0), "brain": (6.0, 10.0, 15.0, 20.0)}
#: A solid nodule or mass in non-contrast CT (about 30 HU, voxel noise of a routine chest CT).
NODULE_HU, NODULE_NOISE_HU = 30.0, 20.0
#: An enhancing soft-tissue mass (the real sarcoma of the shared data averages 59 HU, its upper decile
#: 117 HU; muscle is 40-60 HU, fat -100 HU).
MASS_HU, MASS_NOISE_HU = 100.0, 20.0
#: Voxels above this are left as they are when a nodule is put into lung: the chest wall, the
#: mediastinum and vessels stay, so a nodule against them is flattened onto them as real ones are.
LUNG_WRITE_BELOW_HU = -300.0
#: Fat and soft tissue (muscle and solid organs) in CT (Hounsfield units).
FAT_HU, SOFT_TISSUE_HU = (-190.0, -30.0), (-30.0, 150.0)
#: Contrast-enhanced organ parenchyma in portal-phase CT (HU): liver and spleen 100-130, renal cortex
#: 150-250; unenhanced muscle (40-60) and fluid lie below, bone and excreted contrast above.
PARENCHYMA_HU = (80.0, 250.0)
#: An organ a lesion is put into holds a ball of this radius (mm) and this volume (mL): liver, spleen and
#: kidneys (5 cm thick, 150 mL and more) do, the aorta, the IVC and contrast-filled bowel loops do not.
ORGAN_CORE_MM, ORGAN_MIN_ML = 12.0, 50.0
#: Organ lesions, as (HU against the parenchyma around them, absolute HU or None): a hypodense
#: metastasis in the portal phase lies about 50 HU below liver, a simple cyst at water density, a
#: hypervascular lesion (haemangioma, HCC, neuroendocrine metastasis) about 50 HU above.
ORGAN_LESIONS = {"hypodense": (-50.0, None), "cyst": (None, 5.0), "hyperdense": (50.0, None)}
#: Voxel noise of a portal-phase abdominal CT at 5 mm slices (HU).
ORGAN_NOISE_HU = 15.0
#: Sites per organ lesion and size.
ORGAN_SITES = 2
#: Brain lesions (head MRI), as an intensity percentile: an enhancing metastasis as bright as the
#: brightest tissue of the head (fat and enhancing vessels: the 99th percentile of the foreground), a dark
#: lesion at the level of cerebrospinal fluid (the 2nd percentile of the deep head: the ventricles).
BRAIN_LESIONS = {"bright": ("foreground", 99.0), "dark": ("deep", 2.0)}
#: Sites per brain lesion and size.
BRAIN_SITES = 3
#: A brain lesion lies this far (mm, beyond its radius) inside the head's surface: the scalp and the skull
#: (about 12 mm in adults) and a few millimetres of cortex.
BRAIN_DEPTH_MM = 16.0
#: Around a real lesion, the ring its surroundings are read from when it is erased.
SHELL_MM = (3.0, 15.0)
#: A synthetic lesion keeps at least this distance (mm, beyond its radius) from the real one.
AWAY_FROM_LESION_MM = 20.0


@dataclass(frozen=True)
class Site:
    """Where a synthetic lesion goes: its kind, a name for the place, centre (RAS mm) and radius."""

    kind: str
    name: str
    centre_ras: tuple
    radius_mm: float


def sphere_fraction(shape_kji, ijk_to_ras, centre_ras, radius_mm: float, subsamples: int = 4):
    """Share of each voxel inside a sphere, in the sphere's bounding box: its partial volume, as
    the scanner averages it (voxels cut by the surface sampled at ``subsamples`` points per axis).

    Returns
    -------
    box : tuple of slice
        (K, J, I) bounding box in the volume.
    fraction : ndarray
        0..1 per voxel of the box.
    """
    matrix = np.asarray(ijk_to_ras, dtype=float)
    centre = np.asarray(centre_ras, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    centre_ijk = np.linalg.solve(matrix, np.append(centre, 1.0))[:3]
    reach = radius_mm / spacing + 1.5
    low = np.maximum(np.floor(centre_ijk - reach), 0).astype(int)
    high = np.minimum(np.ceil(centre_ijk + reach) + 1, np.asarray(shape_kji[::-1])).astype(int)
    if np.any(high <= low):
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32)
    ijk = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high)), indexing="ij"), -1).reshape(-1, 3)
    distance = np.linalg.norm(ijk @ matrix[:3, :3].T + matrix[:3, 3] - centre, axis=1)
    fraction = (distance <= radius_mm).astype(np.float32)
    # Only voxels the surface may cross (within half a voxel diagonal of it) are sampled.
    cut = np.flatnonzero(np.abs(distance - radius_mm) <= 0.5 * float(np.linalg.norm(spacing)))
    offsets = (np.stack(np.meshgrid(*[np.arange(subsamples)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) \
        / subsamples - 0.5
    points = (ijk[cut][:, None, :] + offsets[None]) @ matrix[:3, :3].T + matrix[:3, 3]
    fraction[cut] = np.mean(np.linalg.norm(points - centre, axis=-1) <= radius_mm, axis=1)
    fraction = fraction.reshape(tuple(high - low)).transpose(2, 1, 0)
    box = tuple(slice(a, b) for a, b in zip(low[::-1], high[::-1]))
    return box, fraction


def insert_sphere(array: np.ndarray, ijk_to_ras, site: Site, value: float, noise: float, rng,
                  write_below: float | None = None) -> np.ndarray:
    """Put a sphere of ``value`` (plus Gaussian voxel noise) into ``array`` (K, J, I), in place.

    Voxels at or above ``write_below`` are left as they are. Returns the sphere's mask (at least
    half of the voxel inside) on the volume grid.
    """
    box, fraction = sphere_fraction(array.shape, ijk_to_ras, site.centre_ras, site.radius_mm)
    region = array[box]
    lesion = value + noise * rng.standard_normal(region.shape).astype(np.float32)
    blended = region + fraction * (lesion - region)
    if write_below is not None:
        blended = np.where(region < write_below, blended, region)
    array[box] = blended
    mask = np.zeros(array.shape, bool)
    mask[box] = fraction >= 0.5
    return mask


def erase_lesion(array: np.ndarray, lesion_kji: np.ndarray, spacing_kji, ct: bool, rng) -> np.ndarray:
    """The scan with its lesion (and the voxels next to it, its partial-volume edge) filled with
    the tissue around it: the median of a ring around the lesion plus noise of its robust spread,
    within the ring's 1st..99th percentile; in CT, of the ring's main tissue only (``_main_tissue``)."""
    out = array.copy()
    around = ndimage.distance_transform_edt(~lesion_kji, sampling=spacing_kji)
    erase = ndimage.binary_dilation(lesion_kji, structure=np.ones((3, 3, 3), bool))
    ring = out[(around >= SHELL_MM[0]) & (around <= SHELL_MM[1])]
    if ct:
        ring = ring[_main_tissue(ring)]
    centre = float(np.median(ring))
    spread = 1.4826 * float(np.median(np.abs(ring - centre)))
    fill = centre + spread * rng.standard_normal(int(erase.sum())).astype(np.float32)
    out[erase] = np.clip(fill, *np.percentile(ring, (1, 99)))  # no intensity the ring does not hold
    return out


def _main_tissue(hu: np.ndarray) -> np.ndarray:
    """Which CT values belong to the tissue a lesion is erased into: aerated lung when a fifth or
    more of them is aerated (a lung lesion), else the larger of fat and soft tissue (a mass between
    fat and muscle becomes fat, never a bright blob in fat)."""
    if np.mean(hu < AERATED_HU) >= 0.2:
        return hu < AERATED_HU
    fat = (hu >= FAT_HU[0]) & (hu < FAT_HU[1])
    soft = (hu >= SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    return fat if fat.sum() >= soft.sum() else soft


def lung_sites(grid, radius_mm: float, rng, avoid=None) -> list:
    """Nodule sites in each lung (right, left), upper and lower half: central, against the chest wall,
    against the mediastinum. A site is skipped where the lung holds no such place for this radius.

    Parameters
    ----------
    grid : WorkingGrid
        Of a chest CT.
    avoid : ndarray of bool, optional
        Working-grid voxels a site must keep away from (a real lesion left in place).
    """
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    lungs = lung_mask(grid.original_intensities(), grid.mask, spacing)
    if not lungs.any():
        return []
    # Vessels are part of the lung a nodule may grow over: close them before measuring depth.
    depth, nearest = ndimage.distance_transform_edt(ball_closing(lungs, spacing, 5.0), sampling=spacing,
                                                    return_indices=True)
    index = np.indices(lungs.shape)
    towards = (nearest - index) * spacing[:, None, None, None]  # to the nearest non-lung voxel, mm
    middle = float(np.mean(np.flatnonzero(lungs.any(axis=(1, 2)))))
    medial = towards[0] * np.sign(middle - index[0]) > 0.5 * np.linalg.norm(towards, axis=0)
    level = np.abs(towards[2]) <= 0.6 * np.linalg.norm(towards, axis=0)  # not apex or base
    room = _free_of(avoid, spacing, radius_mm) & lungs
    sites = []
    for side, in_side in (("right", index[0] > middle), ("left", index[0] < middle)):
        lung = lungs & in_side
        if not lung.any():
            continue
        split = np.median(np.nonzero(lung)[2])
        for height, in_height in (("upper", index[2] >= split), ("lower", index[2] < split)):
            here = room & in_side & in_height
            touching = here & level & (depth >= 0.55 * radius_mm) & (depth <= 0.85 * radius_mm)
            for place, where in (("central", here & (depth >= radius_mm + 10.0)),
                                 ("wall", touching & ~medial), ("mediastinum", touching & medial)):
                centre = _draw(where, grid, rng)
                if centre is not None:
                    sites.append(Site("lung", f"{side} {height} {place}", centre, radius_mm))
    return sites


def tissue_sites(grid, radius_mm: float, rng, avoid=None, per_tissue: int = 3) -> list:
    """Mass sites in fat and in soft tissue of a CT: the sphere inside the body by 5 mm or more, one
    radius and 5 mm from the faces of the field of view, at least 70 % of it in that tissue, none in
    air, and outside the thoracic cavity (lungs, mediastinum, heart)."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    hu = grid.original_intensities()
    sigma = radius_mm / spacing / 2.0
    inside = (depth_mm(grid.mask, spacing) >= radius_mm + 5.0) & _away_from_faces(grid.mask.shape, spacing,
                                                                                   radius_mm + 5.0)
    lungs = lung_mask(hu, grid.mask, spacing)
    if lungs.any():
        cavity = thoracic_cavity(lung_envelopes(lungs, spacing), spacing)
        inside &= ndimage.distance_transform_edt(~cavity, sampling=spacing) > radius_mm
    air = ndimage.gaussian_filter((hu < AERATED_HU).astype(np.float32), sigma)
    room = inside & (air < 0.01) & _free_of(avoid, spacing, radius_mm)
    sites = []
    for tissue, (low, high) in (("fat", FAT_HU), ("soft tissue", SOFT_TISSUE_HU)):
        share = ndimage.gaussian_filter(((hu >= low) & (hu < high)).astype(np.float32), sigma)
        where = room & (share >= 0.7)
        for number in range(per_tissue):
            centre = _draw(where, grid, rng)
            if centre is not None:
                sites.append(Site("tissue", f"{tissue} {number + 1}", centre, radius_mm))
    return sites


def bright_sites(grid, radius_mm: float, rng, avoid=None, count: int = 6) -> list:
    """Sites for a bright lesion anywhere in an MRI's foreground, one radius and 3 mm inside it and
    from the faces of the field of view."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    where = ((depth_mm(grid.mask, spacing) >= radius_mm + 3.0)
             & _away_from_faces(grid.mask.shape, spacing, radius_mm + 3.0) & _free_of(avoid, spacing, radius_mm))
    sites = []
    for number in range(count):
        centre = _draw(where, grid, rng)
        if centre is not None:
            sites.append(Site("bright", f"foreground {number + 1}", centre, radius_mm))
    return sites


def brain_sites(grid, radius_mm: float, rng, avoid=None) -> list:
    """Sites of each brain lesion (:data:`BRAIN_LESIONS`), :data:`BRAIN_SITES` each: the centre
    :data:`BRAIN_DEPTH_MM` plus a radius inside the head, in brain tissue (a ball of the lesion's size
    around it holds no fluid: the lesion replaces tissue, not a ventricle), away from the faces of the
    field of view. Named by lesion and number."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    data = grid.data
    inside = depth_mm(grid.mask, spacing) >= radius_mm + BRAIN_DEPTH_MM
    if not inside.any():
        return []
    # Fluid: darker than the 10th percentile of the deep head (ventricles, sulci, cisterns).
    fluid = data < np.percentile(data[inside], 10.0)
    fluid_near = ndimage.gaussian_filter(fluid.astype(np.float32), radius_mm / spacing / 2.0)
    where = (inside & (fluid_near < 0.05) & _away_from_faces(grid.mask.shape, spacing, radius_mm + 5.0)
             & _free_of(avoid, spacing, radius_mm))
    sites = []
    for lesion in BRAIN_LESIONS:
        for number in range(BRAIN_SITES):
            centre = _draw(where, grid, rng)
            if centre is not None:
                sites.append(Site("brain", f"{lesion} {number + 1}", centre, radius_mm))
    return sites


def organ_parenchyma(grid) -> np.ndarray:
    """Working voxels of large contrast-enhanced organs (:data:`PARENCHYMA_HU`, holding a ball of
    :data:`ORGAN_CORE_MM`, parts of :data:`ORGAN_MIN_ML` or more), not between the lungs (the heart's
    blood pool is as dense)."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    hu = grid.original_intensities()
    low, high = PARENCHYMA_HU
    body = ct_body_mask(hu, spacing)
    parenchyma = ball_closing((hu >= low) & (hu <= high) & body, spacing, 5.0)  # vessels inside closed
    parenchyma &= ~between_lungs(lung_mask(hu, body, spacing))
    return parts_of_at_least(ball_opening(parenchyma, spacing, ORGAN_CORE_MM), spacing, ORGAN_MIN_ML)


def between_lungs(lungs: np.ndarray) -> np.ndarray:
    """Voxels with lung on both sides along patient left-right (working axis 0) in their axial row:
    the heart and the mediastinum, not the liver dome or the spleen beside one lung base."""
    to_right = np.maximum.accumulate(lungs[::-1], axis=0)[::-1]
    return to_right & np.maximum.accumulate(lungs, axis=0) & ~lungs


def organ_sites(grid, radius_mm: float, rng, avoid=None) -> list:
    """Sites of each organ lesion (:data:`ORGAN_LESIONS`), :data:`ORGAN_SITES` each: the centre in a
    large enhanced organ (:func:`organ_parenchyma`) at least 0.75 radius from its surface, at least 70 %
    of the sphere in it, one radius and 5 mm from the faces of the field of view. Named by lesion
    and the side of the body (patient right or left of the body's centre) it lies on."""
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    organ = organ_parenchyma(grid)
    if not organ.any():
        return []
    depth = ndimage.distance_transform_edt(organ, sampling=spacing)
    share = ndimage.gaussian_filter(organ.astype(np.float32), radius_mm / spacing / 2.0)
    where = ((depth >= 0.75 * radius_mm) & (share >= 0.7) & _away_from_faces(organ.shape, spacing, radius_mm + 5.0)
             & _free_of(avoid, spacing, radius_mm))
    middle = float(np.mean(np.nonzero(grid.mask)[0]))
    sites = []
    for lesion in ORGAN_LESIONS:
        for number in range(ORGAN_SITES):
            centre = _draw(where, grid, rng)
            if centre is not None:
                voxel = grid_index(grid, centre)
                side = "right" if voxel[0] > middle else "left"  # working axis 0 points to patient right
                sites.append(Site("organ", f"{lesion} {side} {number + 1}", centre, radius_mm))
    return sites


def grid_index(grid, centre_ras) -> tuple:
    """The working voxel nearest to a RAS point (of a site drawn by :func:`_draw`)."""
    return tuple(int(np.argmin(np.abs(grid.positions_mm[plane] - c)))
                 for plane, c in zip(("sagittal", "coronal", "axial"), centre_ras))


def organ_lesion_value(grid, site: Site) -> float:
    """HU of an organ lesion at its site: the median parenchyma (:data:`PARENCHYMA_HU`) within 3-15 mm
    of the sphere plus the lesion's contrast, or its absolute density."""
    relative, absolute = ORGAN_LESIONS[site.name.split()[0]]
    if absolute is not None:
        return absolute
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    hu = grid.original_intensities()
    index = np.indices(hu.shape, dtype=np.float32)
    centre = np.asarray(grid_index(grid, site.centre_ras), dtype=np.float32)
    distance = np.sqrt(sum(((index[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)))
    low, high = PARENCHYMA_HU
    ring = hu[(distance >= site.radius_mm + SHELL_MM[0]) & (distance <= site.radius_mm + SHELL_MM[1])
              & (hu >= low) & (hu <= high)]
    return float(np.median(ring)) + relative


def lesion_value(kind: str, volume) -> tuple:
    """(value, noise, write_below) of a synthetic lesion of ``kind`` in a scan (a Volume); organ
    lesions take their value from the site (:func:`organ_lesion_value`)."""
    if kind in ("organ", "brain"):
        return None, ORGAN_NOISE_HU if kind == "organ" else None, None
    if kind == "lung":
        return NODULE_HU, NODULE_NOISE_HU, LUNG_WRITE_BELOW_HU
    if kind == "tissue":
        return MASS_HU, MASS_NOISE_HU, None
    from .preprocess import foreground_mask

    # As bright as the brightest tissue (the real breast lesion lies at the 99th percentile).
    low, high = np.percentile(volume.array[foreground_mask(volume.array)], (25, 99))
    return float(high), 0.05 * float(high - low), None


def brain_lesion_value(grid, volume, site: Site) -> tuple:
    """(value, noise) of a brain lesion in a head MRI (a Volume): its percentile of the head's foreground
    or deep voxels (:data:`BRAIN_LESIONS`), with voxel noise of 5 % of the foreground's 25th-99th
    percentile range."""
    from .preprocess import foreground_mask

    foreground = volume.array[foreground_mask(volume.array)]
    where, percentile = BRAIN_LESIONS[site.name.split()[0]]
    if where == "deep":
        inside = depth_mm(grid.mask, np.asarray(grid.spacing_mm, dtype=float)) >= BRAIN_DEPTH_MM
        value = float(np.percentile(grid.original_intensities()[inside], percentile))
    else:
        value = float(np.percentile(foreground, percentile))
    low, high = np.percentile(foreground, (25, 99))
    return value, 0.05 * float(high - low)


def sites_for(kind: str, grid, radius_mm: float, rng, avoid=None) -> list:
    rule = {"lung": lung_sites, "tissue": tissue_sites, "bright": bright_sites, "organ": organ_sites,
            "brain": brain_sites}[kind]
    return rule(grid, radius_mm, rng, avoid)


def kinds_for(region) -> tuple:
    """Which synthetic lesions a scan's region takes: lung nodules and chest-wall masses in a chest
    CT, masses in any other CT, organ lesions in any CT with large enhanced organs (the upper abdomen of
    a chest CT too), bright lesions in a body MRI, brain lesions in a head MRI (none in a head CT)."""
    if region.name == "head":
        return () if region.modality == "CT" else ("brain",)
    if region.modality == "CT":
        return ("lung", "tissue", "organ") if region.name == "chest" else ("tissue", "organ")
    return ("bright",)


def site_rng(seed: int, case: str, kind: str, radius_mm: float):
    """The seeded generator of one case, kind and size: the same sites whatever else is run."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{case}/{kind}".encode()), int(round(radius_mm * 10))])


def working_mask(grid, volume, mask_kji: np.ndarray) -> np.ndarray:
    """A (K, J, I) mask of ``volume`` on the working grid (nearest working voxel of each)."""
    from .geometry import canonical_array

    canonical = canonical_array(mask_kji, volume.ijk_to_ras)
    index = [np.clip(np.round((np.arange(n) + 0.5) * canonical.shape[a] / n - 0.5).astype(int), 0,
                     canonical.shape[a] - 1) for a, n in enumerate(grid.mask.shape)]
    return canonical[np.ix_(*index)]


def _free_of(avoid, spacing, radius_mm: float):
    if avoid is None or not avoid.any():
        return True
    return ndimage.distance_transform_edt(~avoid, sampling=spacing) > radius_mm + AWAY_FROM_LESION_MM


def _away_from_faces(shape, spacing, margin_mm: float) -> np.ndarray:
    inside = np.ones(shape, bool)
    for axis, n in enumerate(shape):
        cut = int(np.ceil(margin_mm / spacing[axis]))
        index = [slice(None)] * 3
        index[axis] = slice(0, min(cut, n))
        inside[tuple(index)] = False
        index[axis] = slice(max(n - cut, 0), n)
        inside[tuple(index)] = False
    return inside


def _draw(where: np.ndarray, grid, rng):
    """RAS centre of one working voxel drawn from ``where`` (None if empty)."""
    candidates = np.flatnonzero(where)
    if candidates.size == 0:
        return None
    voxel = np.unravel_index(int(candidates[rng.integers(candidates.size)]), where.shape)
    return tuple(float(grid.positions_mm[plane][v]) for plane, v in zip(("sagittal", "coronal", "axial"), voxel))


@dataclass
class Scan:
    """A case made ready for synthetic lesions (see :func:`prepare_scan`)."""

    name: str
    volume: object  # the case as read (datasets.Case's image)
    base: object  # the scan lesions are put into: its lesion erased, or as read
    grid: object  # working grid of ``base``, where sites are drawn
    region: object
    lesion: np.ndarray  # the real lesion (K, J, I)
    avoid: np.ndarray  # the real lesion on the working grid
    reference: object  # the selection of ``base`` itself
    keep_lesion: bool
    foreground: np.ndarray  # the body or head of ``base`` (K, J, I), for the baselines


def prepare_scan(case, seed: int = 0, keep_lesion: bool = False) -> Scan:
    """Read a case, erase its lesion (unless ``keep_lesion``, or the case has no mask: a host as read)
    and select on the result once (the picks a miss may have been lost to)."""
    from .datasets import load_mask
    from .preprocess import foreground_mask, make_working_grid
    from .cues import detect_region
    from .modality import detect_modality
    from .selection import select_slices
    from .volumes import load_volume, volume_from_array

    volume = load_volume(case.image)
    lesion = load_mask(case.mask, volume) if case.mask else np.zeros(volume.array.shape, bool)
    keep_lesion = keep_lesion and bool(case.mask)  # no real lesion to score
    ct = detect_modality(volume) == "CT"
    voxels = volume.array
    if case.mask and not keep_lesion:
        rng = np.random.default_rng([int(seed), zlib.crc32(case.name.encode())])
        voxels = erase_lesion(voxels, lesion, np.asarray(volume.spacing_mm)[::-1], ct, rng)
    base = volume_from_array(voxels, volume.ijk_to_ras, name=case.name)
    grid = make_working_grid(base)
    return Scan(case.name, volume, base, grid, detect_region(grid, "CT" if ct else "MRI"), lesion,
                working_mask(grid, volume, lesion), select_slices(base, seed=seed), keep_lesion,
                foreground_mask(base.array))


def scan_sites(scan: Scan, kind: str, diameter_mm: float, seed: int = 0) -> list:
    """The sites of one kind and size in a prepared scan (the same whatever else is run)."""
    return sites_for(kind, scan.grid, diameter_mm / 2.0, site_rng(seed, scan.name, kind, diameter_mm / 2.0),
                     scan.avoid)


def try_site(scan: Scan, site: Site, seed: int = 0) -> dict:
    """Put one synthetic lesion into a prepared scan, select, and score the top slice of each plane.

    Returns
    -------
    dict
        case, kind, site, diameter_mm, centre_ras and per plane: hit_any, hit_half, distance_mm
        (of the top slice), hit_top3 (any of the three picks holds half the sphere's largest section),
        cue, focus_mm (from the top pick's mark to the sphere's centre), as_without (the top pick is
        within a radius of the scan's own pick without the lesion), baselines (hit_half of the random,
        middle and largest-section slices of the bench) and, when the real lesion was kept, real_hit_half.
    """
    from .bench import baseline_scores, score_slice, section_areas
    from .selection import select_slices
    from .volumes import volume_from_array

    base, volume = scan.base, scan.volume
    value, noise, write_below = lesion_value(site.kind, base)
    if site.kind == "brain":
        value, noise = brain_lesion_value(scan.grid, base, site)
    elif value is None:
        value = organ_lesion_value(scan.grid, site)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{scan.name}/{site.name}".encode()),
                                 int(round(site.radius_mm * 10))])
    work = base.array.copy()
    sphere = insert_sphere(work, volume.ijk_to_ras, site, value, noise, rng, write_below)
    result = select_slices(volume_from_array(work, volume.ijk_to_ras, name=scan.name), seed=seed)
    row = {"case": scan.name, "kind": site.kind, "site": site.name, "diameter_mm": 2.0 * site.radius_mm,
           "centre_ras": [round(c, 1) for c in site.centre_ras], "planes": {}}
    for plane in PLANES:
        chosen = result.planes[plane]
        positions = chosen.positions_mm
        areas = section_areas(volume, sphere, plane)
        top = chosen.selected[0]
        scores = score_slice(top.index, areas, positions)
        scores["hit_top3"] = max(score_slice(pick.index, areas, positions)["hit_half"] for pick in chosen.selected)
        scores["cue"] = chosen.cue
        scores["focus_mm"] = float(np.linalg.norm(np.subtract(top.mark_ras, site.centre_ras)))
        before = scan.reference.planes[plane].selected[0].position_mm
        scores["as_without"] = bool(abs(top.position_mm - before) <= site.radius_mm)
        baselines = baseline_scores(areas, section_areas(volume, scan.foreground, plane), positions)
        scores["baselines"] = {name: found["hit_half"] for name, found in baselines.items()}
        if scan.keep_lesion:
            scores["real_hit_half"] = score_slice(top.index, section_areas(volume, scan.lesion, plane),
                                                  positions)["hit_half"]
        row["planes"][plane] = scores
    return row


def evaluate_synthetic(case, kinds=KINDS, seed: int = 0, keep_lesion: bool = False, diameters=None,
                       progress=None) -> list:
    """Put every site's synthetic lesion, one at a time, into a case and score the findings picks.

    Parameters
    ----------
    case : datasets.Case
        Needs a lesion mask (erased unless ``keep_lesion``).
    kinds : sequence of str
        Kinds to try, of those the case's region takes (:func:`kinds_for`).
    diameters : dict, optional
        Diameters (mm) per kind; default :data:`DIAMETERS_MM`.
    progress : callable(str), optional
        Called with a line per lesion.

    Returns
    -------
    list of dict
        One per lesion, as :func:`try_site` gives it.
    """
    scan = prepare_scan(case, seed, keep_lesion)
    rows = []
    for kind in (k for k in kinds_for(scan.region) if k in kinds):
        for diameter in (diameters or DIAMETERS_MM)[kind]:
            for site in scan_sites(scan, kind, diameter, seed):
                rows.append(try_site(scan, site, seed))
                if progress is not None:
                    progress(format_synthetic_row(rows[-1]))
    return rows


def format_synthetic_row(row) -> str:
    hits = "  ".join(f"{plane[0].upper()} {int(s['hit_half'])} ({s['cue']})" for plane, s in row["planes"].items())
    return f"{row['case']}: {row['kind']} {row['diameter_mm']:.0f} mm {row['site']}: {hits}"


def site_class(row) -> str:
    """The place of a site without its side, height or number: central, wall, mediastinum, fat, muscle, ..."""
    if row["kind"] == "lung":
        return row["site"].split()[-1]
    return row["site"].split()[0] if row["kind"] in ("organ", "brain") else row["site"].rsplit(" ", 1)[0]


def summarise_synthetic(rows: list, planes=PLANES) -> list:
    """hit_half rate per kind, by case (when several), diameter and site class, per plane (and all
    planes at once)."""
    table = []
    for kind in dict.fromkeys(row["kind"] for row in rows):
        mine = [row for row in rows if row["kind"] == kind]
        cases = list(dict.fromkeys(r["case"] for r in mine))
        groups = [(case, [r for r in mine if r["case"] == case]) for case in cases] if len(cases) > 1 else []
        groups += [(f"{d:.0f} mm", [r for r in mine if r["diameter_mm"] == d])
                   for d in dict.fromkeys(r["diameter_mm"] for r in mine)]
        groups += [(c, [r for r in mine if site_class(r) == c]) for c in dict.fromkeys(map(site_class, mine))]
        groups.append(("all", mine))
        for name, group in groups:
            rates = {plane: float(np.mean([r["planes"][plane]["hit_half"] for r in group])) for plane in planes}
            top3 = float(np.mean([r["planes"][p]["hit_top3"] for r in group for p in planes]))
            every = float(np.mean([all(r["planes"][p]["hit_half"] for p in planes) for r in group]))
            picks = [r["planes"][p] for r in group for p in planes]
            fallback = float(np.mean([pick["cue"] == "representative" for pick in picks]))
            # Misses whose pick is the one the scan gets without the synthetic lesion.
            lost = float(np.mean([not pick["hit_half"] and pick["as_without"] for pick in picks]))
            table.append({"kind": kind, "group": name, "lesions": len(group), **rates, "all_planes": every,
                          "top3": top3, "fallback": fallback, "as_without": lost})
    return table


def format_synthetic_table(table: list, planes=PLANES) -> str:
    lines = ["| kind | lesions | n | " + " | ".join(planes) + " | all three planes | in top 3 | fell back "
             "| missed: as without |", "|---" * (len(planes) + 7) + "|"]
    for entry in table:
        cells = " | ".join(f"{entry[p]:.2f}" for p in planes)
        rates = " | ".join(f"{entry[key]:.2f}" for key in ("all_planes", "top3", "fallback", "as_without"))
        lines.append(f"| {entry['kind']} | {entry['group']} | {entry['lesions']} | {cells} | {rates} |")
    return "\n".join(lines)


def synthetic_baselines(rows: list, planes=PLANES) -> list:
    """hit_half of the findings top pick and of the bench's baseline slices per kind and plane."""
    table = []
    for kind in dict.fromkeys(row["kind"] for row in rows):
        mine = [row for row in rows if row["kind"] == kind]
        for plane in planes:
            picks = [row["planes"][plane] for row in mine]
            entry = {"kind": kind, "plane": plane, "findings": float(np.mean([p["hit_half"] for p in picks]))}
            for name in picks[0]["baselines"]:
                entry[name] = float(np.mean([p["baselines"][name] for p in picks]))
            table.append(entry)
    return table


def format_synthetic_baselines(table: list) -> str:
    names = [key for key in table[0] if key not in ("kind", "plane")] if table else []
    lines = ["| kind | plane | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for entry in table:
        lines.append(f"| {entry['kind']} | {entry['plane']} | " + " | ".join(f"{entry[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)
