"""From voted slices to a report: render the images, build the prompt, ask the model, record everything.

Image order (fixed): plane by plane (axial, coronal, sagittal), best rank first, and for each slice
the primary volume first, then each extra sequence in the order given.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from .. import __version__
from ..findings import STRUCTURED_INSTRUCTION, findings_from_answer, findings_schema, render_partial_json, \
    StructuredStream
from ..geometry import PLANES, parse_planes
from ..names import BACKENDS, DEFAULT_BACKEND, DEFAULT_LANGUAGE, DEFAULT_SERVER_URL, DEFAULT_TIMEOUT_S, INPROCESS
from .clients import make_http_client
from .dialects import DIALECTS
from .options import GenerationOptions, Timeouts
from .urls import check_authorization, parse_server_url, redact_url
from .errors import VLMCancelled, VLMError
from .capabilities import capabilities_for, forget, is_image_refusal, probe, store
from .imaging import CT_PRESET_NAMES, choose_windowing, nearest_slice, render_png
from .packing import DEFAULT_TOKENS_PER_IMAGE, PACK_CHOICES, context_sheet, \
    estimate_prompt_tokens, fit_images
from .prompts import Prompt, PromptImage, Turn, build_prompt, format_position, spread_over_turns
from .report import NOTICE, Report

#: Most slices of a context sheet (MedGemma's CT recipe goes up to 85; more would be unreadable tiles).
MAX_CONTEXT_SLICES = 64
STRUCTURED_CHOICES = ("auto", "off")
# Words in a server's refusal that show it did not accept the request for structured output.
_STRUCTURED_REFUSAL = ("response_format", "json_schema", "format", "schema", "grammar", "structured")


@dataclass
class DescribeSettings:
    """Everything that controls a describe run; every field has a default.

    Attributes
    ----------
    server_url : str
        Server address (Ollama's default port 11434, vLLM 8000, llama.cpp 8080, LM Studio 1234).
    backend : {"openai", "ollama", "inprocess"}
        A server's wire protocol, or "inprocess" to run a transformers model folder (``model``) in this
        process.
    model : str
        Model name on the server (empty: the server's only model), or the model folder for "inprocess".
    api_key : str
        Sent as ``Authorization: Bearer``; never recorded in the report metadata. A user name and
        password in ``server_url`` are sent as Basic authentication instead (not both), and the
        URL is recorded without them (:func:`~VoteMILib.vlm.urls.redact_url`).
    prompt_template : str or None
        Instruction template (see :data:`VoteMILib.vlm.prompts.PLACEHOLDERS`); None for the default.
    language : str
        Report language.
    planes : sequence of str or None
        Planes whose voted slices are sent (None: all planes of the selection).
    top_k : int or None
        Best slices per plane to send (None: every selected slice).
    long_side : int
        Long side of every image in pixels (896 is MedGemma's input size).
    window : (float, float) or None
        Intensity window of the primary volume (e.g. Slicer's display window/level); None for
        intensity percentiles. CT volumes use ``ct_preset`` instead unless it is None.
    modality : {"auto", "CT", "MRI"}
        "auto" detects CT from Hounsfield units.
    ct_preset : str or None
        "auto" (the detected region's preset: head brain, chest lung, body soft_tissue), "brain",
        "soft_tissue", "bone", "lung" or "three_window" (RGB of three windows); None windows CT like MRI.
    timeout_s, connect_timeout_s, idle_timeout_s : float
        Total time, time to connect, longest silence while streaming.
    retries, retry_backoff_s : int, float
        Retries of connection failures, timeouts and HTTP 429/502/503/504, and the first delay
        (doubled each time).
    stream : bool
        Stream the answer token by token.
    max_tokens, temperature, seed : generation settings (temperature 0 = greedy).
    num_ctx : int or None
        Least context size requested from Ollama's native API; raised to what the request is estimated to
        need (images take hundreds of tokens each, see :class:`ContextPlan`), within the model's context.
    device, allow_hub : in-process model only: "auto"/"cpu"/"cuda"..., and whether a hub download is allowed.
    structured : {"auto", "off"}
        "auto" asks for the findings as JSON of :func:`~VoteMILib.findings.findings_schema` (OpenAI
        ``response_format``, Ollama ``format``) and falls back to free text with ``[A1]`` tags when the
        server refuses it; "off" asks for free text only. Either way the answer becomes
        :class:`~VoteMILib.findings.Findings`.
    pack : {"auto", "none", "grid", "turns"}
        How slices are fitted to the images a server takes per request (:mod:`.packing`): "auto"
        packs them into labelled contact sheets only when needed, "none" never (refused before
        sending when they do not fit), "grid" always; "turns" sends one image per user message.
    max_images : int or None
        Most images per request, whatever the server was found to take (also for the in-process model).
    probe : bool
        Probe the server (:mod:`.capabilities`) before sending when no stored result is fresh; without
        it, stored results are used and a refusal naming the images triggers a probe and one retry.
    context : int
        Add one contact sheet of this many evenly spaced slices of the acquisition plane, labelled as
        context (0: none).
    examples_dir : str
        Folder of worked examples (:mod:`.examples`); empty for none.
    examples_k : int
        Examples sent: the closest to the scan.
    """

    server_url: str = DEFAULT_SERVER_URL
    backend: str = DEFAULT_BACKEND
    model: str = ""
    api_key: str = ""
    prompt_template: str | None = None
    language: str = DEFAULT_LANGUAGE
    planes: tuple | None = None
    top_k: int | None = None
    long_side: int = 896
    window: tuple | None = None
    modality: str = "auto"
    ct_preset: str | None = "auto"
    timeout_s: float = float(DEFAULT_TIMEOUT_S)
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    retries: int = 2
    retry_backoff_s: float = 1.0
    stream: bool = True
    max_tokens: int = 1024
    temperature: float = 0.0
    seed: int | None = None
    num_ctx: int | None = 8192
    device: str = "auto"
    allow_hub: bool = False
    structured: str = "auto"
    pack: str = "auto"
    max_images: int | None = None
    probe: bool = False
    context: int = 0
    examples_dir: str = ""
    examples_k: int = 1

    def validate(self):
        """Raise :class:`VLMError` with a one-line reason for an unusable setting.

        The one check of a run's settings: :func:`describe`, :func:`build_request` and :func:`make_client`
        call it on the settings they are given, and ``votemi describe`` before its selection, handing
        :func:`describe` the request it prepared (``parts``) so that it is not checked again.
        """
        if self.backend not in BACKENDS:
            raise VLMError(f"unknown backend '{self.backend}'; choose {', '.join(BACKENDS)}")
        if self.backend == INPROCESS and not (self.model or "").strip():
            raise VLMError("the in-process backend needs the model folder as the model setting")
        if self.backend != INPROCESS:
            check_authorization(parse_server_url(self.server_url, self.backend), self.api_key)
        if not 32 <= int(self.long_side) <= 4096:
            raise VLMError(f"image long side {self.long_side} px is outside 32..4096")
        if self.planes:
            try:
                parse_planes(self.planes)
            except ValueError as error:
                raise VLMError(str(error)) from None
        if self.top_k is not None and int(self.top_k) < 1:
            raise VLMError("the number of slices per plane must be at least 1")
        if self.ct_preset and self.ct_preset.strip().lower().replace("-", "_").replace(" ", "_") not in CT_PRESET_NAMES:
            raise VLMError(f"unknown CT preset '{self.ct_preset}'; choose {', '.join(CT_PRESET_NAMES)}")
        for name in ("timeout_s", "connect_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise VLMError(f"{name} must be positive")
        if int(self.max_tokens) < 1:
            raise VLMError("max_tokens must be at least 1")
        if self.structured not in STRUCTURED_CHOICES:
            raise VLMError(f"unknown structured output setting '{self.structured}'; choose "
                           f"{', '.join(STRUCTURED_CHOICES)}")
        if self.pack not in PACK_CHOICES:
            raise VLMError(f"unknown packing '{self.pack}'; choose {', '.join(PACK_CHOICES)}")
        if self.max_images is not None and int(self.max_images) < 1:
            raise VLMError("the number of images per request must be at least 1")
        if int(self.context) != 0 and not 2 <= int(self.context) <= MAX_CONTEXT_SLICES:
            raise VLMError(f"--context takes 2 to {MAX_CONTEXT_SLICES} slices (0 for none), not {self.context}")
        if int(self.examples_k) < 1:
            raise VLMError("the number of examples must be at least 1")
        if self.examples_dir and not os.path.isdir(os.path.expanduser(self.examples_dir)):
            raise VLMError(f"examples folder not found: {self.examples_dir}")

    def public_dict(self) -> dict:
        """The settings for the report metadata, without the API key.

        The backend is stored as ``protocol``, the key saved reports and scenes have always had.
        """
        data = {("protocol" if key == "backend" else key): value for key, value in asdict(self).items()}
        data.pop("api_key")
        data["api_key_set"] = bool(self.api_key)
        data["server_url"] = redact_url(self.server_url)
        data["planes"] = list(parse_planes(self.planes)) if self.planes else None
        data["window"] = list(self.window) if self.window is not None else None
        return data


def image_id(label: str, sequence_number: int) -> str:
    """``A1`` for the primary volume, ``A1-2`` for the second sequence, ``A1-3`` for the third, ..."""
    return label if sequence_number == 1 else f"{label}-{sequence_number}"


def prepare_images(volume, selection, settings: DescribeSettings, extra_volumes=()) -> list:
    """Render the slices to send, in the documented order, as :class:`PromptImage` objects.

    Extra volumes (other sequences of the same patient) are sliced at the RAS position of each voted
    slice (nearest slice); a slice position outside an extra volume is skipped for that volume.

    Raises
    ------
    VLMError
        If nothing is left to send or a setting is invalid.
    """
    try:
        planes = parse_planes(settings.planes) if settings.planes else PLANES
    except ValueError as error:
        raise VLMError(str(error)) from None
    chosen = [s for s in selection.selected(planes) if settings.top_k is None or s.rank <= int(settings.top_k)]
    # Sort explicitly so the order does not depend on how the selection stores its planes.
    chosen.sort(key=lambda s: (PLANES.index(s.plane), s.rank))
    if not chosen:
        raise VLMError(f"no selected slices in the planes {', '.join(planes)}")
    volumes = [volume, *extra_volumes]
    windowings = _windowings(volume, selection, settings, extra_volumes)
    images = []
    for slice_ in chosen:
        for number, (source, windowing) in enumerate(zip(volumes, windowings), 1):
            if number == 1:
                index, position = slice_.index, float(slice_.position_mm)
            else:
                match = nearest_slice(source, slice_.plane, slice_.position_mm)
                if match is None:
                    continue
                index, position = match
            png, size = render_png(source, slice_.plane, index, windowing, int(settings.long_side))
            sequence = source.name or f"volume {number}"
            meta = {"id": image_id(slice_.label, number), "plane": slice_.plane, "rank": slice_.rank,
                    "index": int(index), "position_mm": round(position, 3),
                    "position": format_position(slice_.plane, position), "sequence": sequence,
                    "sequence_number": number, "width": size[0], "height": size[1], "window": windowing.to_dict()}
            if number == 1:
                meta["ijk_index"] = int(slice_.ijk_index)
                meta["center_ras"] = [round(float(c), 3) for c in slice_.center_ras]
            if slice_.guide is not None:
                meta["guide"] = dict(slice_.guide)
            meta.update(_plane_standing(selection, slice_.plane))
            images.append(PromptImage(meta["id"], slice_.plane, position, sequence, png, meta))
    return images


def _plane_standing(selection, plane: str) -> dict:
    """The ``cue``, ``stood_out`` and ``confidence`` of the slice's plane (:meth:`PlaneResult.outcome`), for its
    label and the exports; empty when nothing was looked for (representative mode, guided picks)."""
    result = (getattr(selection, "planes", None) or {}).get(plane)
    if result is None or getattr(result, "stood_out", None) is None:
        return {}
    return result.outcome()


def _windowings(volume, selection, settings: DescribeSettings, extra_volumes=()) -> list:
    """The windowing of each volume: the primary one with the user's window and the selection's region."""
    try:
        region = (getattr(selection, "region", None) or {}).get("name")
        return [choose_windowing(v, settings.modality, settings.ct_preset, settings.window if n == 0 else None,
                                 region=region if n == 0 else None) for n, v in enumerate([volume, *extra_volumes])]
    except ValueError as error:
        raise VLMError(str(error)) from None


def make_client(settings: DescribeSettings):
    """The client of ``settings.backend``: an HTTP client or the in-process model (settings validated first)."""
    settings.validate()
    return _client(settings)


def _client(settings: DescribeSettings):
    """:func:`make_client` of settings already validated."""
    if settings.backend == INPROCESS:
        from .inprocess import InProcessClient

        return InProcessClient(settings.model, device=settings.device, allow_hub=settings.allow_hub,
                               timeout_s=settings.timeout_s)
    timeouts = Timeouts(settings.connect_timeout_s, settings.idle_timeout_s, settings.timeout_s)
    return make_http_client(settings.backend, settings.server_url, settings.api_key, timeouts,
                            settings.retries, settings.retry_backoff_s)


def list_models(settings: DescribeSettings) -> list:
    """Models offered by the configured server (or the in-process model's name); doubles as a health check.

    Raises
    ------
    VLMError
        With the reason: unreachable, refused (401), not the expected API, ...
    """
    return make_client(settings).list_models()


def _resolve_model(client, settings, cancel=None) -> str:
    if settings.backend == INPROCESS or settings.model.strip():
        return settings.model.strip()
    models = client.list_models(cancel=cancel)
    if len(models) == 1:
        return models[0]
    if not models:
        raise VLMError(f"{client.server_url} offers no models; install one (e.g. 'ollama pull <model>')")
    shown = ", ".join(models[:8]) + (", ..." if len(models) > 8 else "")
    raise VLMError(f"{client.server_url} offers several models; choose one: {shown}")


def build_request(volume, selection, settings: DescribeSettings, extra_volumes=(), capabilities=None) -> Prompt:
    """The prompt (with rendered images) :func:`describe` would send, fitted to ``capabilities`` and
    ``settings.max_images`` (contact sheets, context sheet, worked examples)."""
    settings.validate()
    return fit_request(RequestParts.prepare(volume, selection, settings, extra_volumes), settings, capabilities)[0]


def _slice_prompt(volume, selection, settings: DescribeSettings, extra_volumes=()) -> Prompt:
    """The prompt of the voted slices alone, one image each."""
    images = prepare_images(volume, selection, settings, extra_volumes)
    modalities = list(dict.fromkeys(image.meta["window"]["modality"] for image in images))
    recorded = getattr(selection, "settings", None) or {}
    # Combined mode names its unsupervised picks only when some are among the images sent.
    then = recorded.get("unsupervised_mode", "") if any(
        (image.meta.get("guide") or {}).get("kind") == "unsupervised" for image in images) else ""
    try:
        return build_prompt(images, settings.prompt_template, settings.language, " and ".join(modalities),
                            guided_by=recorded.get("guided_by", ""), then=then)
    except ValueError as error:
        raise VLMError(str(error)) from None


_SHEETS_INTRO = (" Some images are contact sheets: each tile is one slice with its ID, plane and position burnt "
                 "into its corner, and the text after the sheet lists its tiles in order; cite the tiles' IDs.")
_CONTEXT_INTRO = (" The image labelled context shows evenly spaced slices of the whole volume for orientation "
                  "only: do not cite it.")
_EXAMPLE_INTRO = ("Worked example {number} (another patient, for the form of the report): representative slices of "
                  "a {modality} examination, each image followed by its ID, plane and position.")
_EXAMPLE_QUESTION = "Now the examination to report, in the same way."


@dataclass
class RequestParts:
    """Everything a request may carry before it is fitted to a server: the voted slices, the context
    sheet and the worked examples' slices (each rendered once, fitted as often as needed)."""

    prompt: Prompt
    context: object = None
    examples: list = field(default_factory=list)  # (ExampleCase, its PromptImages, distance)

    @classmethod
    def prepare(cls, volume, selection, settings: DescribeSettings, extra_volumes=()) -> "RequestParts":
        prompt = _slice_prompt(volume, selection, settings, extra_volumes)
        context = None
        if int(settings.context):
            windowing = _windowings(volume, selection, settings)[0]
            context = context_sheet(volume, int(settings.context), windowing, int(settings.long_side))
        examples = _example_sets(volume, selection, settings, prompt) if settings.examples_dir else []
        return cls(prompt, context, examples)

    def fit(self, settings: DescribeSettings, capabilities=None) -> Prompt:
        """The prompt within the images per request allowed (``settings.max_images`` and the server's limit).

        Raises
        ------
        VLMError
            Before anything is sent: a text-only model, or a request that cannot fit (``pack`` "none", too
            many examples for the limit).
        """
        lost = images_lost(settings, capabilities)
        budget = image_budget(replace(settings, pack="turns") if lost else settings, capabilities)
        image_pack = "auto" if lost else settings.pack
        if budget == 0:  # only a probe says 0: the model is text-only
            seen = [note for note in capabilities.notes if "image" in note or "vision" in note][:1]
            raise VLMError(f"{capabilities.server}: the model {capabilities.model or '(default)'} takes no images "
                           f"(text-only{': ' + seen[0] if seen else ''}); nothing was sent; choose a vision model, "
                           "or load its vision projector (mmproj) on the server")
        fixed = 1 if self.context is not None else 0
        groups = len(self.examples) + 1
        query_budget = example_budget = None
        if budget is not None:
            room = budget - fixed
            if room < groups:
                parts = [f"{len(self.examples)} example(s)"] * bool(self.examples) + ["the context sheet"] * fixed
                remedies = ["lower --examples-k"] * bool(self.examples) + ["leave out --context"] * fixed
                raise VLMError(f"the server takes {budget} image(s) per request: too few for "
                               f"{' and '.join(parts)} and the slices; {' or '.join(remedies)}")
            example_budget = room // groups
            query_budget = room - example_budget * len(self.examples)
        prompt = self.prompt
        if lost and self.examples:
            example_budget = 1  # each example's slices in one sheet: one image per message
        attachments = fit_images(prompt.images, query_budget, image_pack, int(settings.long_side))
        intro = prompt.intro + (_SHEETS_INTRO if len(attachments) != len(prompt.images) or
                                settings.pack == "grid" else "")
        if self.context is not None:
            attachments = [self.context, *attachments]
            intro += _CONTEXT_INTRO
        turns = []
        for number, (case, images, distance) in enumerate(self.examples, 1):
            shown = fit_images(images, example_budget, image_pack, int(settings.long_side),
                               what=f"the slices of example {case.name}")
            modality = images[0].meta["window"]["modality"]
            turns.append(Turn(_EXAMPLE_INTRO.format(number=number, modality=modality), shown, case.report,
                              {"name": case.name, "distance": round(float(distance), 4), "images": len(shown)}))
        if turns:
            intro = f"{_EXAMPLE_QUESTION} {intro}"
        fitted = replace(prompt, intro=intro, attachments=attachments, turns=turns)
        return spread_over_turns(fitted) if settings.pack == "turns" or lost else fitted


#: Why the images went one per message although ``pack`` was "auto", by what the probe found.
_LOSS_REASONS = {"fused": "the probe found the server fuses adjacent same-size images",
                 "first_only": "the probe found the model sees only the first image of a message"}


def images_lost(settings: DescribeSettings, capabilities=None) -> str:
    """The reason to send one image per message when the probe found images lost in a message ("" if none).

    Only ``pack`` "auto" switches; a packing the user chose is kept, and the report says what the probe found.
    """
    seen = getattr(capabilities, "images_seen", None)
    return _LOSS_REASONS.get(seen, "") if settings.pack == "auto" else ""


@dataclass
class ContextPlan:
    """How much of the model's context a request needs, and the ``num_ctx`` asked of Ollama for it.

    Attributes
    ----------
    estimated_tokens : int
        Text, images and the answer's ``max_tokens`` (:func:`~.packing.estimate_prompt_tokens`).
    tokens_per_image : float
    tokens_per_image_from : {"probe", "assumed"}
    context_length : int or None
        The model's context as the server reports it (None: not known).
    num_ctx : int or None
        Sent to Ollama's native API (None for other backends).
    shrunk : str
        Why fewer images than prepared were sent ("" when none were held back).
    """

    estimated_tokens: int
    tokens_per_image: float
    tokens_per_image_from: str
    context_length: int | None = None
    num_ctx: int | None = None
    shrunk: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def plan_context(prompt: Prompt, settings: DescribeSettings, capabilities=None) -> ContextPlan:
    """The context ``prompt`` needs on the server of ``capabilities`` (see :class:`ContextPlan`)."""
    measured = getattr(capabilities, "prompt_tokens_per_image", None)
    per_image = float(measured) if measured else float(DEFAULT_TOKENS_PER_IMAGE)
    needed = estimate_prompt_tokens(prompt, per_image, int(settings.max_tokens),
                                    getattr(capabilities, "chars_per_token", None))
    length = getattr(capabilities, "context_length", None)
    num_ctx = (DIALECTS[settings.backend].context_to_request(needed, settings.num_ctx, length)
               if settings.backend in DIALECTS else None)
    return ContextPlan(needed, per_image, "probe" if measured else "assumed", length, num_ctx)


def fit_request(parts: "RequestParts", settings: DescribeSettings, capabilities=None) -> tuple:
    """The prompt fitted to the server's image limits and to the model's context, with its :class:`ContextPlan`.

    A request to a server over the model's known context is shrunk to the images that fit (contact sheets,
    which cost one image each) and the plan says so.

    Raises
    ------
    VLMError
        Before anything is sent, when even the shrunk request cannot fit (or ``pack`` forbids sheets).
    """
    prompt = parts.fit(settings, capabilities)
    plan = plan_context(prompt, settings, capabilities)
    # The in-process model counts its prompt itself and refuses one too long, so nothing is lost silently there.
    if settings.backend == INPROCESS or not plan.context_length or plan.estimated_tokens <= plan.context_length:
        return prompt, plan
    images = prompt.image_count()
    fixed = plan.estimated_tokens - math.ceil(images * plan.tokens_per_image)
    room = int((plan.context_length - fixed) // plan.tokens_per_image)
    if room < 1 or room >= images:
        raise VLMError(f"the request needs about {plan.estimated_tokens} tokens ({images} image(s) of "
                       f"{plan.tokens_per_image:g} tokens, text and --max-tokens {settings.max_tokens}); the model's "
                       f"context holds {plan.context_length}; nothing was sent; lower --max-tokens or send fewer "
                       "slices")
    budget = min(room, int(settings.max_images or room))
    while True:  # sheets list every tile's label, so fewer images may still need a little more text
        shrunk = parts.fit(replace(settings, max_images=budget), capabilities)
        fitted = plan_context(shrunk, settings, capabilities)
        if fitted.estimated_tokens <= plan.context_length:
            break
        if budget == 1 or shrunk.image_count() <= 1:
            raise VLMError(f"the request needs about {fitted.estimated_tokens} tokens even as "
                           f"{shrunk.image_count()} image(s); the model's context holds {plan.context_length}; "
                           "nothing was sent; lower --max-tokens or send fewer slices")
        budget = max(1, min(budget, shrunk.image_count()) // 2)
    fitted.shrunk = (f"{images} images would need about {plan.estimated_tokens} tokens and the model's context "
                     f"holds {plan.context_length}: sent as {shrunk.image_count()}")
    return shrunk, fitted


def image_budget(settings: DescribeSettings, capabilities=None) -> int | None:
    """Images per request allowed: the smaller of ``settings.max_images`` and the server's known limit
    (for ``pack`` "turns", its limit with one image per message)."""
    limits = [int(settings.max_images)] if settings.max_images else []
    known = None
    if capabilities is not None:
        known = capabilities.turns_limit if settings.pack == "turns" else capabilities.image_limit
    if known is not None:
        limits.append(int(known))
    return min(limits) if limits else None


def _example_sets(volume, selection, settings: DescribeSettings, prompt: Prompt) -> list:
    """The closest worked examples with their slices, selected the way the query's were."""
    from ..selection import select_slices
    from .examples import load_cases, nearest_cases

    recorded = getattr(selection, "settings", None) or {}
    planes = tuple(dict.fromkeys(image.plane for image in prompt.images))
    top_k = max(int(image.meta.get("rank", 1)) for image in prompt.images)
    seed = int(recorded.get("seed", 0) or 0)
    mode = recorded.get("mode") or "findings"
    chosen = nearest_cases(volume, load_cases(settings.examples_dir), int(settings.examples_k), seed)
    sets = []
    for case, example, distance in chosen:
        try:
            picked = select_slices(example, planes=planes, top_k=top_k, seed=seed, mode=mode)
        except ValueError as error:
            raise VLMError(f"example {case.name}: {error}") from None
        images = prepare_images(example, picked, replace(settings, window=None, planes=planes, top_k=top_k))
        sets.append((case, images, distance))
    return sets


def sent_meta(prompt: Prompt, settings: DescribeSettings, capabilities=None, plan: ContextPlan | None = None) -> dict:
    """What was attached, for the report metadata: slices or sheets, context, examples, and why."""
    def describe_attachment(item):
        kind = item.meta.get("kind", "slice")
        entry = {"kind": kind, "width": item.meta.get("width"), "height": item.meta.get("height")}
        entry["ids"] = item.meta.get("ids", [item.meta.get("id")] if kind == "slice" else [])
        if kind == "context":
            entry.update(plane=item.meta["plane"], count=item.meta["count"], positions_mm=item.meta["positions_mm"])
        return entry

    spread = [turn for turn in prompt.turns if turn.meta.get("kind") == "image turn"]
    attachments = [*prompt.attachments, *(item for turn in spread for item in turn.attachments)]
    return {"pack": settings.pack, "images_per_request": prompt.image_count(),
            "limit": image_budget(settings, capabilities),
            "attachments": [describe_attachment(item) for item in attachments],
            "image_turns": len(spread),
            "images_seen": getattr(capabilities, "images_seen", None),
            "one_per_message_because": images_lost(settings, capabilities),
            "context": plan.to_dict() if plan is not None else None,
            "examples": [dict(turn.meta) for turn in prompt.turns if turn.meta.get("kind") != "image turn"],
            "capabilities": capabilities.to_dict() if capabilities is not None else None}


def describe(volume, selection_result, settings: DescribeSettings | None = None, extra_volumes=(), on_text=None,
             cancel=None, parts: RequestParts | None = None) -> Report:
    """Draft a report of the voted slices with a vision-language model.

    Parameters
    ----------
    volume : Volume
        The volume the selection was made on.
    selection_result : SelectionResult
    settings : DescribeSettings
    extra_volumes : sequence of Volume
        Other sequences of the same patient, sliced at the same RAS positions.
    on_text : callable(str), optional
        Receives the report text piece by piece as it arrives.
    cancel : callable() -> bool, optional
        Return True to stop. Polled about 20 times a second, possibly from a helper thread, so it
        must be cheap and thread-safe (``threading.Event().is_set`` is ideal).
    parts : RequestParts, optional
        The request already prepared with these arguments and validated settings
        (:meth:`RequestParts.prepare` after :meth:`DescribeSettings.validate`, as ``votemi describe``
        does), so that its images are not rendered and its settings not checked again.

    Returns
    -------
    Report
        ``complete`` is False when the answer broke off after some text (dropped connection,
        timeout, error mid-stream, token limit); ``meta["incomplete_reason"]`` says why.

    Raises
    ------
    VLMCancelled
        When ``cancel`` returned True; its ``report`` attribute holds the partial report.
        It is a subclass of VLMError, so catch it first.
    VLMError
        For any failure that left no text, with a one-line message for the user. Once the images
        are prepared, its ``report`` attribute holds the empty report flagged incomplete, with the
        message as ``incomplete_reason`` (for saving what was asked, as ``votemi describe`` does).
    """
    settings = settings or DescribeSettings()
    started = time.monotonic()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if parts is None:
        settings.validate()
        parts = RequestParts.prepare(volume, selection_result, settings, extra_volumes)
    prompt = parts.prompt
    client = _client(settings)
    meta = {
        "notice": NOTICE,
        "model": settings.model.strip() if settings.backend != INPROCESS else client.model_path,
        "server": client.server_url,
        "protocol": settings.backend,  # the key saved reports have always had
        "created": created,
        "volume": volume.name,
        "sequences": [v.name for v in (volume, *extra_volumes)],
        "modality": prompt.images[0].meta["window"]["modality"],
        "images": [image.meta for image in prompt.images],
        "prompt": {"intro": prompt.intro, "instruction": prompt.instruction,
                   "labels": [image.label for image in prompt.images]},
        "settings": settings.public_dict(),
        "selection_settings": dict(getattr(selection_result, "settings", None) or {}),
        "votemi_version": __version__,
    }
    ids = [image.id for image in prompt.images]
    structured = {"requested": settings.structured == "auto", "sent": False, "used": False, "note": ""}
    meta["structured_output"] = structured
    stream = StructuredStream()
    shown = (lambda piece: _show(stream.feed(piece), on_text)) if on_text is not None else None
    try:
        if cancel is not None and cancel():
            raise VLMCancelled()
        model = _resolve_model(client, settings, cancel)
        if settings.backend != INPROCESS:  # the in-process model is named by its folder
            meta["model"] = model
        capabilities = capabilities_for(client, model, settings, settings.probe, cancel)
        prompt, plan = fit_request(parts, settings, capabilities)
        _record_sent(meta, prompt, settings, capabilities, plan)
        options = GenerationOptions(max_tokens=int(settings.max_tokens), temperature=float(settings.temperature),
                                    seed=settings.seed, num_ctx=plan.num_ctx, stream=bool(settings.stream))

        def chat(asked, known):
            return _chat(client, asked, model, options, structured, ids, shown, cancel,
                         default_prompt=not (settings.prompt_template or "").strip(), schema_known=known)

        try:
            result = chat(prompt, capabilities)
        except VLMError as error:
            if isinstance(error, VLMCancelled) or settings.backend == INPROCESS or not is_image_refusal(error):
                raise
            # The server refused the images: what was known about it is out of date (or was never found out).
            forget(client.backend, client.server_url, model)
            capabilities = probe(client, model, settings.num_ctx, cancel)
            store(capabilities)
            refit, plan = fit_request(parts, settings, capabilities)
            if refit.image_count() >= prompt.image_count():
                raise  # the probe does not explain the refusal
            prompt = refit
            options = replace(options, num_ctx=plan.num_ctx)
            _record_sent(meta, prompt, settings, capabilities, plan)
            meta["sent"]["refitted_after"] = str(error)
            result = chat(prompt, capabilities)
        if not result.text.strip():
            why = f" ({result.incomplete_reason})" if result.incomplete_reason else "; check that it accepts images"
            raise VLMError(f"{client.server_url}: the model returned an empty answer{why}")
    except VLMError as error:
        # Whatever arrived, and why it stopped, for the caller to keep (the CLI writes it, Slicer shows it).
        cancelled = isinstance(error, VLMCancelled)
        meta.update(duration_s=round(time.monotonic() - started, 3), complete=False,
                    incomplete_reason="cancelled by the user" if cancelled else str(error))
        text, findings = _answer_findings(error.partial_text if cancelled else "", ids, structured, meta)
        error.report = Report(text, meta, complete=False, findings=findings)
        raise
    if result.model:
        meta["model_reported"] = result.model
    meta.update(duration_s=round(time.monotonic() - started, 3), finish_reason=result.finish_reason,
                usage=result.usage, attempts=result.attempts, complete=result.complete)
    if not result.complete:
        meta["incomplete_reason"] = result.incomplete_reason
    text, findings = _answer_findings(result.text, ids, structured, meta)
    return Report(text, meta, complete=result.complete, findings=findings)


def _record_sent(meta: dict, prompt: Prompt, settings: DescribeSettings, capabilities, plan=None) -> None:
    meta["prompt"]["intro"] = prompt.intro
    meta["sent"] = sent_meta(prompt, settings, capabilities, plan)


def _show(piece, on_text):
    if piece:
        on_text(piece)


def _chat(client, prompt, model, options, structured, ids, on_text, cancel, default_prompt=True, schema_known=None):
    """Ask with the findings schema if wanted; once more without it if the server refuses the schema.

    ``schema_known`` (:class:`~.capabilities.Capabilities`) saves the refused request when a probe
    found that the server takes no JSON schema.
    """
    if not structured["requested"]:
        return client.chat(prompt, model, options, on_text=on_text, cancel=cancel)
    if schema_known is not None and schema_known.json_schema is False:
        structured.update(sent=False, note="the server takes no JSON schema (found by its probe); asked for free "
                                           "text with image tags")
        structured.pop("instruction_added", None)
        return client.chat(prompt, model, options, on_text=on_text, cancel=cancel)
    asked = prompt
    if default_prompt:  # a user's own template is sent as written; the schema still binds the answer
        asked = replace(prompt, instruction=f"{prompt.instruction}\n{STRUCTURED_INSTRUCTION}")
        structured["instruction_added"] = STRUCTURED_INSTRUCTION
    try:
        structured["sent"] = True
        return client.chat(asked, model, replace(options, response_schema=findings_schema(ids)), on_text=on_text,
                           cancel=cancel)
    except VLMError as error:
        message = str(error).lower()
        if isinstance(error, VLMCancelled) or error.status not in (400, 404, 415, 422, 500, 501) or \
                not any(word in message for word in _STRUCTURED_REFUSAL):
            raise
        structured["sent"] = False
        structured.pop("instruction_added", None)
        structured["note"] = f"the server refused structured output ({error}); asked for free text with image tags"
    return client.chat(prompt, model, options, on_text=on_text, cancel=cancel)


def _answer_findings(answer: str, ids, structured: dict, meta: dict) -> tuple:
    """``(report text, Findings)`` of the model's answer; a JSON answer is kept raw in the metadata."""
    looks_json = answer.lstrip().startswith("{")
    findings, note = findings_from_answer(answer, ids, structured=looks_json)
    text = answer
    if looks_json:
        meta["raw_answer"] = answer
        text = findings.to_text() if findings.source == "structured" else render_partial_json(answer)
        if findings.source != "structured":  # cut off or malformed: the tags of what could be read
            findings, _ = findings_from_answer(text, ids, structured=False)
    structured["used"] = findings.source == "structured"
    if structured["sent"] and not looks_json and answer.strip():
        note = "the server answered in free text (it ignored the response schema); findings from the image tags"
    if note:
        structured["note"] = "; ".join(n for n in (structured["note"], note) if n)
    return text, findings
