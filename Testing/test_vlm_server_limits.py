"""Resource limits of ``votemi serve``, against the real server and the real tiny in-process model.

Each limit is exercised on a loopback server (``create_server`` on port 0) or, for signals, on the
real ``votemi serve`` process. No timing assertions: waits have generous timeouts that only keep a
broken server from hanging the suite. Measurements of what the limits save are in
``Testing/bench_serve.py``.
"""

import base64
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from VoteMILib.vlm.server import create_server

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def model(tiny_vlm_dir):
    from VoteMILib.vlm.inprocess import load_model

    return load_model(tiny_vlm_dir, device="cpu")


class GatedModel:
    """The real model behind a gate: ``generate`` waits until ``gate`` is set, then runs and records its result."""

    def __init__(self, model):
        self.model = model
        self.name = model.name
        self.context_length = getattr(model, "context_length", None)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.results = []
        self.finished = threading.Event()

    def generate(self, messages, **options):
        self.entered.set()
        assert self.gate.wait(60)
        result = self.model.generate(messages, **options)
        self.results.append(result)
        self.finished.set()
        return result


@contextmanager
def serving(model, **limits):
    """A ``votemi serve`` server on a free loopback port, with ``limits`` (ServeLimits fields)."""
    httpd = create_server(model, "127.0.0.1", 0, log=None, **limits)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def call(server, method, path="/v1/chat/completions", body=None, headers=None, source="127.0.0.1"):
    """(status, response, parsed JSON or raw bytes) from a server or a port, sent from loopback address ``source``;
    a dropped connection fails the test."""
    port = server if isinstance(server, int) else server.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = dict(headers or {})
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, response, json.loads(raw)
    except ValueError:
        return response.status, response, raw


def raw_exchange(server, data: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(data)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def text_chat(text, **changes):
    body = {"model": "any", "max_tokens": 4, "messages": [{"role": "user", "content": text}]}
    body.update(changes)
    return body


def png_url(size, mode="RGB", image_format="PNG"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=image_format)
    return f"data:image/{image_format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_chat(urls, **changes):
    content = [{"type": "text", "text": "Describe"}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return text_chat(content, **changes)


def readme_text(characters: int) -> str:
    text = open(README, encoding="utf-8").read()
    return (text * (characters // len(text) + 1))[:characters]


@pytest.fixture
def decodes(monkeypatch):
    """Sizes of the images decoded in this process: every Pillow decode goes through ImageFile.load."""
    from PIL import ImageFile

    calls = []
    original = ImageFile.ImageFile.load

    def counting_load(self):
        if self.tile:  # pixel data still to decode (load() is called again on a loaded image)
            calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return calls


def assert_error(status, data, expected_status, code=None, param=None, match=""):
    assert status == expected_status, data
    error = data["error"]
    assert error["message"] and re.search(match, error["message"]), error
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def wait_for_health(server, **expected) -> bool:
    """Poll /health (of a server or a port) until it reports ``expected`` (e.g. waiting=1); False after 30 s."""
    for _ in range(600):
        status, _, data = call(server, "GET", "/health")
        if status == 200 and all(data.get(key) == value for key, value in expected.items()):
            return True
        time.sleep(0.05)
    return False


# -- prompt length -------------------------------------------------------------------------------


def test_prompt_caps_default_from_the_model_context(model):
    with serving(model) as server:
        # 6,000 characters of README are about 4,700 tokens of the tiny tokenizer: under the
        # character cap, over the token cap after the chat template.
        status, _, data = call(server, "POST", body=text_chat(readme_text(6000)))
        assert_error(status, data, 400, "context_length_exceeded", "messages", r"tokens long.*limit is 4095")
        assert server.limits.max_prompt_tokens == model.context_length == 4096
        assert server.limits.max_prompt_chars == 8 * 4096


@pytest.mark.parametrize("stream", [False, True])
def test_characters_are_capped_before_tokenising(model, monkeypatch, stream):
    tokenizer = type(model.processor.tokenizer)
    calls = []
    original = tokenizer.__call__
    monkeypatch.setattr(tokenizer, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with serving(model, max_prompt_tokens=64) as server:
        assert server.limits.max_prompt_chars == 512
        status, _, data = call(server, "POST", body=text_chat(readme_text(513), stream=stream))
        assert_error(status, data, 400, "context_length_exceeded", "messages", "513 characters.*limit is 512")
        assert not calls  # refused before the tokenizer ran
        status, _, data = call(server, "POST", body=text_chat(readme_text(40), stream=stream))
        assert status == 200 and calls


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_are_capped_after_the_chat_template(model, stream):
    with serving(model, max_prompt_tokens=64, max_prompt_chars=10**6) as server:
        status, _, data = call(server, "POST", body=text_chat(readme_text(300), stream=stream))
        assert_error(status, data, 400, "context_length_exceeded", "messages", r"tokens long.*limit is 64\b")
        # An image counts: its tokens are added by the chat template.
        status, _, data = call(server, "POST", body=image_chat([png_url((8, 8))] * 4, stream=stream))
        assert_error(status, data, 400, "context_length_exceeded", "messages", r"tokens long")
        status, _, data = call(server, "POST", body=text_chat("Describe the slice.", stream=stream))
        assert status == 200


def test_answer_is_fitted_into_the_context(model):
    tokenizer = model.processor.tokenizer
    ids = tokenizer(readme_text(8000))["input_ids"][:4050]
    with serving(model) as server:
        status, _, data = call(server, "POST", body=text_chat(tokenizer.decode(ids), max_tokens=200))
    assert status == 200, data
    usage = data["usage"]
    assert usage["prompt_tokens"] > 4096 - 200 and usage["total_tokens"] == 4096
    assert data["choices"][0]["finish_reason"] == "length"


# -- images --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at its own limit
def test_huge_image_is_refused_from_its_header(model, decodes):
    huge = png_url((13000, 13000), mode="1")  # about 20 KB of PNG, 507 MB once decoded as RGB
    with serving(model) as server:
        status, _, data = call(server, "POST", body=image_chat([huge]))
    assert_error(status, data, 400, "image_too_large", "messages[0].content[1].image_url",
                 r"13000x13000 \(169\.0 megapixels\).*limit is 16 megapixels")
    assert decodes == []


def test_total_pixels_and_image_count_are_checked_before_decoding(model, decodes):
    with serving(model, max_total_megapixels=10) as server:
        status, _, data = call(server, "POST", body=image_chat([png_url((2000, 2000), mode="1")] * 3))
        assert_error(status, data, 400, "image_too_large", "messages", r"12\.0 megapixels together.*limit is 10")
        status, _, data = call(server, "POST", body=image_chat([png_url((8, 8))] * 65))
        assert_error(status, data, 400, param="messages", match=r"too many images \(65\); the limit is 64")
        assert decodes == []
        status, _, data = call(server, "POST", body=image_chat([png_url((8, 8))] * 2))
    assert status == 200 and len(decodes) == 2  # decoded once admitted


def test_only_common_image_formats_are_opened(model):
    with serving(model) as server:
        status, _, data = call(server, "POST", body=image_chat([png_url((8, 8), image_format="TIFF")]))
        assert_error(status, data, 400, param="messages[0].content[1].image_url", match="PNG, JPEG, WEBP, GIF")
        status, _, data = call(server, "POST", body=image_chat([png_url((8, 8), image_format="JPEG")]))
        assert status == 200


def test_truncated_image_is_refused_when_decoded(model):
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("L", (64, 64), random.Random(0).randbytes(64 * 64)).save(buffer, format="PNG")
    cut = base64.b64encode(buffer.getvalue()[:1000]).decode()  # the header survives, most pixel data does not
    with serving(model) as server:
        status, _, data = call(server, "POST", body=image_chat(["data:image/png;base64," + cut]))
    assert_error(status, data, 400, param="messages[0].content[1].image_url", match="not a readable image")


# -- request fields and bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**63, 2**64, -2**63 - 1])
def test_seed_outside_64_bits_is_a_400(model, seed):
    with serving(model) as server:
        status, _, data = call(server, "POST", body=text_chat("hi", seed=seed))
        assert_error(status, data, 400, param="seed")
        status, _, data = call(server, "POST", body=text_chat("hi", seed=2**63 - 1))
        assert status == 200


@pytest.mark.parametrize("body", [b"[" * 100000 + b"]" * 100000,
                                  b'{"messages": ' + b'{"a": ' * 50000 + b"1" + b"}" * 50001])
def test_deeply_nested_json_is_a_400(model, body):
    with serving(model) as server:
        status, _, data = call(server, "POST", body=body)
    assert_error(status, data, 400, match="nests JSON too deeply")


def test_too_many_content_parts_are_refused(model):
    with serving(model) as server:
        status, _, data = call(server, "POST", body=text_chat([{"type": "text", "text": ""}] * 1100))
    assert_error(status, data, 400, param="messages", match=r"content parts \(1101\); the limit is 1024")


# -- methods and malformed requests: JSON, never the stdlib's HTML page -------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path, allow", [("/v1/chat/completions", "POST"), ("/health", "GET"),
                                         ("/v1/models", "GET")])
def test_other_methods_get_405_with_allow(model, method, path, allow):
    with serving(model) as server:
        status, response, data = call(server, method, path, body=b'{"x": 1}')
        assert_error(status, data, 405, match=f"{method} is not allowed on {path}")
        assert response.getheader("Allow") == allow and response.getheader("Content-Type") == "application/json"
        if method == "PUT":  # the server still answers after a refused body
            assert call(server, "GET", "/health")[0] == 200


def test_head_and_post_to_get_endpoints(model):
    with serving(model) as server:
        status, response, data = call(server, "HEAD", "/health")
        assert status == 405 and data == b"" and response.getheader("Allow") == "GET"
        status, response, data = call(server, "POST", "/health", body={})
        assert_error(status, data, 405)
        assert response.getheader("Allow") == "GET"


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /health HTTP/2.0\r\n\r\n", 505),
    (b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", 501),
])
def test_malformed_requests_get_json_errors(model, request_bytes, status):
    with serving(model) as server:
        answer = raw_exchange(server, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["message"]


# -- time, queue and disconnects -------------------------------------------------------------------


def test_non_streaming_client_that_leaves_stops_generation(model):
    gated = GatedModel(model)
    body = json.dumps(text_chat("Describe the slice.", max_tokens=4000)).encode()
    with serving(gated) as server:
        with socket.create_connection(server.server_address[:2], timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert gated.entered.wait(30)
        assert gated.finished.wait(120)
        assert gated.results[0].finish_reason == "cancelled" and gated.results[0].completion_tokens < 4000
        assert call(server, "POST", body=text_chat("hi", max_tokens=2))[0] == 200


def test_queue_wait_is_bounded_with_retry_after(model):
    gated = GatedModel(model)
    gated.gate.clear()
    with serving(gated, queue_timeout_s=0.3) as server:
        first = {}
        holder = threading.Thread(target=lambda: first.update(answer=call(server, "POST", body=text_chat("hi"))))
        holder.start()
        assert gated.entered.wait(30)  # the first request holds the model
        for stream in (False, True):
            status, response, data = call(server, "POST", body=text_chat("hi", stream=stream))
            assert_error(status, data, 503, "server_busy", match=r"model is busy: waited 0\.3 s")
            assert int(response.getheader("Retry-After")) >= 1
        assert call(server, "GET", "/health")[0] == 200  # health does not wait for the model
        gated.gate.set()
        holder.join(60)
    assert first["answer"][0] == 200


def test_client_that_leaves_the_queue_is_not_generated(model):
    gated = GatedModel(model)
    gated.gate.clear()
    body = json.dumps(text_chat("second")).encode()
    with serving(gated) as server:
        holder = threading.Thread(target=call, args=(server, "POST"), kwargs={"body": text_chat("first")})
        holder.start()
        assert gated.entered.wait(30)
        with socket.create_connection(server.server_address[:2], timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert wait_for_health(server, generating=True, waiting=1)
        assert wait_for_health(server, generating=True, waiting=0)  # it left the queue
        gated.gate.set()
        holder.join(60)
    assert len(gated.results) == 1  # only the first request was generated


def test_generation_timeout_cuts_the_answer(model):
    with serving(model, generation_timeout_s=0.2) as server:
        status, _, data = call(server, "POST", body=text_chat("hi", max_tokens=4000))
    assert status == 200 and data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] < 4000


def test_connections_beyond_the_cap_get_a_quick_503(model):
    with serving(model, max_connections=2) as server:
        idle = [socket.create_connection(server.server_address[:2], timeout=30) for _ in range(2)]
        try:
            status, response, data = call(server, "GET", "/health")
            assert_error(status, data, 503, "server_busy", match=r"too many connections \(the limit is 2\)")
            assert int(response.getheader("Retry-After")) >= 1
            status, _, data = call(server, "POST", body=text_chat("hi" * 1000))  # a body the server never reads
            assert status == 503
        finally:
            for sock in idle:
                sock.close()
        assert wait_for_health(server, status="ok")  # the idle connections' threads end once they are closed


def connect_from(server_or_port, host="127.0.0.1"):
    """A connection to a server (or port) from the loopback address ``host``; skips where it cannot be bound."""
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.server_address[1]
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(host, 0))
    except OSError as error:
        pytest.skip(f"cannot connect from {host}: {error}")


def closed_by_server(sock) -> bool:
    """Whether the server has closed ``sock`` (what it sent before is read and dropped), without waiting."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


class Trickler:
    """Slow clients: each connection sends one more header byte every ``every_s`` seconds and never ends its headers."""

    def __init__(self, sockets, every_s=0.3):
        self.sockets = list(sockets)
        self.answers = {id(sock): b"" for sock in self.sockets}
        self.closed_after = {}
        self.every_s = every_s
        self.started = time.monotonic()
        self._stop = threading.Event()
        for sock in self.sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.every_s) and len(self.closed_after) < len(self.sockets):
            for sock in self.sockets:
                if id(sock) not in self.closed_after and self._gone(sock):
                    self.closed_after[id(sock)] = time.monotonic() - self.started

    def _gone(self, sock) -> bool:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return True
                self.answers[id(sock)] += data
        except BlockingIOError:
            pass
        except OSError:
            return True
        try:
            sock.send(b"a")
            return False
        except BlockingIOError:
            return False
        except OSError:
            return True

    def wait_all_closed(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while len(self.closed_after) < len(self.sockets) and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.closed_after) == len(self.sockets)

    def close(self):
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()


def test_trickled_headers_are_cut_at_the_header_deadline(model):
    with serving(model, header_timeout_s=1.5) as server:
        trickler = Trickler([connect_from(server)])
        try:
            assert trickler.wait_all_closed(15), "a client trickling header bytes was never closed"
            assert 1.0 <= trickler.closed_after[id(trickler.sockets[0])] < 10
            answer = trickler.answers[id(trickler.sockets[0])]
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert b"not complete within 1.5 s" in answer
        finally:
            trickler.close()


def test_header_deadline_starts_with_the_first_byte(model):
    """An idle keep-alive connection is not cut by the header deadline: its next request is answered."""
    with serving(model, header_timeout_s=0.5) as server, connect_from(server) as sock:
        time.sleep(1.5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_one_client_cannot_take_every_connection_slot(model):
    with serving(model, max_connections=4, max_connections_per_client=2) as server:
        held = [connect_from(server, "127.0.0.2") for _ in range(2)]
        try:
            with connect_from(server, "127.0.0.2") as third:
                third.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b"".join(iter(lambda: third.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"too many connections from 127.0.0.2 (the limit is 2 per client)" in answer
            status, _, data = call(server, "GET", "/health")
            assert status == 200 and data["status"] == "ok"
        finally:
            for sock in held:
                sock.close()


# -- load ------------------------------------------------------------------------------------------


def test_bounded_load_twenty_clients_five_requests(model):
    """20 clients x 5 requests, streamed and not, with /health polled throughout: no hang, no drop."""
    outcomes, health = [], []
    done = threading.Event()
    with serving(model) as server:
        def client(n):
            for k in range(5):
                stream = (n + k) % 2 == 1
                status, response, data = call(server, "POST", body=text_chat("Describe.", stream=stream))
                if status == 200 and stream:
                    complete = data.rstrip().endswith(b"data: [DONE]")
                else:
                    complete = status == 200 and data["choices"][0]["message"]["content"] is not None
                outcomes.append((status, complete or (status == 503 and response.getheader("Retry-After"))))

        def poll():
            while not done.is_set():
                # A monitor of its own (another address): the 20 clients share 127.0.0.1 and its
                # per-client connection limit, so their surplus is refused with 503 and Retry-After.
                health.append(call(server, "GET", "/health", source="127.0.0.3")[0])
                done.wait(0.05)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        watcher = threading.Thread(target=poll)
        watcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        done.set()
        watcher.join(30)
        assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert len(outcomes) == 100 and all(ok for _, ok in outcomes), outcomes
    assert {status for status, _ in outcomes} <= {200, 503} and health and set(health) == {200}


# -- the real process ------------------------------------------------------------------------------


def test_sigterm_during_generation_exits_cleanly(tiny_vlm_dir):
    with serve_process(tiny_vlm_dir) as (process, port, lines):
        streaming = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = json.dumps(text_chat("hi", max_tokens=4000, stream=True))
        streaming.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = streaming.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")  # generating now
        queued = {}
        waiter = threading.Thread(target=lambda: queued.update(answer=call(port, "POST", body=text_chat("queued"))))
        waiter.start()
        assert wait_for_health(port, generating=True, waiting=1)
        process.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        streaming.close()
        assert process.wait(timeout=30) == 0
        waiter.join(30)
        # The stderr reader of serve_process reads to the end of the pipe, which the exited server closed.
        deadline = time.monotonic() + 10
        while "votemi: stopped" not in "".join(lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    events = [line[6:] for line in rest.split("\n\n") if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["message"] == "the server is shutting down"
    assert queued["answer"][0] == 503
    log = "".join(lines)
    assert "Traceback" not in log and log.rstrip().endswith("votemi: stopped")
    with socket.socket() as probe:  # nothing listens on the port any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


@contextmanager
def serve_process(tiny_vlm_dir, *options):
    """A real ``votemi serve`` process of the tiny model on a free port: yields (process, port, stderr lines)."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    process = subprocess.Popen([sys.executable, "-m", "VoteMILib.cli", "serve", "--model", tiny_vlm_dir,
                                "--port", "0", "--device", "cpu", *options], stderr=subprocess.PIPE, text=True,
                               encoding="utf-8", errors="replace", env=environment)
    lines = []
    try:
        port = None
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "".join(lines)
        reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
        reader.start()
        yield process, port, lines
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_forty_slow_clients_do_not_lock_out_the_others(tiny_vlm_dir):
    """40 connections trickling header bytes: /health and a chat from another client are answered at once."""
    with serve_process(tiny_vlm_dir, "--header-timeout", "3") as (_, port, lines):
        trickler = Trickler([connect_from(port, "127.0.0.2") for _ in range(40)])
        try:
            time.sleep(0.5)  # every slow connection has been accepted or turned away
            started = time.monotonic()
            status, _, data = call(port, "GET", "/health")
            health_s = time.monotonic() - started
            assert status == 200 and data["status"] == "ok"
            assert health_s < 1.0, health_s
            started = time.monotonic()
            status, _, data = call(port, "POST", body=text_chat("hi"))
            assert status == 200 and data["choices"][0]["message"]["content"] is not None
            assert time.monotonic() - started < 5.0
            assert trickler.wait_all_closed(20), "slow clients kept their connections"
            answers = list(trickler.answers.values())
            assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) == 8  # the per-client limit
            assert sum(a.startswith(b"HTTP/1.1 503 ") for a in answers) == 32
        finally:
            trickler.close()
    assert "not complete within 3 s" in "".join(lines)


def test_serve_limit_options(tmp_path, capsys):
    from VoteMILib.cli import build_parser
    from VoteMILib.cli.serve import serve_limits

    args = build_parser().parse_args(["serve", "--model", str(tmp_path), "--max-prompt-tokens", "2048",
                                      "--max-prompt-chars", "9000", "--max-images", "12",
                                      "--max-image-megapixels", "4", "--max-total-megapixels", "20",
                                      "--max-new-tokens", "512", "--queue-timeout", "15",
                                      "--generation-timeout", "120", "--max-connections", "8",
                                      "--max-request-mb", "16"])
    limits = serve_limits(args)
    assert (limits.max_prompt_tokens, limits.max_prompt_chars, limits.max_images, limits.max_image_megapixels,
            limits.max_total_megapixels, limits.max_tokens_cap, limits.queue_timeout_s, limits.generation_timeout_s,
            limits.max_connections, limits.max_request_mb) == (2048, 9000, 12, 4, 20, 512, 15, 120, 8, 16)
    for option, value in (("--queue-timeout", "0"), ("--max-connections", "0"), ("--max-image-megapixels", "x")):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args(["serve", "--model", str(tmp_path), option, value])
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip()
        assert option in err and len(err.splitlines()) == 1
