"""HTTP clients against a scripted loopback server: both protocols, what is sent, every failure mode."""

import json
import re
import socket
import threading
import time

import pytest

from vlm_fixtures import (complete_json, decode_png, error_answer, make_selection,
                          openai_images_and_texts, position_pattern, streamed)
from VoteMILib.vlm import DescribeSettings, NOTICE, VLMCancelled, VLMError, describe, list_models
from VoteMILib.vlm.error_bodies import error_message_from_body
from VoteMILib.vlm.urls import parse_server_url

LONG_SIDE = 72


@pytest.fixture(scope="module")
def selection(mri_volume):
    return make_selection(mri_volume, top_k=2)


def settings_for(server, **changes):
    values = dict(server_url=server.url, model="tiny-vlm", long_side=LONG_SIDE, retries=2, retry_backoff_s=0.05,
                  connect_timeout_s=2.0, idle_timeout_s=5.0, timeout_s=20.0)
    values.update(changes)
    return DescribeSettings(**values)


def test_openai_streaming_sends_labelled_pngs(scripted_server, mri_volume, selection):
    pieces = []
    report = describe(mri_volume, selection, settings_for(scripted_server, top_k=2), on_text=pieces.append)
    assert report.complete and report.text == "".join(pieces) and len(pieces) == 3
    assert report.meta["notice"] == NOTICE and NOTICE not in report.text
    (body,) = scripted_server.chat_requests()
    assert body["stream"] is True and body["model"] == "tiny-vlm" and body["temperature"] == 0.0
    images, texts = openai_images_and_texts(body)
    chosen = selection.selected()
    assert len(images) == len(chosen) == 6
    for png in images:
        assert max(decode_png(png).size) == LONG_SIDE
    # Each image is immediately followed by its label naming ID, plane and position.
    content = body["messages"][0]["content"]
    for n, slice_ in enumerate(chosen):
        image_at = [i for i, part in enumerate(content) if part["type"] == "image_url"][n]
        label = content[image_at + 1]["text"]
        assert re.match(rf"{slice_.label}: {slice_.plane}, {position_pattern(slice_.plane, slice_.position_mm)}",
                        label)
    assert "Findings" in texts[-1] and "Impression" in texts[-1]
    assert [image["id"] for image in report.meta["images"]] == [s.label for s in chosen]


def test_ollama_native_streaming_and_plain(scripted_server, mri_volume, selection):
    settings = settings_for(scripted_server, backend="ollama", top_k=1, seed=7)
    report = describe(mri_volume, selection, settings)
    assert report.complete and report.text.startswith("Findings")
    assert report.meta["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    body = scripted_server.chat_requests()[-1]
    # One image per message, its label as the text: nothing adjacent for Ollama's frame merge to fuse.
    intro, *image_messages, instruction = body["messages"]
    assert "images" not in intro and "images" not in instruction and len(image_messages) == 3
    for message, slice_ in zip(image_messages, selection.selected()[::2]):  # rank 1 of each plane
        import base64

        assert len(message["images"]) == 1 and message["role"] == "user"
        assert max(decode_png(base64.b64decode(message["images"][0])).size) == LONG_SIDE
        assert re.match(rf"{slice_.label}: {slice_.plane}, {position_pattern(slice_.plane, slice_.position_mm)}",
                        message["content"])
    assert body["options"] == {"temperature": 0.0, "num_predict": 1024, "seed": 7, "num_ctx": 8192}  # the least
    scripted_server.script.append(complete_json("Findings: none.", protocol="ollama"))
    plain = describe(mri_volume, selection, settings_for(scripted_server, backend="ollama", stream=False))
    assert plain.complete and plain.text == "Findings: none."
    assert scripted_server.chat_requests()[-1]["stream"] is False


def test_ollama_num_ctx_fits_what_is_sent(scripted_server, mri_volume, selection):
    from VoteMILib.vlm.packing import DEFAULT_TOKENS_PER_IMAGE

    # A long answer asked for: the old fixed 8192 would cut the prompt's images (Ollama truncates silently).
    report = describe(mri_volume, selection, settings_for(scripted_server, backend="ollama", max_tokens=9000))
    body = scripted_server.chat_requests()[-1]
    images = sum(len(message.get("images", [])) for message in body["messages"])
    text = sum(len(message["content"]) for message in body["messages"])
    num_ctx = body["options"]["num_ctx"]
    # Nothing probed: images costed at MedGemma's 256 tokens, text at 3 characters per token, high.
    assert num_ctx % 1024 == 0 and num_ctx >= 9000 + images * DEFAULT_TOKENS_PER_IMAGE + text // 3
    plan = report.meta["sent"]["context"]
    assert plan["num_ctx"] == num_ctx and plan["tokens_per_image_from"] == "assumed"
    assert f"num_ctx {num_ctx} for about {plan['estimated_tokens']} tokens" in report.to_text()
    assert "one image per message, each with its label" in report.to_text()


def test_openai_non_streaming_and_data_without_space(scripted_server, mri_volume, selection):
    scripted_server.script.append(complete_json("Findings: fine [A1]."))
    report = describe(mri_volume, selection, settings_for(scripted_server, stream=False))
    assert report.text == "Findings: fine [A1]." and report.meta["usage"]["total_tokens"] == 12
    scripted_server.script.append(streamed(["a", "b"], space=False))
    assert describe(mri_volume, selection, settings_for(scripted_server)).text == "ab"


def test_model_listing_and_choice(scripted_server, mri_volume, selection):
    assert list_models(settings_for(scripted_server)) == ["tiny-vlm"]
    assert list_models(settings_for(scripted_server, backend="ollama")) == ["tiny-vlm"]
    # With no model set, the server's only model is used ...
    report = describe(mri_volume, selection, settings_for(scripted_server, model=""))
    assert report.meta["model"] == "tiny-vlm"
    # ... and several models must be chosen from.
    scripted_server.models.append("other")
    with pytest.raises(VLMError, match="several models; choose one: tiny-vlm, other"):
        describe(mri_volume, selection, settings_for(scripted_server, model=""))


@pytest.mark.parametrize("status, body, expected", [
    (404, {"error": "model 'x' not found"}, r"HTTP 404 .*model 'x' not found \(pull it"),
    (400, {"error": {"message": "image input not supported", "type": "invalid_request_error", "code": 400}},
     r"HTTP 400 .*image input not supported"),
    (400, {"object": "error", "message": "max_tokens too large", "type": "BadRequestError", "code": 400},
     r"HTTP 400 .*max_tokens too large"),
    (401, {"error": {"message": "Invalid API Key", "type": "authentication_error"}}, r"HTTP 401 .*check the API key"),
    (422, {"detail": [{"msg": "field required"}]}, r"HTTP 422 .*field required"),
    (500, b"<html><title>500 Internal Server Error</title><body>boom</body></html>",
     r"HTTP 500 .*500 Internal Server Error$"),
    (413, b"request entity too large\n", r"HTTP 413 .*too large.*send fewer slices"),
])
def test_error_shapes_become_one_line(scripted_server, mri_volume, selection, status, body, expected):
    content_type = "text/html" if isinstance(body, bytes) and body.startswith(b"<") else (
        "text/plain" if isinstance(body, bytes) else "application/json")
    scripted_server.script.append(error_answer(status, body, content_type))
    protocol = "ollama" if status == 404 else "openai"
    with pytest.raises(VLMError, match=expected) as caught:
        describe(mri_volume, selection, settings_for(scripted_server, backend=protocol))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(scripted_server.url) and caught.value.status == status
    # 4xx and 500 are not retried; a refusal naming the images is probed for (one-token test requests), and the
    # error stands when the probe does not explain it (this server takes the test images).
    asked = [body for body in scripted_server.chat_requests()
             if "connection test" not in json.dumps(body["messages"][-1]["content"])]
    assert len(asked) == 1


def test_error_body_parser_handles_odd_bodies():
    assert error_message_from_body(b"") == ""
    assert error_message_from_body(b'["x"]') == '["x"]'
    assert error_message_from_body(b'{"error": {"type": "x"}}') == '{"type": "x"}'
    assert len(error_message_from_body(b"y" * 5000)) <= 300


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_statuses_are_retried(scripted_server, mri_volume, selection, status):
    scripted_server.script += [error_answer(status, {"error": "busy"}), error_answer(status, {"error": "busy"})]
    report = describe(mri_volume, selection, settings_for(scripted_server))
    assert report.complete and report.meta["attempts"] == 3 and len(scripted_server.chat_requests()) == 3


def test_retries_give_up_with_the_last_reason(scripted_server, mri_volume, selection):
    scripted_server.script += [error_answer(503, {"error": "Loading model"}, headers={"Retry-After": "0"})] * 3
    with pytest.raises(VLMError, match=r"HTTP 503 .*Loading model.*still loading.*after 3 attempts"):
        describe(mri_volume, selection, settings_for(scripted_server))


def test_error_mid_stream_keeps_partial_text(scripted_server, mri_volume, selection):
    scripted_server.script.append(streamed(["Findings: ", "partial"], tail="error"))
    report = describe(mri_volume, selection, settings_for(scripted_server))
    assert not report.complete and report.text == "Findings: partial"
    assert "server error during the answer: model runner crashed" in report.meta["incomplete_reason"]
    scripted_server.script.append(streamed(["x"], protocol="ollama", tail="error"))
    report = describe(mri_volume, selection, settings_for(scripted_server, backend="ollama"))
    assert not report.complete and "model runner crashed" in report.incomplete_reason
    # An error before any text is an error, not a report.
    scripted_server.script.append(streamed([], tail="error"))
    with pytest.raises(VLMError, match="model runner crashed"):
        describe(mri_volume, selection, settings_for(scripted_server))


def test_dropped_connection_and_missing_end_marker(scripted_server, mri_volume, selection):
    scripted_server.script.append(streamed(["Findings: ", "cut"], tail="drop"))
    report = describe(mri_volume, selection, settings_for(scripted_server))
    assert not report.complete and report.text == "Findings: cut"
    assert "closed before the end of the answer" in report.incomplete_reason
    assert len(scripted_server.chat_requests()) == 1
    scripted_server.script.append(streamed(["Findings: ", "cut"], tail="no_marker"))
    report = describe(mri_volume, selection, settings_for(scripted_server))
    assert not report.complete and "closed before the end" in report.incomplete_reason
    # Dropped before any text: retried like a connection failure.
    scripted_server.script.append(streamed([], tail="drop"))
    assert describe(mri_volume, selection, settings_for(scripted_server)).complete


def test_stalled_stream_hits_idle_timeout(scripted_server, mri_volume, selection):
    scripted_server.script.append(streamed(["Findings: ", "slow"], tail="stall"))
    started = time.monotonic()
    report = describe(mri_volume, selection, settings_for(scripted_server, idle_timeout_s=0.5))
    assert time.monotonic() - started < 5
    assert not report.complete and report.text == "Findings: slow"
    assert "sent nothing for 0.5 s" in report.incomplete_reason


def test_total_timeout(scripted_server, mri_volume, selection):
    scripted_server.script.append(streamed(["a"] * 50, pause_s=0.05))
    report = describe(mri_volume, selection, settings_for(scripted_server, timeout_s=0.6))
    assert not report.complete and "time limit (0.6 s)" in report.incomplete_reason
    assert 0 < len(report.text) < 50


def test_cancel_closes_the_connection(scripted_server, mri_volume, selection):
    scripted_server.script.append(streamed(["Findings: ", "more"], tail="stall"))
    stop = threading.Event()
    pieces = []

    def on_text(piece):
        pieces.append(piece)
        if len(pieces) == 2:
            threading.Timer(0.2, stop.set).start()

    started = time.monotonic()
    with pytest.raises(VLMCancelled) as caught:
        describe(mri_volume, selection, settings_for(scripted_server, idle_timeout_s=30), on_text=on_text,
                 cancel=stop.is_set)
    assert time.monotonic() - started < 3
    assert caught.value.partial_text == "Findings: more"
    assert caught.value.report.text == "Findings: more" and not caught.value.report.complete
    assert isinstance(caught.value, VLMError)


def test_connection_refused_is_retried_then_reported(mri_volume, selection):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = DescribeSettings(server_url=f"127.0.0.1:{port}", model="m", long_side=64, retries=1,
                                retry_backoff_s=0.01)
    with pytest.raises(VLMError, match=r"connection refused; is the server running.*after 2 attempts"):
        describe(mri_volume, selection, settings)
    with pytest.raises(VLMError, match="connection refused"):
        list_models(settings)


def test_listing_failures_explain_themselves(scripted_server):
    scripted_server.script.append(_get(error_answer(401, {"error": "unauthorized"})))
    with pytest.raises(VLMError, match="HTTP 401 .*unauthorized.*check the API key"):
        list_models(settings_for(scripted_server))
    scripted_server.script.append(_get(error_answer(200, b"<html>router login</html>", "text/html")))
    with pytest.raises(VLMError, match="answered with an HTML page, not the openai API"):
        list_models(settings_for(scripted_server))
    scripted_server.script.append(_get(error_answer(200, {"models": []})))
    with pytest.raises(VLMError, match="did not answer like the openai API"):
        list_models(settings_for(scripted_server))
    with pytest.raises(VLMError, match="HTTP 404"):
        list_models(settings_for(scripted_server, server_url=scripted_server.url + "/nothing"))


def test_api_key_is_sent_as_bearer(scripted_server, mri_volume, selection):
    describe(mri_volume, selection, settings_for(scripted_server, api_key="s3cret"))
    headers = scripted_server.requests[-1][2]
    assert headers["Authorization"] == "Bearer s3cret"
    assert "s3cret" not in str(describe(mri_volume, selection, settings_for(scripted_server, api_key="s3cret")).meta)


def test_server_url_forms():
    assert parse_server_url("localhost:8080").url == "http://localhost:8080"
    assert parse_server_url("http://127.0.0.1:11434/v1/").base_path == ""
    assert parse_server_url("https://gpu.example.org/llm/api", "ollama").url == "https://gpu.example.org:443/llm"
    for bad in ("", "ftp://x", "http://:80", "http://host:99999"):
        with pytest.raises(VLMError, match="server URL"):
            parse_server_url(bad)


def _get(action):
    """Mark a scripted action as the answer to the next GET (model listing)."""
    def for_get(handler, body):
        action(handler, body)
    return for_get
