"""Clients for locally hosted vision-language model servers, standard library only.

:class:`HTTPClient` speaks any wire protocol of :mod:`.dialects` (:class:`OpenAIClient` and
:class:`OllamaClient` name the two there are) over the watched connections of :mod:`.transport`. Connection failures, timeouts and HTTP
429/502/503/504 are retried with exponential backoff as long as no text has reached the caller. An
answer that breaks off after some text keeps that text and is flagged incomplete.

Server URLs (:mod:`.urls`), request options and results (:mod:`.options`) and error bodies
(:mod:`.error_bodies`) have their own modules; the names used from here before they moved are
still imported here.
"""

from __future__ import annotations

import json
import time

from ..names import DEFAULT_SERVER_URL
from .dialects import DIALECTS, dialect_of
from .error_bodies import message_from_json, one_line
from .errors import VLMCancelled, VLMError
from .options import ChatResult, GenerationOptions, Timeouts, token_limit_message
from .transport import MAX_ANSWER_BYTES, POLL_S, Exchange, StreamBroken, declared_format, sniffed_format
from .urls import check_authorization, parse_server_url

# These lived here before they moved out: scripts written then still import them from here.
from .error_bodies import error_message_from_body  # noqa: E402,F401
from .urls import redact_url, url_has_credentials  # noqa: E402,F401

_MAX_BACKOFF_S = 30.0


def _sleep(seconds: float, cancel):
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if cancel is not None and cancel():
            raise VLMCancelled()
        if left <= 0:
            return
        time.sleep(min(left, POLL_S))


class HTTPClient:
    """Request, retry and streaming machinery, speaking the wire protocol of its :attr:`dialect`."""

    #: The wire protocol (:mod:`.dialects`): given to the constructor, or set by a subclass.
    dialect = None

    def __init__(self, server_url: str = DEFAULT_SERVER_URL, api_key: str = "", timeouts: Timeouts | None = None,
                 retries: int = 2, backoff_s: float = 1.0, max_answer_bytes: int = MAX_ANSWER_BYTES, dialect=None):
        if dialect is not None:
            self.dialect = dialect
        if self.dialect is None:
            raise TypeError("HTTPClient needs a dialect (see VoteMILib.vlm.dialects.DIALECTS)")
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

    @property
    def protocol(self) -> str:
        """The wire protocol (:data:`VoteMILib.names.HTTP_BACKENDS`)."""
        return self.dialect.name

    @property
    def backend(self) -> str:
        """The backend this client is (:data:`VoteMILib.names.BACKENDS`): its wire protocol."""
        return self.dialect.name

    def hint(self, status: int, detail: str, path: str) -> str:
        """Advice appended to an HTTP error message."""
        advice = self.dialect.hint(status, detail)
        if advice:
            return advice
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
        path = self.dialect.models_path
        models = self.dialect.models_from(self.request_json("GET", path, cancel=cancel))
        if models is None:
            raise VLMError(f"{self.server_url}: {path} did not answer like the {self.protocol} API; "
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
        with Exchange(self, method, path, payload, deadline, cancel, None) as exchange:
            response = exchange.open()
            try:
                body = exchange.read_body()
            except StreamBroken as error:
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
        payload = self.dialect.chat_payload(prompt, model, options)
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
        with Exchange(self, "POST", self.dialect.chat_path, payload, deadline, cancel, idle_s) as exchange:
            response = exchange.open()
            content_type = (response.getheader("Content-Type") or "").lower()
            try:
                kind = declared_format(content_type, options.stream, self.dialect.stream_format) or sniffed_format(exchange)
                if kind == "sse":
                    self._read_sse(exchange, state, on_text, received)
                elif kind == "ndjson":
                    self._read_ndjson(exchange, state, on_text, received)
                else:
                    self._read_full(exchange, content_type, state, on_text, received)
            except StreamBroken as broken:
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
                    raise StreamBroken(f"{self.server_url}: malformed stream data: {one_line(data_lines[0], 80)}")
            # "event:", "id:", "retry:" and ":" comment lines carry nothing we need
        if data_lines:
            raise StreamBroken(f"{self.server_url}: malformed stream data: {one_line(data_lines[0], 80)}")

    def _read_ndjson(self, exchange, state, on_text, received):
        for line in exchange.lines():
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                raise StreamBroken(f"{self.server_url}: malformed stream line: {one_line(line, 80)}") from None
            self._emit(self._stream_object(data, state), on_text, received)
            if state["done"]:
                return

    def _stream_object(self, data, state) -> str:
        if not isinstance(data, dict):
            raise StreamBroken(f"{self.server_url}: unexpected stream data: {one_line(json.dumps(data), 80)}")
        if "error" in data or data.get("object") == "error":
            raise StreamBroken(f"{self.server_url}: server error during the answer: "
                                f"{message_from_json(data) or 'unknown error'}")
        if data.get("model"):
            state["model"] = data["model"]
        return self.dialect.parse_event(data, state) or ""

    def _read_full(self, exchange, content_type, state, on_text, received):
        body = exchange.read_body()
        data = self._json_answer(body, content_type)
        if not isinstance(data, dict):
            raise VLMError(f"{self.server_url}: unexpected answer: {one_line(body.decode('utf-8', 'replace'), 80)}")
        if "error" in data or data.get("object") == "error":
            raise VLMError(f"{self.server_url}: {message_from_json(data) or 'unknown error'}")
        if data.get("model"):
            state["model"] = data["model"]
        self._emit(self.dialect.parse_full(data, state, self.server_url), on_text, received)

    def _json_answer(self, body: bytes, content_type: str):
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            kind = "an HTML page" if "html" in content_type.lower() or body.lstrip()[:1] == b"<" else "non-JSON data"
            raise VLMError(f"{self.server_url}: answered with {kind}, not the {self.protocol} API; "
                           "check the server URL and protocol") from None


class OpenAIClient(HTTPClient):
    """OpenAI-compatible chat completions (Ollama, vLLM, llama.cpp, LM Studio, SGLang, TGI, ``votemi serve``)."""

    dialect = DIALECTS["openai"]


class OllamaClient(HTTPClient):
    """Ollama's native API (``/api/chat``, ``/api/tags``)."""

    dialect = DIALECTS["ollama"]



def make_http_client(backend: str, server_url: str, api_key: str = "", timeouts: Timeouts | None = None,
                     retries: int = 2, backoff_s: float = 1.0) -> HTTPClient:
    """The client of an HTTP ``backend`` (:data:`VoteMILib.names.HTTP_BACKENDS`)."""
    return HTTPClient(server_url, api_key=api_key, timeouts=timeouts, retries=retries, backoff_s=backoff_s,
                      dialect=dialect_of(backend))
