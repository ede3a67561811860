"""What a scan shows, from its voxels alone: head, chest or (other) body, and the masks found on the way.

Nothing here reads file names or metadata: the modality comes from the intensity statistics
(:mod:`VoteMILib.modality`), the region from tissue volumes and shapes on the working grid, never from
where anything lies in the field of view (a chest cut through one lung is still a chest). The region
decides which cues score the slices (:mod:`VoteMILib.cues`) and which CT window shows them
(:mod:`VoteMILib.render`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..preprocess import labels_in, part_volumes_ml, parts_of_at_least
from .morphology import (ball_closing, ball_opening, deeper_than, fill_holes_in_plane, full_resolution,
                         half_resolution, inside_distance)

#: Regions a scan can be taken for.
REGIONS = ("head", "chest", "body")

#: Below this a CT voxel holds mostly air: halfway between aerated lung (about -850 HU) and soft
#: tissue (about 0 HU), the usual lung-segmentation threshold.
AERATED_HU = -400.0

#: Above this a CT voxel is bone (cortical and dense cancellous bone; soft tissue and contrast-
#: enhanced blood stay below).
BONE_HU = 300.0

#: Aerated lung holds blood and tissue: averaged over a few millimetres it lies above this (about
#: -850 HU; emphysema near -950), while the air outside the body is -1000 HU.
LUNG_PARENCHYMA_HU = -950.0

#: A lung lies against the chest wall, the mediastinum and the diaphragm all round but where the
#: field of view cuts it: more than half of the voxels around it are body (a lung cut at the midline
#: of a chest CT: 0.63; a foam pad under a limb: 0.42; the air around the body: 0.15).
LUNG_ENCLOSED_SHARE = 0.5

#: Air pockets smaller than this are gas in bowel, stomach or airways, not a lung (one lung holds litres).
LUNG_MIN_ML = 100.0

#: The chest wall (skin, fat, muscle, ribs) is at least this thick, so lungs lie deeper.
CHEST_WALL_MM = 10.0

#: A chest scan: lungs fill a quarter to a half of the chest; lung bases and bowel gas in an
#: abdominal scan are a few per cent of its volume.
CHEST_LUNG_FRACTION = 0.10

#: A skull: bone rings that enclose at least this much non-bone area (an adult brain's cross-
#: section is 100-150 cm2 over most of the cranium; a long bone's marrow is a few cm2) ...
SKULL_AREA_CM2 = 50.0

#: ... over at least this height (the cranium is about 10 cm high).
SKULL_HEIGHT_MM = 30.0

#: A field of view whose side face the foreground covers over more than this share cuts through
#: the body: a crop, whose left-right symmetry cannot be assumed.
CROP_COVERAGE = 0.25

#: Widest left-right extent of a head (about 15 cm in adults, with ears and margin); a torso is wider.
HEAD_MAX_WIDTH_MM = 200.0

#: Tissue in CT: above this, skin, fat and everything deeper (air, foam pads and lung parenchyma below).
TISSUE_HU = -500.0

#: Anything thinner than twice this (mm) beside the body is not the patient: the couch and its
#: shell, mattresses, blankets and cables; no limb, nose or ear is thinner than 1 cm.
THIN_MM = 5.0

#: The two lungs are told apart where they are this far (mm) from their edges: deeper than the
#: airways that join them (the trachea is about 18 mm across) and the thin lung edges that meet
#: in front of the heart. Tried in turn until two lungs come apart.
LUNG_CORE_MM = (10.0, 15.0, 20.0, 25.0)

#: The smaller lung holds at least this share of the larger (else one lung: the scan shows one, or
#: the lungs could not be told apart).
SECOND_LUNG_SHARE = 0.1

#: Dents of a lung up to this radius are filled to make its envelope: a mass up to 6 cm across
#: against the chest wall or the mediastinum lies inside it, the heart (10-12 cm) does not.
ENVELOPE_MM = 35.0

#: The thoracic cavity holds the lungs and what lies between them in an axial slice (the mediastinum
#: is up to 10 cm wide): each slice's lungs are closed by a disc of this radius (mm).
CAVITY_MM = 60.0


@dataclass(frozen=True)
class Region:
    """What the scan shows.

    Attributes
    ----------
    modality : str
        "CT" or "MRI".
    name : str
        "head", "chest" (CT with aerated lungs) or "body" (any other body part, and MRI that is
        not a whole head in the field of view).
    measures : dict
        The numbers the decision was taken on (for the JSON and for checking).
    masks : dict
        Working-grid masks computed on the way, not part of the JSON.
    """

    modality: str
    name: str
    measures: dict = field(default_factory=dict)
    #: Masks found on the way (CT: "body" without the couch, "lungs"), for the cue to reuse.
    masks: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"modality": self.modality, "name": self.name,
                "measures": {key: round(float(value), 4) for key, value in self.measures.items()}}


def detect_region(grid, modality: str) -> Region:
    """Head, chest or body, from a :class:`~VoteMILib.preprocess.WorkingGrid`.

    CT: a chest has lungs (large air-filled spaces inside the body, the couch left out) filling at
    least :data:`CHEST_LUNG_FRACTION` of it; a head has a skull (bone rings around a brain-sized area).
    MRI: a head lies whole inside the field of view (the foreground covers less than
    :data:`CROP_COVERAGE` of its left, right, front and back faces) and is no wider than :data:`HEAD_MAX_WIDTH_MM`.
    """
    spacing = np.asarray(grid.spacing_mm, dtype=float)
    body = grid.mask
    width_mm = float(np.ptp(np.flatnonzero(body.any(axis=(1, 2))))) * spacing[0] if body.any() else 0.0
    if modality == "CT":
        hu = grid.original_intensities()
        patient = ct_body_mask(hu, spacing)
        lungs = lung_mask(hu, patient, spacing)
        lung_fraction = float(lungs.sum()) / max(float(patient.sum()), 1.0)
        if lung_fraction < CHEST_LUNG_FRACTION:
            # A field of view that cuts through a lung leaves it open to the outside air: not a hole
            # of the body, so not found above. Its parenchyma is denser than air.
            cut_open = cut_lung_mask(hu, patient, spacing)
            if cut_open.any():
                patient, lungs = patient | cut_open, lungs | cut_open
                lung_fraction = float(lungs.sum()) / max(float(patient.sum()), 1.0)
        masks = {"body": patient, "lungs": lungs}
        measures = {"lung_fraction": lung_fraction, "width_mm": width_mm}
        if lung_fraction >= CHEST_LUNG_FRACTION:
            return Region("CT", "chest", measures, masks)
        measures["skull_height_mm"] = skull_mm = skull_height_mm(hu, patient, spacing)
        return Region("CT", "head" if skull_mm >= SKULL_HEIGHT_MM else "body", measures, masks)
    cut = side_coverage(body)
    measures = {"side_coverage": cut, "width_mm": width_mm}
    whole_head = cut < CROP_COVERAGE and width_mm <= HEAD_MAX_WIDTH_MM
    return Region("MRI", "head" if whole_head else "body", measures)


def lung_mask(hu: np.ndarray, body: np.ndarray, spacing_mm) -> np.ndarray:
    """Aerated spaces of at least :data:`LUNG_MIN_ML` lying deeper than :data:`CHEST_WALL_MM` inside
    the body (the lungs; air trapped between skin folds or under the body on the table is shallow)."""
    aerated = (hu < AERATED_HU) & deeper_than(body, spacing_mm, CHEST_WALL_MM)
    return parts_of_at_least(aerated, spacing_mm, LUNG_MIN_ML)


def cut_lung_mask(hu: np.ndarray, body: np.ndarray, spacing_mm) -> np.ndarray:
    """Lung that the field of view cuts open: parenchyma-dense air (between
    :data:`LUNG_PARENCHYMA_HU` and :data:`AERATED_HU`) outside the body mask and touching it, without
    the partial-volume shell at the skin and the couch (opened by a ball of :data:`THIN_MM`), in parts
    of at least :data:`LUNG_MIN_ML` that reach a face of the field of view and lie against the body
    on most of their surface (:data:`LUNG_ENCLOSED_SHARE`; foam pads and mattresses, as dense as lung, lie against
    the outside air)."""
    spacing = np.asarray(spacing_mm, dtype=float)
    parenchyma = ball_opening((hu > LUNG_PARENCHYMA_HU) & (hu < AERATED_HU) & ~body, spacing, THIN_MM)
    labels, count = ndimage.label(parenchyma)
    if count == 0:
        return parenchyma
    sizes = part_volumes_ml(labels, spacing)
    faces = np.zeros(count + 1, bool)
    for axis in range(3):
        for end in (0, -1):
            faces[np.unique(np.take(labels, end, axis=axis))] = True
    touching = np.zeros(count + 1, bool)
    touching[np.unique(labels[ndimage.binary_dilation(body) & parenchyma])] = True
    keep = [int(label) for label in np.flatnonzero((sizes >= LUNG_MIN_ML) & faces & touching) if label > 0]
    lungs = [label for label in keep if _enclosed_share(labels == label, body) >= LUNG_ENCLOSED_SHARE]
    return labels_in(labels, count, lungs)


def _enclosed_share(part: np.ndarray, body: np.ndarray) -> float:
    """Share of the voxels just outside ``part`` (within the field of view) that are body."""
    shell = ndimage.binary_dilation(part) & ~part
    return float(body[shell].mean()) if shell.any() else 0.0


def ct_body_mask(hu: np.ndarray, spacing_mm) -> np.ndarray:
    """The patient in a CT, without the couch: tissue (above :data:`TISSUE_HU`) opened by a ball
    of :data:`THIN_MM` (thin plates and lines go), its largest part, and every axial slice's holes
    filled (the lungs, which a scan cut through the chest leaves open at its top and bottom)."""
    tissue = ball_opening(hu > TISSUE_HU, spacing_mm, THIN_MM)
    labels, count = ndimage.label(tissue)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        tissue = labels == int(np.argmax(sizes))
    return fill_holes_in_plane(tissue)


def split_lungs(lungs: np.ndarray, spacing_mm) -> list:
    """The lungs one by one (larger first), on every second voxel (:func:`half_resolution`
    masks); one mask when they cannot be told apart.

    Aerated lung joined only through the airways or thin edges comes apart where it is
    :data:`LUNG_CORE_MM` from its edges. Each lung is what lies that deep or within that depth
    of its core (the lung opened by a ball), plus the thin parts (recesses, edges) that touch it
    alone; thin parts that touch both lungs (the trachea and main bronchi, edges meeting in front
    of the heart) belong to neither.
    """
    spacing = 2 * np.asarray(spacing_mm, dtype=float)
    coarse = half_resolution(lungs)
    depth = inside_distance(coarse, spacing)
    for core_mm in LUNG_CORE_MM:
        labels, count = ndimage.label(depth > core_mm)
        if count < 2:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        first, second = np.argsort(sizes)[::-1][:2]
        if sizes[second] < SECOND_LUNG_SHARE * sizes[first]:
            continue
        cores = labels_in(labels, count, (first, second))
        distance, nearest = ndimage.distance_transform_edt(~cores, sampling=spacing, return_indices=True)
        owner = np.where(coarse & (distance <= core_mm + float(spacing.max())), labels[tuple(nearest)], 0)
        thin, pieces = ndimage.label(coarse & (owner == 0))
        touching = [np.bincount(thin[ndimage.binary_dilation(owner == lung)], minlength=pieces + 1) > 0
                    for lung in (first, second)]
        touching[0][0] = touching[1][0] = False  # label 0: not a thin part
        # coarse & X is half_resolution(lungs & full_resolution(X)): X is whole on each block.
        return [coarse & ((owner == lung) | labels_in(thin, pieces, np.flatnonzero(mine & ~other)))
                for lung, mine, other in ((first, *touching), (second, *touching[::-1]))]
    return [coarse]


def lung_envelopes(lungs: np.ndarray, spacing_mm, radius_mm: float = ENVELOPE_MM) -> np.ndarray:
    """Each lung with every dent narrower than a ball of ``radius_mm`` filled (a morphological
    closing, lung by lung so that the mediastinum between them stays out), on every second voxel.

    A nodule or mass, in the lung or against its wall, fills such a dent; the heart, the
    mediastinum and the chest wall are broader and stay outside."""
    spacing = np.asarray(spacing_mm, dtype=float)
    closed = None
    for lung in split_lungs(lungs, spacing):
        one = ball_closing(lung, 2 * spacing, radius_mm, open_faces=True)
        closed = one if closed is None else closed | one
    return full_resolution(closed, lungs.shape) | lungs  # one mask back to the full grid, not one per lung


def thoracic_cavity(envelope: np.ndarray, spacing_mm) -> np.ndarray:
    """The lungs and all between them (mediastinum, heart): each axial slice's lungs closed by a
    disc of :data:`CAVITY_MM` and their holes filled."""
    spacing = np.asarray(spacing_mm, dtype=float)
    in_plane = np.array([2 * spacing[0], 2 * spacing[1], 1e6])  # no distance along S: slice by slice
    closed = full_resolution(ball_closing(half_resolution(envelope), in_plane, CAVITY_MM), envelope.shape)
    return fill_holes_in_plane(closed | envelope)


def skull_height_mm(hu: np.ndarray, body: np.ndarray, spacing_mm) -> float:
    """Height (mm along S) of the axial slices where bone rings enclose :data:`SKULL_AREA_CM2` or more."""
    spacing = np.asarray(spacing_mm, dtype=float)
    bone = (hu > BONE_HU) & body
    pixel_cm2 = spacing[0] * spacing[1] / 100.0
    count = 0
    for z in np.flatnonzero(bone.any(axis=(0, 1))):
        ring = bone[:, :, z]
        enclosed = ndimage.binary_fill_holes(ring) & ~ring
        count += int(enclosed.sum() * pixel_cm2 >= SKULL_AREA_CM2)
    return count * float(spacing[2])


def side_coverage(body: np.ndarray) -> float:
    """Largest share of a side face of the field of view (left, right, front or back, over the
    slices holding foreground) that the foreground covers: near 0 for a whole head, whose nose or
    occiput at most touches the field's edge; near 1 for a crop of something larger."""
    occupied = body.any(axis=(0, 1))
    if not occupied.any():
        return 0.0
    faces = (body[0], body[-1], body[:, 0], body[:, -1])  # each (other in-plane axis, S)
    return float(max(face[:, occupied].mean() for face in faces))
