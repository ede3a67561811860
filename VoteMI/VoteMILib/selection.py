"""Vote-MI slice selection: one pass, unsupervised, deterministic for a given seed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .background import start, wait_for
from .clustering import NOISE, dbscan, estimate_eps, nearest_neighbours
from .features import PATCH_SIZE, PCAEncoder, extract_patches
from .geometry import NORMAL_AXIS, NORMAL_INDEX, PLANES, parse_planes, plane_geometry
from .names import canonical_mode
from .preprocess import make_working_grid
from .cues import FALLBACK_CUE, CueInput, detect_region, find_abnormality, patch_votes
from .modality import detect_modality
from .results import PlaneResult, SelectedSlice, SelectionResult
from .voting import (GRAPH_NEIGHBOURS, count_votes, greedy_coverage, pick_top_slices, plane_confidence,
                     similarity_graph, slice_scores)


class Cancelled(Exception):
    """Raised when the caller's ``cancel()`` returned True."""


@dataclass(frozen=True)
class SelectionSettings:
    """Parameters of a selection; defaults follow the paper where it gives a value.

    Attributes
    ----------
    mode : str
        "findings" (default): votes weighted by how abnormal each patch looks, so the pick shows what
        is worth describing; "representative": the paper's representativeness vote.
    min_samples : int
        DBSCAN core-point neighbour count (one of the paper's values is 25; see ``dbscan``).
    delta : float
        Fraction of each cluster kept by within-cluster coverage selection (paper outline: 0.5).
    theta : float
        Fraction of all patches kept across clusters (paper outline: 0.2).
    min_spacing_mm : float or None
        Closest two picks of one plane may be; default max(10 mm, 2 slices).
    smoothing_mm : float
        Gaussian smoothing of votes along the plane normal.
    max_patches : int
        The representative vote runs on at most this many patches, a seeded sample of all (the same
        bound order as DBSCAN's core-point sample): votes per slice keep their proportions, and the
        neighbour graph of 10-d features, the costliest step, is a third of its cost on a whole head.
    """

    mode: str = "findings"
    top_k: int = 3
    seed: int = 0
    patch_size: int = PATCH_SIZE
    min_samples: int = 25
    delta: float = 0.5
    theta: float = 0.2
    min_spacing_mm: float | None = None
    smoothing_mm: float = 3.0
    max_patches: int = 10000


def select_slices(volume, planes=PLANES, top_k=3, seed=0, mode="findings", extra_volumes=(), encoder=None,
                  progress=None, cancel=None, selector=None, **options) -> SelectionResult:
    """Score every slice of each plane and pick the top ``top_k``.

    Parameters
    ----------
    volume : Volume
        The main volume.
    planes : sequence of str
        Any of "axial", "coronal", "sagittal".
    top_k : int
        Slices to pick per plane (best first).
    seed : int
        Seeds every random choice; the same input and settings give the same picks.
    mode : {"findings", "representative"}
        Earlier names ("votemi", "plain") are accepted.
    extra_volumes : sequence of Volume
        Other sequences of the same patient; their patches are stacked with the main volume's so
        that all sequences vote together.
    encoder : PatchEncoder, optional
        Patch feature extractor; PCA of the volume's own patches by default.
    progress : callable(fraction, message), optional
    cancel : callable() -> bool, optional
        Polled between steps; selection raises :class:`Cancelled` when it returns True.
    selector : SelectorModel, optional
        Experimental generic selector (:mod:`VoteMILib.selector_model`): each plane's scores are its
        best candidate per slice instead of the votes; ``mode`` and ``encoder`` are then not used.
    **options
        Further :class:`SelectionSettings` fields.
    """
    mode = canonical_mode(mode)
    if int(top_k) < 1:
        raise ValueError("top_k must be at least 1")
    planes = parse_planes(planes)
    settings = SelectionSettings(mode=mode, top_k=int(top_k), seed=int(seed), **options)
    report = _Progress(progress, cancel)
    started = time.perf_counter()

    report(0.02, "Resampling to the working grid")
    grid = make_working_grid(volume)
    if selector is not None:
        return _select_with_selector(volume, planes, grid, selector, settings, report, started)
    channels = [grid.data] + [_resample_to(grid, make_working_grid(extra)) for extra in extra_volumes]
    report(0.2, "Cutting slices into patches")
    # Patches of all three planes, whichever are reported, so that a plane's scores do not depend
    # on which other planes were asked for.
    patch_sets = [extract_patches(data, grid.mask, PLANES, settings.patch_size) for data in channels]
    patches = patch_sets[0]
    if len(patches) < 4 * settings.min_samples:
        raise ValueError(f"{volume.name or 'volume'}: too little foreground to cut into patches "
                         f"({len(patches)} patches); is the volume empty?")
    pixels = np.stack([p.pixels for p in patch_sets], axis=1)  # (n, sequences, p, p)

    report(0.3, "Computing patch features")
    encoder = encoder if encoder is not None else PCAEncoder()
    features = np.asarray(encoder.fit(pixels, seed=settings.seed).transform(pixels), dtype=np.float64)
    features /= max(float(features.std()), 1e-12)
    region = detect_region(grid, detect_modality(volume))
    # Findings mode may fall back to the representative vote in a plane where nothing stands out:
    # what that needs is prepared on the spare core while the cues are computed.
    background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="votemi") if mode == "findings" else None
    try:
        plane_results, vote = _select_planes(volume, planes, grid, region, channels, patches, features, settings,
                                             report, background)
    finally:
        if background is not None:
            background.shutdown(wait=False, cancel_futures=True)  # what no plane needed is not waited for
    report(1.0, "Done")

    recorded = asdict(settings)
    recorded.update(planes=list(planes), encoder=encoder.describe(), patches=int(len(patches)), **vote.details,
                    working_spacing_mm=[round(float(s), 3) for s in grid.spacing_mm],
                    sequences=[volume.name] + [extra.name for extra in extra_volumes])
    return SelectionResult(planes=plane_results, settings=recorded, size_ijk=volume.size_ijk,
                           spacing_mm=volume.spacing_mm, timing_s={"select": time.perf_counter() - started},
                           region=region.to_dict())


def _select_with_selector(volume, planes, grid, selector, settings, report, started) -> SelectionResult:
    """The selection by the generic selector's candidates (``select_slices(selector=...)``)."""
    from .selector_model import selector_planes

    region = detect_region(grid, detect_modality(volume))
    report(0.3, "Scoring candidates")
    plane_results = selector_planes(volume, grid, planes, selector, settings.top_k, settings.min_spacing_mm,
                                    region=region)
    report(1.0, "Done")
    recorded = {"mode": "selector", "top_k": settings.top_k, "seed": settings.seed, "planes": list(planes),
                "selector": selector.describe(),
                "working_spacing_mm": [round(float(s), 3) for s in grid.spacing_mm], "sequences": [volume.name]}
    return SelectionResult(planes=plane_results, settings=recorded, size_ijk=volume.size_ijk,
                           spacing_mm=volume.spacing_mm, timing_s={"select": time.perf_counter() - started},
                           region=region.to_dict())


def _select_planes(volume, planes, grid, region, channels, patches, features, settings, report, background):
    """Scores and picks of each plane, and the votes they came from (steps 3-6 of :func:`select_slices`)."""
    vote = _Votes(patches, features, grid.positions_mm, settings, report, background)

    found = None
    if settings.mode == "findings":
        report(0.5, "Comparing both sides of the head" if region.name == "head" else "Looking for what stands out")
        found = find_abnormality(CueInput(grid, region, channels, patches, features, settings.seed, background))
    weights = {}  # patch vote weights of each cue's evidence, computed when a plane first needs them

    report(0.9, "Counting votes")
    plane_results = {}
    for plane in planes:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        # Each cue in turn (a head's small lesions after its asymmetry), until one stands out in the
        # plane; representative mode, or findings mode where nothing does (FALLBACK_CUE): the representative vote.
        cue, plane_finding = FALLBACK_CUE, found
        while plane_finding is not None:
            if id(plane_finding) not in weights:
                weights[id(plane_finding)] = patch_votes(plane_finding.evidence, patches, PLANES)
            scores = vote.scores(plane, geometry, weights[id(plane_finding)])
            work_index = _working_slice(grid, plane, geometry.positions_mm[int(np.argmax(scores))])
            if plane_finding.stands_out(NORMAL_INDEX[plane], work_index):
                cue = plane_finding.cue_at(NORMAL_INDEX[plane], work_index)
                break
            plane_finding = plane_finding.following()
        fell_back = cue == FALLBACK_CUE
        if fell_back:
            scores = vote.scores(plane, geometry, None)
        spacing = settings.min_spacing_mm
        if spacing is None:
            step = abs(geometry.positions_mm[-1] - geometry.positions_mm[0]) / max(geometry.count - 1, 1)
            spacing = max(10.0, 2.0 * step)
        # Findings picks hedge (distinct candidates first); the paper's vote keeps its plain top-k.
        picks = pick_top_slices(scores, geometry.positions_mm, settings.top_k, spacing, peaks_first=found is not None)
        selected = [SelectedSlice(plane=plane, rank=rank, index=index, ijk_index=int(geometry.ijk_indices[index]),
                                  position_mm=float(geometry.positions_mm[index]),
                                  center_ras=tuple(float(c) for c in geometry.centers_ras[index]),
                                  score=float(scores[index]),
                                  focus_ras=_focus(plane_finding, grid, plane, geometry.centers_ras[index]))
                    for rank, index in enumerate(picks, start=1)]
        plane_results[plane] = PlaneResult(plane=plane, normal_axis=NORMAL_AXIS[plane], ijk_axis=geometry.ijk_axis,
                                           positions_mm=geometry.positions_mm, ijk_indices=geometry.ijk_indices,
                                           scores=scores, selected=selected, cue=cue,
                                           confidence=plane_confidence(scores, geometry.positions_mm, picks[0], spacing),
                                           stood_out=None if found is None else not fell_back)
    return plane_results, vote


def _working_slice(grid, plane, position_mm) -> int:
    """Index of the working-grid slice of ``plane`` nearest a RAS position."""
    return int(np.argmin(np.abs(grid.positions_mm[plane] - position_mm)))


class _Votes:
    """Slice scores of each plane from weighted votes of every patch, or from the paper's
    representative vote (computed once, when a plane first needs it)."""

    def __init__(self, patches, features, work_positions, settings, report, background=None):
        self.patches, self.settings, self.report = patches, settings, report
        self.work_positions = work_positions
        self.details = {}
        self._voters = None
        # With a pool (findings mode) the representative vote, which a plane where nothing stands out
        # falls back to, is prepared beside the cues; from there it reports no progress.
        self._representative = start(background, representative_vote, features, settings,
                                     report if background is None else _Progress(None, None))

    def scores(self, plane, geometry, weights) -> np.ndarray:
        """0..1 score of every original slice of ``plane``; ``weights`` None: the representative vote."""
        patches = self.patches
        if weights is None:
            voters = self._representative_voters()
        else:
            voters = np.arange(len(patches))  # every patch votes: coverage would drop the rare ones
        mine = voters[patches.plane[voters] == PLANES.index(plane)]
        work_positions = self.work_positions[plane]
        votes = count_votes(patches.slice_index[mine], len(work_positions), None if weights is None else weights[mine])
        return slice_scores(votes, work_positions, geometry.positions_mm, self.settings.smoothing_mm)

    def _representative_voters(self) -> np.ndarray:
        if self._voters is None:
            self._voters, self.details = wait_for(self._representative, lambda: self.report(None, None))
        return self._voters


def representative_vote(features: np.ndarray, settings: SelectionSettings, report) -> tuple:
    """The paper's voters: patches that cover each DBSCAN cluster of the feature space, then the clusters.

    Returns
    -------
    voters : ndarray of int
        Indices of the voting patches.
    details : dict
        The DBSCAN radius, cluster count, patches clustered and share of noise, for the record.
    """
    sample = np.arange(len(features))
    if len(sample) > settings.max_patches:
        rng = np.random.default_rng(settings.seed)
        sample = np.sort(rng.choice(len(sample), settings.max_patches, replace=False))
    report(0.45, "Clustering patches (DBSCAN)")
    # One neighbour query serves the radius, DBSCAN and the coverage graph.
    distances, neighbours = nearest_neighbours(features[sample], max(settings.min_samples + 1, GRAPH_NEIGHBOURS))
    eps = estimate_eps(distances, settings.min_samples)
    labels = dbscan(distances, neighbours, eps, settings.min_samples)
    report(0.6, "Selecting covering patches")
    distances = np.ascontiguousarray(distances[:, :GRAPH_NEIGHBOURS])
    neighbours = np.ascontiguousarray(neighbours[:, :GRAPH_NEIGHBOURS])
    voters = sample[_vote_mi_selection(labels, neighbours, similarity_graph(distances, eps), settings, report)]
    details = {"eps": round(eps, 6), "clusters": int(labels.max() + 1), "voting_patches": int(len(sample)),
               "noise_fraction": round(float(np.mean(labels == NOISE)), 4)}
    return voters, details


def _vote_mi_selection(labels, neighbours, similarity, settings, report) -> np.ndarray:
    """Steps 4 and 5 of the paper: coverage within each cluster, then diversity across clusters.

    Noise points are dropped as in the paper. Each cluster's subset is seeded with its densest
    patch (the mode of the density that the paper samples with MCMC), which keeps the result
    deterministic; both steps maximise the same facility-location coverage on the k-NN graph.
    """
    clustered = labels != NOISE
    density = similarity.sum(axis=1)
    pooled = []
    for cluster in range(int(labels.max()) + 1):
        report(None, None)
        members = np.flatnonzero(labels == cluster)
        budget = int(np.ceil(settings.delta * len(members)))
        seed_point = int(members[np.argmax(density[members])])
        universe = labels == cluster
        pooled.append(greedy_coverage(members, budget, neighbours, similarity, universe, seed_point))
    if not pooled:
        return np.zeros(0, dtype=int)
    pooled = np.concatenate(pooled)
    budget = int(np.ceil(settings.theta * len(labels)))
    return greedy_coverage(pooled, budget, neighbours, similarity, clustered)


def _focus(found, grid, plane, center_ras):
    """RAS point of the highest abnormality in the working slice nearest a pick, or None.

    A lesion and the healthy tissue facing it differ from each other alike; the share that
    names the lesion's side is decided per point and can waver, so the side is taken from the
    whole slice (the hemisphere holding more abnormality) and the point from within it.
    """
    if found is None:
        return None
    axis = NORMAL_INDEX[plane]
    slice_index = _working_slice(grid, plane, center_ras[axis])
    section = found.focus_section(axis, slice_index)
    if not section.max() > 0:
        return None
    if plane != "sagittal" and found.plane is not None:
        side = np.take(found.hemisphere, slice_index, axis=axis)
        right = section[side > 0].sum() >= section[side < 0].sum()
        section = np.where((side > 0) == right, section, 0.0)
    in_plane = np.unravel_index(int(np.argmax(section)), section.shape)
    focus = [float(c) for c in center_ras]
    # In-plane coordinates from the working grid; the normal coordinate stays on the slice.
    for other, voxel in zip((a for a in range(3) if a != axis), in_plane):
        focus[other] = float(grid.positions_mm[("sagittal", "coronal", "axial")[other]][voxel])
    return tuple(focus)


def _resample_to(grid, other):
    """Resample another sequence's working grid onto ``grid`` by RAS position, axis by axis."""
    coordinates = []
    for plane in ("sagittal", "coronal", "axial"):  # canonical axes R, A, S
        target, source = grid.positions_mm[plane], other.positions_mm[plane]
        coordinates.append(np.interp(target, source, np.arange(len(source))))
    mesh = np.meshgrid(*coordinates, indexing="ij")
    return ndimage.map_coordinates(other.data, mesh, order=1, mode="nearest").astype(np.float32)


class _Progress:
    """Calls the user's progress callback and raises :class:`Cancelled` when asked to stop."""

    def __init__(self, progress, cancel):
        self.progress, self.cancel = progress, cancel

    def __call__(self, fraction, message):
        if self.cancel is not None and self.cancel():
            raise Cancelled("selection cancelled")
        if self.progress is not None and fraction is not None:
            self.progress(float(fraction), message)
