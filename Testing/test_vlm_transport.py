"""Talking to model servers safely: credentials in the URL, answer size caps, redirects and streams
without a Content-Type, each against a real loopback server."""

from __future__ import annotations

import base64
import json
import socket

import pytest

from vlm_fixtures import complete_json, error_answer, redirect, send_json, streamed
from VoteMILib.cli import main
from VoteMILib.vlm import DescribeSettings, VLMError, build_request, describe, list_models
from VoteMILib.vlm.clients import OpenAIClient
from VoteMILib.vlm.urls import parse_server_url, redact_url

SECRET = "pa/ss-s3cret"  # a "/" must be percent-encoded in a URL: pa%2Fss-s3cret
QUERY_SECRET = "q-t0ken"


def settings_for(url, **changes):
    values = dict(server_url=url, model="tiny-vlm", long_side=48, top_k=1, retries=0, connect_timeout_s=2.0,
                  idle_timeout_s=5.0, timeout_s=20.0)
    values.update(changes)
    return DescribeSettings(**values)


def with_credentials(url, password="pa%2Fss-s3cret"):
    return url.replace("http://", f"http://alice:{password}@") + f"/?key={QUERY_SECRET}"


def _secret_free(*texts):
    for text in texts:
        assert "s3cret" not in text and QUERY_SECRET not in text and "alice" not in text, text


# --- credentials ---------------------------------------------------------------------------------


def test_url_credentials_go_as_basic_auth_and_nowhere_else(scripted_server, image_path, tmp_path, capsys):
    out, report = tmp_path / "out.json", tmp_path / "report.md"
    url = with_credentials(scripted_server.url)
    assert main(["describe", image_path, "--server", url, "--model", "tiny-vlm", "--slices-per-plane", "1",
                 "--long-side", "48", "--json", str(out), "--report", str(report)]) == 0
    captured = capsys.readouterr()
    method, path, headers, _ = scripted_server.requests[-1]
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert path == f"/v1/chat/completions?key={QUERY_SECRET}"  # the query goes with every request
    document = json.loads(out.read_text(encoding="utf-8"))
    meta = document["report_meta"]
    assert meta["server"] == f"{scripted_server.url}?key=***"
    assert meta["settings"]["server_url"] == redact_url(url) == f"{scripted_server.url}/?key=***"
    _secret_free(captured.out, captured.err, out.read_text(encoding="utf-8"), report.read_text(encoding="utf-8"))


def test_event_mode_carries_no_secret(scripted_server, image_path, capsys):
    url = with_credentials(scripted_server.url)
    password_only = url.partition("/?")[0]  # the scripted server lists models at /v1/models without a query
    assert main(["models", "--server", password_only, "--events"]) == 0
    assert main(["describe", image_path, "--server", url, "--model", "tiny-vlm", "--slices-per-plane", "1",
                 "--long-side", "48", "--events"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert events[0] == {"event": "models", "server": scripted_server.url, "models": ["tiny-vlm"]}
    assert [e["event"] for e in events].count("report") == 1
    _secret_free(captured.out, captured.err)


def test_secrets_stay_out_of_every_error(scripted_server, mri_volume, mri_selection, capsys):
    messages = []
    scripted_server.script.append(error_answer(401, {"error": "bad credentials"}))
    with pytest.raises(VLMError) as caught:
        describe(mri_volume, mri_selection, settings_for(with_credentials(scripted_server.url)))
    assert "HTTP 401" in str(caught.value)
    messages += [str(caught.value), repr(caught.value), json.dumps(caught.value.report.meta)]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(VLMError, match="connection refused") as caught:
        list_models(settings_for(with_credentials(closed)))
    messages.append(str(caught.value))
    # An unencoded "/" in the password puts part of it where urlsplit looks for the port or path.
    for broken in ("http://alice:pa/ss-s3cret@127.0.0.1:9", "http://alice:12/s3cret@127.0.0.1:9",
                   "http://alice:p?ss-s3cret@127.0.0.1:9", "http://alice:s3cret@:9"):
        with pytest.raises(VLMError, match="invalid server URL") as caught:
            parse_server_url(broken)
        messages.append(str(caught.value))
    with pytest.raises(VLMError, match="give only one") as caught:
        settings_for(with_credentials(scripted_server.url), api_key="k").validate()
    messages.append(str(caught.value))
    assert main(["describe", "/nonexistent.nii.gz", "--server", "http://alice:pa/ss-s3cret@host:1"]) == 2
    messages.append(capsys.readouterr().err)
    messages.append(repr(parse_server_url(with_credentials(scripted_server.url))))
    _secret_free(*messages)


def test_report_meta_in_mrml_and_a_saved_scene_holds_no_secret(scripted_server, mri_volume, mri_selection, tmp_path):
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
    from VoteMILib import mrml

    report = describe(mri_volume, mri_selection, settings_for(with_credentials(scripted_server.url)))
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTextNode", "VoteMI report")
    mrml.finish_report(node, report)
    assert node.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "server") == f"{scripted_server.url}?key=***"
    scene.SetURL(str(tmp_path / "scene.mrml"))
    scene.Commit()
    _secret_free((tmp_path / "scene.mrml").read_text(encoding="utf-8", errors="replace"))


# --- size cap, redirects, streams without Content-Type -------------------------------------------


def _client(server, **options):
    return OpenAIClient(server.url, retries=0, **options)


def test_streamed_answer_is_capped_like_a_whole_one(scripted_server, mri_volume, mri_selection):
    prompt = build_request(mri_volume, mri_selection, settings_for(scripted_server.url))
    scripted_server.script.append(streamed(["x" * 99 + " "] * 3000))  # about 430 kB of events
    result = _client(scripted_server, max_answer_bytes=64 * 1024).chat(prompt, "tiny-vlm")
    assert not result.complete and 0 < len(result.text) < 64 * 1024
    assert set(result.text) == {"x", " "} and len(result.text) % 100 == 0  # whole pieces, up to the cap
    assert "larger than 64 kB; the text up to there is kept" in result.incomplete_reason
    scripted_server.script.append(complete_json("y" * 100_000))
    with pytest.raises(VLMError, match="the answer is larger than 64 kB"):
        _client(scripted_server, max_answer_bytes=64 * 1024).chat(prompt, "tiny-vlm", _no_stream())


def _no_stream():
    from VoteMILib.vlm import GenerationOptions

    return GenerationOptions(stream=False)


def test_redirects_are_reported_not_followed(scripted_server, mri_volume, mri_selection):
    base = scripted_server.url
    scripted_server.script.append(redirect(307, "http://10.9.9.9:8000/v1/chat/completions"))
    with pytest.raises(VLMError) as caught:
        describe(mri_volume, mri_selection, settings_for(base))
    message = str(caught.value)
    assert message.startswith(f"{base}: HTTP 307 Temporary Redirect, redirected to "
                              "http://10.9.9.9:8000/v1/chat/completions (VoteMI does not follow redirects")
    assert message.endswith("set the server URL to http://10.9.9.9:8000)") and "\n" not in message
    assert len(scripted_server.chat_requests()) == 1  # nothing sent anywhere else
    scripted_server.script.append(redirect(301, "/ollama/v1/chat/completions"))
    with pytest.raises(VLMError, match=rf"redirected to {base}/ollama/v1/chat/completions "
                                       rf"\(set the server URL to {base}/ollama\)"):
        describe(mri_volume, mri_selection, settings_for(base))
    scripted_server.script.append(redirect(308, "https://alice:s3cret@other.example/v1/chat/completions?key=1"))
    elsewhere = r"redirected to https://other.example/v1/chat/completions\?key=\*\*\*"
    with pytest.raises(VLMError, match=elsewhere) as caught:
        describe(mri_volume, mri_selection, settings_for(base))
    _secret_free(str(caught.value))


@pytest.mark.parametrize("protocol, answer", [
    ("openai", streamed(["Findings: ", "none."], content_type=None)),  # SSE
    ("openai", streamed(["Findings: ", "none."], content_type=None, space=False)),  # "data:" without a space
    ("openai", streamed(["Findings: ", "none."], content_type=None, ndjson=True)),  # chunks, one per line
    ("ollama", streamed(["Findings: ", "none."], protocol="ollama", content_type=None)),
    ("openai", streamed(["Findings: ", "none."], content_type="application/octet-stream")),
    ("openai", complete_json("Findings: none.", content_type=None)),
    ("openai", complete_json("Findings: none.", content_type=None, indent=2)),
    ("ollama", complete_json("Findings: none.", protocol="ollama", content_type=None)),
], ids=["sse", "sse-no-space", "ndjson-openai", "ndjson-ollama", "sse-octet-stream", "json-line", "json-pretty",
        "ollama-json"])
def test_answers_without_content_type_are_recognised_by_their_first_bytes(scripted_server, mri_volume, mri_selection,
                                                                          protocol, answer):
    scripted_server.script.append(answer)
    report = describe(mri_volume, mri_selection, settings_for(scripted_server.url, backend=protocol))
    assert report.text == "Findings: none." and report.complete, report.meta.get("incomplete_reason")


def test_a_page_without_content_type_is_still_reported_as_html(scripted_server, mri_volume, mri_selection):
    scripted_server.script.append(error_answer(200, b"<html><title>Router login</title></html>", None))
    with pytest.raises(VLMError, match="answered with an HTML page"):
        describe(mri_volume, mri_selection, settings_for(scripted_server.url))
    scripted_server.script.append(lambda handler, body: send_json(handler, 200, {"error": "model not loaded"}))
    with pytest.raises(VLMError, match="model not loaded"):
        describe(mri_volume, mri_selection, settings_for(scripted_server.url))
