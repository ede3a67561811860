"""The backend registry and the dialects it names: each difference between wire protocols lives in one class."""

import inspect

import pytest

from VoteMILib import names
from VoteMILib.vlm import dialects
from VoteMILib.vlm.clients import HTTPClient, OllamaClient, OpenAIClient, make_http_client
from VoteMILib.vlm.errors import VLMError
from VoteMILib.vlm.transport import declared_format
from VoteMILib.vlm.urls import parse_server_url


def test_every_dialect_class_is_registered_once_and_every_registered_one_exists():
    classes = {name for name, value in vars(dialects).items()
               if inspect.isclass(value) and issubclass(value, dialects.Dialect) and value is not dialects.Dialect}
    registered = [backend.dialect for backend in names.BACKEND_REGISTRY if backend.dialect]
    assert sorted(registered) == sorted(classes) and len(set(registered)) == len(registered)
    assert tuple(dialects.DIALECTS) == names.HTTP_BACKENDS
    assert names.BACKENDS == (*names.HTTP_BACKENDS, names.INPROCESS)
    for name, dialect in dialects.DIALECTS.items():
        assert dialect.name == name
        assert dialect.chat_path.startswith("/") and dialect.models_path.startswith("/")
        assert dialect.url_suffix and dialect.stream_format in ("sse", "ndjson")


def test_the_named_clients_and_the_made_ones_speak_the_registered_dialects():
    assert OpenAIClient("http://127.0.0.1:1").backend == "openai"
    assert OllamaClient("http://127.0.0.1:1").backend == "ollama"
    for name in names.HTTP_BACKENDS:
        client = make_http_client(name, "http://127.0.0.1:1")
        assert isinstance(client, HTTPClient) and client.dialect is dialects.DIALECTS[name]
    with pytest.raises(VLMError, match="no server"):
        make_http_client(names.INPROCESS, "http://127.0.0.1:1")
    with pytest.raises(VLMError, match="unknown backend 'grpc'; choose openai, ollama, inprocess"):
        make_http_client("grpc", "http://127.0.0.1:1")
    with pytest.raises(TypeError, match="dialect"):
        HTTPClient("http://127.0.0.1:1")


def test_a_pasted_api_prefix_is_dropped_by_its_own_dialect_only():
    for name, dialect in dialects.DIALECTS.items():
        assert parse_server_url("http://h:8000/x" + dialect.url_suffix, name).base_path == "/x"
    assert parse_server_url("http://h:8000/api", "openai").base_path == "/api"
    assert parse_server_url("http://h:8000/v1", names.INPROCESS).base_path == "/v1"


def test_a_stream_declared_as_plain_json_is_read_in_the_dialects_framing():
    ollama, openai = dialects.DIALECTS["ollama"], dialects.DIALECTS["openai"]
    assert declared_format("application/json", True, ollama.stream_format) == "ndjson"
    assert declared_format("application/json", True, openai.stream_format) == "full"
    assert declared_format("application/json", False, ollama.stream_format) == "full"
    assert declared_format("text/event-stream", False, ollama.stream_format) == "sse"


def test_only_ollama_sizes_the_context_of_a_request():
    assert dialects.DIALECTS["openai"].context_to_request(5000, None, 8192) is None
    ollama = dialects.DIALECTS["ollama"]
    assert ollama.context_to_request(5000, None, None) == 5120
    assert ollama.context_to_request(5000, 8192, None) == 8192
    assert ollama.context_to_request(5000, None, 4096) == 4096


def test_help_texts_come_from_the_registry():
    text = names.backends_help()
    for backend in names.BACKEND_REGISTRY:
        assert f"{backend.name}: {backend.summary}" in text
    assert names.INPROCESS not in names.backends_help(names.HTTP_BACKENDS)
