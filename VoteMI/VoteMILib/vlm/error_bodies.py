"""One line of text from whatever error body a local model server sends."""

from __future__ import annotations

import json
import re


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
        message = message_from_json(data)
        if message:
            return one_line(message)
    if data is not None:
        return one_line(json.dumps(data))
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
        text = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    return one_line(text)


def message_from_json(data: dict) -> str:
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


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
