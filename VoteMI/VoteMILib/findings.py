"""A report as data: findings that cite the slices they come from, and their review by a radiologist.

A model's answer becomes :class:`Findings`: a list of :class:`Finding` (text, the image IDs it
cites, the cited IDs the selection does not hold, its section) plus the free text that is not a
finding, and the review state (each finding pending, accepted, rejected or edited; who reviewed
and when). Two sources:

* structured output (:func:`findings_schema`, :func:`parse_structured`): the server was asked for
  JSON of that schema (OpenAI ``response_format`` or Ollama ``format``);
* tags (:func:`parse_tagged`): a free-text answer whose findings end with ``[A1, C2]``.

:class:`StructuredStream` turns a JSON answer arriving piece by piece into readable report text
as it streams. Nothing here needs more than the standard library.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

SECTIONS = ("findings", "impression")
STATUSES = ("pending", "accepted", "rejected", "edited")
#: Longest finding or impression text the schema allows (bounds a constrained model that never stops).
MAX_TEXT_CHARS = 400
#: Most findings the schema allows.
MAX_FINDINGS = 12

# An image ID as the prompt writes it: plane letter, rank, optional sequence number (A1, C2, A1-2).
_ID = r"[A-Za-z]\d{1,3}(?:-\d{1,2})?"
_TAG = re.compile(r"\[\s*(" + _ID + r"(?:\s*(?:,|;|/|\band\b)\s*" + _ID + r")*)\s*\]")
_ID_IN_TAG = re.compile(_ID)
_HEADER = re.compile(r"^\s*(?:#+\s*)?(?:\*\*|__)?\s*(findings|impression)s?\s*(?:\*\*|__)?\s*:?\s*(?:\*\*|__)?\s*",
                     re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second (the review times)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Finding:
    """One finding of a report.

    Attributes
    ----------
    text : str
        The finding as the model wrote it, without its citation tags (the reviewer's text once edited).
    cites : list of str
        Cited image IDs the selection holds, in the order cited.
    unknown_cites : list of str
        Cited IDs the selection does not hold (kept and shown, never dropped).
    section : {"findings", "impression"}
    status : {"pending", "accepted", "rejected", "edited"}
    original_text : str
        The model's text when the reviewer edited it, else empty.
    reviewer, reviewed_at : str
        Who set the status and when (ISO 8601, UTC); empty while pending.
    """

    text: str
    cites: list = field(default_factory=list)
    unknown_cites: list = field(default_factory=list)
    section: str = "findings"
    status: str = "pending"
    original_text: str = ""
    reviewer: str = ""
    reviewed_at: str = ""

    @property
    def all_cites(self) -> list:
        return [*self.cites, *self.unknown_cites]

    def cited_text(self) -> str:
        """The text with its citations, as in the report: ``Mass in the left lobe [A1, C2]``."""
        return f"{self.text} [{', '.join(self.all_cites)}]" if self.all_cites else self.text

    @classmethod
    def from_dict(cls, data: dict) -> "Finding":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        finding = cls(**known)
        finding.cites = [str(c) for c in finding.cites]
        finding.unknown_cites = [str(c) for c in finding.unknown_cites]
        if finding.section not in SECTIONS:
            raise ValueError(f"unknown finding section '{finding.section}'")
        if finding.status not in STATUSES:
            raise ValueError(f"unknown finding status '{finding.status}'")
        return finding


@dataclass
class Findings:
    """The findings of one report, their free text and their review.

    Attributes
    ----------
    items : list of Finding
        In report order: the findings, then the impression (if any).
    free_text : str
        Text of the answer that is no finding (a preamble, remarks, the raw answer if nothing parsed).
    source : {"structured", "tags"}
        How the findings were obtained.
    image_ids : list of str
        The IDs the selection held (what citations are checked against).
    """

    items: list = field(default_factory=list)
    free_text: str = ""
    source: str = "tags"
    image_ids: list = field(default_factory=list)

    # -- review -----------------------------------------------------------------------------

    def _set(self, index: int, status: str, reviewer: str, when: str | None):
        finding = self.items[index]
        finding.status = status
        finding.reviewer = str(reviewer or "")
        finding.reviewed_at = when or now_iso()
        return finding

    def accept(self, index: int, reviewer: str = "", when: str | None = None) -> Finding:
        """Accept finding ``index`` (an edited finding stays edited: its text is the reviewer's)."""
        status = "edited" if self.items[index].original_text else "accepted"
        return self._set(index, status, reviewer, when)

    def reject(self, index: int, reviewer: str = "", when: str | None = None) -> Finding:
        return self._set(index, "rejected", reviewer, when)

    def edit(self, index: int, text: str, reviewer: str = "", when: str | None = None) -> Finding:
        """Replace a finding's text with the reviewer's (tags in it become its citations)."""
        finding = self.items[index]
        body, cites, unknown = split_citations(text, self.image_ids)
        if not finding.original_text:
            finding.original_text = finding.text
        finding.text = body
        if cites or unknown:
            finding.cites, finding.unknown_cites = cites, unknown
        return self._set(index, "edited", reviewer, when)

    @property
    def reviewed(self) -> bool:
        """True once no finding is pending (and there is at least one)."""
        return bool(self.items) and all(f.status != "pending" for f in self.items)

    @property
    def has_review(self) -> bool:
        """True if the reviewer touched any finding (a new run must then ask before replacing it)."""
        return any(f.status != "pending" for f in self.items)

    def summary(self) -> dict:
        """The review state: ``state`` (draft or reviewed), counts per status (``accepted`` counts the
        edited findings too), reviewers and the last review time."""
        counts = {status: sum(f.status == status for f in self.items) for status in STATUSES}
        reviewers = sorted({f.reviewer for f in self.items if f.reviewer})
        times = sorted(f.reviewed_at for f in self.items if f.reviewed_at)
        return {"state": "reviewed" if self.reviewed else "draft", "total": len(self.items),
                **{k: counts[k] for k in STATUSES}, "accepted": counts["accepted"] + counts["edited"],
                "reviewers": reviewers, "last_reviewed_at": times[-1] if times else ""}

    def summary_line(self) -> str:
        """``Draft: 2 of 5 accepted (1 edited), 1 rejected; reviewed by dr.x, 2026-...``."""
        s = self.summary()
        line = f"{s['state'].capitalize()}: {s['accepted']} of {s['total']} accepted"
        if s["edited"]:
            line += f" ({s['edited']} edited)"
        if s["rejected"]:
            line += f", {s['rejected']} rejected"
        if s["reviewers"]:
            line += f"; reviewed by {', '.join(s['reviewers'])}, last {s['last_reviewed_at']}"
        return line

    # -- conversion ---------------------------------------------------------------------------

    def unknown_ids(self) -> list:
        return list(dict.fromkeys(c for f in self.items for c in f.unknown_cites))

    def to_dict(self) -> dict:
        return {"items": [asdict(f) for f in self.items], "free_text": self.free_text, "source": self.source,
                "image_ids": list(self.image_ids), "unknown_ids": self.unknown_ids(), "review": self.summary()}

    @classmethod
    def from_dict(cls, data: dict) -> "Findings":
        """Inverse of :meth:`to_dict`; ValueError for anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("items", []), list):
            raise ValueError("findings must be an object with a list of items")
        return cls([Finding.from_dict(item) for item in data.get("items", [])], str(data.get("free_text", "")),
                   str(data.get("source", "tags")), [str(i) for i in data.get("image_ids", [])])

    def to_text(self) -> str:
        """Readable report text: Findings (one per line with citations), Impression, free text."""
        lines = []
        for section in SECTIONS:
            chosen = [f for f in self.items if f.section == section]
            if chosen:
                lines.append(f"{section.capitalize()}:")
                lines += [f"- {f.cited_text()}" for f in chosen]
                lines.append("")
        if self.free_text.strip():
            lines.append(self.free_text.strip())
        return "\n".join(lines).strip() + "\n"


def _check_ids(ids, known) -> tuple:
    """(IDs the selection holds, IDs it does not), upper-cased and without repeats, in order."""
    wanted = {k.upper(): k for k in known}
    cites, unknown = [], []
    for raw in ids:
        name = str(raw).strip()
        if not name:
            continue
        target = cites if name.upper() in wanted else unknown
        value = wanted.get(name.upper(), name.upper())
        if value not in target:
            target.append(value)
    return cites, unknown


def split_citations(text: str, known) -> tuple:
    """``(text without tags, cited IDs held, cited IDs not held)`` of one finding."""
    ids = [match.group(0) for tag in _TAG.finditer(text) for match in _ID_IN_TAG.finditer(tag.group(1))]
    body = _TAG.sub("", text)
    body = re.sub(r"\s+([.,;:])", r"\1", " ".join(body.split())).strip()
    cites, unknown = _check_ids(ids, known)
    return body, cites, unknown


def _pieces(line: str) -> list:
    """A line cut after each citation tag: one piece per cited sentence (a remnant without tag last)."""
    pieces, start = [], 0
    for tag in _TAG.finditer(line):
        end = tag.end()
        while end < len(line) and line[end] in ".;,":
            end += 1
        pieces.append(line[start:end])
        start = end
    rest = line[start:]
    if rest.strip(" .;,"):
        pieces.append(rest)
    elif pieces:
        pieces[-1] += rest
    return [p.strip() for p in pieces if p.strip()]


def parse_tagged(text: str, image_ids) -> Findings:
    """Findings from a free-text answer that cites images with ``[A1, C2]`` tags.

    Under a *Findings:* header every line (bullet) is a finding, cited or not; under *Impression:*
    the lines are impression items; elsewhere a line is a finding only if it cites an image, else
    free text. A line citing several times is cut after each tag. If the answer has neither
    headers nor tags, it all stays free text.
    """
    items, free = [], []
    section = None
    for raw_line in (text or "").splitlines():
        line = raw_line.strip()
        header = _HEADER.match(line)
        if header and (header.end() == len(line) or line[header.end() - 1:header.end()] in (":", " ", "*")):
            section = header.group(1).lower()
            line = line[header.end():].strip()
        line = _BULLET.sub("", line).strip()
        if not line:
            continue
        if section is None and not _TAG.search(line):
            free.append(raw_line.strip())
            continue
        for piece in _pieces(line):
            body, cites, unknown = split_citations(piece, image_ids)
            if body:
                items.append(Finding(body, cites, unknown, section or "findings"))
    items.sort(key=lambda f: SECTIONS.index(f.section))  # stable: report order within each section
    return Findings(items, "\n".join(free), "tags", list(image_ids))


# -- structured output ------------------------------------------------------------------------


def findings_schema(image_ids) -> dict:
    """The JSON schema the model is asked to answer in (properties in the order they are written).

    ``images`` lists only the IDs that were sent, so a server that enforces the schema cannot let
    the model cite an image it never saw; :func:`parse_structured` checks them anyway.
    """
    cited = {"type": "array", "items": {"type": "string", "enum": list(image_ids)}, "maxItems": len(image_ids)}
    item = {"type": "object", "properties": {"text": {"type": "string", "maxLength": MAX_TEXT_CHARS},
                                             "images": cited},
            "required": ["text", "images"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"findings": {"type": "array", "items": item, "maxItems": MAX_FINDINGS},
                           "impression": item},
            "required": ["findings", "impression"], "additionalProperties": False}


STRUCTURED_INSTRUCTION = ("Answer with one JSON object only: \"findings\" is a list of objects, each with \"text\" "
                          "(one finding) and \"images\" (the IDs of the images that show it); \"impression\" is one "
                          "such object with the short summary.")


def _item(data, section, image_ids):
    if not isinstance(data, dict) or not isinstance(data.get("text", ""), str):
        raise ValueError(f"each {section} item must be an object with a text")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise ValueError(f"the images of a {section} item must be a list")
    body, tag_cites, tag_unknown = split_citations(data.get("text", ""), image_ids)
    cites, unknown = _check_ids([*images, *tag_cites, *tag_unknown], image_ids)
    return Finding(body, cites, unknown, section) if body else None


def parse_structured(answer: str, image_ids) -> Findings:
    """Findings from a JSON answer of :func:`findings_schema`.

    Raises
    ------
    ValueError
        If the answer is not such JSON (the caller then falls back to :func:`parse_tagged`).
    """
    try:
        data = json.loads(answer)
    except ValueError as error:
        raise ValueError(f"the answer is not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        raise ValueError("the answer has no list of findings")
    items = [_item(entry, "findings", image_ids) for entry in data["findings"]]
    impression = data.get("impression")
    if isinstance(impression, str):
        impression = {"text": impression, "images": []}
    if impression is not None:
        items.append(_item(impression, "impression", image_ids))
    extra = {key: value for key, value in data.items() if key not in ("findings", "impression")}
    free = json.dumps(extra, ensure_ascii=False) if extra else ""
    return Findings([f for f in items if f is not None], free, "structured", list(image_ids))


def findings_from_answer(answer: str, image_ids, structured: bool) -> tuple:
    """``(Findings, note)``: the structured JSON if asked for and valid, else the tags of the text.

    ``note`` says why a structured answer was not used ("" otherwise).
    """
    if structured:
        try:
            return parse_structured(answer, image_ids), ""
        except ValueError as error:
            note = f"structured answer unusable ({error}); findings parsed from the image tags of the text"
            return parse_tagged(answer, image_ids), note
    return parse_tagged(answer, image_ids), ""


class StructuredStream:
    """Turns a streamed JSON answer of :func:`findings_schema` into readable text as it arrives.

    Feed the raw pieces to :meth:`feed`; it returns the readable text that became certain (for
    the report box). An answer that does not start with ``{`` is passed through unchanged (a
    server that ignored the request for JSON).
    """

    def __init__(self):
        self.raw = []
        self._shown = ""
        self._mode = None  # None until the first visible character, then "json" or "text"

    def feed(self, piece: str) -> str:
        self.raw.append(piece)
        if self._mode is None:
            head = "".join(self.raw).lstrip()
            if not head:
                return ""
            self._mode = "json" if head.startswith("{") else "text"
            if self._mode == "text":
                self._shown = "".join(self.raw)
                return self._shown
        if self._mode == "text":
            self._shown += piece
            return piece
        rendered = render_partial_json("".join(self.raw))
        if not rendered.startswith(self._shown):
            return ""  # the answer went off the expected order; the final text will say it all
        delta, self._shown = rendered[len(self._shown):], rendered
        return delta


_STRING = re.compile(r'"((?:[^"\\]|\\.)*)("?)', re.S)


def _unescape_partial(body: str) -> str:
    """A JSON string body that may stop in the middle of an escape."""
    body = re.sub(r"\\u[0-9a-fA-F]{0,3}$|\\$", "", body)
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return body


def render_partial_json(raw: str) -> str:
    """Readable text of the beginning of a findings JSON answer: what is certain so far.

    Finding texts appear as their characters arrive, each citation once its ID is complete. A
    small tokenizer with a stack of open objects and arrays tells keys from values.
    """
    out = []
    header = {"shown": None}
    stack = []  # {"kind": "obj"|"arr", "key": current key (obj) or own key (arr), "want_key", "item", "count"}
    position = 0
    while position < len(raw):
        char = raw[position]
        top = stack[-1] if stack else None
        if char == '"':
            match = _STRING.match(raw, position)
            value, closed = _unescape_partial(match.group(1)), bool(match.group(2))
            if top is not None and top["kind"] == "obj" and top["want_key"]:
                if not closed:
                    break
                top["key"], top["want_key"] = value, False
            elif top is not None and top["kind"] == "obj" and top["item"] and top["key"] == "text":
                out.append(value)
            elif top is not None and top["kind"] == "arr" and top["key"] == "images" and closed:
                out.append((" [" if not top["count"] else ", ") + value)
                top["count"] += 1
            if not closed:
                break
            position = match.end()
            continue
        parent_key = None if top is None else top["key"]
        if char == "{":
            item = (top is not None and ((top["kind"] == "arr" and parent_key == "findings")
                                         or (len(stack) == 1 and parent_key == "impression")))
            stack.append({"kind": "obj", "key": None, "want_key": True, "item": item, "count": 0})
            if item:
                section = stack[0]["key"]
                if section != header["shown"]:  # a section's header comes with its first item
                    out.append(("\n" if out else "") + f"{section.capitalize()}:\n")
                    header["shown"] = section
                out.append("- ")
        elif char == "[":
            stack.append({"kind": "arr", "key": parent_key, "want_key": False, "item": False, "count": 0})
        elif char in "]}" and stack:
            frame = stack.pop()
            if frame["kind"] == "arr" and frame["key"] == "images" and frame["count"]:
                out.append("]")
            if frame["kind"] == "obj" and frame["item"]:
                out.append("\n")
        elif char == "," and top is not None and top["kind"] == "obj":
            top["want_key"] = True
        position += 1
    return "".join(out)
