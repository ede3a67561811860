"""``votemi serve``: an OpenAI-compatible HTTP server backed by an in-process model.

Lets a workstation with a GPU host the VLM for Slicer on other machines. Endpoints:

* ``POST /v1/chat/completions``: messages with text and ``image_url`` parts (``data:`` URLs only;
  the server never fetches remote images), ``stream`` (Server-Sent Events) or not,
  ``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``.
* ``GET /v1/models``: the one model served.
* ``GET /health``: ``{"status": "ok"}`` (no API key needed).

It listens on loopback unless another host is given, checks an optional API key
(``Authorization: Bearer``), refuses bodies above a size limit, and answers every malformed
request with a 4xx error in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
One request is generated at a time; others wait.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import __version__
from .errors import VLMError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_REQUEST_MB = 64.0
MAX_IMAGES = 64
_ROLES = ("system", "user", "assistant")
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 411: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 500: "server_error", 503: "server_error"}


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-shaped error answer."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def parse_chat_request(data, max_tokens_cap: int = 4096) -> dict:
    """Validate a chat completion request and turn it into generation arguments.

    Returns
    -------
    dict
        ``messages`` (transformers chat format with PIL images), ``max_new_tokens``,
        ``temperature``, ``top_p``, ``seed``, ``stream``.

    Raises
    ------
    RequestError
        With status 400 and the offending parameter for anything malformed.
    """
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    converted = []
    image_count = 0
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
            parts = []
            for m, part in enumerate(content):
                parts.append(_convert_part(part, f"{where}.content[{m}]"))
                image_count += parts[-1]["type"] == "image"
        else:
            raise RequestError(400, f"{where}.content must be a string or a list of parts", f"{where}.content")
        converted.append({"role": role, "content": parts})
    if image_count > MAX_IMAGES:
        raise RequestError(400, f"too many images ({image_count}); the limit is {MAX_IMAGES}", "messages")
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    return {"messages": converted, "max_new_tokens": min(max_tokens, max_tokens_cap), "temperature": float(temperature),
            "top_p": top_p, "seed": seed, "stream": stream}


def _convert_part(part, where: str) -> dict:
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
        return {"type": "image", "image": _decode_data_url(url, where)}
    raise RequestError(400, f"{where}.type '{kind}' is not supported; use 'text' or 'image_url'", f"{where}.type")


def _decode_data_url(url: str, where: str):
    from PIL import Image, UnidentifiedImageError

    match = _DATA_URL.match(url)
    if not match:
        raise RequestError(400, f"{where}: only data:image/...;base64 URLs are accepted (this server does not fetch "
                           "remote images)", f"{where}.image_url")
    try:
        raw = base64.b64decode(url[match.end():], validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: the image is not valid base64", f"{where}.image_url") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise RequestError(400, f"{where}: the data is not a readable image", f"{where}.image_url") from None
    return image.convert("RGB")


class VLMServer(ThreadingHTTPServer):
    """The HTTP server; holds the model and the serving options.

    Parameters
    ----------
    model : object
        Has ``name`` and ``generate(messages, max_new_tokens, temperature, top_p, seed, on_text, cancel,
        timeout_s)`` like :class:`~VoteMILib.vlm.inprocess.InProcessModel`.
    host, port : str, int
        Port 0 picks a free one (see ``server_address``).
    api_key : str
        Required as ``Authorization: Bearer <key>`` when set.
    max_request_mb : float
        Larger request bodies are refused with 413.
    max_tokens_cap : int
        Upper bound on the tokens generated per request.
    generation_timeout_s : float
        Generation stops after this long (the answer is then cut, finish_reason "length").
    log : file-like or None
        Where to write one line per request; None for silence.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str = "",
                 max_request_mb: float = DEFAULT_MAX_REQUEST_MB, max_tokens_cap: int = 4096,
                 generation_timeout_s: float = 600.0, log=sys.stderr):
        self.model = model
        self.api_key = api_key or ""
        self.max_request_bytes = int(max_request_mb * 2**20)
        self.max_tokens_cap = int(max_tokens_cap)
        self.generation_timeout_s = float(generation_timeout_s)
        self.log = log
        self.created = int(time.time())
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer is routine (Cancel in Slicer); anything else is logged.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError) or self.log is None:
            return
        self.log.write(f"{client_address[0]} error: {type(error).__name__}: {error}\n")
        self.log.flush()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"VoteMI/{__version__}"
    timeout = 60  # seconds to wait for a request's bytes, so stalled clients do not hold threads forever

    # -- plumbing ----------------------------------------------------------------------------------
    def log_message(self, format, *args):
        if self.server.log is not None:
            self.server.log.write(f"{self.address_string()} {format % args}\n")
            self.server.log.flush()

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
        self.wfile.write(body)

    def _send_error(self, error: RequestError, headers: dict | None = None):
        self._send_json(error.status, error_body(error.status, error.message, error.param, error.code), headers)

    def _authorized(self) -> bool:
        if not self.server.api_key:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        return hmac.compare_digest(token.encode("utf-8"), self.server.api_key.encode("utf-8"))

    def _reject_key(self):
        self._send_error(RequestError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                                      code="invalid_api_key"), {"WWW-Authenticate": "Bearer"})

    def _drain_and_close(self):
        """Read and drop what the client is still sending, so it sees our answer instead of a reset."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2.0)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _read_json(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or self.headers.get("Content-Length") is None:
            self.close_connection = True
            raise RequestError(411, "a Content-Length header is required")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            self.close_connection = True
            raise RequestError(400, "invalid Content-Length header") from None
        if length < 0:
            self.close_connection = True
            raise RequestError(400, "invalid Content-Length header")
        if length > self.server.max_request_bytes:
            raise RequestError(413, f"request body of {length / 2**20:.1f} MB exceeds the limit of "
                               f"{self.server.max_request_bytes / 2**20:g} MB; send fewer or smaller images",
                               code="request_too_large")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, "the request body ended early")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise RequestError(400, f"the request body is not valid JSON: {error}") from None

    # -- endpoints --------------------------------------------------------------------------------
    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": self.server.model.name})
        elif path == "/v1/models":
            if not self._authorized():
                self._reject_key()
                return
            self._send_json(200, {"object": "list", "data": [
                {"id": self.server.model.name, "object": "model", "created": self.server.created,
                 "owned_by": "votemi"}]})
        elif path == "/v1/chat/completions":
            self._send_error(RequestError(405, "use POST for /v1/chat/completions"), {"Allow": "POST"})
        else:
            self._send_error(RequestError(404, f"no endpoint {path or '/'}; use /v1/chat/completions, /v1/models "
                                          "or /health"))

    def do_POST(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self.close_connection = True
            self._send_error(RequestError(404, f"no endpoint {path or '/'}; use POST /v1/chat/completions"))
            self._drain_and_close()
            return
        if not self._authorized():
            self.close_connection = True  # the unread body would otherwise be taken for the next request
            self._reject_key()
            self._drain_and_close()
            return
        try:
            if "json" not in self.headers.get("Content-Type", "application/json").lower():
                raise RequestError(415, "send the request as application/json")
            request = parse_chat_request(self._read_json(), self.server.max_tokens_cap)
        except RequestError as error:
            if error.status in (411, 413, 415):
                self.close_connection = True
                self._send_error(error)
                self._drain_and_close()
            else:
                self._send_error(error)
            return
        if request.pop("stream"):
            self._stream(request)
        else:
            self._complete(request)

    def _generate(self, request, on_text=None, cancel=None):
        return self.server.model.generate(request["messages"], max_new_tokens=request["max_new_tokens"],
                                          temperature=request["temperature"], top_p=request["top_p"],
                                          seed=request["seed"], on_text=on_text, cancel=cancel,
                                          timeout_s=self.server.generation_timeout_s)

    @staticmethod
    def _finish_reason(result) -> str:
        return "stop" if result.finish_reason == "stop" else "length"

    def _complete(self, request):
        try:
            result = self._generate(request)
        except VLMError as error:
            self._send_error(RequestError(error.status or 500, str(error)))
            return
        self._send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": self._finish_reason(result)}],
            "usage": result.usage})

    def _stream(self, request):
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        gone = threading.Event()
        started = []

        def send(payload):
            if not started:
                # Headers go out with the first token, so errors before it (e.g. the processor
                # rejecting the request) still get a proper status code.
                started.append(True)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                send(chunk({"role": "assistant", "content": ""}))
            data = payload if isinstance(payload, str) else json.dumps(payload)
            raw = f"data: {data}\n\n".encode("utf-8")
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                self.wfile.flush()
            except OSError:
                gone.set()  # the client went away: stop generating
                raise

        def chunk(delta, finish_reason=None, usage=None):
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": self.server.model.name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if usage is not None:
                payload["usage"] = usage
            return payload

        try:
            result = self._generate(request, on_text=lambda text: send(chunk({"content": text})), cancel=gone.is_set)
            send(chunk({}, self._finish_reason(result), result.usage))
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        except VLMError as error:
            if not started:
                self._send_error(RequestError(error.status or 500, str(error)))
                return
            try:
                send(error_body(500, str(error)))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        except OSError:
            pass  # client disconnected; generation has been stopped
        self.close_connection = True


def create_server(model, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **options) -> VLMServer:
    """A :class:`VLMServer` bound and ready; call ``serve_forever()`` (e.g. in a thread) and ``shutdown()``."""
    return VLMServer(model, host=host, port=port, **options)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
