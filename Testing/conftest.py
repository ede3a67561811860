"""Shared pytest fixtures."""

import os
import sys
from pathlib import Path

import pytest

# The module folder holds the self-test helpers (VoteMISelfTestLib) beside the engine, as in Slicer.
MODULE_DIR = str(Path(__file__).resolve().parents[1] / "VoteMI")
if MODULE_DIR not in sys.path:
    sys.path.append(MODULE_DIR)

# --- VLM tests (helpers in vlm_fixtures.py) ------------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _capabilities_cache(tmp_path_factory):
    """Probe results go to a folder of this session (inherited by child processes), never the user's cache."""
    os.environ["VOTEMI_CACHE_DIR"] = str(tmp_path_factory.mktemp("votemi-cache"))


def _tiny_model(tmp_path_factory, builder: str, folder: str) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach for a model hub
    import vlm_fixtures

    return getattr(vlm_fixtures, builder)(tmp_path_factory.mktemp(folder))


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """Folder of a tiny random LLaVA built for this test session (never downloaded)."""
    return _tiny_model(tmp_path_factory, "build_tiny_vlm", "tiny-vlm")


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    """Folder of a tiny random Gemma 3 (MedGemma's architecture) built for this test session."""
    return _tiny_model(tmp_path_factory, "build_tiny_gemma3", "tiny-gemma3")


@pytest.fixture(scope="session")
def mri_volume():
    """A small synthetic MRI (blob in a box, 20x24x28 voxels) named T1; do not modify."""
    from vlm_fixtures import make_volume

    return make_volume("mri", name="T1")


@pytest.fixture(scope="session")
def mri_selection(mri_volume):
    """One slice of each plane of ``mri_volume`` (``vlm_fixtures.make_selection``); do not modify."""
    from vlm_fixtures import make_selection

    return make_selection(mri_volume, top_k=1)


@pytest.fixture(scope="session")
def image_path(tmp_path_factory):
    """A synthetic MRI of 40x48x48 voxels (1 x 1.2 x 2 mm) as a NIfTI file, for command-line tests."""
    import SimpleITK as sitk
    from vlm_fixtures import make_volume

    image = sitk.GetImageFromArray(make_volume("mri", shape_kji=(40, 48, 48), name="T1").array)
    image.SetSpacing((1.0, 1.2, 2.0))
    path = tmp_path_factory.mktemp("cli") / "T1.nii.gz"
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def scripted_server():
    """A loopback OpenAI/Ollama server answering from ``.script`` and recording ``.requests``."""
    from vlm_fixtures import ScriptedServer

    with ScriptedServer() as server:
        yield server


# --- MRML layer tests (helpers in mrml_helpers.py) -----------------------------------------------


@pytest.fixture
def headless_slicer():
    """Scene, module logics and Red/Yellow/Green slice views on the MRML libraries of slicer-core."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
    from mrml_helpers import HeadlessSlicer

    app = HeadlessSlicer()
    yield app
    app.close()


@pytest.fixture
def panel(headless_slicer, monkeypatch, tmp_path):
    """VoteMI's real panel on real Qt widgets and the headless scene (see slicer_qt_harness.py); needs PyQt5."""
    pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")
    from slicer_qt_harness import SlicerPanel

    made = SlicerPanel(headless_slicer, monkeypatch, tmp_path)
    yield made
    made.close()


@pytest.fixture(scope="session")
def main_case_selection():
    """Path of the main real case and its selection (computed once; do not modify)."""
    from VoteMILib.selection import select_slices
    from VoteMILib.volumes import load_volume
    from mrml_helpers import main_case_image

    path = main_case_image()
    return path, select_slices(load_volume(path), top_k=3, seed=0)
