"""Structured output against real loopback servers: ``votemi serve`` with the tiny model, and fallbacks."""

import json
import subprocess
import sys

import pytest

from vlm_fixtures import ScriptedServer, complete_json, error_answer, serve_process
from VoteMILib.findings import findings_schema
from VoteMILib.vlm import DescribeSettings, describe


@pytest.fixture(scope="module")
def serve_url(tiny_vlm_dir):
    with serve_process(tiny_vlm_dir) as url:
        yield url


def test_votemi_serve_answers_the_findings_schema(serve_url, mri_volume, mri_selection):
    pieces = []
    report = describe(mri_volume, mri_selection, DescribeSettings(server_url=serve_url, max_tokens=200, long_side=64),
                      on_text=pieces.append)
    structured = report.meta["structured_output"]
    assert structured["sent"] and structured["used"] and not structured["note"]
    assert report.complete and report.meta["finish_reason"] == "stop"
    data = json.loads(report.meta["raw_answer"])  # a random model, held to the schema by constrained decoding
    assert list(data) == ["findings", "impression"]
    ids = [image["id"] for image in report.meta["images"]]
    assert report.findings.source == "structured" and report.findings.items
    assert all(set(f.cites) <= set(ids) and not f.unknown_cites for f in report.findings.items)
    assert len(pieces) > 3 and report.text.startswith(("Findings:", "Impression:"))


def test_votemi_serve_refuses_a_schema_it_cannot_enforce(serve_url):
    import urllib.error
    import urllib.request

    body = {"model": "x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}}}
    request = urllib.request.Request(serve_url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400
    error = json.loads(raised.value.read())["error"]
    assert "'pattern' is not supported" in error["message"] and error["param"].startswith("response_format")


def test_server_ignoring_the_schema_falls_back_to_tags(scripted_server, mri_volume, mri_selection):
    report = describe(mri_volume, mri_selection, DescribeSettings(server_url=scripted_server.url, long_side=64))
    body = scripted_server.chat_requests()[-1]
    assert body["response_format"]["json_schema"]["schema"] == findings_schema([i["id"] for i in
                                                                                report.meta["images"]])
    assert report.findings.source == "tags" and not report.meta["structured_output"]["used"]
    assert "ignored the response schema" in report.meta["structured_output"]["note"]
    assert report.findings.items[0].cites == ["A1"]


def test_server_refusing_the_schema_is_asked_again_for_tags(scripted_server, mri_volume, mri_selection):
    scripted_server.script.append(error_answer(400, {"error": {"message": "response_format is not supported"}}))
    scripted_server.script.append(complete_json("Findings: mass [A1, C9]."))
    report = describe(mri_volume, mri_selection, DescribeSettings(server_url=scripted_server.url, long_side=64,
                                                          stream=False))
    first, second = scripted_server.chat_requests()[-2:]
    assert "response_format" in first and "response_format" not in second
    assert "Answer with one JSON object" not in second["messages"][0]["content"][-1]["text"]
    assert "refused structured output" in report.meta["structured_output"]["note"]
    finding = report.findings.items[0]
    assert (finding.cites, finding.unknown_cites) == (["A1"], ["C9"])


def test_other_errors_are_not_retried(scripted_server, mri_volume, mri_selection):
    from VoteMILib.vlm import VLMError

    scripted_server.script.append(error_answer(401, {"error": "invalid api key"}))
    with pytest.raises(VLMError, match="401"):
        describe(mri_volume, mri_selection, DescribeSettings(server_url=scripted_server.url, long_side=64, retries=0))
    assert len(scripted_server.chat_requests()) == 1


def test_ollama_gets_the_schema_as_format(scripted_server, mri_volume, mri_selection):
    answer = json.dumps({"findings": [{"text": "Blob", "images": ["C1"]}], "impression": {"text": "x", "images": []}})
    scripted_server.script.append(complete_json(answer, protocol="ollama"))
    report = describe(mri_volume, mri_selection, DescribeSettings(server_url=scripted_server.url, backend="ollama",
                                                          model="m", long_side=64, stream=False))
    assert scripted_server.chat_requests()[-1]["format"]["required"] == ["findings", "impression"]
    assert report.findings.source == "structured" and report.findings.items[0].cites == ["C1"]


def test_structured_off_sends_no_schema(scripted_server, mri_volume, mri_selection):
    describe(mri_volume, mri_selection,
             DescribeSettings(server_url=scripted_server.url, long_side=64, structured="off"))
    assert "response_format" not in scripted_server.chat_requests()[-1]


def test_cli_events_and_json_carry_the_findings(image_path, tmp_path):
    with ScriptedServer() as server:
        out = tmp_path / "out.json"
        done = subprocess.run([sys.executable, "-m", "VoteMILib.cli", "describe", image_path, "--server", server.url,
                               "--slices-per-plane", "1", "--long-side", "64", "--json", str(out), "--events"],
                              capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [event["event"] for event in events]
    assert done.returncode == 0 and kinds.index("findings") < kinds.index("report") < kinds.index("done")
    findings = events[kinds.index("findings")]["findings"]
    assert findings["items"][0]["cites"] == ["A1"] and findings["review"]["state"] == "draft"
    assert json.loads(out.read_text(encoding="utf-8"))["findings"] == findings
