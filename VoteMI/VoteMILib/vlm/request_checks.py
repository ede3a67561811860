"""What ``votemi serve`` accepts: the limits and features of a server, and the checks of a chat request.

Every check runs before anything expensive: the body is parsed JSON, images are opened from their
headers only (:func:`parse_chat_request`) and decoded later (:func:`decode_images`), once the
request has been found within :class:`ServeLimits`. A refused request is a :class:`RequestError`,
which the server (:mod:`.server`) answers in the OpenAI error shape (:func:`error_body`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, fields, replace

from .constrained import SchemaError, check_schema

DEFAULT_MAX_REQUEST_MB = 64.0
#: Prompt characters allowed per allowed prompt token when no character cap is given: English
#: averages about 4 characters per token, so only text that could not fit is refused unread.
CHARS_PER_TOKEN = 8
#: Prompt token cap when the model declares no context length.
FALLBACK_CONTEXT_TOKENS = 8192
#: Messages plus content parts per request: bounds the chat template's work for empty parts.
MAX_PARTS = 1024
#: Image formats decoded; others (EPS, which runs Ghostscript, TIFF, ...) are refused unread.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: ``seed`` is a signed 64-bit integer, as in the OpenAI API.
SEED_RANGE = (-2**63, 2**63 - 1)
_ROLES = ("system", "user", "assistant")
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and the server as a whole, may use. Every field has a ``votemi serve`` option.

    Attributes
    ----------
    max_request_mb : float
        Larger request bodies are refused (413) without being read.
    max_prompt_tokens : int or None
        Prompt tokens after the chat template, images included (400, code ``context_length_exceeded``);
        None: the model's context length.
    max_prompt_chars : int or None
        Characters of text over all messages, counted before tokenising (400); None:
        ``CHARS_PER_TOKEN`` times ``max_prompt_tokens``.
    max_images : int
        Images per request (400).
    max_image_megapixels, max_total_megapixels : float
        Pixels of one image and of all images of a request, read from the image headers
        before anything is decoded (400, code ``image_too_large``).
    max_tokens_cap : int
        Requests for more new tokens are lowered to this.
    queue_timeout_s : float
        Longest wait for the model behind other requests; then 503 with ``Retry-After``.
    generation_timeout_s : float
        Generation stops after this long; the answer is cut (finish_reason "length").
    max_connections : int
        Open connections served at once; beyond, a connection is answered 503 at once.
    max_connections_per_client : int
        Open connections from one client address; beyond, 503 at once, so that one client (slow or
        hostile) cannot take every slot.
    header_timeout_s : float
        Total time from a request's first byte to the end of its headers; then 408 and the connection
        is closed, however steadily the client trickles bytes.
    """

    max_request_mb: float = DEFAULT_MAX_REQUEST_MB
    max_prompt_tokens: int | None = None
    max_prompt_chars: int | None = None
    max_images: int = 64
    max_image_megapixels: float = 16.0
    max_total_megapixels: float = 64.0
    max_tokens_cap: int = 4096
    queue_timeout_s: float = 60.0
    generation_timeout_s: float = 600.0
    max_connections: int = 32
    max_connections_per_client: int = 8
    header_timeout_s: float = 10.0

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            optional = item.name in ("max_prompt_tokens", "max_prompt_chars")
            if (value is None and optional) or (not isinstance(value, bool) and isinstance(value, (int, float))
                                                and value > 0):
                continue
            raise ValueError(f"{item.name.replace('_', '-')} must be a positive number, not {value!r}")

    def for_model(self, model) -> ServeLimits:
        """These limits with the prompt caps resolved from the model's context length."""
        tokens = self.max_prompt_tokens or getattr(model, "context_length", None) or FALLBACK_CONTEXT_TOKENS
        return replace(self, max_prompt_tokens=int(tokens),
                       max_prompt_chars=int(self.max_prompt_chars or CHARS_PER_TOKEN * tokens))

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)


@dataclass(frozen=True)
class ServeFeatures:
    """What the server accepts beyond text, each switchable off to stand in for more limited servers.

    Attributes
    ----------
    images : bool
        False: requests with images are refused (400, code ``images_not_supported``), as a text-only
        model (a GGUF without its vision projector) would be (``votemi serve --text-only``).
    json_schema : bool
        False: ``response_format`` json_schema is refused (400), as servers without structured
        output do (``votemi serve --no-json-schema``).
    images_per_message : int or None
        Most images in one message (400 beyond), as Ollama's vision models that take "a single image
        per message" (``votemi serve --max-images-per-message``); None: only ``max_images`` per request.
    drop_images : bool
        True: images are accepted and left out of what the model sees, as llama-cpp-python started
        without its vision projector does (``votemi serve --drop-images``).
    merge_adjacent_images : bool
        True: two images of the same pixel size with no text between them in one message reach the
        model as one (the second is lost), as llama.cpp's and Ollama's frame merge for Qwen-VL models
        does (``votemi serve --merge-adjacent-images``).
    first_image_only : bool
        True: only the first image of each message reaches the model, as LM Studio's API was reported
        to do (``votemi serve --first-image-only``).
    context_tokens : int or None
        A context this small, filled silently: the earliest images are left out until the prompt fits,
        and the answer gets what room is left, as Ollama does past its ``num_ctx``
        (``votemi serve --context N``); None: the model's own context, overflow refused with 400.
    """

    images: bool = True
    json_schema: bool = True
    images_per_message: int | None = None
    drop_images: bool = False
    merge_adjacent_images: bool = False
    first_image_only: bool = False
    context_tokens: int | None = None


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-shaped error answer."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_type(status: int) -> str:
    """The OpenAI error ``type`` for an HTTP status."""
    named = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
    return named.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def parse_chat_request(data, limits: ServeLimits, features: ServeFeatures = ServeFeatures()) -> dict:
    """Validate a chat completion request and turn it into generation arguments.

    Everything is checked before any image is decoded: the structure, the number of parts and
    images, the characters of text and each image's size from its header.

    Parameters
    ----------
    data : object
        The parsed JSON body.
    limits : ServeLimits
        Resolved for the model (:meth:`ServeLimits.for_model`).
    features : ServeFeatures
        Whether images and JSON-schema output are accepted.

    Returns
    -------
    dict
        ``messages`` (transformers chat format; images are opened but not decoded, see
        :func:`decode_images`), ``images`` ((where, image part) pairs), ``max_new_tokens``,
        ``temperature``, ``top_p``, ``seed``, ``stream``.

    Raises
    ------
    RequestError
        With status 400 and the offending parameter for anything malformed or over a limit.
    """
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages, images = _convert_messages(data.get("messages"), limits, features)
    _check_pixels(images, limits)
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens", 1024))
    if max_tokens is None:
        max_tokens = 1024
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, "'max_tokens' must be a positive integer", "max_tokens")
    temperature = data.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise RequestError(400, "'temperature' must be a number from 0 to 2", "temperature")
    top_p = data.get("top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise RequestError(400, "'top_p' must be a number in (0, 1]", "top_p")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise RequestError(400, "'seed' must be an integer from -2^63 to 2^63-1", "seed")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    return {"messages": messages, "images": images, "max_new_tokens": min(max_tokens, limits.max_tokens_cap),
            "temperature": float(temperature), "top_p": top_p, "seed": seed, "stream": stream,
            "response_schema": parse_response_format(data.get("response_format"), features)}


def parse_response_format(value, features: ServeFeatures = ServeFeatures()) -> dict | None:
    """The JSON schema of ``response_format`` (``{"type": "json_schema", "json_schema": {"schema": ...}}``).

    ``None`` and ``{"type": "text"}`` mean free text. Schemas outside the subset decoding can
    enforce (:mod:`.constrained`) are refused rather than ignored.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_schema", "json_object"):
        raise RequestError(400, "'response_format' must be {\"type\": \"text\"} or {\"type\": \"json_schema\", "
                           "\"json_schema\": {\"name\": ..., \"schema\": {...}}}", "response_format")
    if value["type"] == "text":
        return None
    if not features.json_schema:
        raise RequestError(400, "response_format json_schema is not supported by this server (it was started "
                           "with --no-json-schema); ask for free text", "response_format")
    if value["type"] == "json_object":
        raise RequestError(400, "response_format json_object is not supported; send json_schema with a schema",
                           "response_format")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise RequestError(400, "response_format.json_schema.schema must be a JSON schema object",
                           "response_format.json_schema.schema")
    try:
        check_schema(spec["schema"])
    except SchemaError as error:
        raise RequestError(400, f"response_format: {error}", "response_format.json_schema.schema") from None
    return spec["schema"]


def _convert_messages(messages, limits: ServeLimits, features: ServeFeatures) -> tuple:
    """Messages in transformers chat format and their (where, image part) pairs, counted first."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    parts_count = len(messages) + sum(len(m["content"]) for m in messages
                                      if isinstance(m, dict) and isinstance(m.get("content"), list))
    if parts_count > MAX_PARTS:
        raise RequestError(400, f"too many messages and content parts ({parts_count}); the limit is {MAX_PARTS}",
                           "messages")
    pending = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object", where)
        role = message.get("role")
        if role not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {', '.join(_ROLES)}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = [_check_part(part, f"{where}.content[{m}]") for m, part in enumerate(content)]
        else:
            raise RequestError(400, f"{where}.content must be a string or a list of parts", f"{where}.content")
        pending.append((role, parts))
    image_count = sum(part["type"] == "image_url" for _, parts in pending for part in parts)
    if image_count and not features.images:
        raise RequestError(400, "this model is text-only: it takes no images (the server was started with "
                           "--text-only)", "messages", "images_not_supported")
    if image_count > limits.max_images:
        raise RequestError(400, f"too many images ({image_count}); the limit is {limits.max_images}", "messages")
    if features.images_per_message is not None:
        for n, (_, parts) in enumerate(pending):
            count = sum(part["type"] == "image_url" for part in parts)
            if count > features.images_per_message:
                raise RequestError(400, f"messages[{n}] has {count} images; this model takes "
                                   f"{features.images_per_message} image(s) per message", f"messages[{n}]")
    characters = sum(len(part["text"]) for _, parts in pending for part in parts if part["type"] == "text")
    if characters > limits.max_prompt_chars:
        raise RequestError(400, f"the prompt has {characters} characters of text; the limit is "
                           f"{limits.max_prompt_chars}: send less text", "messages", "context_length_exceeded")
    converted, images = [], []
    for role, parts in pending:
        content = []
        for part in parts:
            if part["type"] == "image_url" and features.drop_images:
                continue
            if part["type"] == "image_url":
                where = part["where"]
                part = {"type": "image", "image": _open_image(part["url"], where)}
                images.append((where, part))
            content.append(part)
        converted.append({"role": role, "content": _lose_images(content, features)})
    return converted, images


def _lose_images(content: list, features: ServeFeatures) -> list:
    """The parts of one message the model gets when the server emulates a server that loses images."""
    if features.first_image_only:
        first = next((n for n, part in enumerate(content) if part["type"] == "image"), None)
        content = [part for n, part in enumerate(content) if part["type"] != "image" or n == first]
    if features.merge_adjacent_images:
        content = _merge_adjacent(content)
    return content


def _merge_adjacent(content: list) -> list:
    """Pairs of same-size images with no text between them fused into one (the first of each pair kept).

    Whitespace-only text does not separate images: it adds no token between them.
    """
    kept, open_image = [], None  # open_image: the last image not yet fused, while no text followed it
    for part in content:
        if part["type"] == "text" and not part["text"].strip():
            kept.append(part)
            continue
        if part["type"] != "image":
            open_image = None
            kept.append(part)
            continue
        if open_image is not None and open_image["image"].size == part["image"].size:
            open_image = None  # fused into the previous image: the model sees one
            continue
        open_image = part
        kept.append(part)
    return kept


def _check_part(part, where: str) -> dict:
    """A text part, or an image part holding its data URL and where it was, unopened."""
    if not isinstance(part, dict):
        raise RequestError(400, f"{where} must be an object", where)
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RequestError(400, f"{where}.text must be a string", f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise RequestError(400, f"{where}.image_url.url must be a string", f"{where}.image_url")
        if not _DATA_URL.match(url):
            raise RequestError(400, f"{where}: only data:image/...;base64 URLs are accepted (this server does not "
                               "fetch remote images)", f"{where}.image_url")
        return {"type": "image_url", "url": url, "where": f"{where}.image_url"}
    raise RequestError(400, f"{where}.type '{kind}' is not supported; use 'text' or 'image_url'", f"{where}.type")


def _open_image(url: str, where: str):
    """The image of a data URL, opened lazily: Pillow has read its header (format and size), no pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(url[_DATA_URL.match(url).end():], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: the image is not valid base64", where) from None
    try:
        return Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours unless the option raised ours
        raise RequestError(400, f"{where}: the image has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                           "megapixels", where, "image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(400, f"{where}: the data is not a readable {', '.join(IMAGE_FORMATS)} image",
                           where) from None


def _check_pixels(images: list, limits: ServeLimits):
    total = 0
    for where, part in images:
        width, height = part["image"].size
        total += width * height
        if width * height > limits.max_image_megapixels * 1e6:
            raise RequestError(400, f"{where}: the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); "
                               f"the limit is {limits.max_image_megapixels:g} megapixels per image", where,
                               "image_too_large")
    if total > limits.max_total_megapixels * 1e6:
        raise RequestError(400, f"the images have {total / 1e6:.1f} megapixels together; the limit is "
                           f"{limits.max_total_megapixels:g} per request", "messages", "image_too_large")


def decode_images(images: list):
    """Decode the opened images of :func:`parse_chat_request` to RGB, in place (400 if one is broken)."""
    from PIL import Image

    for where, part in images:
        try:
            part["image"] = part["image"].convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise RequestError(400, f"{where}: the data is not a readable image", where) from None
