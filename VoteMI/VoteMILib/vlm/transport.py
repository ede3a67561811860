"""One HTTP request on its own connection, watched so that it can be cancelled and timed out.

Each request runs on a fresh connection, watched by a helper thread that closes the socket when
the caller cancels, when no data arrived for ``idle_s`` seconds, or when ``total_s`` has passed.
Redirects are reported, never followed, so the images go only to the configured server. How the
body of an answer is laid out (Server-Sent Events, one JSON object per line, or one document) is
found from its Content-Type or, failing that, its first line.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

from .. import __version__
from .error_bodies import error_message_from_body, one_line
from .errors import VLMCancelled, VLMError
from .urls import redact_url

#: HTTP statuses worth retrying: rate limited, bad gateway, unavailable (e.g. model loading), gateway timeout.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024
#: Largest answer read, streamed or not (a report is a few kB; this bounds a runaway server).
MAX_ANSWER_BYTES = 32 * 1024 * 1024
_MAX_LINE = 4 * 1024 * 1024
#: How often a watched request (and a wait between retries) checks for cancellation and its limits, in seconds.
POLL_S = 0.05


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
        while not self._stop.wait(POLL_S):
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


class StreamBroken(Exception):
    """The answer started but ended abnormally; ``message`` says why, ``retryable`` if worth retrying."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Exchange:
    """One HTTP request and its response on a fresh connection."""

    def __init__(self, client, method: str, path: str, payload, deadline: float, cancel,
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
            raise VLMError(f"{self._where()}: TLS error: {one_line(error.reason or error)}") from None
        except (socket.timeout, TimeoutError):
            raise VLMError(f"{self._where()}: no connection within {timeout:g} s; is the server running "
                           "and reachable?", retryable=True) from None
        except ConnectionRefusedError:
            raise VLMError(f"{self._where()}: connection refused; is the server running on this "
                           "address and port?", retryable=True) from None
        except OSError as error:
            raise VLMError(f"{self._where()}: cannot connect: {one_line(error.strerror or error)}",
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
                           f"({one_line(error) or type(error).__name__})", retryable=True) from None
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
            raise StreamBroken(self._too_large() + "; the text up to there is kept")
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
            return StreamBroken(str(interrupted), retryable=interrupted.retryable)
        if isinstance(error, (socket.timeout, TimeoutError)):
            return StreamBroken(f"{self._where()}: the server sent nothing for {self.idle_s:g} s", True)
        detail = one_line(error) if error is not None and str(error) else type(error).__name__
        return StreamBroken(f"{self._where()}: the connection broke off ({detail})", True)


def _size(count: int) -> str:
    return f"{count / 2 ** 20:g} MB" if count >= 2 ** 20 else f"{count / 2 ** 10:g} kB"


def declared_format(content_type: str, stream: bool, stream_format: str):
    """"sse", "ndjson" or "full" as the Content-Type says, or None when it says nothing usable. A streamed answer
    declared as plain JSON is read in the dialect's ``stream_format`` (Ollama's streams say ``application/json``)."""
    if "text/event-stream" in content_type:  # also when streaming was not asked for: read what came
        return "sse"
    if "ndjson" in content_type or (stream and stream_format == "ndjson" and "json" in content_type):
        return "ndjson"
    if "json" in content_type or "html" in content_type:
        return "full"
    return None


#: How the lines of a Server-Sent Events stream begin.
_SSE_FIELDS = ("data:", "event:", "id:", "retry:", ":")


def sniffed_format(exchange) -> str:
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
