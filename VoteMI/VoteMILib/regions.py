"""What a scan shows, from its voxels alone: CT or MRI, and head, chest or (other) body.

Nothing here reads file names or metadata: the modality comes from the intensity statistics
(Hounsfield units), the region from tissue volumes and shapes on the working grid. The region
decides which cue scores the slices (:mod:`VoteMILib.selection`) and which CT window shows them
(:mod:`VoteMILib.render`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .modality import detect_modality, looks_like_ct  # noqa: F401 (what a scan shows, from its voxels)
from .preprocess import block_mean, labels_in

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
#: Erosion or dilation by a ball of up to this many voxels is cheaper than a distance transform
#: (a ball of 2.2 voxels' radius has 57; one of 4.5 voxels, 389, takes twice a transform's time).
SMALL_BALL_VOXELS = 100


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
    labels, count = ndimage.label(aerated)
    if count == 0:
        return aerated
    sizes = np.bincount(labels.ravel()) * (float(np.prod(spacing_mm)) / 1000.0)
    sizes[0] = 0
    return labels_in(labels, count, np.flatnonzero(sizes >= LUNG_MIN_ML))


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
    sizes = np.bincount(labels.ravel()) * (float(np.prod(spacing)) / 1000.0)
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
