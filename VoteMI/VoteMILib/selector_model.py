"""The generic selector's combiner (issue 31): an L2-regularised logistic regression over the
descriptors of :mod:`VoteMILib.selector_candidates`, fitted in numpy, stored as a small ``.npz`` file,
and the slice scores it gives (a slice's score is the best candidate's odds through that slice, relative to
the best slice's).

Experimental, behind ``votemi select --selector MODEL.npz``; the default selection does not use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .geometry import NORMAL_AXIS, NORMAL_INDEX, plane_geometry
from .results import PlaneResult, SelectedSlice
from .selector_candidates import DESCRIPTORS, find_candidates
from .voting import pick_top_slices, plane_confidence, slice_scores

#: Model file format; a file of another version is refused rather than misread (2: the stood-out
#: threshold is fitted and stored with the model).
FORMAT_VERSION = 2
#: The model that ships with VoteMI (Resources/, beside the engine).
SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources",
                             "selector_model.npz")


@dataclass(frozen=True)
class SelectorModel:
    """A fitted logistic combiner: standardised descriptors, weights and an intercept."""

    names: tuple
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    note: str = ""
    #: A scan "stands out" when its best candidate's probability reaches this (fitted on the training
    #: scans by :func:`VoteMILib.selector_training.stands_out_threshold`).
    stands_out: float = 0.5

    def logits(self, descriptors: np.ndarray) -> np.ndarray:
        """Log-odds that each candidate (row of ``descriptors``) is a lesion, unclipped: what candidates and
        slices are ranked by (a probability is exactly 1.0 in float64 from a logit of about 37 on, so
        candidates the model tells apart would tie)."""
        z = (np.asarray(descriptors, dtype=np.float64) - self.mean) / self.scale
        return z @ self.coef + self.intercept

    def probabilities(self, descriptors: np.ndarray) -> np.ndarray:
        """Probability that each candidate is a lesion (logits clipped to +-50): for the stood-out threshold
        only, never for ranking (it saturates, see :meth:`logits`)."""
        return 1.0 / (1.0 + np.exp(-np.clip(self.logits(descriptors), -50.0, 50.0)))

    def describe(self) -> dict:
        return {"kind": "logistic", "descriptors": list(self.names), "stands_out": round(self.stands_out, 4),
                "note": self.note}

    def save(self, path) -> None:
        """Write the model as ``.npz`` (no pickled objects), atomically."""
        import io

        from .outputs import write_atomic

        buffer = io.BytesIO()
        np.savez(buffer, version=np.int64(FORMAT_VERSION), names=np.array(self.names), mean=self.mean,
                 scale=self.scale, coef=self.coef, intercept=np.float64(self.intercept), note=np.array(self.note),
                 stands_out=np.float64(self.stands_out))
        write_atomic(path, buffer.getvalue(), what="selector model")


def fit_logistic(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, l2: float = 1.0,
                 names=DESCRIPTORS, note: str = "", iterations: int = 50) -> SelectorModel:
    """L2 logistic regression by Newton's method (deterministic; no random start).

    Parameters
    ----------
    features : ndarray, shape (n, d)
    labels : ndarray, shape (n,), 0 or 1
    weights : ndarray, shape (n,)
        Sample weights (each scan's positives and negatives weighted so that every scan counts alike).
    l2 : float
        Penalty on the standardised weights (not on the intercept), relative to the total sample weight.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(x) == 0 or y.min() == y.max():
        raise ValueError("the selector needs candidates both inside and outside lesions to fit")
    mean = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    penalty = np.full(z.shape[1], l2 * w.sum() / len(w))
    penalty[-1] = 0.0
    beta = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -50.0, 50.0)))
        gradient = z.T @ (w * (p - y)) + penalty * beta
        hessian = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return SelectorModel(tuple(names), mean, scale, beta[:-1], float(beta[-1]), note)


def load_selector(path) -> SelectorModel:
    """Read a model file written by ``votemi train-selector``; a bad file raises a one-line ``ValueError``."""
    path = os.fspath(path)
    where = f"selector model {path}"
    if not os.path.isfile(path):
        raise ValueError(f"{where}: no such file")
    try:
        with np.load(path, allow_pickle=False) as stored:
            fields = {key: stored[key] for key in stored.files}
    except Exception as error:  # zip, header or pickle errors: all mean "not a model file"
        raise ValueError(f"{where} is not a .npz model file ({type(error).__name__})") from None
    # The version first: an older model lacks fields this one needs and should say so, not look foreign.
    if "version" in fields and int(fields["version"]) != FORMAT_VERSION:
        raise ValueError(f"{where} has format version {int(fields['version'])}; this VoteMI reads "
                         f"{FORMAT_VERSION}: refit it with 'votemi train-selector'")
    missing = [key for key in ("version", "names", "mean", "scale", "coef", "intercept", "stands_out")
               if key not in fields]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: is it from 'votemi train-selector'?")
    names = tuple(str(n) for n in fields["names"])
    if names != DESCRIPTORS:
        raise ValueError(f"{where} was fitted on other descriptors ({', '.join(names)}); refit it")
    arrays = [np.asarray(fields[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
    if any(a.shape != (len(names),) or not np.all(np.isfinite(a)) for a in arrays) or np.any(arrays[1] <= 0) \
            or not np.isfinite(float(fields["intercept"])) or not 0.0 <= float(fields["stands_out"]) <= 1.0:
        raise ValueError(f"{where} has malformed or non-finite coefficients")
    note = str(fields["note"]) if "note" in fields else ""
    return SelectorModel(names, *arrays, float(fields["intercept"]), note, float(fields["stands_out"]))


def working_slice_logits(centres, radii_mm, logits, axis: int, count: int, step_mm: float) -> np.ndarray:
    """Best candidate log-score in each of the ``count`` working slices normal to grid ``axis``; -inf in a
    slice no candidate cuts.

    A candidate counts in the slices that cut its ball, its logit plus half the log of the share of its
    largest section the slice holds (1 through its centre): its odds weighted by the square root of that
    share, in logs so that no two candidates tie where their probabilities would both be 1.0. A plane's top
    slice thus goes through the middle of the best candidate.
    """
    profile = np.full(count, -np.inf)
    slices = np.arange(count)
    for centre, radius, logit in zip(centres, radii_mm, logits):
        offset = (slices - centre[axis]) * step_mm
        section = 1.0 - (offset / radius) ** 2
        cut = section > 0
        profile[cut] = np.maximum(profile[cut], logit + 0.5 * np.log(section[cut]))
    return profile


def plane_scores(centres, radii_mm, logits, axis: int, count: int, step_mm: float, work_positions,
                 positions) -> np.ndarray:
    """A plane's 0..1 score per original slice: the odds of its working slice's best log-score
    (:func:`working_slice_logits`) relative to the best slice's, ``exp(score - best)``, interpolated to
    the original slice positions. The ranking is that of the logits (no saturation) and a rival summit's
    score is its odds against the top's, which :func:`~VoteMILib.voting.plane_confidence` reads."""
    profile = working_slice_logits(centres, radii_mm, logits, axis, count, step_mm)
    if not np.isfinite(profile).any():
        return np.zeros(len(positions))
    return slice_scores(np.exp(profile - profile.max()), work_positions, positions, 0.0)


def plane_picks(scores, positions, top_k: int, min_spacing_mm=None) -> tuple:
    """(picks best first, the spacing used): summits first, no two closer than ``min_spacing_mm`` (by
    default 10 mm or two slices, whichever is more)."""
    spacing = min_spacing_mm
    if spacing is None:
        step = abs(positions[-1] - positions[0]) / max(len(positions) - 1, 1)
        spacing = max(10.0, 2.0 * step)
    return pick_top_slices(scores, positions, top_k, spacing, peaks_first=True), spacing


def selector_planes(volume, grid, planes, model: SelectorModel, top_k: int, min_spacing_mm=None,
                    region=None) -> dict:
    """Each plane's scores and picks from the selector's candidates (a :class:`PlaneResult` per plane).

    ``region`` is the scan's :class:`~VoteMILib.cues.Region` (found here when not given): it says which
    of today's cues feed the ``cue_evidence`` descriptor.
    """
    from .cues import detect_region
    from .modality import detect_modality
    from .selector_cues import cue_evidence

    region = region if region is not None else detect_region(grid, detect_modality(volume))
    candidates = find_candidates(grid, cue_evidence(grid, region))
    logits = model.logits(candidates.descriptors) if len(candidates) else np.zeros(0)
    # The probability (clipped) only says whether the scan stood out; slices are ranked by the logits.
    best = float(model.probabilities(candidates.descriptors).max()) if len(candidates) else 0.0
    results = {}
    for plane in planes:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        axis = NORMAL_INDEX[plane]
        # No smoothing beyond the candidate's own extent: the profile is already a smooth curve.
        scores = plane_scores(candidates.centres, candidates.radii_mm, logits, axis, grid.data.shape[axis],
                              float(grid.spacing_mm[axis]), grid.positions_mm[plane], geometry.positions_mm)
        picks, spacing = plane_picks(scores, geometry.positions_mm, top_k, min_spacing_mm)
        selected = [SelectedSlice(plane=plane, rank=rank, index=index, ijk_index=int(geometry.ijk_indices[index]),
                                  position_mm=float(geometry.positions_mm[index]),
                                  center_ras=tuple(float(c) for c in geometry.centers_ras[index]),
                                  score=float(scores[index]), focus_ras=None)
                    for rank, index in enumerate(picks, start=1)]
        results[plane] = PlaneResult(plane=plane, normal_axis=NORMAL_AXIS[plane], ijk_axis=geometry.ijk_axis,
                                     positions_mm=geometry.positions_mm, ijk_indices=geometry.ijk_indices,
                                     scores=scores, selected=selected, cue="selector",
                                     confidence=plane_confidence(scores, geometry.positions_mm, picks[0], spacing),
                                     stood_out=best >= model.stands_out)
    return results
