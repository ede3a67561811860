"""Coverage selection within and across clusters, votes per slice, and top-k picks."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

#: Neighbours per patch in the similarity graph that coverage is computed on.
GRAPH_NEIGHBOURS = 16
#: Each greedy round adds this fraction of the remaining budget (1 patch at the least).
BATCH_FRACTION = 0.2


def similarity_graph(distances: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian similarities ``exp(-d^2 / (2 bandwidth^2))`` of a k-nearest-neighbour graph."""
    return np.exp(-(distances ** 2) / (2.0 * bandwidth ** 2))


def greedy_coverage(candidates: np.ndarray, budget: int, neighbours: np.ndarray, similarity: np.ndarray,
                    universe: np.ndarray, seed_point: int | None = None) -> np.ndarray:
    """Greedy facility-location coverage: add the candidate that raises coverage most.

    Coverage of a point is its best similarity to any chosen patch; a candidate covers the points of
    its neighbour list that belong to ``universe``. Rounds add ``BATCH_FRACTION`` of the remaining
    budget at once (an accelerated greedy; exact greedy would cost one pass per patch).

    Parameters
    ----------
    candidates : ndarray of int
        Patches that may be chosen.
    budget : int
        How many to choose.
    universe : ndarray of bool, shape (n,)
        Points whose coverage counts.
    seed_point : int, optional
        Chosen first (the paper seeds each cluster's subset by sampling its density).

    Returns
    -------
    ndarray of int
        Chosen patches in the order they were added.
    """
    budget = int(min(budget, len(candidates)))
    cover = np.zeros(len(universe), dtype=np.float64)
    cand_neighbours = neighbours[candidates]
    cand_similarity = similarity[candidates] * universe[cand_neighbours]
    available = np.ones(len(candidates), dtype=bool)
    chosen = []
    if seed_point is not None and budget > 0:
        where = np.flatnonzero(candidates == seed_point)
        if where.size:
            _take(where, cand_neighbours, cand_similarity, cover, available, chosen, candidates)
    while len(chosen) < budget:
        gains = np.maximum(cand_similarity - cover[cand_neighbours], 0.0).sum(axis=1)
        gains[~available] = -1.0
        batch = max(1, int(BATCH_FRACTION * (budget - len(chosen))))
        # Stable order: highest gain first, lowest index on ties, for reproducible picks.
        order = np.lexsort((np.arange(len(gains)), -gains))[:batch]
        order = order[gains[order] >= 0]
        if order.size == 0:
            break
        _take(order, cand_neighbours, cand_similarity, cover, available, chosen, candidates)
    return np.asarray(chosen[:budget], dtype=int)


def _take(rows, cand_neighbours, cand_similarity, cover, available, chosen, candidates):
    # One unbuffered maximum over the whole batch: the result does not depend on the order.
    np.maximum.at(cover, cand_neighbours[rows].ravel(), cand_similarity[rows].ravel())
    available[rows] = False
    chosen.extend(candidates[rows].tolist())


def count_votes(slice_index: np.ndarray, n_slices: int, weights=None) -> np.ndarray:
    """Sum of (weighted) votes per slice."""
    return np.bincount(slice_index, weights=weights, minlength=n_slices).astype(float)


def slice_scores(votes: np.ndarray, work_positions: np.ndarray, positions: np.ndarray,
                 smoothing_mm: float) -> np.ndarray:
    """Votes on the working grid turned into a 0..1 score for every original slice.

    Votes are smoothed along the normal (a lesion or structure spans several slices, and a single
    slice's count is noisy) and interpolated to the original slice positions.
    """
    step = abs(work_positions[1] - work_positions[0]) if len(work_positions) > 1 else 1.0
    smooth = gaussian_filter1d(votes, smoothing_mm / step, mode="constant") if smoothing_mm > 0 else votes
    scores = np.interp(positions, work_positions, smooth, left=0.0, right=0.0)
    top = scores.max()
    return scores / top if top > 0 else scores


def pick_top_slices(scores: np.ndarray, positions: np.ndarray, k: int, min_spacing_mm: float,
                    peaks_first: bool = False) -> list:
    """Indices of the k best slices, best first, no two closer than ``min_spacing_mm``.

    With ``peaks_first`` (findings mode) the picks hedge: the summits of the score curve (each a
    separate candidate finding along the plane's normal) come first, highest first, and only then
    further slices of the same findings; ties go to the slice whose neighbours score higher (the
    broader evidence), then to the lower index, so that where a slice lies in the field of view
    never decides. The paper's vote (``peaks_first`` False) breaks ties toward the middle of the
    scored range, then the lower index, as it always has.
    """
    if peaks_first:
        padded = np.concatenate([[0.0], np.asarray(scores, dtype=float), [0.0]])
        neighbours = padded[:-2] + padded[2:]
        order = np.lexsort((np.arange(len(scores)), -neighbours, -scores))
    else:
        middle = 0.5 * (positions[0] + positions[-1])
        order = np.lexsort((np.arange(len(scores)), np.abs(positions - middle), -scores))
    if peaks_first:
        summit = score_peaks(scores)
        order = np.concatenate([order[summit[order]], order[~summit[order]]])
    picks = []
    for index in order:
        if len(picks) == k:
            break
        # A small tolerance so that a slice exactly at the spacing is not lost to rounding.
        if all(abs(positions[index] - positions[p]) >= min_spacing_mm - 1e-6 for p in picks):
            picks.append(int(index))
    return picks


def score_peaks(scores: np.ndarray) -> np.ndarray:
    """Where the score curve has a summit above zero: at least each neighbour, and above one of them
    (or the curve's only value); a flat top counts once, at its first slice."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) == 1:
        return scores > 0
    left = np.concatenate([[-np.inf], scores[:-1]])
    right = np.concatenate([scores[1:], [-np.inf]])
    return (scores > 0) & (scores > left) & (scores >= right)


def plane_confidence(scores: np.ndarray, positions: np.ndarray, top: int, min_spacing_mm: float) -> float:
    """How far a plane's best slice stands above the best separate summit of its score curve (one
    at least ``min_spacing_mm`` away): 1 - that summit / the best score, 0..1; 1 when there is none."""
    scores = np.asarray(scores, dtype=float)
    if not scores[top] > 0:
        return 0.0
    apart = np.abs(np.asarray(positions) - positions[top]) >= min_spacing_mm - 1e-6
    rivals = scores[score_peaks(scores) & apart]
    return float(np.clip(1.0 - (rivals.max() / scores[top] if rivals.size else 0.0), 0.0, 1.0))
