"""Helpers for the VLM tests: synthetic volumes and selections, a tiny random VLM, a scripted loopback server.

Nothing here downloads anything. The tiny model is randomly initialised, so its text is noise:
tests assert structure and behaviour, never words.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from VoteMILib.geometry import PLANES, plane_geometry
from VoteMILib.results import PlaneResult, SelectedSlice, SelectionResult
from VoteMILib.volumes import volume_from_array

# ---------------------------------------------------------------------------------------------
# Volumes and selections


def make_volume(kind: str = "mri", shape_kji=(20, 24, 28), spacing=(1.0, 1.2, 2.0), name: str = "", seed: int = 0,
                origin=(-14.0, -12.0, -20.0)):
    """A blob-in-a-box volume: "mri" (0..~1000) or "ct" (air -1000, tissue ~40 HU, bone ~1000 HU)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape_kji, dtype=np.float32)
    centre = [(n - 1) / 2 for n in shape_kji]
    radius = np.sqrt(((k - centre[0]) / shape_kji[0]) ** 2 + ((j - centre[1]) / shape_kji[1]) ** 2
                     + ((i - centre[2]) / shape_kji[2]) ** 2)
    if kind == "ct":
        array = np.where(radius < 0.4, 40.0, -1000.0)
        array[(radius > 0.33) & (radius < 0.4)] = 1000.0
        array += rng.normal(0, 5, shape_kji)
    else:
        array = np.where(radius < 0.4, 600.0 + 300.0 * np.cos(8 * radius), 0.0) + rng.normal(0, 10, shape_kji)
        array = np.clip(array, 0, None)
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = origin
    return volume_from_array(array.astype(np.float32), matrix, name=name or kind.upper())


def make_selection(volume, planes=PLANES, top_k: int = 2) -> SelectionResult:
    """A hand-made :class:`SelectionResult` picking evenly spaced slices (no Vote-MI run needed)."""
    results = {}
    for plane in planes:
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        scores = np.linspace(0.1, 0.9, geometry.count)
        picks = np.linspace(geometry.count * 0.3, geometry.count * 0.7, top_k).astype(int)
        selected = [SelectedSlice(plane, rank, int(index), int(geometry.ijk_indices[index]),
                                  float(geometry.positions_mm[index]), tuple(geometry.centers_ras[index]),
                                  float(scores[index]))
                    for rank, index in enumerate(picks, 1)]
        results[plane] = PlaneResult(plane, geometry.normal_axis, geometry.ijk_axis, geometry.positions_mm,
                                     geometry.ijk_indices, scores, selected)
    return SelectionResult(results, {"top_k": top_k}, volume.size_ijk, volume.spacing_mm)


# ---------------------------------------------------------------------------------------------
# Tiny random VLMs (LLaVA, and Gemma 3 as used by MedGemma)

_SENTENCES = [
    "Findings: the axial slice shows normal brain tissue without haemorrhage [A1].",
    "Impression: no acute abnormality; coronal and sagittal images are unremarkable [C1, S1].",
    "The ventricles are symmetric. Bone windows show no fracture. Lung fields are clear.",
]


def _chat_template(image_token: str, turn: str = "", bos: str = "") -> str:
    """A minimal Jinja chat template that emits ``image_token`` for every image part."""
    return (
        bos + "{% for m in messages %}" + turn + "{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}" + image_token + "{% else %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}" + turn + "assistant:{% endif %}")


def _tokenizer(specials, template, **named_tokens):
    """A byte-level BPE tokenizer trained on a few sentences; any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_SENTENCES * 3, trainer)
    standard = {key: named_tokens.pop(key) for key in ("bos_token", "eos_token", "pad_token")}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, extra_special_tokens=named_tokens, **standard)
    fast.chat_template = template
    return fast


def _save(model, processor, specials, tokenizer, folder) -> str:
    # Never emit special tokens (end of text, padding, image): every generation then runs to
    # max_new_tokens and decodes to non-empty text, whatever the random weights.
    model.generation_config.suppress_tokens = [tokenizer.convert_tokens_to_ids(token) for token in specials]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def build_tiny_vlm(folder) -> str:
    """Build and save a randomly initialised LLaVA (~0.6 MB) with its processor; returns the folder."""
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    specials = ("<pad>", "<s>", "</s>", "<image>")
    template = _chat_template("<image>")
    tokenizer = _tokenizer(specials, template, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                           image_token="<image>")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=template,
                               image_token="<image>", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=4096,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    return _save(LlavaForConditionalGeneration(config), processor, specials, tokenizer, folder)


def build_tiny_gemma3(folder) -> str:
    """Build and save a randomly initialised Gemma 3 (MedGemma's architecture and processor path)."""
    import torch
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    specials = ("<pad>", "<bos>", "<eos>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    template = _chat_template("<start_of_image>", turn="<turn>", bos="{{ bos_token }}")
    tokenizer = _tokenizer(specials, template, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                           boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                                image_seq_length=4)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    text = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, vocab_size=len(tokenizer), sliding_window=64,
                            max_position_embeddings=4096, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                            pad_token_id=ids["<pad>"])
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"])
    torch.manual_seed(0)
    return _save(Gemma3ForConditionalGeneration(config), processor, specials, tokenizer, folder)


# ---------------------------------------------------------------------------------------------
# Scripted loopback server


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 (random port) that speaks just enough OpenAI and Ollama.

    Chat requests are answered by the next action in ``script`` (default: a short streamed answer);
    every request is recorded in ``requests`` as (method, path, headers, parsed JSON body).
    """

    def __init__(self, models=("tiny-vlm",)):
        self.requests = []
        self.script = []
        self.models = list(models)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(("GET", self.path, dict(self.headers), None))
                if outer.script and outer.script[0].__name__ == "for_get":
                    outer.script.pop(0)(self, None)
                elif self.path == "/v1/models":
                    listing = [{"id": name, "object": "model"} for name in outer.models]
                    send_json(self, 200, {"object": "list", "data": listing})
                elif self.path == "/api/tags":
                    send_json(self, 200, {"models": [{"name": m, "model": m} for m in outer.models]})
                else:
                    send_json(self, 404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                outer.requests.append(("POST", self.path, dict(self.headers), body))
                action = outer.script.pop(0) if outer.script else default_answer(self.path)
                action(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients hang up on purpose in these tests
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def chat_requests(self):
        return [body for method, path, _, body in self.requests if method == "POST"]


def send_json(handler, status, payload, headers=None):
    raw_answer(handler, status, json.dumps(payload).encode(), "application/json", headers)


def raw_answer(handler, status, body: bytes, content_type: str | None, headers=None):
    handler.send_response(status)
    if content_type:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def _start_stream(handler, content_type):
    handler.send_response(200)
    if content_type:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def _write_chunk(handler, data: bytes):
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    handler.wfile.flush()


def _end_stream(handler):
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def openai_chunk(text=None, finish=None):
    delta = {} if text is None else {"content": text}
    return {"object": "chat.completion.chunk", "model": "tiny-vlm",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def streamed(pieces, protocol="openai", tail="done", error=None, space=True, pause_s=0.0, content_type="auto",
             ndjson=None):
    """An action streaming ``pieces``, then ending with ``tail``.

    tail: "done" (normal end), "error" (an error object mid-stream), "stall" (silence until the
    test ends), "drop" (close the connection without finishing the chunked body), "no_marker"
    (finish the body without the end marker). ``content_type`` None sends no Content-Type header;
    ``ndjson`` (default: Ollama's protocol) streams one JSON object per line instead of SSE.
    """
    ndjson = protocol == "ollama" if ndjson is None else ndjson
    declared = ("application/x-ndjson" if ndjson else "text/event-stream") if content_type == "auto" else content_type

    def action(handler, body):
        _start_stream(handler, declared)

        def send(obj):
            if ndjson:
                _write_chunk(handler, json.dumps(obj).encode() + b"\n")
            else:
                prefix = b"data: " if space else b"data:"
                _write_chunk(handler, prefix + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

        for piece in pieces:
            send({"model": "tiny-vlm", "message": {"role": "assistant", "content": piece}, "done": False}
                 if protocol == "ollama" else openai_chunk(piece))
            if pause_s:
                time.sleep(pause_s)
        if tail == "done":
            if protocol == "ollama":
                send({"model": "tiny-vlm", "message": {"role": "assistant", "content": ""}, "done": True,
                      "done_reason": "stop", "prompt_eval_count": 10, "eval_count": len(pieces)})
            else:
                send(openai_chunk(None, "stop"))
                if not ndjson:
                    send(b"[DONE]")
            _end_stream(handler)
        elif tail == "error":
            send(error or ({"error": "model runner crashed"} if protocol == "ollama" else
                           {"error": {"message": "model runner crashed", "type": "server_error"}}))
            _end_stream(handler)
        elif tail == "no_marker":
            _end_stream(handler)
        elif tail == "stall":
            _stall(handler)
        elif tail == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
    return action


def _stall(handler):
    # Keep the connection open and silent until the client gives up (it closes the socket).
    handler.connection.settimeout(20)
    try:
        while handler.connection.recv(1024):
            pass
    except OSError:
        pass
    handler.close_connection = True


def complete_json(text, protocol="openai", content_type="application/json", indent=None):
    """An action answering a non-streamed request (``content_type`` None: no Content-Type header)."""
    def action(handler, body):
        if protocol == "ollama":
            answer = {"model": "tiny-vlm", "message": {"role": "assistant", "content": text},
                      "done": True, "done_reason": "stop", "eval_count": 3, "prompt_eval_count": 9}
        else:
            answer = {"object": "chat.completion", "model": "tiny-vlm",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
        raw_answer(handler, 200, json.dumps(answer, indent=indent).encode(), content_type)
    return action


def error_answer(status, body, content_type="application/json", headers=None):
    """An action answering with an HTTP error; ``body`` may be a dict (JSON) or bytes."""
    def action(handler, request_body):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        raw_answer(handler, status, data, content_type, headers)
    return action


def redirect(status, location):
    """An action answering with a redirect to ``location``."""
    def action(handler, request_body):
        raw_answer(handler, status, b"", "text/plain", {"Location": location})
    return action


def default_answer(path):
    return streamed(["Findings: ", "normal [A1].", "\nImpression: normal."],
                    protocol="ollama" if path.startswith("/api/") else "openai")


# ---------------------------------------------------------------------------------------------
# Inspecting what a client sent


def openai_images_and_texts(body):
    """(list of PNG bytes, list of text parts) of an OpenAI chat request, in order."""
    images, texts = [], []
    for part in body["messages"][0]["content"]:
        if part["type"] == "image_url":
            url = part["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            images.append(base64.b64decode(url.split(",", 1)[1]))
        else:
            texts.append(part["text"])
    return images, texts


def decode_png(data: bytes):
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def position_pattern(plane, position_mm):
    letter = {"axial": "SI", "coronal": "AP", "sagittal": "RL"}[plane][0 if position_mm >= 0 else 1]
    return re.escape(f"{letter} {abs(position_mm):.1f} mm")


# ---------------------------------------------------------------------------------------------
# `votemi serve` as a child process


def _launch_serve(model_dir, extra_args, api_key=""):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", VOTEMI_API_KEY=api_key)
    return subprocess.Popen([sys.executable, "-m", "VoteMILib.cli", "serve", "--model", str(model_dir),
                             "--port", "0", "--quiet", "--device", "cpu", *extra_args],
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=environment)


def _serve_url(process) -> str:
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        url = found.group(1) if found else None
    if url is None:
        raise RuntimeError("votemi serve did not start")
    return url


def _stop_serve(process):
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=30)
    process.stderr.close()
    if code != 0:
        raise RuntimeError(f"votemi serve exited with {code}")


@contextlib.contextmanager
def serve_process(model_dir, *extra_args, api_key=""):
    """Run ``votemi serve --model model_dir`` on a free loopback port; yields its URL, stops it with Ctrl-C."""
    process = _launch_serve(model_dir, extra_args, api_key)
    try:
        yield _serve_url(process)
    finally:
        _stop_serve(process)


@contextlib.contextmanager
def serve_processes(model_dir, *option_lists):
    """Several ``votemi serve`` processes launched together (their model loads overlap); yields their URLs."""
    processes = []
    try:
        for options in option_lists:
            processes.append(_launch_serve(model_dir, options))
        yield [_serve_url(process) for process in processes]
    finally:
        for process in processes:
            _stop_serve(process)
