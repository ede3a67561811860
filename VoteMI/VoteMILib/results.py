"""Result types of a selection, and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .names import FALLBACK_CUE


@dataclass(frozen=True)
class SelectedSlice:
    """One voted slice.

    Attributes
    ----------
    plane : str
        "axial", "coronal" or "sagittal".
    rank : int
        1 for the best slice of its plane.
    index : int
        Position of the slice in the plane's ascending ``positions_mm``.
    ijk_index : int
        Index of the slice along the IJK axis that carries the plane.
    position_mm : float
        RAS coordinate of the slice centre along the plane normal.
    center_ras : tuple of float
        RAS point at the centre of the slice (for jumping slice views).
    score : float
        The slice's score (higher is better).
    focus_ras : tuple of float or None
        RAS point in the slice where it looks most abnormal (default mode); None when the score
        has no location (plain mode), in which case :attr:`mark_ras` is the slice centre.
    guide : dict or None
        What a guided pick shows (:meth:`VoteMILib.guided.Structure.to_dict`: ``kind`` "segmentation" with
        ``label``, or "point" with ``point`` and ``ras``; ``name``; ``phrase``, how the prompt names it), or
        ``{"kind": "unsupervised", "cue": ...}`` for the unsupervised pick of combined mode; None for
        unsupervised selections.
    """

    plane: str
    rank: int
    index: int
    ijk_index: int
    position_mm: float
    center_ras: tuple
    score: float
    focus_ras: tuple | None = None
    guide: dict | None = None

    @property
    def mark_ras(self) -> tuple:
        """Where to mark the slice: its focus, or its centre when it has none."""
        return self.focus_ras if self.focus_ras is not None else self.center_ras

    @property
    def label(self) -> str:
        """Short ID such as ``A1`` (axial rank 1), ``C2``, ``S1``."""
        return f"{self.plane[0].upper()}{self.rank}"

    def to_dict(self) -> dict:
        data = {"index": self.index, "position_mm": round(self.position_mm, 3), "score": round(self.score, 6),
                "rank": self.rank, "id": self.label, "ijk_index": self.ijk_index,
                "center_ras": [round(float(c), 3) for c in self.center_ras],
                "focus_ras": None if self.focus_ras is None else [round(float(c), 3) for c in self.focus_ras]}
        if self.guide is not None:
            data["guide"] = dict(self.guide)
        return data

    @classmethod
    def from_dict(cls, plane: str, data: dict) -> SelectedSlice:
        """The slice :meth:`to_dict` wrote (fields it does not know are ignored)."""
        known = {item.name for item in fields(cls)} - {"plane"}
        values = {key: value for key, value in data.items() if key in known}
        values["center_ras"] = tuple(float(c) for c in values["center_ras"])
        if values.get("focus_ras") is not None:
            values["focus_ras"] = tuple(float(c) for c in values["focus_ras"])
        if values.get("guide") is not None:
            values["guide"] = dict(values["guide"])
        return cls(plane=plane, **values)


#: The name of a plane where nothing stood out in findings mode (it fell back to the representative vote).
NOTHING_STOOD_OUT = "representative (nothing stood out)"


def outcome_text(outcome: dict) -> str:
    """A plane's :meth:`PlaneResult.outcome` in words, as the terminal, the panel, the HTML and the SR say it.

    ``asymmetry stood out, confidence 0.91``; ``representative (nothing stood out), confidence 0.04`` for a plane
    that fell back; ``representative, confidence 0.40`` in representative mode (nothing was looked for); the cue
    alone (``segmentation``) for guided picks, which have no confidence.
    """
    confidence = outcome_confidence(outcome)
    return f"{outcome_label(outcome)}, confidence {confidence}" if confidence else outcome_label(outcome)


def outcome_label(outcome: dict) -> str:
    """:func:`outcome_text` without the confidence: ``asymmetry stood out``, ``representative (nothing stood
    out)``, ``representative`` or the guided cue."""
    cue, stood_out = str(outcome.get("cue") or FALLBACK_CUE), outcome.get("stood_out")
    if stood_out is True:
        return f"{cue} stood out"
    if stood_out is False:
        # A findings plane fell back to the representative vote; the generic selector (--selector) still shows
        # its best candidate, which did not reach its threshold.
        return NOTHING_STOOD_OUT if cue == FALLBACK_CUE else f"{cue} (nothing stood out)"
    return cue


def outcome_confidence(outcome: dict) -> str:
    """The confidence as shown (``0.91``), empty for guided picks (they are not voted)."""
    cue = str(outcome.get("cue") or FALLBACK_CUE)
    if outcome.get("stood_out") is None and cue != FALLBACK_CUE:
        return ""
    return f"{float(outcome.get('confidence') or 0.0):.2f}"


def image_outcomes(images: list) -> dict:
    """Plane -> outcome (:meth:`PlaneResult.outcome`) of the images a report describes (``report.meta["images"]``),
    for the planes whose images record one (findings mode; a report saved before they did records none)."""
    outcomes = {}
    for image in images:
        if image.get("stood_out") is not None and image.get("plane"):
            outcomes.setdefault(image["plane"], {key: image.get(key) for key in ("cue", "stood_out", "confidence")})
    return outcomes


@dataclass
class PlaneResult:
    """Scores of every slice of one plane and its top slices (best first)."""

    plane: str
    normal_axis: str
    ijk_axis: int
    positions_mm: np.ndarray
    ijk_indices: np.ndarray
    scores: np.ndarray
    selected: list
    #: What decided the plane's picks: "asymmetry", "lung_nodule", "tissue_contrast", "mass", "organ_lesion" or
    #: "representative"; for guided picks "segmentation", "point" or "segmentation+point".
    cue: str = "representative"
    #: How far the best slice's score stands above the best separate summit of the curve (0..1).
    confidence: float = 0.0
    #: Findings mode: whether anything stood out (else the plane fell back to representative slices);
    #: None in representative mode.
    stood_out: bool | None = None

    def outcome(self) -> dict:
        """What decided the plane and how surely: ``{"cue", "stood_out", "confidence"}`` (see
        :func:`outcome_text`)."""
        return {"cue": self.cue, "stood_out": self.stood_out, "confidence": round(float(self.confidence), 4)}

    def to_dict(self) -> dict:
        return {
            "normal_axis": self.normal_axis,
            "cue": self.cue,
            "confidence": round(float(self.confidence), 4),
            "stood_out": self.stood_out,
            "ijk_axis": "IJK"[self.ijk_axis],
            "ijk_indices": [int(i) for i in self.ijk_indices],
            "positions_mm": [round(float(p), 3) for p in self.positions_mm],
            "scores": [round(float(s), 6) for s in self.scores],
            "selected": [s.to_dict() for s in self.selected],
        }

    @classmethod
    def from_dict(cls, plane: str, data: dict) -> PlaneResult:
        return cls(plane=plane, normal_axis=data["normal_axis"], ijk_axis="IJK".index(data["ijk_axis"]),
                   positions_mm=np.asarray(data["positions_mm"], dtype=float),
                   ijk_indices=np.asarray(data.get("ijk_indices", []), dtype=int),
                   scores=np.asarray(data["scores"], dtype=float),
                   selected=[SelectedSlice.from_dict(plane, item) for item in data["selected"]],
                   cue=str(data.get("cue", "representative")), confidence=float(data.get("confidence", 0.0)),
                   stood_out=data.get("stood_out"))


@dataclass
class SelectionResult:
    """What :func:`VoteMILib.selection.select_slices` returns."""

    planes: dict
    settings: dict
    size_ijk: tuple
    spacing_mm: tuple
    timing_s: dict = field(default_factory=dict)
    #: What the scan was taken for (:meth:`VoteMILib.cues.regions.Region.to_dict`): modality, name, measures.
    region: dict = field(default_factory=dict)

    def cue_summary(self) -> str:
        """One line on what the scan looked like and what decided each plane, e.g.
        ``CT chest; axial: lung_nodule stood out, confidence 0.62; coronal: ...; sagittal: representative (nothing
        stood out), confidence 0.05`` (each plane in :func:`outcome_text`); a guided selection starts with its
        :meth:`selection_mode` (``guided by the segment 'label 1'; MRI head; axial: ...``)."""
        cues = "; ".join(f"{plane}: {outcome_text(result.outcome())}" for plane, result in self.planes.items())
        seen = " ".join(str(self.region[key]) for key in ("modality", "name") if self.region.get(key))
        guided = self.selection_mode() if self.settings.get("guided_by") else ""
        return "; ".join(part for part in (guided, seen, cues) if part)

    def selection_mode(self) -> str:
        """How the slices were chosen, in words: ``findings``, ``representative``, ``guided by the segment
        'label 1'``, or ``guided by the marked point, then findings`` (combined mode)."""
        guided_by = self.settings.get("guided_by")
        if not guided_by:
            return str(self.settings.get("mode", ""))
        then = self.settings.get("unsupervised_mode")
        return f"guided by {guided_by}" + (f", then {then}" if then else "")

    def selected(self, planes=None) -> list:
        """Selected slices of the given planes (all by default), plane by plane, best first."""
        return [s for name, result in self.planes.items() if planes is None or name in planes
                for s in result.selected]

    def to_dict(self, image: str = "") -> dict:
        return {
            "image": image,
            "size_ijk": [int(n) for n in self.size_ijk],
            "spacing_mm": [round(float(s), 6) for s in self.spacing_mm],
            "region": dict(self.region),
            "planes": {name: result.to_dict() for name, result in self.planes.items()},
            "settings": dict(self.settings),
            "timing_s": {key: round(float(value), 4) for key, value in self.timing_s.items()},
        }

    @classmethod
    def from_dict(cls, document: dict) -> SelectionResult:
        """Rebuild a result from its JSON form (``votemi select --json`` or the ``selection`` event).

        Fields added by later versions are ignored.

        Raises
        ------
        ValueError
            With a one-line reason when the document is not a selection.
        """
        try:
            return cls(planes={plane: PlaneResult.from_dict(plane, data) for plane, data in document["planes"].items()},
                       settings=dict(document.get("settings", {})),
                       size_ijk=tuple(int(n) for n in document["size_ijk"]),
                       spacing_mm=tuple(float(s) for s in document["spacing_mm"]),
                       timing_s={key: float(value) for key, value in document.get("timing_s", {}).items()},
                       region=dict(document.get("region") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"not a VoteMI selection ({type(error).__name__}: {error})") from None
