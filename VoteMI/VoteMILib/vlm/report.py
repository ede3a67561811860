"""The drafted report: the model's text, its metadata and the notice, kept apart, and their exports."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..findings import Findings

#: Shown with every report and written into every export; never mixed into the model's text.
NOTICE = "AI-generated draft, not for diagnostic use; requires review by a radiologist"
EXPORT_FORMATS = ("text", "markdown", "json")


def _context_words(sent: dict) -> str:
    """The words on the context the request was sized to: shrunk to fit, and Ollama's num_ctx ("" if neither)."""
    plan = sent.get("context") or {}
    words = ""
    if plan.get("shrunk"):
        words += f"; {plan['shrunk']}"
    if plan.get("num_ctx"):
        words += f"; num_ctx {plan['num_ctx']} for about {plan['estimated_tokens']} tokens"
    return words


@dataclass
class Report:
    """A report drafted by a vision-language model.

    Attributes
    ----------
    text : str
        The model's text, exactly as received (possibly partial, see ``complete``).
    meta : dict
        Model, server, images sent (IDs, planes, positions, sequences), settings, timing, the
        notice, and ``incomplete_reason`` when ``complete`` is False.
    complete : bool
        False when the answer was cut short (dropped connection, timeout, token limit, error
        mid-stream); the text then holds what arrived.
    findings : Findings or None
        The answer as findings citing their images, with their review (see :mod:`VoteMILib.findings`).
    """

    text: str
    meta: dict = field(default_factory=dict)
    complete: bool = True
    findings: Findings | None = None

    @property
    def notice(self) -> str:
        return self.meta.get("notice", NOTICE)

    @property
    def incomplete_reason(self) -> str:
        return "" if self.complete else self.meta.get("incomplete_reason", "the answer is incomplete")

    def _source_line(self) -> str:
        model = self.meta.get("model") or "unknown model"
        server = self.meta.get("server") or self.meta.get("protocol") or ""
        when = self.meta.get("created", "")
        return ", ".join(part for part in (f"model {model}", server, when) if part)

    def _image_lines(self) -> list:
        return [f"{image['id']}: {image['plane']}, {image['position']}"
                + (f", sequence {image['sequence']}" if image.get("sequence") else "")
                for image in self.meta.get("images", [])]

    def _sent_lines(self) -> list:
        """How the images went, when not one image per slice in one message: sheets, turns, context, examples,
        what the probe found lost, and the context they were sized to."""
        sent = self.meta.get("sent") or {}
        kinds = [item.get("kind") for item in sent.get("attachments", [])]
        parts = []
        if "sheet" in kinds:
            parts.append(f"{kinds.count('sheet')} contact sheet(s)")
        if sent.get("image_turns"):
            parts.append(f"one image per message over {sent['image_turns']} turns")
        elif self.meta.get("protocol") == "ollama" and kinds:
            parts.append("one image per message, each with its label (Ollama's native API)")
        if "context" in kinds:
            context = next(item for item in sent["attachments"] if item.get("kind") == "context")
            parts.append(f"a context sheet of {context['count']} {context['plane']} slices")
        if sent.get("examples"):
            names = ", ".join(example["name"] for example in sent["examples"])
            parts.append(f"{len(sent['examples'])} worked example(s) ({names})")
        if not parts and sent.get("images_seen") not in ("fused", "first_only") and not _context_words(sent):
            return []
        limit = f" (at most {sent['limit']} image(s) per request)" if sent.get("limit") else ""
        line = f"Sent as {', '.join(parts) or 'one image per slice'}{limit}"
        if sent.get("one_per_message_because"):
            line += f", because {sent['one_per_message_because']}"
        elif sent.get("images_seen") in ("fused", "first_only"):
            line += (f"; warning: the probe found {sent['images_seen'].replace('_', ' ')} images in one message, so "
                     f"some may not have reached the model (--pack {sent.get('pack')} was kept)")
        return [line + _context_words(sent)]
    def _review_lines(self) -> list:
        return [f"Review: {self.findings.summary_line()}"] if self.findings is not None and self.findings.items else []

    def to_text(self) -> str:
        """Plain text: notice, source, the model's text, incompleteness warning and image list."""
        lines = [f"*** {self.notice} ***", f"Drafted by {self._source_line()}", *self._review_lines(), "",
                 self.text.strip(), ""]
        if not self.complete:
            lines += [f"[Incomplete report: {self.incomplete_reason}]", ""]
        images = self._image_lines()
        if images:
            lines += ["Images sent:", *(f"  {line}" for line in images), *self._sent_lines()]
        return "\n".join(lines).rstrip() + "\n"

    def to_markdown(self) -> str:
        """Markdown: the notice as a quote block above the model's text, images as a list."""
        lines = [f"> **{self.notice}**", ">", f"> Drafted by {self._source_line()}",
                 *(f">\n> {line}" for line in self._review_lines()), "", self.text.strip(), ""]
        if not self.complete:
            lines += [f"> **Incomplete report:** {self.incomplete_reason}", ""]
        images = self._image_lines()
        if images:
            sent = self._sent_lines()
            lines += ["### Images sent", "", *(f"- {line}" for line in images), *([""] + sent if sent else [])]
        return "\n".join(lines).rstrip() + "\n"

    def to_dict(self) -> dict:
        """``{"report": text, "report_meta": meta}`` (the notice and ``complete`` live in the meta)."""
        meta = dict(self.meta)
        meta.setdefault("notice", NOTICE)
        meta["complete"] = self.complete
        document = {"report": self.text, "report_meta": meta}
        if self.findings is not None:
            document["findings"] = self.findings.to_dict()
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """Inverse of :meth:`to_dict` (e.g. from a saved JSON or node attributes)."""
        meta = dict(data.get("report_meta") or {})
        findings = Findings.from_dict(data["findings"]) if data.get("findings") else None
        return cls(text=str(data.get("report", "")), meta=meta, complete=bool(meta.get("complete", True)),
                   findings=findings)

    def export(self, fmt: str = "text") -> str:
        """The report in one of :data:`EXPORT_FORMATS`."""
        exporters = {"text": self.to_text, "markdown": self.to_markdown, "json": self.to_json}
        if fmt not in exporters:
            raise ValueError(f"unknown report format '{fmt}'; choose from {', '.join(EXPORT_FORMATS)}")
        return exporters[fmt]()

    def save(self, path, fmt: str | None = None) -> str:
        """Write the report; the format follows the extension (.md, .json, otherwise text)."""
        path = os.fspath(path)
        if fmt is None:
            extension = os.path.splitext(path)[1].lower()
            fmt = {".md": "markdown", ".markdown": "markdown", ".json": "json"}.get(extension, "text")
        from ..outputs import write_atomic

        write_atomic(path, self.export(fmt), what="report")
        return path
