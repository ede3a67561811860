"""The in-process model (a tiny random LLaVA built at test time) and ``votemi serve`` in front of it."""

import base64
import http.client
import io
import json
import socket
import threading
import time

import pytest

from vlm_fixtures import make_selection, make_volume
from VoteMILib.vlm import DescribeSettings, VLMCancelled, VLMError, describe, list_models
from VoteMILib.vlm.server import create_server

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def model(tiny_vlm_dir):
    from VoteMILib.vlm.inprocess import load_model

    return load_model(tiny_vlm_dir, device="cpu")


@pytest.fixture(scope="module")
def server(model):
    httpd = create_server(model, "127.0.0.1", 0, api_key="key-123", max_request_mb=1.0, log=None)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def request(server, method, path, body=None, headers=None, key="key-123"):
    """(status, headers, parsed JSON or raw bytes) of one request to the test server."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    sent = dict(headers or {})
    if key:
        sent["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    connection.request(method, path, body=data, headers=sent)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    try:
        return response.status, response, json.loads(raw)
    except ValueError:
        return response.status, response, raw


def png_data_url(size=(40, 30)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 40, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(**changes):
    body = {"model": "any", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "text", "text": "A1: axial, S 1.0 mm"}]}]}
    body.update(changes)
    return body


def test_inprocess_describe_streams_and_records(tiny_vlm_dir, mri_volume, mri_selection):
    pieces = []
    settings = DescribeSettings(backend="inprocess", model=tiny_vlm_dir, max_tokens=MAX_TOKENS, long_side=64,
                                device="cpu")
    report = describe(mri_volume, mri_selection, settings, on_text=pieces.append)
    assert report.text == "".join(pieces) and len(pieces) >= 1
    usage = report.meta["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS and usage["prompt_tokens"] > 3 * 17  # 3 images of 17 tokens
    # The tiny model never ends by itself: the answer stops at the token limit and says so.
    assert not report.complete and "token limit" in report.incomplete_reason
    assert report.meta["protocol"] == "inprocess" and len(report.meta["images"]) == 3
    assert list_models(settings) == [report.meta["model_reported"]]


def test_inprocess_gemma3_three_window_ct(tiny_gemma3_dir):
    # Gemma 3 is MedGemma's architecture: its processor path must work, with RGB three-window CT images.
    ct = make_volume("ct", name="CT head")
    settings = DescribeSettings(backend="inprocess", model=tiny_gemma3_dir, max_tokens=MAX_TOKENS, long_side=64,
                                ct_preset="three_window", device="cpu")
    report = describe(ct, make_selection(ct, top_k=1), settings)
    assert report.text and report.meta["usage"]["completion_tokens"] == MAX_TOKENS
    assert report.meta["modality"] == "CT"
    assert all(image["window"]["source"] == "three_window" for image in report.meta["images"])


def test_inprocess_cancel_and_missing_folder(tiny_vlm_dir, mri_volume, mri_selection, tmp_path):
    settings = DescribeSettings(backend="inprocess", model=tiny_vlm_dir, max_tokens=200, long_side=64, device="cpu")
    stop = threading.Event()

    def on_text(piece):
        stop.set()

    with pytest.raises(VLMCancelled) as caught:
        describe(mri_volume, mri_selection, settings, on_text=on_text, cancel=stop.is_set)
    # The answer was JSON (structured output): the report keeps it raw and shows it as readable text.
    assert caught.value.partial_text and caught.value.report.meta["raw_answer"] == caught.value.partial_text
    assert caught.value.report.meta["incomplete_reason"] == "cancelled by the user"
    with pytest.raises(VLMError, match="model folder not found.*hub are disabled"):
        list_models(DescribeSettings(backend="inprocess", model=str(tmp_path / "nothing")))
    with pytest.raises(VLMError, match="no config.json"):
        list_models(DescribeSettings(backend="inprocess", model=str(tmp_path)))


def test_server_health_models_and_key(server, model):
    status, _, data = request(server, "GET", "/health", key=None)
    assert status == 200 and data["status"] == "ok"
    status, _, data = request(server, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in data["data"]] == [model.name]
    for key in (None, "wrong"):
        status, response, data = request(server, "GET", "/v1/models", key=key)
        assert status == 401 and data["error"]["type"] == "authentication_error"
        assert response.getheader("WWW-Authenticate") == "Bearer"
    status, _, data = request(server, "POST", "/v1/chat/completions", chat_body(), key="wrong")
    assert status == 401 and data["error"]["code"] == "invalid_api_key"


def test_server_completion_without_streaming(server, model):
    status, _, data = request(server, "POST", "/v1/chat/completions", chat_body())
    assert status == 200 and data["object"] == "chat.completion" and data["model"] == model.name
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length" and data["usage"]["completion_tokens"] == MAX_TOKENS


def test_describe_through_votemi_serve(server, mri_volume, mri_selection):
    settings = DescribeSettings(server_url=server.url, api_key="key-123", max_tokens=MAX_TOKENS, long_side=64,
                                timeout_s=60)
    assert list_models(settings) == [server.model.name]
    pieces = []
    started = time.monotonic()
    streamed = describe(mri_volume, mri_selection, settings, on_text=pieces.append)
    latency = time.monotonic() - started
    assert streamed.text == "".join(pieces) and len(pieces) >= 1 and latency < 30
    assert streamed.meta["usage"]["completion_tokens"] == MAX_TOKENS and streamed.meta["finish_reason"] == "length"
    settings.stream = False
    whole = describe(mri_volume, mri_selection, settings)
    assert whole.meta["usage"]["completion_tokens"] == MAX_TOKENS and whole.text
    settings.api_key = ""
    with pytest.raises(VLMError, match="HTTP 401.*check the API key"):
        list_models(settings)


def test_server_stream_wire_format(server):
    status, response, raw = request(server, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert status == 200 and response.getheader("Content-Type") == "text/event-stream"
    events = [line[6:] for line in raw.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
])
def test_server_rejects_malformed_requests(server, body, param):
    status, _, data = request(server, "POST", "/v1/chat/completions", body)
    assert status == 400
    error = data["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param


def test_server_refuses_wrong_paths_methods_and_sizes(server):
    status, _, data = request(server, "GET", "/v1/nothing")
    assert status == 404 and data["error"]["type"] == "not_found_error"
    status, _, data = request(server, "GET", "/v1/chat/completions")
    assert status == 405
    status, _, data = request(server, "POST", "/v1/chat/completions", b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415
    big = json.dumps(chat_body(padding="x" * (2 * 2**20))).encode()
    status, _, data = request(server, "POST", "/v1/chat/completions", big)
    assert status == 413 and data["error"]["code"] == "request_too_large"
    # Without Content-Length.
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-123\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b"")).decode()  # the server closes after answering
    assert answer.startswith("HTTP/1.1 411") and '"invalid_request_error"' in answer


def test_server_stops_generating_when_the_client_leaves(server, model):
    body = json.dumps(chat_body(stream=True, max_tokens=4000)).encode()
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-123\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b"200 OK" in sock.recv(4096)
    # The model lock is released quickly: a new request is answered long before 4000 tokens could be generated.
    started = time.monotonic()
    status, _, _ = request(server, "POST", "/v1/chat/completions", chat_body(max_tokens=2))
    assert status == 200 and time.monotonic() - started < 10


@pytest.mark.parametrize("stream", [False, True])
def test_server_reports_processor_rejection_as_400(server, stream):
    # The text holds an image token but no image is attached: the processor refuses the request.
    body = {"messages": [{"role": "user", "content": "<image> describe"}], "max_tokens": 2, "stream": stream}
    status, _, data = request(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and "processor rejected the request" in data["error"]["message"]
