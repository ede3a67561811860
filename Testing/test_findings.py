"""Findings as data: tag parsing, the structured answer, its schema automaton, streaming and review."""

import json
import random

import pytest

from VoteMILib.findings import (MAX_FINDINGS, MAX_TEXT_CHARS, Findings, StructuredStream, findings_from_answer,
                                findings_schema, parse_structured, parse_tagged, render_partial_json)
from VoteMILib.vlm.constrained import (SchemaError, TokenTable, advance, allowed_tokens, check_schema,
                                       initial_state, is_complete, min_length)

IDS = ["A1", "A2", "C1", "S1"]
TAGGED = """Here is the draft.
**Findings:**
- Large mass in the left frontal lobe [A1, C1]. Surrounding oedema [A2; S9].
- Ventricles are symmetric.
Impression: Left frontal tumour [A1].
"""


def test_tags_become_findings_and_unknown_ids_are_flagged_not_dropped():
    findings = parse_tagged(TAGGED, IDS)
    assert [(f.section, f.text, f.cites, f.unknown_cites) for f in findings.items] == [
        ("findings", "Large mass in the left frontal lobe.", ["A1", "C1"], []),
        ("findings", "Surrounding oedema.", ["A2"], ["S9"]),
        ("findings", "Ventricles are symmetric.", [], []),
        ("impression", "Left frontal tumour.", ["A1"], []),
    ]
    assert findings.free_text == "Here is the draft."
    assert findings.unknown_ids() == ["S9"]
    assert findings.source == "tags"


def test_text_without_headers_or_tags_stays_free_text():
    findings = parse_tagged("The model could not assess these images.", IDS)
    assert findings.items == [] and findings.free_text == "The model could not assess these images."


def test_structured_answer_and_its_unknown_ids():
    answer = json.dumps({"findings": [{"text": "Mass [C1]", "images": ["a1", "X7"]}, {"text": "", "images": []}],
                         "impression": {"text": "Tumour.", "images": ["A1"]}})
    findings = parse_structured(answer, IDS)
    assert [(f.text, f.cites, f.unknown_cites, f.section) for f in findings.items] == [
        ("Mass", ["A1", "C1"], ["X7"], "findings"), ("Tumour.", ["A1"], [], "impression")]
    assert findings.source == "structured"


def test_unusable_structured_answer_falls_back_to_tags():
    findings, note = findings_from_answer(TAGGED, IDS, structured=True)
    assert findings.source == "tags" and len(findings.items) == 4 and "not JSON" in note
    with pytest.raises(ValueError):
        parse_structured('{"impression": "x"}', IDS)


def test_review_states_summary_and_round_trip():
    findings = parse_tagged(TAGGED, IDS)
    assert findings.summary()["state"] == "draft" and not findings.has_review
    findings.accept(0, "dr.a", when="2026-01-02T10:00:00+00:00")
    findings.edit(1, "Oedema around the mass [A2]", "dr.a", when="2026-01-02T10:01:00+00:00")
    findings.reject(2, "dr.b", when="2026-01-02T10:02:00+00:00")
    assert findings.items[1].original_text == "Surrounding oedema." and findings.items[1].cites == ["A2"]
    assert findings.items[1].unknown_cites == []
    assert findings.summary_line() == ("Draft: 2 of 4 accepted (1 edited), 1 rejected; reviewed by dr.a, dr.b, "
                                       "last 2026-01-02T10:02:00+00:00")
    findings.accept(3, "dr.b")
    assert findings.summary()["state"] == "reviewed"
    again = Findings.from_dict(json.loads(json.dumps(findings.to_dict())))
    assert again.to_dict() == findings.to_dict()
    assert again.accept(1, "dr.c").status == "edited"  # accepting an edited finding keeps the reviewer's text
    assert again.items[1].text == "Oedema around the mass" and again.items[1].reviewer == "dr.c"


@pytest.mark.parametrize("step", [1, 2, 5, 17])
def test_streamed_json_is_shown_as_readable_text_as_it_arrives(step):
    document = {"findings": [{"text": 'Mass, "lobulated" [x] {left}', "images": ["A1", "C1"]},
                             {"text": "No bleed", "images": []}],
                "impression": {"text": "Tumour.", "images": ["A1"]}}
    for raw in (json.dumps(document), json.dumps(document, indent=2)):
        stream = StructuredStream()
        shown = [stream.feed(raw[n:n + step]) for n in range(0, len(raw), step)]
        assert "".join(shown) == render_partial_json(raw) == parse_structured(raw, IDS).to_text()
        assert sum(bool(piece) for piece in shown) > 3  # it really streams


def test_free_text_answer_streams_unchanged():
    stream = StructuredStream()
    assert "".join(stream.feed(piece) for piece in ["  Find", "ings: x [A1]"]) == "  Findings: x [A1]"


class _CharTokenizer:
    """Printable ASCII, a few multi-character tokens, a special token and a piece of UTF-8."""

    all_special_ids = [0]
    vocab = ["<eos>"] + [chr(c) for c in range(32, 127)] + ['{"', '":', '","', "ab c", '"}', "\\n", "\ufffd", "\n"]

    def __len__(self):
        return len(self.vocab)

    def decode(self, ids, skip_special_tokens=False):
        return self.vocab[ids[0]]


def test_schema_automaton_always_ends_in_valid_json_within_the_budget():
    schema = findings_schema(IDS)
    tokenizer = _CharTokenizer()
    table = TokenTable(tokenizer)
    rng = random.Random(0)
    for _ in range(150):
        budget = rng.choice([min_length(schema), 80, 300, 3000])
        state, text, used = initial_state(schema), "", 0
        while not is_complete(state):
            choices = allowed_tokens(state, table, budget - used)
            assert choices and 0 not in choices
            token = rng.choice(choices)
            text += tokenizer.vocab[token]
            state = advance(state, tokenizer.vocab[token])
            used += 1
        assert used <= budget
        data = json.loads(text)
        assert list(data) == ["findings", "impression"] and len(data["findings"]) <= MAX_FINDINGS
        for item in [*data["findings"], data["impression"]]:
            assert list(item) == ["text", "images"] and len(item["text"]) <= MAX_TEXT_CHARS
            assert set(item["images"]) <= set(IDS)


def test_schema_automaton_refuses_what_the_schema_forbids():
    state = initial_state(findings_schema(IDS))
    assert advance(state, '{"findings":[],"impression":{"text":"x","images":["A1"]}}') == ()
    assert advance(state, '{"impression"') is None
    assert advance(state, '{"findings":[{"text":"x","images":["A9"]') is None
    assert advance(state, '{"findings":[],') is not None and advance(state, '{"findings":[],}') is None
    other = {"type": "object", "properties": {"n": {"type": "integer"}, "b": {"type": "boolean"},
                                              "e": {"enum": [1, 12, "x"]}, "z": {"type": "null"}}}
    assert advance(initial_state(other), '{"n":120,"b":false,"e":12,"z":null}') == ()
    assert advance(initial_state(other), '{"n":012') is None


def test_unsupported_schema_keywords_are_refused():
    check_schema(findings_schema(IDS))
    with pytest.raises(SchemaError, match="'anyOf' is not supported"):
        check_schema({"type": "object", "properties": {"a": {"anyOf": []}}})
    with pytest.raises(SchemaError, match="type"):
        check_schema({"type": ["string", "null"]})
