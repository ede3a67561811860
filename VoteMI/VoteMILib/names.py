"""Names the command line shares with the engine and the Slicer panel, with nothing heavier than argparse
imported: planes, the default server, report language and time limit, model backends, selection modes, synthetic
lesion kinds and CT window presets. ``votemi --help`` and ``votemi --version`` build their parser from these
without loading numpy or scipy."""

from __future__ import annotations

import argparse
from typing import NamedTuple

PLANES = ("axial", "coronal", "sagittal")

#: Where a local model server is looked for when none is given (Ollama's default address).
DEFAULT_SERVER_URL = "http://127.0.0.1:11434"
#: Report language when none is given.
DEFAULT_LANGUAGE = "English"
#: Longest time a report may take when none is given (seconds).
DEFAULT_TIMEOUT_S = 300


class Backend(NamedTuple):
    """One way of reaching a model, registered once in :data:`BACKEND_REGISTRY`."""

    name: str
    #: What it is, in the words of the ``--backend`` help texts.
    summary: str
    #: The class in :mod:`VoteMILib.vlm.dialects` that speaks it over HTTP (its routes, request and stream framing,
    #: answers, probe); "" for a backend without a server. A name, not the class, so that ``votemi --help`` and the
    #: Slicer panel read this list without importing the VLM package.
    dialect: str = ""


#: Every backend a report can be drafted with, registered once: the backend lists below, the command line's
#: choices and help texts, the clients and the server URL suffixes all come from here. A new wire protocol is a
#: class in ``vlm/dialects.py`` and its line here (docs/development.md shows one added).
BACKEND_REGISTRY = (
    Backend("openai", "/v1/chat/completions (Ollama, vLLM, llama.cpp, LM Studio, votemi serve)", "OpenAIDialect"),
    Backend("ollama", "Ollama's /api/chat", "OllamaDialect"),
    Backend("inprocess", "run --model (a folder) without a server"),
)
#: Backends reached over HTTP, each a wire protocol (:mod:`VoteMILib.vlm.dialects`).
HTTP_BACKENDS = tuple(backend.name for backend in BACKEND_REGISTRY if backend.dialect)
#: The backend that runs a transformers model folder in this process (no server, so no wire protocol).
INPROCESS = "inprocess"
#: Every backend a report can be drafted with.
BACKENDS = tuple(backend.name for backend in BACKEND_REGISTRY)


def backends_help(backends=BACKENDS) -> str:
    """``openai: /v1/chat/completions (...); ollama: ...``: each of ``backends`` with what it is, for a help text."""
    return "; ".join(f"{backend.name}: {backend.summary}" for backend in BACKEND_REGISTRY if backend.name in backends)


#: The backend when none is given.
DEFAULT_BACKEND = "openai"
#: RAS axis each plane is normal to.
NORMAL_AXIS = {"axial": "S", "coronal": "A", "sagittal": "R"}

#: Selection modes: "findings" (default) votes for the slices showing what stands out;
#: "representative" is the paper's Vote-MI, which votes for typical anatomy.
MODES = ("findings", "representative")
#: Names of earlier versions, still accepted.
MODE_ALIASES = {"votemi": "findings", "plain": "representative"}
#: The ``cue`` of a findings-mode plane where nothing stood out: its picks come from the representative vote,
#: the vote of the "representative" selection mode, hence the same word (kept: saved selections hold it).
#: Here, not in :mod:`VoteMILib.cues`, so that the result types name it without importing the cues.
FALLBACK_CUE = "representative"

#: Kinds of synthetic lesion ``votemi bench --synthetic`` puts into scans (:mod:`VoteMILib.synthetic`).
SYNTHETIC_KINDS = ("lung", "tissue", "bright", "organ", "brain")

#: CT window presets as (level, width) in Hounsfield units.
CT_PRESETS = {
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
}
THREE_WINDOW = "three_window"
AUTO = "auto"
#: Every accepted ``ct_preset`` value; "auto" picks the preset that fits the detected region.
CT_PRESET_NAMES = (AUTO, *CT_PRESETS, THREE_WINDOW)


class PlaneNameError(argparse.ArgumentTypeError, ValueError):
    """An unknown plane name. A ValueError for callers; as an ArgumentTypeError, argparse shows its message
    (``--planes foo``) instead of a generic "invalid parse_planes value"."""


def parse_planes(text) -> tuple[str, ...]:
    """Turn ``"axial,coronal"`` (or a sequence) into a tuple of plane names in canonical order.

    Accepts the first letter of each plane as well; raises ValueError for unknown names.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted = set()
    for item in items:
        item = item.strip().lower()
        if not item:
            continue
        match = [plane for plane in PLANES if plane == item or plane[0] == item]
        if not match:
            raise PlaneNameError(f"unknown plane '{item}'; choose from {', '.join(PLANES)}")
        wanted.add(match[0])
    if not wanted:
        raise PlaneNameError("no plane given; choose from " + ", ".join(PLANES))
    return tuple(plane for plane in PLANES if plane in wanted)


def canonical_mode(name: str) -> str:
    """The mode a name (or an earlier name) stands for; ValueError for an unknown one."""
    mode = MODE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if mode not in MODES:
        known = ", ".join(MODES) + " (or the earlier names " + ", ".join(MODE_ALIASES) + ")"
        raise ValueError(f"unknown selection mode '{name}'; choose from {known}")
    return mode


#: Slice strategies ``votemi eval`` compares, and its default slice budgets.
EVAL_STRATEGIES = ("voted", "uniform", "random", "middle", "deduplicated")
EVAL_BUDGETS = (1, 3, 9, 16, 32, 85)
