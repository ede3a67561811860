"""``votemi serve``: an OpenAI-compatible HTTP server backed by an in-process model.

Lets a workstation with a GPU host the VLM for Slicer on other machines. Endpoints:

* ``POST /v1/chat/completions``: messages with text and ``image_url`` parts (``data:`` URLs only;
  the server never fetches remote images), ``stream`` (Server-Sent Events) or not,
  ``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, and
  ``response_format`` ``json_schema`` (structured output: decoding constrained to the schema,
  see :mod:`.constrained`).
* ``GET /v1/models``: the one model served.
* ``GET /health``: ``{"status": "ok"}`` (no API key needed).

It listens on loopback unless another host is given, checks an optional API key
(``Authorization: Bearer``) and answers everything it refuses (malformed requests, wrong
methods, broken request lines) with an error in the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``, never with an HTML page.

Every resource a request can claim is bounded (:class:`ServeLimits`): body size, prompt
characters before tokenising and tokens after the chat template, image count and pixels (read
from the image headers, before anything is decoded), the wait for the model, the generation time,
and the number of open connections. One request is generated at a time; the others wait in
arrival order, and a request that waits too long gets 503 with ``Retry-After``. A client that
hangs up, streaming or not, stops its generation (or leaves the queue) at once.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hmac
import io
import json
import math
import re
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import __version__
from .errors import VLMError
from .constrained import SchemaError, check_schema

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
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
_POLL_S = 0.05  # how often a waiting request checks its client and the queue
_TURNED_AWAY_LINGER_S = 2.0  # how long a refused connection's request bytes are read and dropped
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
    """

    images: bool = True
    json_schema: bool = True
    images_per_message: int | None = None
    drop_images: bool = False


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


class ClientGone(Exception):
    """The client closed its connection while its request waited or was generated."""


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
        converted.append({"role": role, "content": content})
    return converted, images


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


class GenerationQueue:
    """One generation at a time; waiting requests are served in arrival order and give up after a limit."""

    def __init__(self):
        self._changed = threading.Condition()
        self._waiting = collections.deque()
        self._busy = False
        self._durations = collections.deque(maxlen=8)

    def state(self) -> dict:
        """``generating`` (a generation holds the model) and ``waiting`` (requests in line), for /health."""
        with self._changed:
            return {"generating": self._busy, "waiting": len(self._waiting)}

    def retry_after_s(self) -> int:
        """A guess of when to try again: the recent mean generation time for each request in line (at least 1 s)."""
        with self._changed:
            mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
            return max(1, math.ceil(mean * (len(self._waiting) + 1)))

    @contextlib.contextmanager
    def slot(self, timeout_s: float, check):
        """Hold the model for one generation.

        Parameters
        ----------
        timeout_s : float
            Longest wait; then RequestError 503 with ``Retry-After``.
        check : callable()
            Called while waiting; raises to leave the queue (the client went away, the server stops).
        """
        ticket = object()
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self._waiting.append(ticket)
            try:
                while self._busy or self._waiting[0] is not ticket:
                    check()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        ahead = self._waiting.index(ticket)
                        raise RequestError(503, f"the model is busy: waited {timeout_s:g} s with {ahead} request(s) "
                                           "ahead; try again later", code="server_busy")
                    self._changed.wait(min(remaining, _POLL_S))
                self._busy = True
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()
        started = time.monotonic()
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._durations.append(time.monotonic() - started)
                self._changed.notify_all()


class VLMServer(ThreadingHTTPServer):
    """The HTTP server; holds the model, the limits and the generation queue.

    Parameters
    ----------
    model : object
        Has ``name``, optionally ``context_length``, and ``generate(messages, max_new_tokens,
        temperature, top_p, seed, on_text, cancel, timeout_s, max_prompt_tokens)`` like
        :class:`~VoteMILib.vlm.inprocess.InProcessModel`.
    host, port : str, int
        Port 0 picks a free one (see ``server_address``).
    api_key : str
        Required as ``Authorization: Bearer <key>`` when set.
    limits : ServeLimits
        The resource limits (prompt caps resolved from the model when not given).
    features : ServeFeatures
        Whether images and JSON-schema output are accepted.
    log : file-like or None
        Where to write one line per request; None for silence.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str = "",
                 limits: ServeLimits | None = None, log=sys.stderr, features: ServeFeatures | None = None):
        self.model = model
        self.api_key = api_key or ""
        self.limits = (limits or ServeLimits()).for_model(model)
        self.features = features or ServeFeatures()
        self.log = log
        self.created = int(time.time())
        self.queue = GenerationQueue()
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._connections = threading.Condition()
        self._open = set()
        self._turned_away = []
        self.request_queue_size = max(64, self.limits.max_connections)  # the listen backlog
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer is routine (Cancel in Slicer); anything else is logged.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError) or self.log is None:
            return
        self.log.write(f"{client_address[0]} error: {type(error).__name__}: {error}\n")
        self.log.flush()

    # -- connection cap ----------------------------------------------------------------------------
    def process_request(self, request, client_address):
        """Serve the connection in a thread when one of ``max_connections`` slots is free, else answer 503."""
        if self.stopping.is_set() or not self._slots.acquire(blocking=False):
            self._turn_away(request, client_address)
            return
        with self._connections:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request):
        with self._connections:
            self._open.discard(request)
            self._connections.notify_all()
        self._slots.release()

    def _turn_away(self, request, client_address):
        # Answered from the accepting thread without blocking it: the reply fits an empty send buffer.
        # The socket then lingers a little, its incoming bytes dropped, so that closing it does not
        # reset the connection before the client has read the reply.
        reason = "the server is shutting down" if self.stopping.is_set() else (
            f"too many connections (the limit is {self.limits.max_connections}); try again later")
        if self.log is not None:
            self.log.write(f"{client_address[0]} connection answered 503: {reason}\n")
            self.log.flush()
        body = json.dumps(error_body(503, reason, code="server_busy")).encode("utf-8")
        head = (f"HTTP/1.1 503 Service Unavailable\r\nServer: {_Handler.server_version}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Retry-After: {self.queue.retry_after_s()}\r\nConnection: close\r\n\r\n")
        try:
            request.setblocking(False)
            request.sendall(head.encode("ascii") + body)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            self.shutdown_request(request)
            return
        if len(self._turned_away) >= 4 * self.limits.max_connections:
            self._close_turned_away(self._turned_away.pop(0)[1])
        self._turned_away.append((time.monotonic() + _TURNED_AWAY_LINGER_S, request))

    def service_actions(self):
        """Between accepts: drop what refused connections sent, close them once the client has or time is up."""
        now = time.monotonic()
        lingering = []
        for deadline, request in self._turned_away:
            if now >= deadline or _drained(request):
                self._close_turned_away(request)
            else:
                lingering.append((deadline, request))
        self._turned_away = lingering

    @staticmethod
    def _close_turned_away(request):
        with contextlib.suppress(OSError):
            request.close()

    # -- stopping -----------------------------------------------------------------------------------
    def shutdown(self):
        """Stop serving: running and queued generations end with 503, then the accept loop ends."""
        self.stopping.set()
        super().shutdown()

    def server_close(self, grace_s: float = 2.0) -> bool:
        """Close the listening socket, wake idle connections and wait up to ``grace_s`` for their threads.

        Returns False when some connection was still being served after ``grace_s``: a generation that
        cannot be interrupted (the model still reading a long prompt).
        """
        super().server_close()
        for _, request in self._turned_away:
            self._close_turned_away(request)
        self._turned_away = []
        deadline = time.monotonic() + grace_s
        with self._connections:
            for request in self._open:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RD)  # an idle keep-alive connection reads end-of-file and ends
            while self._open and time.monotonic() < deadline:
                self._connections.wait(deadline - time.monotonic())
            return not self._open


def _readable_now(sock) -> bool:
    """Whether ``sock`` has bytes or end-of-file to read, without waiting (poll: no descriptor-number limit)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _drained(request) -> bool:
    """Read what a refused client sent without blocking; True once it has closed its side."""
    try:
        while request.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"VoteMI/{__version__}"
    timeout = 60  # seconds to wait for a request's bytes, so stalled clients do not hold threads forever
    _ALLOW = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET"}
    _answered = False  # whether the status line of the current answer has gone out

    # -- plumbing ----------------------------------------------------------------------------------
    def log_message(self, format, *args):
        if self.server.log is not None:
            self.server.log.write(f"{self.address_string()} {format % args}\n")
            self.server.log.flush()

    def send_response(self, code, message=None):
        self._answered = True
        super().send_response(code, message)

    def _send_json(self, status: int, payload: dict, headers: dict | None = None):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, error: RequestError, headers: dict | None = None):
        if error.status == 503:
            error.headers.setdefault("Retry-After", str(self.server.queue.retry_after_s()))
        self._send_json(error.status, error_body(error.status, error.message, error.param, error.code),
                        {**error.headers, **(headers or {})})

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (bad request line, headers too long, unknown method) as JSON."""
        self.log_error("code %d, message %s", code, message)
        if self.request_version == "HTTP/0.9":
            # The request line was too broken to tell its version: answer with a status line and headers anyway.
            self.request_version = self.protocol_version
        text = message or self.responses.get(code, ("error",))[0]
        self._refuse_unread(RequestError(code, text))

    def _authorized(self) -> bool:
        if not self.server.api_key:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        return hmac.compare_digest(token.encode("utf-8"), self.server.api_key.encode("utf-8"))

    @staticmethod
    def _key_error() -> RequestError:
        return RequestError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def _refuse_unread(self, error: RequestError, headers: dict | None = None):
        """Answer ``error`` without reading the body, then drop what the client still sends and close.

        Closing with unread bytes would reset the connection, and the client could lose the answer.
        """
        self.close_connection = True
        self._send_error(error, headers)
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2.0)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _check_client(self):
        """Raise if the request should not go on: the server stops (503) or the client hung up."""
        if self.server.stopping.is_set():
            self.close_connection = True
            raise RequestError(503, "the server is shutting down", code="server_shutting_down")
        if self._client_gone():
            raise ClientGone()

    def _client_gone(self) -> bool:
        # A closed connection reads as end-of-file; bytes of a pipelined request mean the client is still there.
        try:
            return _readable_now(self.connection) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def _stop_requested(self) -> bool:
        """The ``cancel`` of a generation: polled after every token."""
        return self.server.stopping.is_set() or self._client_gone()

    def _read_json(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or self.headers.get("Content-Length") is None:
            raise RequestError(411, "a Content-Length header is required")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True  # where the body ends is unknown
            raise RequestError(400, "invalid Content-Length header")
        limit = self.server.limits.max_request_bytes
        if length > limit:
            raise RequestError(413, f"request body of {length / 2**20:.1f} MB exceeds the limit of "
                               f"{limit / 2**20:g} MB; send fewer or smaller images", code="request_too_large")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, "the request body ended early")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise RequestError(400, f"the request body is not valid JSON: {error}") from None
        except RecursionError:
            raise RequestError(400, "the request body nests JSON too deeply") from None

    # -- endpoints --------------------------------------------------------------------------------
    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self):
        path = self._path()
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": self.server.model.name, **self.server.queue.state()})
        elif path == "/v1/models":
            if not self._authorized():
                self._send_error(self._key_error())
                return
            self._send_json(200, {"object": "list", "data": [
                {"id": self.server.model.name, "object": "model", "created": self.server.created,
                 "owned_by": "votemi", "max_model_len": getattr(self.server.model, "context_length", None)
                 or self.server.limits.max_prompt_tokens}]})
        elif path == "/v1/chat/completions":
            self._send_error(RequestError(405, "use POST for /v1/chat/completions"), {"Allow": "POST"})
        else:
            self._send_error(RequestError(404, f"no endpoint {path or '/'}; use /v1/chat/completions, /v1/models "
                                          "or /health"))

    def _method_not_allowed(self):
        path = self._path()
        if path in self._ALLOW:
            error = RequestError(405, f"{self.command} is not allowed on {path}; use {self._ALLOW[path]}")
            self._refuse_unread(error, {"Allow": self._ALLOW[path]})
        else:
            self._refuse_unread(RequestError(404, f"no endpoint {path or '/'}; use POST /v1/chat/completions"))

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed

    def do_POST(self):
        self._answered = False
        if self._path() != "/v1/chat/completions":
            self._method_not_allowed()
            return
        if not self._authorized():
            self._refuse_unread(self._key_error())  # the unread body would otherwise be taken for the next request
            return
        try:
            if "json" not in self.headers.get("Content-Type", "application/json").lower():
                raise RequestError(415, "send the request as application/json")
            request = parse_chat_request(self._read_json(), self.server.limits, self.server.features)
        except RequestError as error:
            if error.status in (411, 413, 415):
                self._refuse_unread(error)
            else:
                self._send_error(error)
            return
        try:
            self._answer(request)
        except (ClientGone, OSError):  # hung up, or the answer could not be written
            self.close_connection = True
        except RequestError as error:
            self._send_error(error)
        except Exception as error:  # a bug must still get an answer, not a dropped connection
            self.close_connection = True
            if self.server.log is not None:
                self.server.log.write(traceback.format_exc())
            if not self._answered:
                self._send_error(RequestError(500, f"internal error: {type(error).__name__}: {error}"))

    def _answer(self, request):
        """Wait for the model, decode the images, generate; streamed or as one answer."""
        stream = request.pop("stream")
        with self.server.queue.slot(self.server.limits.queue_timeout_s, self._check_client):
            decode_images(request.pop("images"))
            if stream:
                self._stream(request)
            else:
                self._complete(request)

    def _generate(self, request, on_text=None):
        """The model's answer; RequestError for refusals, the server stopping, or the client gone (ClientGone)."""
        try:
            result = self.server.model.generate(
                request["messages"], max_new_tokens=request["max_new_tokens"], temperature=request["temperature"],
                top_p=request["top_p"], seed=request["seed"], on_text=on_text, cancel=self._stop_requested,
                timeout_s=self.server.limits.generation_timeout_s,
                max_prompt_tokens=self.server.limits.max_prompt_tokens, response_schema=request["response_schema"])
        except VLMError as error:
            raise RequestError(error.status or 500, str(error), "messages" if error.status == 400 else None,
                               getattr(error, "code", None)) from None
        if result.finish_reason == "cancelled":
            self._check_client()
        return result

    @staticmethod
    def _finish_reason(result) -> str:
        return "stop" if result.finish_reason == "stop" else "length"

    def _complete(self, request):
        result = self._generate(request)
        self._send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": self._finish_reason(result)}],
            "usage": result.usage})

    def _stream(self, request):
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        self.close_connection = True

        def write(raw: bytes):
            try:
                self.wfile.write(raw)
                self.wfile.flush()
            except OSError:
                raise ClientGone() from None

        def send(payload):
            if not self._answered:
                # Headers go out with the first token, so errors before it (e.g. the prompt being too
                # long) still get a proper status code.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                send(chunk({"role": "assistant", "content": ""}))
            data = payload if isinstance(payload, str) else json.dumps(payload)
            raw = f"data: {data}\n\n".encode("utf-8")
            write(b"%x\r\n%s\r\n" % (len(raw), raw))

        def chunk(delta, finish_reason=None, usage=None):
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": self.server.model.name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if usage is not None:
                payload["usage"] = usage
            return payload

        try:
            result = self._generate(request, on_text=lambda text: send(chunk({"content": text})))
            send(chunk({}, self._finish_reason(result), result.usage))
            send("[DONE]")
        except RequestError as error:
            if not self._answered:
                raise
            send(error_body(error.status, error.message, error.param, error.code))  # an error event mid-stream
        write(b"0\r\n\r\n")


def create_server(model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str = "", log=sys.stderr,
                  features: ServeFeatures | None = None, **limits) -> VLMServer:
    """A :class:`VLMServer` bound and ready; call ``serve_forever()`` (e.g. in a thread) and ``shutdown()``.

    ``limits`` are :class:`ServeLimits` fields (``max_request_mb=1.0``, ``queue_timeout_s=5``, ...).
    """
    return VLMServer(model, host=host, port=port, api_key=api_key, limits=ServeLimits(**limits), log=log,
                     features=features)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
