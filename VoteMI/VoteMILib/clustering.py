"""DBSCAN on patch features, with scipy's KD-tree for neighbourhoods (no scikit-learn in Slicer)."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

NOISE = -1


def estimate_eps(features: np.ndarray, min_samples: int, quantile: float = 0.5, max_points: int = 4000,
                 seed: int = 0) -> float:
    """DBSCAN radius from the k-distance curve: the given quantile of each point's distance to
    its ``min_samples``-th neighbour.

    The paper's radii (0.18 to 0.5) belong to its own VAE latent scale; a data-driven radius
    carries over to any encoder and any volume. With the median, about half of the points are
    core points.
    """
    rng = np.random.default_rng(seed)
    sample = features if len(features) <= max_points else features[rng.choice(len(features), max_points, False)]
    k = min(min_samples + 1, len(sample))
    distances, _ = cKDTree(sample).query(sample, k=k, workers=-1)
    kth = distances[:, -1] * (len(features) / len(sample)) ** (-1.0 / features.shape[1])
    eps = float(np.quantile(kth, quantile))
    return eps if eps > 0 else float(np.finfo(np.float32).eps)


def dbscan(features: np.ndarray, eps: float, min_samples: int, max_core_sample: int = 6000,
           seed: int = 0) -> np.ndarray:
    """Density-based clustering; returns a label per point, ``NOISE`` (-1) for noise.

    Core points are found among at most ``max_core_sample`` points (a seeded sample) to bound the
    cost; every other point joins the cluster of its nearest core point when that lies within
    ``eps``, as DBSCAN's border points do. Clusters are numbered by decreasing size.

    Parameters
    ----------
    features : ndarray, shape (n, d)
    eps : float
        Neighbourhood radius.
    min_samples : int
        Neighbours (the point included) that make a point a core point.
    """
    n = len(features)
    if n == 0:
        return np.zeros(0, int)
    rng = np.random.default_rng(seed)
    if n > max_core_sample:
        sample = np.sort(rng.choice(n, max_core_sample, replace=False))
        # A sample holds fewer neighbours per radius; scale the count so density means the same.
        needed = max(2, int(round(min_samples * max_core_sample / n)))
    else:
        sample, needed = np.arange(n), min_samples
    points = features[sample]
    # A core point has ``needed`` points (itself included) within eps: its needed-th nearest
    # neighbour lies within eps. A k-nearest query is cheaper than counting every ball.
    distances, _ = cKDTree(points).query(points, k=min(needed, len(points)), workers=-1)
    core = distances.reshape(len(points), -1)[:, -1] <= eps
    labels = np.full(n, NOISE)
    if not core.any():
        return labels
    core_points = points[core]
    core_tree = cKDTree(core_points)
    pairs = core_tree.query_pairs(eps, output_type="ndarray")
    m = len(core_points)
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, component = connected_components(graph, directed=False)
    distance, nearest = core_tree.query(features, k=1, workers=-1)
    assigned = distance <= eps
    labels[assigned] = component[nearest[assigned]]
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
