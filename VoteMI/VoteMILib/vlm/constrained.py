"""Structured output for the in-process model and ``votemi serve``: decoding constrained to a JSON schema.

The schema (a subset of JSON Schema, see :data:`SUPPORTED_KEYWORDS`) is compiled to a character
automaton for compact JSON (no whitespace, object properties in the schema's order, every property
written). While the model generates, :class:`SchemaLogits` masks every token that would leave the
automaton or that would leave too few tokens to close the JSON within ``max_new_tokens``, so the
answer is valid JSON of the schema whenever the budget allows its shortest instance at all.

States are immutable tuples of frames (top last), so trying a token on a state costs no copy.
"""

from __future__ import annotations

import json

import numpy as np

#: Keywords understood; anything else in a schema is refused (it would not be enforced).
SUPPORTED_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "minItems",
                                "maxItems", "enum", "const", "minLength", "maxLength", "title", "description",
                                "$schema"})
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
#: Longest integer (digits) the automaton writes.
MAX_DIGITS = 15
_ESCAPES = '"\\/bfnrt'


class SchemaError(ValueError):
    """A schema outside the supported subset; the message names the keyword or value."""


def check_schema(schema, where: str = "schema") -> None:
    """Raise :class:`SchemaError` unless ``schema`` is in the supported subset."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{where} must be an object")
    unknown = sorted(set(schema) - SUPPORTED_KEYWORDS)
    if unknown:
        raise SchemaError(f"{where}: keyword '{unknown[0]}' is not supported (supported: "
                          f"{', '.join(sorted(SUPPORTED_KEYWORDS))})")
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{where}.enum must be a non-empty list")
        return
    kind = schema.get("type")
    if kind not in _TYPES:
        raise SchemaError(f"{where}.type must be one of {', '.join(_TYPES)} (a list of types is not supported)")
    if kind == "object":
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError(f"{where}.properties must be an object")
        for name, sub in properties.items():
            check_schema(sub, f"{where}.properties.{name}")
    elif kind == "array":
        check_schema(schema.get("items", {"type": "string"}), f"{where}.items")
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(low, int) or (high is not None and (not isinstance(high, int) or high < low)):
            raise SchemaError(f"{where}: minItems/maxItems must be integers with minItems <= maxItems")
    elif kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if not isinstance(low, int) or (high is not None and (not isinstance(high, int) or high < low)):
            raise SchemaError(f"{where}: minLength/maxLength must be integers with minLength <= maxLength")


def _literal_choices(schema) -> tuple:
    values = schema["enum"] if "enum" in schema else [schema["const"]]
    return tuple(json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values)


def min_length(schema) -> int:
    """Characters of the shortest compact JSON instance of ``schema``."""
    if "enum" in schema or "const" in schema:
        return min(len(c) for c in _literal_choices(schema))
    kind = schema["type"]
    if kind == "object":
        properties = schema.get("properties", {})
        return 2 + max(0, len(properties) - 1) + sum(len(json.dumps(name)) + 1 + min_length(sub)
                                                     for name, sub in properties.items())
    if kind == "array":
        low = schema.get("minItems", 0)
        item = min_length(schema.get("items", {"type": "string"}))
        return 2 + low * item + max(0, low - 1)
    if kind == "string":
        return 2 + schema.get("minLength", 0)
    if kind in ("integer", "number"):
        return 1
    return 4  # null, or true (false is longer)


# Frames:
#   ("value", schema)                         a value of schema comes next
#   ("lit", text)                             exactly this text comes next
#   ("choice", options, typed)                one of these literals; ``typed`` so far
#   ("str", length, min, max, escape)         inside a free string (escape: 0 none, 1 after a backslash)
#   ("arr", item_schema, count, min, max, where)  inside an array: after "open" '[', an item ("after")
#                                             or a "comma"
#   ("int", digits)                           an integer, ``digits`` written (a leading '-' counts 0)


def initial_state(schema) -> tuple:
    check_schema(schema)
    return (("value", schema),)


def _expand(state: tuple, char: str):
    """``state`` with ``char`` consumed, or None if it cannot come next."""
    if not state:
        return None
    frame = state[-1]
    rest = state[:-1]
    kind = frame[0]
    if kind == "lit":
        text = frame[1]
        if char != text[0]:
            return None
        return rest + (("lit", text[1:]),) if len(text) > 1 else rest
    if kind == "choice":
        typed = frame[2] + char
        options = tuple(o for o in frame[1] if o.startswith(typed))
        if options:
            return rest if options == (typed,) else rest + (("choice", options, typed),)
        if frame[2] in frame[1]:  # an option that is a prefix of another (1 and 12) ended here
            return _expand(rest, char)
        return None
    if kind == "str":
        length, low, high, escape = frame[1:]
        if escape:
            return rest + (("str", length + 1, low, high, 0),) if char in _ESCAPES else None
        if char == '"':
            return rest if length >= low else None
        if high is not None and length >= high:
            return None
        if char == "\\":
            return rest + (("str", length, low, high, 1),)
        if ord(char) < 0x20:
            return None
        return rest + (("str", length + 1, low, high, 0),)
    if kind == "int":
        digits = frame[1]
        if char.isdigit() and char.isascii():
            if digits >= MAX_DIGITS or (digits == 1 and frame[2] == "0"):
                return None
            return rest + (("int", digits + 1, char if digits == 0 else ""),)
        if digits == 0:
            return None
        return _expand(rest, char)  # the integer ended; the character belongs to what follows
    if kind == "arr":
        item, count, low, high, where = frame[1:]
        if char == "]" and where != "comma" and count >= low:
            return rest
        if where != "after" and (high is None or count < high):
            return _expand(rest + (("arr", item, count + 1, low, high, "after"), ("value", item)), char)
        if where == "after" and char == "," and (high is None or count < high):
            return rest + (("arr", item, count, low, high, "comma"),)
        return None
    if kind == "value":
        return _expand(rest + _open(frame[1]), char)
    raise AssertionError(kind)


def _open(schema) -> tuple:
    """The frames that write a value of ``schema`` (top last)."""
    if "enum" in schema or "const" in schema:
        return (("choice", _literal_choices(schema), ""),)
    kind = schema["type"]
    if kind == "object":
        properties = list(schema.get("properties", {}).items())
        if not properties:
            return (("lit", "{}"),)
        frames = [("lit", "}")]
        for n in range(len(properties) - 1, -1, -1):
            name, sub = properties[n]
            frames.append(("value", sub))
            frames.append(("lit", ("{" if n == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":"))
        return tuple(frames)
    if kind == "array":
        return (("arr", schema.get("items", {"type": "string"}), 0, schema.get("minItems", 0),
                 schema.get("maxItems"), "open"), ("lit", "["))
    if kind == "string":
        return (("str", 0, schema.get("minLength", 0), schema.get("maxLength"), 0), ("lit", '"'))
    if kind in ("integer", "number"):
        return (("int", 0, ""),)
    if kind == "boolean":
        return (("choice", ("true", "false"), ""),)
    return (("lit", "null"),)


def advance(state: tuple, text: str):
    """``state`` after ``text``, or None if ``text`` cannot come next."""
    for char in text:
        state = _expand(state, char)
        if state is None:
            return None
    return state


def is_complete(state: tuple) -> bool:
    """True once the JSON value is finished (an integer at the end counts as finished)."""
    return all(frame[0] == "int" and frame[1] > 0 for frame in state)


def distance(state: tuple) -> int:
    """Fewest characters that finish the value from ``state``."""
    total = 0
    for frame in state:
        kind = frame[0]
        if kind == "lit":
            total += len(frame[1])
        elif kind == "choice":
            total += min(len(o) for o in frame[1]) - len(frame[2])
        elif kind == "str":
            total += max(0, frame[2] - frame[1]) + 1 + frame[4]
        elif kind == "int":
            total += 0 if frame[1] else 1
        elif kind == "arr":
            item, count, low = frame[1], frame[2], frame[3]
            missing = max(0, low - count) or (1 if frame[5] == "comma" else 0)
            total += 1 + missing * (min_length(item) + 1)
        elif kind == "value":
            total += min_length(frame[1])
    return total


class TokenTable:
    """Each token's text and the facts the mask needs, computed once per tokenizer.

    Tokens that decode to nothing, to a replacement character (part of a UTF-8 sequence) or that
    are special tokens are never allowed inside the JSON.
    """

    def __init__(self, tokenizer, vocab_size: int | None = None):
        vocab_size = len(tokenizer) if vocab_size is None else vocab_size
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.texts = []
        for token_id in range(vocab_size):
            text = "" if token_id in special else tokenizer.decode([token_id], skip_special_tokens=False)
            self.texts.append("" if "\ufffd" in text else text)
        # Plain text: no quote, backslash or control character; valid anywhere inside a free string.
        plain = [bool(t) and not any(c in '"\\' or ord(c) < 0x20 for c in t) for t in self.texts]
        self.lengths = np.array([len(t) for t in self.texts], dtype=np.int64)
        self.plain_ids = np.flatnonzero(plain)
        #: Tokens with a quote, backslash or control character, as (id, plain characters before it, the rest):
        #: inside a string the plain head only counts, and tokens with the same rest end alike.
        self.others = []
        for token_id, text in enumerate(self.texts):
            if text and not plain[token_id]:
                head = next(n for n, c in enumerate(text) if c in '"\\' or ord(c) < 0x20)
                self.others.append((token_id, head, text[head:]))
        self.by_first = {}
        for token_id, text in enumerate(self.texts):
            if text:
                self.by_first.setdefault(text[0], []).append(token_id)


def allowed_tokens(state: tuple, table: TokenTable, tokens_left: int) -> list:
    """Token IDs that may come next and still leave room to finish within ``tokens_left`` tokens.

    A token is at least one character, so the JSON can always be finished once the characters
    still needed fit into the tokens left after this one.
    """
    allowed = []
    room = tokens_left - 1
    top = state[-1] if state else None
    if top is not None and top[0] == "str" and not top[4]:
        # Inside a free string (most of an answer): plain tokens are judged by length alone, at once.
        length, low, high = top[1], top[2], top[3]
        lengths = table.lengths[table.plain_ids]
        fits = distance(state) - np.minimum(lengths, max(0, low - length)) <= room
        if high is not None:
            fits &= lengths <= high - length
        allowed = table.plain_ids[fits].tolist()
        outside = state[:-1]
        closing = {}  # rest of a token that closes the string -> whether it may come
        for token_id, head, rest in table.others:
            if high is not None and length + head > high:
                continue
            if rest[0] == '"':
                if length + head < low:
                    continue
                if rest not in closing:
                    after_state = advance(outside, rest[1:])
                    closing[rest] = after_state is not None and distance(after_state) <= room
                if closing[rest]:
                    allowed.append(token_id)
                continue
            after_state = advance(outside + (("str", length + head, low, high, 0),), rest)
            if after_state is not None and distance(after_state) <= room:
                allowed.append(token_id)
        return allowed
    for first, ids in table.by_first.items():
        if _expand(state, first) is None:
            continue
        for token_id in ids:
            after_state = advance(state, table.texts[token_id])
            if after_state is not None and distance(after_state) <= room:
                allowed.append(token_id)
    return allowed


def make_logits_processor(transformers, table: TokenTable, schema: dict, prompt_tokens: int, max_new_tokens: int,
                          eos_ids):
    """A transformers ``LogitsProcessor`` and ``StoppingCriteria`` pair enforcing ``schema``.

    The processor keeps the automaton's state in step with the tokens generated so far; the
    stopping criterion ends generation as soon as the JSON is complete (random or fine-tuned
    models alike may never emit their end token otherwise).
    """
    import torch

    vocab_size = len(table.texts)
    tracker = {"state": initial_state(schema), "seen": 0}
    eos = [int(e) for e in eos_ids if e is not None and int(e) < vocab_size]

    def sync(input_ids):
        generated = input_ids[0, prompt_tokens:].tolist()
        for token_id in generated[tracker["seen"]:]:
            state = tracker["state"]
            if state is not None and not is_complete(state):
                state = advance(state, table.texts[token_id] if token_id < vocab_size else "")
            tracker["state"] = state
        tracker["seen"] = len(generated)
        return tracker["state"]

    class Processor(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            state = sync(input_ids)
            if state is None or is_complete(state):
                ids = eos
            else:
                ids = allowed_tokens(state, table, max_new_tokens - tracker["seen"])
            mask = torch.full_like(scores, float("-inf"))
            if ids:
                mask[:, ids] = 0
            return scores + mask

    class Stop(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            state = sync(input_ids)
            return state is None or is_complete(state)

    return Processor(), Stop(), tracker
