"""What a chat request is asked and what it produced, shared by the HTTP clients and the in-process model."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..names import DEFAULT_TIMEOUT_S


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
    total_s: float = float(DEFAULT_TIMEOUT_S)


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


def token_limit_message(max_tokens: int | None) -> str:
    """Why an answer that stopped at the token limit is incomplete."""
    limit = f" ({max_tokens} tokens)" if max_tokens else ""
    return f"stopped at the token limit{limit}; raise the maximum for a longer report"
