"""The wire protocols a model server may speak, each a :class:`Dialect` owning everything that differs between them.

* ``"openai"``: ``POST {server}/v1/chat/completions`` and ``GET {server}/v1/models``, spoken by
  Ollama, vLLM, llama.cpp's llama-server, LM Studio, SGLang, TGI and ``votemi serve``; streams
  Server-Sent Events.
* ``"ollama"``: Ollama's native ``POST {server}/api/chat`` and ``GET {server}/api/tags``; streams
  one JSON object per line.

A dialect owns its routes, the URL suffix a user may paste with the server URL, how a request is laid
out (images and their labels, the context size asked for), how a streamed answer is framed, how an
answer and a model list read, its advice on errors and what its server reports to the probe
(:mod:`.capabilities`). Sending, retrying and reading the stream are the client's (:mod:`.clients`).
``state`` is the dict a client keeps for one answer: ``finish_reason``, ``usage`` and ``done``.

Each dialect is registered once, by its class name, in :data:`VoteMILib.names.BACKEND_REGISTRY`;
:data:`DIALECTS` holds one instance of each, named from there.
"""

from __future__ import annotations

import base64
import math

from ..names import BACKEND_REGISTRY, BACKENDS
from .errors import VLMError

# Ollama's num_ctx is rounded up to a multiple of this.
_CTX_STEP = 1024


def _png_base64(image) -> str:
    return base64.b64encode(image.png).decode("ascii")


class Dialect:
    """What one wire protocol owns; a new protocol is a subclass and its line in ``BACKEND_REGISTRY``.

    Subclasses set the routes and override the request and answer methods; the rest has defaults that
    fit a protocol with nothing special to say.
    """

    #: The backend name, set from the registry (:data:`DIALECTS`).
    name = ""
    #: ``POST`` route of a chat request and ``GET`` route of the model list (also the health check).
    chat_path = ""
    models_path = ""
    #: The API prefix a pasted server URL may end with (``http://host:8000/v1``), dropped from it.
    url_suffix = ""
    #: How a streamed answer is framed: "sse" (Server-Sent Events) or "ndjson" (one JSON object per line).
    #: A server that says ``application/json`` while streaming is read this way.
    stream_format = "sse"
    #: Whether a request with images has the very text of the one without (the probe's images carry no
    #: label), so that a prompt that does not grow with an image shows the model takes no images.
    images_add_no_text = True
    #: How every request lays out its images, in the words of the report ("" when one message holds them all).
    image_layout = ""

    def chat_payload(self, prompt, model, options) -> dict:
        """The request body of ``prompt`` (a :class:`~.prompts.Prompt`) for ``model`` with ``options``."""
        raise NotImplementedError

    def parse_event(self, data: dict, state: dict) -> str:
        """Update ``state`` from one streamed object; return the new text piece ("" if none)."""
        raise NotImplementedError

    def parse_full(self, data: dict, state: dict, where: str) -> str:
        """Fill ``state`` from a non-streamed answer of the server at ``where``; return its text."""
        raise NotImplementedError

    def models_from(self, data) -> list | None:
        """Model names of a model list answer; None if it is not shaped like this protocol's."""
        raise NotImplementedError

    def hint(self, status: int, detail: str) -> str:
        """Advice of this protocol for an HTTP error ("" for the client's general advice)."""
        return ""

    def context_to_request(self, needed: int, least: int | None, context_length: int | None) -> int | None:
        """The context size to ask for with a request needing ``needed`` tokens (``options.num_ctx``), or None
        for a protocol whose server sizes the context itself."""
        return None

    def reported(self, client, model: str) -> dict:
        """What the server says about ``model`` without generating: ``context_length`` with ``context_from``
        (the route it came from) and ``vision`` (bool), where known. Failed requests count as unknown."""
        return {}


class OpenAIDialect(Dialect):
    """OpenAI-compatible chat completions.

    Each image is a ``data:image/png;base64`` URL, immediately followed by its label text.
    """

    models_path = "/v1/models"
    chat_path = "/v1/chat/completions"
    url_suffix = "/v1"

    @staticmethod
    def _user_content(intro, attachments, instruction=""):
        content = [{"type": "text", "text": intro}]
        for image in attachments:
            content.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png_base64(image)}})
            content.append({"type": "text", "text": image.label})
        if instruction:
            content.append({"type": "text", "text": instruction})
        return content

    def chat_payload(self, prompt, model, options) -> dict:
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

    def parse_event(self, data: dict, state: dict) -> str:
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

    def parse_full(self, data: dict, state: dict, where: str) -> str:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise VLMError(f"{where}: the answer has no choices; is this an OpenAI-compatible server?")
        state["finish_reason"] = choices[0].get("finish_reason")
        state["usage"] = _usage(data.get("usage") or {})
        state["done"] = True
        return _content_text((choices[0].get("message") or {}).get("content"))

    def models_from(self, data) -> list | None:
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return None
        return [str(item["id"]) for item in data["data"] if isinstance(item, dict) and item.get("id")]

    def reported(self, client, model: str) -> dict:
        """``max_model_len`` in ``/v1/models`` (vLLM, ``votemi serve``), ``n_ctx`` and vision in ``/props``
        (llama.cpp's llama-server)."""
        found = {}
        try:
            listing = client.request_json("GET", self.models_path)
            for entry in listing.get("data", []) if isinstance(listing, dict) else []:
                if isinstance(entry, dict) and entry.get("id") == model:
                    length = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
                    if isinstance(length, int) and length > 0:
                        found["context_length"], found["context_from"] = length, self.models_path
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
        return found


class OllamaDialect(Dialect):
    """Ollama's native API.

    A message's ``images`` list carries no text between its images, and Ollama (0.32.1, Qwen-VL and
    Qwen3.5 models) fuses two adjacent images of the same size into one: slices of one series always
    are. So each image goes in a user message of its own whose text is its label, between the
    introduction and the instruction, and the chat template puts turn markers between the images.
    """

    models_path = "/api/tags"
    chat_path = "/api/chat"
    url_suffix = "/api"
    stream_format = "ndjson"
    # Each image comes in a message of its own, so a request with an image has more text than one without.
    images_add_no_text = False
    image_layout = "one image per message, each with its label (Ollama's native API)"

    @staticmethod
    def _user_messages(intro, attachments, instruction="") -> list:
        if not attachments:
            return [{"role": "user", "content": f"{intro}\n\n{instruction}" if instruction else intro}]
        messages = [{"role": "user", "content": f"{intro}\nEach image follows in a message of its own, "
                                                "with its label."}]
        messages += [{"role": "user", "content": image.label, "images": [_png_base64(image)]}
                     for image in attachments]
        if instruction:
            messages.append({"role": "user", "content": instruction})
        return messages

    def chat_payload(self, prompt, model, options) -> dict:
        messages = []
        for turn in prompt.turns:
            messages += self._user_messages(turn.intro, turn.attachments)
            messages.append({"role": "assistant", "content": turn.answer})
        messages += self._user_messages(prompt.intro, prompt.attachments, prompt.instruction)
        model_options = {"temperature": float(options.temperature), "num_predict": int(options.max_tokens)}
        if options.seed is not None:
            model_options["seed"] = int(options.seed)
        if options.num_ctx:
            model_options["num_ctx"] = int(options.num_ctx)
        payload = {"model": model, "messages": messages, "stream": options.stream, "options": model_options}
        if options.response_schema is not None:
            payload["format"] = options.response_schema
        return payload

    def parse_event(self, data: dict, state: dict) -> str:
        if data.get("done"):
            state["done"] = True
            state["finish_reason"] = data.get("done_reason") or "stop"
            state["usage"] = _ollama_usage(data)
        return _content_text((data.get("message") or {}).get("content"))

    def parse_full(self, data: dict, state: dict, where: str) -> str:
        if not isinstance(data.get("message"), dict):
            raise VLMError(f"{where}: the answer has no message; is this an Ollama server?")
        self.parse_event(data, state)
        state["done"] = True
        return _content_text(data["message"].get("content"))

    def models_from(self, data) -> list | None:
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            return None
        return [str(item.get("name") or item.get("model")) for item in data["models"]
                if isinstance(item, dict) and (item.get("name") or item.get("model"))]

    def hint(self, status: int, detail: str) -> str:
        """A missing model is pulled with Ollama's own command."""
        if status == 404 and "model" in detail.lower():
            return "pull it with 'ollama pull <model>' or check the name"
        return ""

    def context_to_request(self, needed: int, least: int | None, context_length: int | None) -> int:
        """Ollama's ``num_ctx``: at least ``least``, rounded up to 1024, never above the model's
        ``context_length`` when known (Ollama otherwise cuts the prompt to its default context without a word)."""
        size = max(int(least or 0), math.ceil(needed / _CTX_STEP) * _CTX_STEP)
        return min(size, int(context_length)) if context_length else size

    def reported(self, client, model: str) -> dict:
        """The context length in ``model_info`` and the ``capabilities`` list of ``/api/show``."""
        found = {}
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


def _registered() -> dict:
    """One instance of each dialect class named in ``BACKEND_REGISTRY``, by backend name, in its order."""
    dialects = {}
    for backend in BACKEND_REGISTRY:
        if not backend.dialect:
            continue
        dialect_class = globals().get(backend.dialect)
        if not (isinstance(dialect_class, type) and issubclass(dialect_class, Dialect)):
            raise ImportError(f"backend '{backend.name}' names {backend.dialect}, which is no Dialect here")
        dialect = dialect_class()
        dialect.name = backend.name
        dialects[backend.name] = dialect
    return dialects


#: The dialect of each backend reached over HTTP (:data:`VoteMILib.names.HTTP_BACKENDS`).
DIALECTS = _registered()


def dialect_of(backend: str) -> Dialect:
    """The dialect of an HTTP ``backend``.

    Raises
    ------
    VLMError
        For a backend without one (the in-process model) or an unknown one.
    """
    if backend not in DIALECTS:
        raise VLMError(f"unknown backend '{backend}'; choose {', '.join(BACKENDS)}"
                       if backend not in BACKENDS else f"the {backend} backend has no server to speak to")
    return DIALECTS[backend]
