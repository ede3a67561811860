"""Defects of the Slicer module found against Slicer 5.10/5.12, each shown on the real panel (Qt harness, real MRML).

Each test failed before its fix: a volume loaded after the panel opened, a first-volume pick the selector hides,
an empty ``sys.executable``, run folders in the system's temp folder, ``slicer.packaging`` never imported, the
category outside the core module's translation context, a crashing child's stderr only in the Python console.
"""

from __future__ import annotations

import os
import sys
import time
import types

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")


def _blob_volume(headless_slicer, name="Blob"):
    from VoteMILib import mrml
    from VoteMISelfTestLib import blob_phantom

    phantom = blob_phantom(seed=0)
    return mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, name)


def _wait(panel, timeout_s=90.0):
    panel.run_until(panel.idle, timeout_s)
    assert not panel.slot_errors, panel.slot_errors


def test_a_volume_loaded_after_the_panel_opened_becomes_the_input(panel, headless_slicer):
    panel.setup()
    assert not panel.widget._parameterNode.inputVolume
    assert not panel.ui.selectButton.enabled
    volume = _blob_volume(headless_slicer)
    panel.run_until(lambda: bool(panel.widget._parameterNode.inputVolume), timeout_s=5)
    assert panel.widget._parameterNode.inputVolume.GetID() == volume.GetID()
    assert panel.ui.selectButton.enabled
    later = _blob_volume(headless_slicer, "Later")  # a chosen input is never replaced
    panel.qapp.processEvents()
    assert panel.widget._parameterNode.inputVolume.GetID() == volume.GetID() != later.GetID()


def test_the_first_volume_pick_skips_what_the_input_selector_hides(panel, headless_slicer):
    import slicer

    scene = headless_slicer.scene
    scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB photo")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "tensors")
    volume = _blob_volume(headless_slicer)
    assert panel.module.VoteMILogic.firstImageVolume().GetID() == volume.GetID()
    panel.setup()
    assert panel.widget._parameterNode.inputVolume.GetID() == volume.GetID()
    assert not panel.module.VoteMILogic.isImageVolume(slicer.vtkMRMLVectorVolumeNode())


def test_an_empty_sys_executable_runs_the_child_with_PythonSlicer_from_the_path(panel, headless_slicer, monkeypatch,
                                                                                 tmp_path):
    launcher = tmp_path / "bin" / "PythonSlicer"
    launcher.parent.mkdir()
    # A script that runs the venv's Python by its own path: a symlink to it would start the base interpreter
    # outside the venv, which on a clean machine has none of VoteMI's packages.
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", f"{launcher.parent}{os.pathsep}{os.environ['PATH']}")
    _blob_volume(headless_slicer)
    panel.setup()
    monkeypatch.setattr(sys, "executable", "")
    from VoteMISlicerLib.run import pythonExecutable

    assert pythonExecutable() == str(launcher)
    panel.click(panel.ui.selectButton)
    _wait(panel)
    assert not panel.dialogs.of("errorDisplay"), panel.dialogs.shown
    assert panel.ui.statusLabel.text.startswith("Done")


def test_without_any_python_to_run_the_child_the_user_is_told_how_to_start_slicer(panel, headless_slicer,
                                                                                   monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    _blob_volume(headless_slicer)
    panel.setup()
    monkeypatch.setattr(sys, "executable", "")
    panel.click(panel.ui.selectButton)
    errors = panel.dialogs.of("errorDisplay")
    assert len(errors) == 1 and "launcher" in errors[0] and "No such file" not in errors[0]
    assert panel.widget._run is None and not panel.ui.cancelButton.visible


def test_run_folders_are_in_slicers_temporary_path_and_crash_leftovers_are_removed(panel, headless_slicer,
                                                                                    monkeypatch):
    from VoteMISlicerLib.run import STALE_RUN_HOURS

    base = os.path.join(panel.app.temporaryPath, "VoteMI")
    stale, recent = os.path.join(base, "run-stale"), os.path.join(base, "run-recent")
    for folder, age_h in ((stale, STALE_RUN_HOURS + 1), (recent, 1)):
        os.makedirs(folder)
        then = time.time() - age_h * 3600
        os.utime(folder, (then, then))
    folders = []
    original = panel.run_class.start

    def start(run, *args, **kwargs):
        original(run, *args, **kwargs)
        folders.append(run.folder)

    monkeypatch.setattr(panel.run_class, "start", start)
    _blob_volume(headless_slicer)
    panel.setup()
    panel.click(panel.ui.selectButton)
    assert len(folders) == 1 and os.path.dirname(folders[0]) == base
    assert os.listdir(folders[0])  # the input was written there
    _wait(panel)
    assert not os.path.exists(folders[0]) and not os.path.exists(stale) and os.path.isdir(recent)


def test_a_child_that_crashes_shows_its_stderr_in_the_details_pane(panel, headless_slicer, monkeypatch):
    from VoteMILib.events import ChildProcess

    crash = ("import sys\n"
             "sys.stderr.write('Traceback (most recent call last):\\n  File \"engine.py\", line 7, in load\\n')\n"
             "sys.stderr.write('MemoryError: cannot allocate 12 GiB\\n')\n"
             "sys.exit(3)\n")
    monkeypatch.setattr(panel.module.VoteMILogic, "startChild",
                        lambda logic, arguments, apiKey="", cwd=None: ChildProcess([sys.executable, "-c", crash]))
    _blob_volume(headless_slicer)
    panel.setup()
    panel.click(panel.ui.selectButton)
    _wait(panel)
    errors = panel.dialogs.of("errorDisplay")
    assert len(errors) == 1 and "MemoryError: cannot allocate 12 GiB" in errors[0]
    details = panel.dialogs.details[-1]
    assert "Traceback (most recent call last)" in details and 'engine.py", line 7' in details


def test_the_in_process_model_installs_through_slicer_packaging_in_a_fresh_session(panel, monkeypatch):
    import slicer
    import slicer.util

    asked = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda requirements, requester=None: asked.append(([str(r) for r in requirements],
                                                                              requester))
    # As in a fresh Slicer session: the submodule exists but nobody imported it, so ``slicer`` lacks the attribute.
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    pip_installed = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirement: pip_installed.append(requirement),
                        raising=False)
    panel.setup()
    from VoteMISlicerLib.packages import installPackage

    assert installPackage("transformers>=5.0", "transformers", "The in-process model")
    assert asked == [(["transformers>=5.0"], "VoteMI")]
    assert not pip_installed and not panel.dialogs.shown


def test_the_category_is_translated_in_the_core_module_context(panel):
    i18n = sys.modules["slicer.i18n"]  # the harness's stand-in
    contexts = []
    i18n.translate = lambda context, text: contexts.append(context) or f"[{text}]"
    try:
        spec = panel.module.__spec__
        module = type(panel.module)(spec.name)
        spec.loader.exec_module(module)
        description = module.VoteMI(types.SimpleNamespace())
    finally:
        i18n.translate = lambda context, text: text
    assert description.parent.categories == ["[Quantification]"]
    assert contexts == ["qSlicerAbstractCoreModule"]
