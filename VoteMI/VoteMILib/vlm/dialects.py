"""The two wire protocols a model server may speak: how a chat request is laid out and how its answer reads.

* ``"openai"``: ``POST {server}/v1/chat/completions`` and ``GET {server}/v1/models``, spoken by
  Ollama, vLLM, llama.cpp's llama-server, LM Studio, SGLang, TGI and ``votemi serve``; streams
  Server-Sent Events.
* ``"ollama"``: Ollama's native ``POST {server}/api/chat`` and ``GET {server}/api/tags``; streams
  one JSON object per line.

A dialect only shapes data; sending it, retrying and reading the stream are the client's
(:mod:`.clients`). ``state`` is the dict a client keeps for one answer: ``finish_reason``, ``usage``
and ``done``.
"""

from __future__ import annotations

import base64

from .errors import VLMError


def _png_base64(image) -> str:
    return base64.b64encode(image.png).decode("ascii")


class OpenAIDialect:
    """OpenAI-compatible chat completions.

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

    def chat_payload(self, prompt, model, options) -> dict:
        """The request body of ``prompt`` (a :class:`~.prompts.Prompt`) for ``model`` with ``options``."""
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
        """Update ``state`` from one streamed object; return the new text piece ("" if none)."""
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
        """Fill ``state`` from a non-streamed answer of the server at ``where``; return its text."""
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise VLMError(f"{where}: the answer has no choices; is this an OpenAI-compatible server?")
        state["finish_reason"] = choices[0].get("finish_reason")
        state["usage"] = _usage(data.get("usage") or {})
        state["done"] = True
        return _content_text((choices[0].get("message") or {}).get("content"))

    def models_from(self, data) -> list | None:
        """Model names of a model list answer; None if it is not shaped like this protocol's."""
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            return None
        return [str(item["id"]) for item in data["data"] if isinstance(item, dict) and item.get("id")]

    def hint(self, status: int, detail: str) -> str:
        """Advice of this protocol for an HTTP error ("" for the client's general advice)."""
        return ""


class OllamaDialect:
    """Ollama's native API.

    A message's ``images`` list carries no text between its images, and Ollama (0.32.1, Qwen-VL and
    Qwen3.5 models) fuses two adjacent images of the same size into one: slices of one series always
    are. So each image goes in a user message of its own whose text is its label, between the
    introduction and the instruction, and the chat template puts turn markers between the images.
    """

    protocol = "ollama"
    models_path = "/api/tags"
    chat_path = "/api/chat"

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
        """As :meth:`OpenAIDialect.chat_payload`."""
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
        """As :meth:`OpenAIDialect.parse_event`."""
        if data.get("done"):
            state["done"] = True
            state["finish_reason"] = data.get("done_reason") or "stop"
            state["usage"] = _ollama_usage(data)
        return _content_text((data.get("message") or {}).get("content"))

    def parse_full(self, data: dict, state: dict, where: str) -> str:
        """As :meth:`OpenAIDialect.parse_full`."""
        if not isinstance(data.get("message"), dict):
            raise VLMError(f"{where}: the answer has no message; is this an Ollama server?")
        self.parse_event(data, state)
        state["done"] = True
        return _content_text(data["message"].get("content"))

    def models_from(self, data) -> list | None:
        """As :meth:`OpenAIDialect.models_from`."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            return None
        return [str(item.get("name") or item.get("model")) for item in data["models"]
                if isinstance(item, dict) and (item.get("name") or item.get("model"))]

    def hint(self, status: int, detail: str) -> str:
        """As :meth:`OpenAIDialect.hint`: a missing model is pulled with Ollama's own command."""
        if status == 404 and "model" in detail.lower():
            return "pull it with 'ollama pull <model>' or check the name"
        return ""


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
