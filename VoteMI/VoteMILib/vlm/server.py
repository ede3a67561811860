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

Switches of :class:`ServeFeatures` make it behave like more limited servers, for checking clients: text-only,
no JSON schema, images dropped, a limit per message, adjacent same-size images fused, only the first image of a
message seen, a small context filled silently.

Every resource a request can claim is bounded (:class:`ServeLimits`): body size, prompt
characters before tokenising and tokens after the chat template, image count and pixels (read
from the image headers, before anything is decoded), the wait for the model, the generation time,
and the number of open connections. One request is generated at a time; the others wait in
arrival order, and a request that waits too long gets 503 with ``Retry-After``. A client that
hangs up, streaming or not, stops its generation (or leaves the queue) at once. Slow clients
cannot hold the connection slots: a request's headers must be complete within a total time
(``header_timeout_s``), and one client address holds at most ``max_connections_per_client`` slots.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import io
import json
import math
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import __version__
from .errors import VLMError
# CHARS_PER_TOKEN is imported from here by ``votemi serve --help``.
from .request_checks import (CHARS_PER_TOKEN, RequestError, ServeFeatures, ServeLimits, decode_images,  # noqa: F401
                             error_body, parse_chat_request)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
_POLL_S = 0.05  # how often a waiting request checks its client and the queue
_TURNED_AWAY_LINGER_S = 2.0  # how long a refused connection's request bytes are read and dropped


class ClientGone(Exception):
    """The client closed its connection while its request waited or was generated."""


class HeaderTimeout(Exception):
    """The request's headers were not complete by their deadline."""


class _DeadlineSocketIO(socket.SocketIO):
    """The connection as the handler reads it: while a deadline is set, no read waits past it.

    A socket timeout alone bounds silence, and a client sending a byte every few seconds resets it
    for ever; the deadline bounds the total time instead.
    """

    def __init__(self, sock, idle_timeout_s: float):
        super().__init__(sock, "rb")
        self.idle_timeout_s = idle_timeout_s
        self.deadline = None

    def readinto(self, buffer):
        if self.deadline is None:
            self._sock.settimeout(self.idle_timeout_s)
            return super().readinto(buffer)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise HeaderTimeout()
        self._sock.settimeout(min(remaining, self.idle_timeout_s))
        try:
            return super().readinto(buffer)
        except TimeoutError:
            if self.deadline - time.monotonic() <= 0:
                raise HeaderTimeout() from None
            raise


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
        self._open = {}  # connection -> client address
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
        """Serve the connection in a thread when its client and the server have a free slot, else answer 503."""
        reason = self._refusal(client_address[0])
        if reason:
            self._turn_away(request, client_address, reason)
            return
        with self._connections:
            self._open[request] = client_address[0]
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

    def _refusal(self, host: str) -> str:
        """Why a new connection from ``host`` cannot be served now (taking a slot if it can): '' when it can."""
        if self.stopping.is_set():
            return "the server is shutting down"
        limit = self.limits.max_connections_per_client
        with self._connections:
            if sum(owner == host for owner in self._open.values()) >= limit:
                return f"too many connections from {host} (the limit is {limit} per client); try again later"
        if not self._slots.acquire(blocking=False):
            return f"too many connections (the limit is {self.limits.max_connections}); try again later"
        return ""

    def _forget(self, request):
        with self._connections:
            self._open.pop(request, None)
            self._connections.notify_all()
        self._slots.release()

    def _turn_away(self, request, client_address, reason: str):
        # Answered from the accepting thread without blocking it: the reply fits an empty send buffer.
        # The socket then lingers a little, its incoming bytes dropped, so that closing it does not
        # reset the connection before the client has read the reply.
        if self.log is not None:
            self.log.write(f"{client_address[0]} connection answered 503: {reason}\n")
            self.log.flush()
        answer = _raw_answer(503, "Service Unavailable", error_body(503, reason, code="server_busy"),
                             {"Retry-After": str(self.queue.retry_after_s())})
        try:
            request.setblocking(False)
            request.sendall(answer)
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


def _raw_answer(status: int, phrase: str, payload: dict, headers: dict | None = None) -> bytes:
    """A whole HTTP answer that closes the connection, for when no request could be parsed to answer through."""
    body = json.dumps(payload).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {_Handler.server_version}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{key}: {value}" for key, value in (headers or {}).items()),
             "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


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
    def setup(self):
        super().setup()
        self.rfile.close()  # replaced by a reader that keeps the header deadline
        self._reader = _DeadlineSocketIO(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        """Wait (silence timeout) for a request's first byte, then give its headers ``header_timeout_s`` in all."""
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # silent for the whole idle timeout, or reset
            self.close_connection = True
            return
        limit = self.server.limits.header_timeout_s
        self._reader.deadline = time.monotonic() + limit
        try:
            super().handle_one_request()
        except HeaderTimeout:
            self.close_connection = True
            self._time_out_headers(limit)
        finally:
            self._reader.deadline = None

    def parse_request(self):
        ok = super().parse_request()
        self._reader.deadline = None  # the headers are in; the body has the silence timeout
        return ok

    def _time_out_headers(self, limit: float):
        """Answer 408 to a request whose headers did not arrive in time (best effort) and log it."""
        message = f"the request headers were not complete within {limit:g} s; the connection is closed"
        if self.server.log is not None:
            self.server.log.write(f"{self.client_address[0]} {message}\n")
            self.server.log.flush()
        with contextlib.suppress(OSError):
            self.connection.settimeout(1.0)
            self.connection.sendall(_raw_answer(408, "Request Timeout", error_body(408, message, code="timeout")))

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
                 "owned_by": "votemi", "max_model_len": self.server.features.context_tokens
                 or getattr(self.server.model, "context_length", None) or self.server.limits.max_prompt_tokens}]})
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
            if self.server.features.context_tokens:
                _fill_context_silently(self.server.model, request, self.server.features.context_tokens)
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


def _fill_context_silently(model, request: dict, context_tokens: int) -> None:
    """Leave out the earliest images until the prompt fits ``context_tokens``, and shorten the answer to the room
    left, without a word: what Ollama does past its ``num_ctx`` (``votemi serve --context``).

    A prompt whose text alone overflows is left for the model's own check (``max_prompt_tokens``) to refuse.
    """
    messages = request["messages"]
    prompt_tokens = model.count_prompt_tokens(messages)
    while prompt_tokens >= context_tokens:
        where = next(((m, n) for m, message in enumerate(messages)
                      for n, part in enumerate(message["content"]) if part["type"] == "image"), None)
        if where is None:
            break
        del messages[where[0]]["content"][where[1]]
        prompt_tokens = model.count_prompt_tokens(messages)
    request["max_new_tokens"] = max(1, min(request["max_new_tokens"], context_tokens - prompt_tokens))


def create_server(model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str = "", log=sys.stderr,
                  features: ServeFeatures | None = None, **limits) -> VLMServer:
    """A :class:`VLMServer` bound and ready; call ``serve_forever()`` (e.g. in a thread) and ``shutdown()``.

    ``limits`` are :class:`ServeLimits` fields (``max_request_mb=1.0``, ``queue_timeout_s=5``, ...).
    """
    return VLMServer(model, host=host, port=port, api_key=api_key, limits=ServeLimits(**limits), log=log,
                     features=features)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
