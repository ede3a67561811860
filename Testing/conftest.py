"""Shared pytest fixtures."""

import os

import pytest

# --- VLM tests (helpers in vlm_fixtures.py) ------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """Folder of a tiny random LLaVA built for this test session (never downloaded)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from vlm_fixtures import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture
def scripted_server():
    """A loopback OpenAI/Ollama server answering from ``.script`` and recording ``.requests``."""
    from vlm_fixtures import ScriptedServer

    with ScriptedServer() as server:
        yield server
