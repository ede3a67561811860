"""DBSCAN on patch features from their nearest neighbours (scipy's KD-tree; no scikit-learn in Slicer)."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

NOISE = -1


def estimate_eps(kth_distances: np.ndarray, quantile: float = 0.5) -> float:
    """DBSCAN radius from the k-distance curve: the given quantile of each point's distance to
    its ``min_samples``-th neighbour.

    The paper's radii (0.18 to 0.5) belong to its own VAE latent scale; a data-driven radius
    carries over to any encoder and any volume. With the median, about half of the points are
    core points.
    """
    eps = float(np.quantile(kth_distances, quantile))
    return eps if eps > 0 else float(np.finfo(np.float32).eps)


def dbscan(distances: np.ndarray, neighbours: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """Density-based clustering from each point's nearest neighbours; a label per point, ``NOISE``
    (-1) for noise. Clusters are numbered by decreasing size.

    Parameters
    ----------
    distances, neighbours : ndarray, shape (n, k)
        Each point's k nearest points, itself first, k > ``min_samples`` (``voting.nearest_patches``).
    eps : float
        Neighbourhood radius.
    min_samples : int
        Points within eps (the point included) that make a point a core point: exactly when its
        ``min_samples``-th nearest point lies within eps.

    Notes
    -----
    Core points within eps of each other join one cluster when one is among the other's k
    nearest (a core point has at least ``min_samples - 1`` such links); every other point joins
    the cluster of its nearest core point within eps, as DBSCAN's border points do. That nearest
    core point is always among its k nearest: were it farther, k points within eps would make the
    point a core point itself.
    """
    n = len(distances)
    labels = np.full(n, NOISE)
    if n == 0:
        return labels
    core = distances[:, min(min_samples, distances.shape[1]) - 1] <= eps
    if not core.any():
        return labels
    linked = (distances <= eps) & core[neighbours]
    rows = np.repeat(np.arange(n), distances.shape[1])[(linked & core[:, None]).ravel()]
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, neighbours[linked & core[:, None]])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # Each point's nearest linked core point (itself, if core): the first linked column.
    first = np.argmax(linked, axis=1)
    member = linked[np.arange(n), first]
    labels[member] = component[neighbours[np.arange(n), first][member]]
    return _relabel_by_size(labels)


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    valid = labels >= 0
    if not valid.any():
        return labels
    ids, sizes = np.unique(labels[valid], return_counts=True)
    order = ids[np.lexsort((ids, -sizes))]
    mapping = np.full(labels.max() + 1, NOISE)
    mapping[order] = np.arange(len(order))
    out = labels.copy()
    out[valid] = mapping[labels[valid]]
    return out
