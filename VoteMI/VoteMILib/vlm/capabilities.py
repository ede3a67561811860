"""What a server and model accept, found out by asking: images, how many per request, context length, JSON schema.

A probe (:func:`probe`) first reads what the server reports about the model (Ollama's ``/api/show``,
``max_model_len`` in vLLM's and ``votemi serve``'s ``/v1/models``, llama.cpp's ``/props``), then sends
a few one-token requests: text only, then 1, 2, 4 and 9 tiny PNGs (narrowed down between the last
count accepted and the first refused; one image per message too when fewer fit in one), then a tiny
JSON schema as ``response_format`` (Ollama: ``format``). A model whose prompt does not grow with an
image (llama-cpp-python started without ``--clip_model_path`` accepts images and drops them) is taken
as text-only even though its server accepts the request.

Whether the model sees every image (:data:`IMAGES_SEEN`) is read from the prompt tokens the server
reports, with the images laid out as a describe request lays them out: two images of the same size
must cost about twice one. A pair that costs one image was fused (llama.cpp's and Ollama's frame
merge for Qwen-VL models) or cut to its first image (LM Studio); a pair of different sizes, which
frame merge leaves alone, tells the two apart. The growth per image is the ``prompt_tokens_per_image``
that sizes the context of later requests.

Results are cached per backend, server and model with a time stamp in ``capabilities.json`` under
``$VOTEMI_CACHE_DIR`` (default: the user's cache folder, e.g. ``~/.cache/votemi``), reused for
:data:`CACHE_MAX_AGE_S`, and refreshed when a request fails in a way a probe can explain.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from ..names import INPROCESS
from .errors import VLMCancelled, VLMError
from .options import GenerationOptions
from .prompts import Attachment, Prompt, spread_over_turns
from .urls import redact_url

#: What the probe found about the images of one message reaching the model: every one, adjacent same-size
#: pairs fused into one, only the first, or not found out (no prompt tokens reported, or unclear growth).
IMAGES_SEEN = ("all", "fused", "first_only", "unverified")
# A pair costing at least this many single images was seen whole; at most _LOST_RATIO, one was lost.
_SEEN_RATIO = 1.75
_LOST_RATIO = 1.25
# Text added to one probe request to measure the tokenizer: words and numbers as image labels and reports have.
_TOKENIZER_TEXT = " A1: axial, S 12.5 mm, sequence T1. Findings: no mass effect; ventricles of normal size." * 4
#: Images per request tried by the probe, in order.
PROBE_COUNTS = (1, 2, 4, 9)
#: How long a probe result is trusted before the next describe probes again (a week).
CACHE_MAX_AGE_S = 7 * 24 * 3600.0
CACHE_FILE = "capabilities.json"
CACHE_ENV = "VOTEMI_CACHE_DIR"
_PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                 "additionalProperties": False}
# Words of a refusal that show it is about the response format.
_SCHEMA_WORDS = ("response_format", "json_schema", "schema", "format", "grammar")
# Words of a refusal that show it is about the images (and not, e.g., the server being down).
_IMAGE_WORDS = ("image", "vision", "multimodal", "mm", "projector", "modalit")


@dataclass
class Capabilities:
    """What one model on one server accepts.

    Attributes
    ----------
    protocol : str
        The backend (:data:`VoteMILib.names.BACKENDS`), under the name stored results have always had.
    images : bool or None
        Whether images reach the model (None: not found out).
    max_images : int or None
        Most images accepted in one request; with ``max_images_exact`` False, all counts tried
        were accepted and this is a lower bound.
    context_length : int or None
        Context length in tokens, where the server reports it.
    json_schema : bool or None
        Whether a JSON schema as response format is honoured (refused or ignored: False).
    images_over_turns : int or None
        Most images accepted one per user message (probed only when fewer were accepted in one
        message); equal to the largest count tried when all were accepted.
    probed_at : str
        ISO time of the probe (UTC).
    prompt_tokens_per_image : float or None
        Prompt tokens one image adds, from the growth of the prompt tokens the server reports.
    images_seen : str or None
        One of :data:`IMAGES_SEEN`; None when not probed for (text-only, or stored by an older VoteMI).
    chars_per_token : float or None
        Characters of report-like text per prompt token of the model's tokenizer, from the growth of the
        prompt tokens with a longer text (None: not reported).
    notes : list of str
        What the probe saw, in words (refusals, ignored images or schema, where the context came from).
    """

    protocol: str
    server: str
    model: str
    images: bool | None = None
    max_images: int | None = None
    max_images_exact: bool = False
    context_length: int | None = None
    json_schema: bool | None = None
    images_over_turns: int | None = None
    probed_at: str = ""
    prompt_tokens_per_image: float | None = None
    images_seen: str | None = None
    chars_per_token: float | None = None
    notes: list = field(default_factory=list)

    @property
    def image_limit(self) -> int | None:
        """Images the server is known to take per request (0 for text-only), None when no limit was found."""
        if self.images is False:
            return 0
        return self.max_images if self.max_images_exact else None

    @property
    def turns_limit(self) -> int | None:
        """Images the server takes spread one per message (0 for text-only), None when no limit was found."""
        if self.images is False:
            return 0
        if self.images_over_turns is not None and self.images_over_turns < max(PROBE_COUNTS):
            return self.images_over_turns
        return None if self.images_over_turns is not None or not self.max_images_exact else self.max_images

    def age_s(self) -> float:
        try:
            when = datetime.fromisoformat(self.probed_at)
        except ValueError:
            return float("inf")
        return (datetime.now(timezone.utc) - when).total_seconds()

    def summary(self) -> str:
        """One line for the status line: ``images: up to 4 per request; context 8192 tokens; JSON schema: yes``."""
        if self.images is False:
            images = "text-only (takes no images)"
        elif self.max_images is None:
            images = "images: not found out"
        elif self.max_images_exact:
            images = f"images: up to {self.max_images} per request"
        else:
            images = f"images: {self.max_images} or more per request"
        parts = [images]
        if self.images is not False and self.max_images_exact and self.images_over_turns:
            many = "or more " if self.images_over_turns >= max(PROBE_COUNTS) else ""
            parts.append(f"{self.images_over_turns} {many}one per message")
        if self.context_length:
            parts.append(f"context {self.context_length} tokens")
        if self.json_schema is not None:
            parts.append(f"JSON schema: {'yes' if self.json_schema else 'no'}")
        if self.images_seen:
            parts.append(f"images seen: {self.images_seen.replace('_', ' ')}")
        if self.prompt_tokens_per_image:
            parts.append(f"{self.prompt_tokens_per_image:g} tokens per image")
        when = self.probed_at.replace("T", " ")[:16]
        return "; ".join(parts) + (f" (probed {when} UTC)" if when else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Capabilities":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


# -- cache -----------------------------------------------------------------------------------------------

def cache_dir() -> str:
    """``$VOTEMI_CACHE_DIR``, else the user's cache folder for VoteMI."""
    folder = os.environ.get(CACHE_ENV, "").strip()
    if folder:
        return os.path.expanduser(folder)
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "votemi")


def cache_path() -> str:
    return os.path.join(cache_dir(), CACHE_FILE)


def cache_key(backend: str, server: str, model: str) -> str:
    return f"{backend} {redact_url(server)} {model}"


def _read_cache() -> dict:
    try:
        with open(cache_path(), encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, ValueError):  # none yet, or unreadable: probing again is the remedy
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(data: dict) -> None:
    from ..outputs import OutputError, write_json_atomic

    try:
        os.makedirs(cache_dir(), exist_ok=True)
        write_json_atomic(cache_path(), data, what="capabilities cache")
    except (OSError, OutputError):
        pass  # a cache that cannot be written only costs a probe next time


def cached(backend: str, server: str, model: str, max_age_s: float = CACHE_MAX_AGE_S) -> Capabilities | None:
    """The stored probe result for this server and model, if younger than ``max_age_s``."""
    entry = _read_cache().get(cache_key(backend, server, model))
    if not isinstance(entry, dict):
        return None
    try:
        found = Capabilities.from_dict(entry)
    except TypeError:
        return None
    return found if found.age_s() <= max_age_s else None


def store(found: Capabilities) -> None:
    data = _read_cache()
    data[cache_key(found.protocol, found.server, found.model)] = found.to_dict()
    _write_cache(data)


def forget(backend: str, server: str, model: str) -> None:
    """Drop a stored result (after a failure a probe may explain)."""
    data = _read_cache()
    if data.pop(cache_key(backend, server, model), None) is not None:
        _write_cache(data)


def is_image_refusal(error: VLMError) -> bool:
    """Whether a failed request looks refused for its images (worth probing again)."""
    message = str(error).lower()
    return error.status in (400, 413, 422, 500) and any(word in message for word in _IMAGE_WORDS)


# -- probing ---------------------------------------------------------------------------------------------

#: Pixel size of the probe's images; the odd one out of the different-size pair is narrower.
_PROBE_SIZE = (64, 64)
_ODD_SIZE = (48, 64)


def _probe_png(number: int, size=_PROBE_SIZE) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (40 * number % 256, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def _ask(client, model, count: int, options, cancel, schema=None, spread=False, sizes=None, text=""):
    """A one-token request with ``count`` test images (of ``sizes``, default all the same), in one message or
    ``spread`` one per message."""
    # No label text: with the OpenAI protocol a request with images then has the very text of the one without,
    # so prompt tokens that do not grow mean the images never reached the model, and nothing separates two
    # images, as frame merge needs.
    sizes = sizes or [_PROBE_SIZE] * count
    images = [Attachment("", _probe_png(n, size), {"kind": "probe"}) for n, size in enumerate(sizes, 1)]
    prompt = Prompt("This is a connection test." + text, [], "Reply with OK." if schema is None else
                    'Reply with {"ok": true}.', attachments=images)
    if spread:
        prompt = spread_over_turns(prompt)
    return client.chat(prompt, model, replace(options, response_schema=schema), cancel=cancel)


def _reported(client, model: str) -> dict:
    """What the server says about the model without being asked to generate: context length, vision."""
    found = {}
    if client.backend == "openai":
        try:
            listing = client.request_json("GET", "/v1/models")
            for entry in listing.get("data", []) if isinstance(listing, dict) else []:
                if isinstance(entry, dict) and entry.get("id") == model:
                    length = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
                    if isinstance(length, int) and length > 0:
                        found["context_length"], found["context_from"] = length, "/v1/models"
        except VLMError:
            pass
        try:  # llama.cpp's llama-server
            props = client.request_json("GET", "/props")
            if isinstance(props, dict):
                n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
                if isinstance(n_ctx, int) and n_ctx > 0:
                    found["context_length"], found["context_from"] = n_ctx, "/props"
                vision = (props.get("modalities") or {}).get("vision")
                if isinstance(vision, bool):
                    found["vision"] = vision
        except VLMError:
            pass
    else:
        try:
            shown = client.request_json("POST", "/api/show", {"model": model})
            if isinstance(shown, dict):
                info = shown.get("model_info") or {}
                lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
                if lengths:
                    found["context_length"], found["context_from"] = lengths[0], "/api/show"
                if isinstance(shown.get("capabilities"), list):
                    found["vision"] = "vision" in shown["capabilities"]
        except VLMError:
            pass
    return found


def probe(client, model: str, num_ctx: int | None = None, cancel=None) -> Capabilities:
    """Find out what ``model`` on ``client``'s server accepts (a handful of one-token requests).

    Raises
    ------
    VLMError
        When the server does not answer even a text-only request (unreachable, unknown model, ...).
    VLMCancelled
        When ``cancel`` returned True.
    """
    found = Capabilities(client.backend, client.server_url, model,
                         probed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    reported = _reported(client, model)
    found.context_length = reported.get("context_length")
    if found.context_length:
        found.notes.append(f"context length from {reported['context_from']}")
    options = GenerationOptions(max_tokens=1, temperature=0.0, seed=0, num_ctx=num_ctx, stream=False)
    baseline = _ask(client, model, 0, options, cancel).usage.get("prompt_tokens")
    if baseline:
        longer = _ask(client, model, 0, options, cancel, text=_TOKENIZER_TEXT).usage.get("prompt_tokens")
        if longer and longer > baseline:
            found.chars_per_token = round(len(_TOKENIZER_TEXT) / (longer - baseline), 2)
    accepted, refused, tokens = 0, None, {}
    for count in PROBE_COUNTS:
        outcome = _try_images(client, model, count, options, cancel, found.notes)
        if outcome is None:
            refused = count
            break
        accepted, tokens[count] = count, outcome
    if refused is not None and accepted:
        low, high = accepted, refused  # the limit lies in [low, high): narrow it down
        while high - low > 1:
            middle = (low + high) // 2
            outcome = _try_images(client, model, middle, options, cancel, found.notes)
            if outcome is None:
                high = middle
            else:
                low, tokens[middle] = middle, outcome
        accepted = low
    found.max_images = accepted if accepted else None
    found.max_images_exact = refused is not None
    if accepted and refused is not None:  # a limit per message (Ollama) or per request (vLLM)?
        for count in [n for n in PROBE_COUNTS if n > accepted]:
            if _try_images(client, model, count, options, cancel, found.notes, spread=True) is None:
                break
            found.images_over_turns = count
    found.images = accepted > 0 if refused is not None or accepted else None
    if accepted and baseline is not None and tokens.get(1) is not None:
        found.prompt_tokens_per_image = round(tokens[1] - baseline, 1) if tokens[1] > baseline else None
        # Ollama's native API adds a message per image, so only OpenAI requests compare like for like.
        if tokens[1] <= baseline and client.backend == "openai":
            found.images = False
            found.notes.append(f"the prompt did not grow with an image ({baseline} tokens either way): the model "
                               "ignores images (no vision projector loaded?)")
    if reported.get("vision") is False and found.images is not False:
        found.images = False
        found.notes.append("the server reports no vision capability for this model")
    if found.images:
        found.images_seen = _images_seen(client, model, options, cancel, baseline, tokens, found.notes)
        if found.images_seen == "all" and tokens.get(accepted) and accepted > 1:
            # The growth past the first image leaves out text that comes with the first image only.
            found.prompt_tokens_per_image = round((tokens[accepted] - tokens[1]) / (accepted - 1), 1)
    found.json_schema = _try_schema(client, model, options, cancel, found.notes)
    return found


def _images_seen(client, model, options, cancel, baseline, tokens, notes) -> str:
    """Whether a message's images all reach the model (:data:`IMAGES_SEEN`), from the prompt tokens of the
    probe's requests: ``baseline`` with no image, ``tokens[n]`` with n same-size images."""
    one = (tokens.get(1) or 0) - (baseline or 0)
    if not baseline or one <= 0:
        notes.append("images seen: not verified (the server reports no prompt tokens)")
        return "unverified"
    if tokens.get(2) is None:
        return "all"  # one image per request: none can be lost beside another
    pair = (tokens[2] - baseline) / one
    if pair >= _SEEN_RATIO:
        return "all"
    if pair > _LOST_RATIO:
        notes.append(f"images seen: not verified (two images cost {pair:.2f} times one)")
        return "unverified"
    # One of two same-size images was lost. Frame merge leaves images of different sizes alone; a server
    # keeping only the first image drops the second whatever its size.
    odd = _try_images(client, model, 1, options, cancel, notes, sizes=[_ODD_SIZE])
    mixed = _try_images(client, model, 2, options, cancel, notes, sizes=[_PROBE_SIZE, _ODD_SIZE])
    if not odd or not mixed or odd <= baseline:
        notes.append(f"two same-size images cost {pair:.2f} times one: one image lost, how not found out")
        return "unverified"
    both = one + odd - baseline
    seen = "fused" if mixed - baseline >= _SEEN_RATIO / 2 * both else "first_only"
    notes.append(f"two same-size images cost {pair:.2f} times one and two of different sizes "
                 f"{(mixed - baseline) / both:.2f} times both: " +
                 ("adjacent same-size images are fused into one" if seen == "fused" else
                  "only the first image of a message reaches the model"))
    return seen


def _try_images(client, model, count, options, cancel, notes, spread=False, sizes=None):
    """Prompt tokens of a request with ``count`` images (0 when not reported), or None when refused."""
    try:
        return _ask(client, model, count, options, cancel, spread=spread, sizes=sizes).usage.get("prompt_tokens", 0)
    except VLMCancelled:
        raise
    except VLMError as error:
        if error.status is None or error.status >= 500 and not is_image_refusal(error):
            raise
        notes.append(f"{count} image(s){' one per message' if spread else ''} refused: {error}")
        return None


def _try_schema(client, model, options, cancel, notes) -> bool:
    try:
        result = _ask(client, model, 0, replace(options, max_tokens=32), cancel, schema=_PROBE_SCHEMA)
    except VLMCancelled:
        raise
    except VLMError as error:
        # Some refuse it with a 500 (llama-cpp-python: "Input should be 'text' or 'json_object'").
        if error.status is None or (error.status >= 500 and not any(word in str(error).lower()
                                                                    for word in _SCHEMA_WORDS)):
            raise
        notes.append(f"JSON schema refused: {error}")
        return False
    try:
        answer = json.loads(result.text)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("ok"), bool):
        return True
    notes.append("JSON schema ignored: the answer did not follow it")
    return False


def inprocess_capabilities(model, max_images: int | None) -> Capabilities:
    """What the in-process backend accepts: images, ``max_images`` (its option) per request, JSON schema."""
    return Capabilities(INPROCESS, "in-process", model.name, images=True, max_images=max_images,
                        max_images_exact=max_images is not None, context_length=model.context_length,
                        json_schema=True, probed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def capabilities_for(client, model: str, settings, probe_missing: bool, cancel=None) -> Capabilities | None:
    """The capabilities to fit a request to: the cached ones, a new probe when wanted, else None."""
    if client.backend == INPROCESS:
        return inprocess_capabilities(client.model(), settings.max_images)
    found = cached(client.backend, client.server_url, model)
    if found is None and probe_missing:
        started = time.monotonic()
        found = probe(client, model, settings.num_ctx, cancel)
        found.notes.append(f"probe took {time.monotonic() - started:.1f} s")
        store(found)
    return found
