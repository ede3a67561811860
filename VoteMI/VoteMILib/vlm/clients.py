"""Clients for locally hosted vision-language model servers, standard library only.

Two wire protocols are spoken:

* ``"openai"``: ``POST {server}/v1/chat/completions`` and ``GET {server}/v1/models``, spoken by
  Ollama, vLLM, llama.cpp's llama-server, LM Studio, SGLang, TGI and ``votemi serve``; streams
  Server-Sent Events.
* ``"ollama"``: Ollama's native ``POST {server}/api/chat`` and ``GET {server}/api/tags``; streams
  one JSON object per line.

Each request runs on its own connection, watched by a helper thread that closes the socket when
the caller cancels, when no data arrived for ``idle_s`` seconds, or when ``total_s`` has passed.
Connection failures, timeouts and HTTP 429/502/503/504 are retried with exponential backoff as
long as no text has reached the caller. An answer that breaks off after some text keeps that text
and is flagged incomplete.

A user name and password in the server URL (``http://user:pass@host``) are sent as HTTP Basic
authentication and appear nowhere else: every URL shown or stored is :func:`redact_url`'s. Redirects
are reported, never followed, so the images go only to the configured server.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit

from .. import __version__
from ..names import DEFAULT_SERVER_URL
from .errors import VLMCancelled, VLMError

PROTOCOLS = ("openai", "ollama")
DEFAULT_SERVER = DEFAULT_SERVER_URL
#: HTTP statuses worth retrying: rate limited, bad gateway, unavailable (e.g. model loading), gateway timeout.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024
#: Largest answer read, streamed or not (a report is a few kB; this bounds a runaway server).
MAX_ANSWER_BYTES = 32 * 1024 * 1024
_MAX_LINE = 4 * 1024 * 1024
_POLL_S = 0.05
_MAX_BACKOFF_S = 30.0


@dataclass
class Timeouts:
    """Time limits of one chat request, in seconds.

    Attributes
    ----------
    connect_s : float
        To open the connection.
    idle_s : float
        Longest silence while streaming (the first token may take this long too).
    total_s : float
        The whole request, retries included.
    """

    connect_s: float = 10.0
    idle_s: float = 120.0
    total_s: float = 300.0


@dataclass
class GenerationOptions:
    """Sampling settings sent with a chat request."""

    max_tokens: int = 1024
    temperature: float = 0.0
    seed: int | None = None
    #: Ollama's context size (images take hundreds of tokens each); other servers ignore it.
    num_ctx: int | None = None
    stream: bool = True
    #: A JSON schema the answer must follow (structured output), or None for free text.
    response_schema: dict | None = None


@dataclass
class ChatResult:
    """What a chat request produced.

    ``complete`` is False when the answer broke off (``incomplete_reason`` says why); ``text``
    then holds what arrived.
    """

    text: str
    complete: bool = True
    finish_reason: str | None = None
    incomplete_reason: str = ""
    usage: dict = field(default_factory=dict)
    model: str = ""
    attempts: int = 1


@dataclass(frozen=True)
class ServerAddress:
    """A parsed server URL.

    ``query`` (already encoded) goes with every request, its values masked in :attr:`url`;
    ``username`` and ``password`` go only into the Authorization header. None of them is in ``repr``.
    """

    scheme: str
    host: str
    port: int
    base_path: str
    query: str = field(default="", repr=False)
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """The URL to show or store: no credentials, query values masked."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}" + (f"?{_mask_query(self.query)}"
                                                                        if self.query else "")

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    def basic_authorization(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode("utf-8")).decode("ascii")
        return f"Basic {token}"


def check_authorization(address: ServerAddress, api_key: str) -> None:
    """Refuse credentials in the URL together with an API key: both would be the Authorization header."""
    if address.has_credentials and (api_key or "").strip():
        raise VLMError(f"the server URL {address.url} carries a user name and password and an API key is set too; "
                       "both go in the Authorization header, so give only one")


def _mask_query(query: str) -> str:
    return re.sub(r"=[^&#]*", "=***", query)


def redact_url(url) -> str:
    """``url`` as it may be shown or stored: user name and password removed, query values masked.

    Works on any text, also on URLs too malformed to parse (everything up to the last ``@`` after
    the scheme is dropped).
    """
    text = " ".join(str(url or "").split())
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    if "@" in rest:
        rest = rest.rpartition("@")[2]
    rest, question, query = rest.partition("?")
    rest = rest + (question + _mask_query(query.partition("#")[0]) if question else "")
    return f"{scheme}://{rest}" if separator else rest


def url_has_credentials(url) -> bool:
    """True if ``url`` names a user (``http://user:password@host``), which must never be stored or shown."""
    text = str(url or "").strip()
    authority = text.partition("://")[2] if "://" in text else text
    return "@" in re.split(r"[/?#]", authority, maxsplit=1)[0]


def parse_server_url(url: str, protocol: str = "openai") -> ServerAddress:
    """Parse ``host:port``, ``http://host:port``, ``https://host/prefix`` (a trailing ``/v1`` or ``/api`` is dropped).

    Raises
    ------
    VLMError
        For an empty or malformed URL or a scheme other than http/https.
    """
    text = (url or "").strip()
    if not text:
        raise VLMError("no server URL given")
    if "://" not in text:
        text = "http://" + text
    shown = redact_url(text)
    # Never quote urlsplit's own messages: they can hold pieces of a password.
    encode = " (percent-encode / ? # @ : in a user name or password)" if "@" in text else ""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise VLMError(f"invalid server URL '{shown}': the port must be a number from 0 to 65535{encode}") from None
    if parts.scheme not in ("http", "https"):
        raise VLMError(f"invalid server URL '{shown}': use http:// or https://")
    if not parts.hostname:
        raise VLMError(f"invalid server URL '{shown}': no host name{encode}")
    if "@" in parts.path + parts.query + parts.fragment:
        raise VLMError(f"invalid server URL '{shown}': '@' after the host name{encode}")
    path = quote(parts.path.rstrip("/"), safe="/%!$&'()*+,;=:-._~")
    suffix = {"openai": "/v1", "ollama": "/api"}.get(protocol, "")
    if suffix and path.endswith(suffix):
        path = path[: -len(suffix)]
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    return ServerAddress(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path,
                         query, unquote(parts.username or ""), unquote(parts.password or ""))


def error_message_from_body(body: bytes, content_type: str = "") -> str:
    """One line from any error body local servers send.

    Handles ``{"error": "..."}``, ``{"error": {"message", "type", "code"}}``,
    ``{"object": "error", "message": ...}``, ``{"message": ...}``, ``{"detail": ...}`` (FastAPI),
    HTML pages and plain text.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = _message_from_json(data)
        if message:
            return _one_line(message)
    if data is not None:
        return _one_line(json.dumps(data))
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
        text = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    return _one_line(text)


def _message_from_json(data: dict) -> str:
    error = data.get("error")
    if isinstance(error, str) and error.strip():
        return error
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg") or error.get("detail")
        if message:
            return str(message)
        return json.dumps(error)
    if data.get("message"):
        return str(data["message"])
    detail = data.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail:  # FastAPI validation errors
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return ""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Watchdog:
    """Closes a request's socket on cancel, on silence longer than ``idle_s`` or after ``deadline``.

    A blocked ``recv`` cannot poll a flag, but shutting its socket down from another thread
    wakes it at once; ``reason`` then tells the reader why the stream ended.
    """

    def __init__(self, cancel, deadline: float, idle_s: float | None):
        self.reason = None
        self._cancel = cancel
        self._deadline = deadline
        self._idle_s = idle_s
        self._last = time.monotonic()
        self._sock = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="votemi-vlm-watchdog", daemon=True)
        self._thread.start()

    def attach(self, sock):
        with self._lock:
            self._sock = sock
        if self.reason:
            self._shutdown()

    def touch(self):
        self._last = time.monotonic()

    def check(self):
        """Trip now if a limit is reached (also called from the reading thread)."""
        now = time.monotonic()
        if self._cancel is not None and self._cancel():
            self._trip("cancelled")
        elif now >= self._deadline:
            self._trip("total")
        elif self._idle_s is not None and now - self._last >= self._idle_s:
            self._trip("idle")
        return self.reason

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.wait(_POLL_S):
            if self.check():
                return

    def _trip(self, reason):
        if self.reason is None:
            self.reason = reason
            self._shutdown()

    def _shutdown(self):
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _StreamBroken(Exception):
    """The answer started but ended abnormally; ``message`` says why, ``retryable`` if worth retrying."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class _Exchange:
    """One HTTP request and its response on a fresh connection."""

    def __init__(self, client: "_HTTPClient", method: str, path: str, payload, deadline: float, cancel,
                 idle_s: float | None):
        self.client = client
        self.address = client.address
        self.method = method
        self.path = self.address.base_path + path
        self.target = self.path + (f"?{self.address.query}" if self.address.query else "")
        self.payload = payload
        self.deadline = deadline
        self.watchdog = _Watchdog(cancel, deadline, idle_s)
        self.idle_s = idle_s
        self.connection = None
        self.response = None
        self.received_bytes = 0
        self._pending = []  # raw lines read ahead by first_line(), handed out again first

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.watchdog.stop()
        if self.connection is not None:
            self.connection.close()

    def _where(self) -> str:
        return self.address.url

    def _interrupted(self):
        """Exception for a socket closed by the watchdog, or None."""
        reason = self.watchdog.reason
        if reason == "cancelled":
            return VLMCancelled()
        if reason == "total":
            return VLMError(f"{self._where()}: no complete answer within the time limit "
                            f"({self.client.timeouts.total_s:g} s)")
        if reason == "idle":
            return VLMError(f"{self._where()}: the server sent nothing for {self.idle_s:g} s", retryable=True)
        return None

    def open(self):
        """Connect, send the request and read the status line and headers.

        Returns the response for 2xx answers; raises VLMError (with ``status``) otherwise.
        """
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise VLMError(f"{self._where()}: time limit reached before the request was sent")
        address = self.address
        timeout = min(self.client.timeouts.connect_s, remaining)
        if address.scheme == "https":
            connection = http.client.HTTPSConnection(address.host, address.port, timeout=timeout,
                                                     context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
        self.connection = connection
        try:
            connection.connect()
        except socket.gaierror:
            raise VLMError(f"{self._where()}: cannot resolve host name '{address.host}'") from None
        except ssl.SSLError as error:
            raise VLMError(f"{self._where()}: TLS error: {_one_line(error.reason or error)}") from None
        except (socket.timeout, TimeoutError):
            raise VLMError(f"{self._where()}: no connection within {timeout:g} s; is the server running "
                           "and reachable?", retryable=True) from None
        except ConnectionRefusedError:
            raise VLMError(f"{self._where()}: connection refused; is the server running on this "
                           "address and port?", retryable=True) from None
        except OSError as error:
            raise VLMError(f"{self._where()}: cannot connect: {_one_line(error.strerror or error)}",
                           retryable=True) from None
        # A blocking read wakes up by itself after this long; the watchdog usually acts first.
        backstop = self.idle_s if self.idle_s is not None else max(remaining, 0.1)
        connection.sock.settimeout(backstop + 1.0)
        self.watchdog.attach(connection.sock)
        body = None if self.payload is None else json.dumps(self.payload).encode("utf-8")
        headers = {"User-Agent": f"VoteMI/{__version__}", "Accept": "application/json, text/event-stream"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.client.api_key:
            headers["Authorization"] = f"Bearer {self.client.api_key}"
        elif self.address.has_credentials:
            headers["Authorization"] = self.address.basic_authorization()
        try:
            try:
                connection.request(self.method, self.target or "/", body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may have answered early (e.g. 413) and closed; read that answer
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            interrupted = self._interrupted()
            if interrupted is not None:
                raise interrupted from None
            if isinstance(error, (socket.timeout, TimeoutError)):
                raise VLMError(f"{self._where()}: no answer within {backstop:g} s", retryable=True) from None
            raise VLMError(f"{self._where()}: the server closed the connection without answering "
                           f"({_one_line(error) or type(error).__name__})", retryable=True) from None
        self.response = response
        self.watchdog.touch()
        if response.status >= 400:
            raise self._http_error(response)
        if response.status >= 300:
            raise self._redirect_error(response)
        return response

    def _redirect_error(self, response) -> VLMError:
        """A 3xx answer, reported rather than followed: the images must not go to another server."""
        status = f"HTTP {response.status} {response.reason or ''}".rstrip()
        location = (response.getheader("Location") or "").strip()
        if not location:
            return VLMError(f"{self._where()}: {status} without a Location; check the server URL",
                            status=response.status)
        address = self.address
        here = f"{address.scheme}://{address.host}:{address.port}{self.path}"
        target = urlsplit(urljoin(here, location))
        try:
            same = (target.scheme, target.hostname, target.port or (443 if target.scheme == "https" else 80)) == \
                (address.scheme, address.host, address.port)
        except ValueError:
            same = False
        suggestion = redact_url(target._replace(query="", fragment="").geturl())
        api_path = self.path[len(address.base_path):]  # the server URL to suggest is the base, without it
        if api_path and suggestion.endswith(api_path):
            suggestion = suggestion[: -len(api_path)]
        hint = (f"set the server URL to {suggestion}" if same else
                f"VoteMI does not follow redirects to another server, so the images go only to {self._where()}; "
                f"if you trust that server, set the server URL to {suggestion}")
        return VLMError(f"{self._where()}: {status}, redirected to {redact_url(target.geturl())} ({hint})",
                        status=response.status)

    def _http_error(self, response) -> VLMError:
        try:
            body = response.read(_MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        detail = error_message_from_body(body, response.getheader("Content-Type", ""))
        status = response.status
        message = f"{self._where()}: HTTP {status} {response.reason or ''}".rstrip()
        if detail:
            message += f": {detail}"
        hint = self.client.hint(status, detail, self.path)
        if hint:
            message += f" ({hint})"
        retry_after = None
        header = response.getheader("Retry-After")
        if header and header.strip().isdigit():
            retry_after = float(header.strip())
        return VLMError(message, status=status, retryable=status in RETRY_STATUSES, retry_after_s=retry_after)

    def _too_large(self) -> str:
        return f"{self._where()}: the answer is larger than {_size(self.client.max_answer_bytes)}"

    def _read_line(self) -> bytes:
        if self._pending:
            return self._pending.pop(0)
        if self.watchdog.check():
            raise self._broken()
        try:
            raw = self.response.readline(_MAX_LINE)
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise self._broken(error) from None
        if not raw and self.watchdog.reason:
            raise self._broken()
        self.received_bytes += len(raw)
        if self.received_bytes > self.client.max_answer_bytes:
            # Not retryable: the same server would send as much again. Text before this line is kept.
            raise _StreamBroken(self._too_large() + "; the text up to there is kept")
        if raw:
            self.watchdog.touch()
        return raw

    def first_line(self) -> str:
        """The first non-blank line of the body (without consuming it), to recognise its format."""
        while True:
            raw = self._read_line()
            self._pending.append(raw)
            if not raw or raw.strip():
                return raw.decode("utf-8", "replace").strip()

    def lines(self):
        """Yield decoded lines of the response body as they arrive."""
        while True:
            raw = self._read_line()
            if not raw:
                return
            yield raw.decode("utf-8", "replace").rstrip("\r\n")

    def read_body(self) -> bytes:
        limit = self.client.max_answer_bytes
        ahead = b"".join(self._pending)
        self._pending = []
        try:
            body = ahead + self.response.read(max(0, limit - len(ahead)) + 1)
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise self._broken(error) from None
        if self.watchdog.reason:
            raise self._broken()
        if len(body) > limit:
            raise VLMError(self._too_large())
        return body

    def _broken(self, error=None):
        interrupted = self._interrupted()
        if isinstance(interrupted, VLMCancelled):
            return interrupted
        if interrupted is not None:
            return _StreamBroken(str(interrupted), retryable=interrupted.retryable)
        if isinstance(error, (socket.timeout, TimeoutError)):
            return _StreamBroken(f"{self._where()}: the server sent nothing for {self.idle_s:g} s", True)
        detail = _one_line(error) if error is not None and str(error) else type(error).__name__
        return _StreamBroken(f"{self._where()}: the connection broke off ({detail})", True)


def _size(count: int) -> str:
    return f"{count / 2 ** 20:g} MB" if count >= 2 ** 20 else f"{count / 2 ** 10:g} kB"


def token_limit_message(max_tokens: int | None) -> str:
    """Why an answer that stopped at the token limit is incomplete."""
    limit = f" ({max_tokens} tokens)" if max_tokens else ""
    return f"stopped at the token limit{limit}; raise the maximum for a longer report"


def _sleep(seconds: float, cancel):
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if cancel is not None and cancel():
            raise VLMCancelled()
        if left <= 0:
            return
        time.sleep(min(left, _POLL_S))


class _HTTPClient:
    """Shared request, retry and streaming machinery of the protocol clients."""

    protocol = ""
    models_path = ""
    chat_path = ""

    def __init__(self, server_url: str = DEFAULT_SERVER, api_key: str = "", timeouts: Timeouts | None = None,
                 retries: int = 2, backoff_s: float = 1.0, max_answer_bytes: int = MAX_ANSWER_BYTES):
        self.address = parse_server_url(server_url, self.protocol)
        self.api_key = (api_key or "").strip()
        check_authorization(self.address, self.api_key)
        self.max_answer_bytes = max(1, int(max_answer_bytes))
        self.timeouts = timeouts or Timeouts()
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))

    @property
    def server_url(self) -> str:
        return self.address.url

    # -- protocol specifics ------------------------------------------------------------------
    def _chat_payload(self, prompt, model: str, options: GenerationOptions) -> dict:
        raise NotImplementedError

    def _parse_event(self, data: dict, state: dict):
        """Update ``state`` from one streamed object; return the new text piece ("" if none)."""
        raise NotImplementedError

    def _parse_full(self, data: dict, state: dict) -> str:
        """Fill ``state`` from a non-streamed answer; return its text."""
        raise NotImplementedError

    def _models_from(self, data) -> list:
        raise NotImplementedError

    def hint(self, status: int, detail: str, path: str) -> str:
        """Advice appended to an HTTP error message."""
        if status in (401, 403):
            return "check the API key"
        if status == 404:
            if "model" in detail.lower():
                return "check the model name"
            return f"nothing at {path}; check the server URL and that it speaks the {self.protocol} protocol"
        if status == 413:
            return "request too large; send fewer slices or a smaller image size"
        if status == 503:
            return "server busy or still loading the model"
        return ""

    # -- public API ----------------------------------------------------------------------------
    def list_models(self, cancel=None) -> list:
        """Names of the models the server offers (also a health check); no retries, so failures show at once.

        ``cancel`` is polled as in :meth:`chat`.

        Raises
        ------
        VLMCancelled
            When ``cancel`` returned True.
        VLMError
            If the server is unreachable, refuses (e.g. 401) or does not answer like the expected API.
        """
        models = self._models_from(self.request_json("GET", self.models_path, cancel=cancel))
        if models is None:
            raise VLMError(f"{self.server_url}: {self.models_path} did not answer like the {self.protocol} API; "
                           "check the URL and protocol")
        return models

    def request_json(self, method: str, path: str, payload=None, cancel=None):
        """One JSON request without retries (model lists, model details, server properties); its parsed answer.

        Raises
        ------
        VLMError
            As :meth:`list_models`; ``status`` is set for HTTP errors.
        """
        deadline = time.monotonic() + min(self.timeouts.total_s, self.timeouts.connect_s + 30.0)
        with _Exchange(self, method, path, payload, deadline, cancel, None) as exchange:
            response = exchange.open()
            try:
                body = exchange.read_body()
            except _StreamBroken as error:
                raise VLMError(error.message) from None
            return self._json_answer(body, response.getheader("Content-Type", ""))

    def chat(self, prompt, model: str, options: GenerationOptions | None = None, on_text=None,
             cancel=None) -> ChatResult:
        """Send a prompt with images and return the answer, streaming pieces to ``on_text``.

        Parameters
        ----------
        prompt : Prompt
        model : str
        options : GenerationOptions
        on_text : callable(str), optional
            Receives each piece of text as it arrives (streaming) or the whole text at the end.
        cancel : callable() -> bool, optional
            Polled about 20 times a second, from a helper thread too, so it must be thread-safe
            (e.g. ``threading.Event().is_set``).

        Raises
        ------
        VLMCancelled
            When ``cancel`` returned True; ``partial_text`` holds what had arrived.
        VLMError
            When no text could be obtained. A failure after some text returns an incomplete result instead.
        """
        options = options or GenerationOptions()
        payload = self._chat_payload(prompt, model, options)
        deadline = time.monotonic() + self.timeouts.total_s
        received = []
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._chat_once(payload, options, deadline, on_text, cancel, received)
                result.attempts = attempt
                return result
            except VLMCancelled as cancelled:
                cancelled.partial_text = "".join(received)
                raise
            except VLMError as error:
                if not error.retryable or attempt > self.retries or received:
                    if attempt > 1:
                        raise VLMError(f"{error} (after {attempt} attempts)", status=error.status) from None
                    raise
                delay = error.retry_after_s if error.retry_after_s is not None else self.backoff_s * 2 ** (attempt - 1)
                delay = min(delay, _MAX_BACKOFF_S)
                if time.monotonic() + delay >= deadline:
                    raise
                _sleep(delay, cancel)

    def _chat_once(self, payload, options, deadline, on_text, cancel, received) -> ChatResult:
        state = {"finish_reason": None, "usage": {}, "model": payload.get("model", ""), "done": False}
        idle_s = self.timeouts.idle_s if options.stream else None
        with _Exchange(self, "POST", self.chat_path, payload, deadline, cancel, idle_s) as exchange:
            response = exchange.open()
            content_type = (response.getheader("Content-Type") or "").lower()
            try:
                kind = _declared_format(content_type, options.stream, self.protocol) or _sniffed_format(exchange)
                if kind == "sse":
                    self._read_sse(exchange, state, on_text, received)
                elif kind == "ndjson":
                    self._read_ndjson(exchange, state, on_text, received)
                else:
                    self._read_full(exchange, content_type, state, on_text, received)
            except _StreamBroken as broken:
                if not received:
                    raise VLMError(broken.message, retryable=broken.retryable) from None
                return self._result(received, state, incomplete=broken.message)
        if not received and not state["done"]:
            raise VLMError(f"{self.server_url}: the connection closed before the answer began", retryable=True)
        return self._result(received, state, options=options)

    def _result(self, received, state, incomplete: str = "", options=None) -> ChatResult:
        finish = state["finish_reason"]
        if not incomplete and not state["done"]:
            incomplete = f"{self.server_url}: the connection closed before the end of the answer"
        if not incomplete and finish == "length":
            incomplete = token_limit_message(options.max_tokens if options else None)
        return ChatResult(text="".join(received), complete=not incomplete, finish_reason=finish,
                          incomplete_reason=incomplete, usage=state["usage"], model=state["model"])

    def _emit(self, piece, on_text, received):
        if piece:
            received.append(piece)
            if on_text is not None:
                on_text(piece)

    def _read_sse(self, exchange, state, on_text, received):
        data_lines = []
        for line in exchange.lines():
            if line.startswith("data:"):
                data_lines.append(line[5:].lstrip(" "))
                # Servers send one data line per event; handle it at once instead of waiting for the blank line.
                joined = "\n".join(data_lines)
                if joined == "[DONE]":
                    state["done"] = True
                    return
                try:
                    data = json.loads(joined)
                except ValueError:
                    continue  # a multi-line event: wait for the rest
                data_lines = []
                self._emit(self._stream_object(data, state), on_text, received)
            elif not line.strip():
                if data_lines:
                    raise _StreamBroken(f"{self.server_url}: malformed stream data: {_one_line(data_lines[0], 80)}")
            # "event:", "id:", "retry:" and ":" comment lines carry nothing we need
        if data_lines:
            raise _StreamBroken(f"{self.server_url}: malformed stream data: {_one_line(data_lines[0], 80)}")

    def _read_ndjson(self, exchange, state, on_text, received):
        for line in exchange.lines():
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                raise _StreamBroken(f"{self.server_url}: malformed stream line: {_one_line(line, 80)}") from None
            self._emit(self._stream_object(data, state), on_text, received)
            if state["done"]:
                return

    def _stream_object(self, data, state) -> str:
        if not isinstance(data, dict):
            raise _StreamBroken(f"{self.server_url}: unexpected stream data: {_one_line(json.dumps(data), 80)}")
        if "error" in data or data.get("object") == "error":
            raise _StreamBroken(f"{self.server_url}: server error during the answer: "
                                f"{_message_from_json(data) or 'unknown error'}")
        if data.get("model"):
            state["model"] = data["model"]
        return self._parse_event(data, state) or ""

    def _read_full(self, exchange, content_type, state, on_text, received):
        body = exchange.read_body()
        data = self._json_answer(body, content_type)
        if not isinstance(data, dict):
            raise VLMError(f"{self.server_url}: unexpected answer: {_one_line(body.decode('utf-8', 'replace'), 80)}")
        if "error" in data or data.get("object") == "error":
            raise VLMError(f"{self.server_url}: {_message_from_json(data) or 'unknown error'}")
        if data.get("model"):
            state["model"] = data["model"]
        self._emit(self._parse_full(data, state), on_text, received)

    def _json_answer(self, body: bytes, content_type: str):
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            kind = "an HTML page" if "html" in content_type.lower() or body.lstrip()[:1] == b"<" else "non-JSON data"
            raise VLMError(f"{self.server_url}: answered with {kind}, not the {self.protocol} API; "
                           "check the server URL and protocol") from None


def _declared_format(content_type: str, stream: bool, protocol: str):
    """"sse", "ndjson" or "full" as the Content-Type says, or None when it says nothing usable."""
    if "text/event-stream" in content_type:  # also when streaming was not asked for: read what came
        return "sse"
    if "ndjson" in content_type or (stream and protocol == "ollama" and "json" in content_type):
        return "ndjson"
    if "json" in content_type or "html" in content_type:
        return "full"
    return None


#: How the lines of a Server-Sent Events stream begin.
_SSE_FIELDS = ("data:", "event:", "id:", "retry:", ":")


def _sniffed_format(exchange) -> str:
    """Recognise an answer without a (usable) Content-Type by its first line: SSE field lines,
    one JSON object per line (a stream, unless it is a whole chat completion), or anything else
    (read whole, so a JSON document over several lines or an HTML page is reported as such)."""
    first = exchange.first_line()
    if first.startswith(_SSE_FIELDS):
        return "sse"
    try:
        data = json.loads(first)
    except ValueError:
        return "full"
    if not isinstance(data, dict):
        return "full"
    choices = data.get("choices")
    whole = isinstance(choices, list) and choices and isinstance(choices[0], dict) and "message" in choices[0]
    return "full" if whole else "ndjson"


def _png_base64(image) -> str:
    return base64.b64encode(image.png).decode("ascii")


class OpenAIClient(_HTTPClient):
    """OpenAI-compatible chat completions (Ollama, vLLM, llama.cpp, LM Studio, SGLang, TGI, ``votemi serve``).

    Each image is a ``data:image/png;base64`` URL, immediately followed by its label text.
    """

    protocol = "openai"
    models_path = "/v1/models"
    chat_path = "/v1/chat/completions"

    @staticmethod
    def _user_content(intro, attachments, instruction=""):
        content = [{"type": "text", "text": intro}]
        for image in attachments:
            content.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_base64(image)}})
            content.append({"type": "text", "text": image.label})
        if instruction:
            content.append({"type": "text", "text": instruction})
        return content

    def _chat_payload(self, prompt, model, options):
        messages = []
        for turn in prompt.turns:  # worked examples: their images, then their report as the model's answer
            messages.append({"role": "user", "content": self._user_content(turn.intro, turn.attachments)})
            messages.append({"role": "assistant", "content": turn.answer})
        messages.append({"role": "user", "content": self._user_content(prompt.intro, prompt.attachments,
                                                                       prompt.instruction)})
        payload = {"model": model, "messages": messages, "stream": options.stream,
                   "max_tokens": int(options.max_tokens), "temperature": float(options.temperature)}
        if options.seed is not None:
            payload["seed"] = int(options.seed)
        if options.response_schema is not None:
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "votemi_findings", "schema": options.response_schema, "strict": True}}
        return payload

    def _parse_event(self, data, state):
        if data.get("usage"):
            state["usage"] = _usage(data["usage"])
        choices = data.get("choices") or []
        if not choices:
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]
            state["done"] = True
        return _content_text((choice.get("delta") or {}).get("content"))

    def _parse_full(self, data, state):
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise VLMError(f"{self.server_url}: the answer has no choices; is this an OpenAI-compatible server?")
        state["finish_reason"] = choices[0].get("finish_reason")
        state["usage"] = _usage(data.get("usage") or {})
        state["done"] = True
        return _content_text((choices[0].get("message") or {}).get("content"))

    def _models_from(self, data):
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return None
        return [str(item["id"]) for item in data["data"] if isinstance(item, dict) and item.get("id")]


class OllamaClient(_HTTPClient):
    """Ollama's native API (``/api/chat``, ``/api/tags``).

    It attaches a message's images without placing them in the text, so the labels go in as an
    ordered list ("Image 1: A1: axial, ...") matching the order of the images.
    """

    protocol = "ollama"
    models_path = "/api/tags"
    chat_path = "/api/chat"

    def hint(self, status, detail, path):
        if status == 404 and "model" in detail.lower():
            return "pull it with 'ollama pull <model>' or check the name"
        return super().hint(status, detail, path)

    def _chat_payload(self, prompt, model, options):
        messages = []
        for turn in prompt.turns:
            messages.append({"role": "user", "content": turn.flat_text(),
                             "images": [_png_base64(i) for i in turn.attachments]})
            messages.append({"role": "assistant", "content": turn.answer})
        messages.append({"role": "user", "content": prompt.flat_text(),
                         "images": [_png_base64(i) for i in prompt.attachments]})
        model_options = {"temperature": float(options.temperature), "num_predict": int(options.max_tokens)}
        if options.seed is not None:
            model_options["seed"] = int(options.seed)
        if options.num_ctx:
            model_options["num_ctx"] = int(options.num_ctx)
        payload = {"model": model, "messages": messages, "stream": options.stream, "options": model_options}
        if options.response_schema is not None:
            payload["format"] = options.response_schema
        return payload

    def _parse_event(self, data, state):
        if data.get("done"):
            state["done"] = True
            state["finish_reason"] = data.get("done_reason") or "stop"
            state["usage"] = _ollama_usage(data)
        return _content_text((data.get("message") or {}).get("content"))

    def _parse_full(self, data, state):
        if not isinstance(data.get("message"), dict):
            raise VLMError(f"{self.server_url}: the answer has no message; is this an Ollama server?")
        self._parse_event(data, state)
        state["done"] = True
        return _content_text(data["message"].get("content"))

    def _models_from(self, data):
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            return None
        return [str(item.get("name") or item.get("model")) for item in data["models"]
                if isinstance(item, dict) and (item.get("name") or item.get("model"))]


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers return content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _usage(usage) -> dict:
    if not isinstance(usage, dict):
        return {}
    return {key: int(usage[key]) for key in ("prompt_tokens", "completion_tokens", "total_tokens")
            if isinstance(usage.get(key), (int, float))}


def _ollama_usage(data) -> dict:
    usage = {}
    if isinstance(data.get("prompt_eval_count"), int):
        usage["prompt_tokens"] = data["prompt_eval_count"]
    if isinstance(data.get("eval_count"), int):
        usage["completion_tokens"] = data["eval_count"]
    if usage:
        usage["total_tokens"] = sum(usage.values())
    return usage


def make_http_client(protocol: str, server_url: str, api_key: str = "", timeouts: Timeouts | None = None,
                     retries: int = 2, backoff_s: float = 1.0) -> _HTTPClient:
    """The client for ``protocol`` ("openai" or "ollama")."""
    classes = {"openai": OpenAIClient, "ollama": OllamaClient}
    if protocol not in classes:
        raise VLMError(f"unknown protocol '{protocol}'; choose openai, ollama or inprocess")
    return classes[protocol](server_url, api_key=api_key, timeouts=timeouts, retries=retries, backoff_s=backoff_s)
