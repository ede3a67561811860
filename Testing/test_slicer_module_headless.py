"""VoteMI.py's logic and self-test run outside the Slicer application.

The Slicer application's Qt layer is not available here, so the few application-only names the
module file imports (``qt``, ``ctk``, ``slicer.ScriptedLoadableModule``, the parameter node
wrapper, ``slicer.i18n``) are replaced by minimal stand-ins, while MRML is real (slicer-core).
This runs ``VoteMILogic`` and the very ``VoteMITest`` methods that Slicer runs, on a headless scene.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")

MODULE_FILE = Path(__file__).resolve().parents[1] / "VoteMI" / "VoteMI.py"


class _Base:
    def __init__(self, *args, **kwargs):
        self.parent = types.SimpleNamespace()

    def getParameterNode(self):
        raise NotImplementedError("the parameter node needs the Slicer application")


class _Test:
    def delayDisplay(self, message, msec=None):
        pass

    def assertEqual(self, first, second):
        assert first == second, f"{first!r} != {second!r}"

    def assertTrue(self, value):
        assert value


def _stand_ins():
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = _Base
    scripted.ScriptedLoadableModuleWidget = _Base
    scripted.ScriptedLoadableModuleLogic = _Base
    scripted.ScriptedLoadableModuleTest = _Test
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return {"qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk"),
            "slicer.ScriptedLoadableModule": scripted, "slicer.parameterNodeWrapper": wrapper, "slicer.i18n": i18n}


@pytest.fixture
def votemi_module(headless_slicer, monkeypatch, tmp_path):
    import slicer

    for name, module in _stand_ins().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", headless_slicer.scene, raising=False)
    app = types.SimpleNamespace(layoutManager=lambda: None, testingEnabled=lambda: True, majorVersion=5,
                                minorVersion=10, temporaryPath=str(tmp_path / "slicer-temp"), processEvents=lambda: None)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)

    def set_layers(background=None, fit=False, **kwargs):
        headless_slicer.show(background, fit=fit)

    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", set_layers)
    spec = importlib.util.spec_from_file_location("VoteMI", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_description(votemi_module):
    module = votemi_module.VoteMI(None)
    assert module.parent.categories == ["Quantification"]
    assert module.parent.contributors and module.parent.acknowledgementText
    assert "github.com/VoteMI/SlicerVoteMI" in module.parent.helpText


def test_self_test_runs_the_child_the_buttons_run(votemi_module, headless_slicer, monkeypatch):
    """Slicer's own self-test (select, cancel, describe against a loopback server) goes through VoteMILogic.run,
    the path of the panel's buttons, never the in-process calls."""
    started = []
    original = votemi_module.VoteMILogic.startChild
    monkeypatch.setattr(votemi_module.VoteMILogic, "startChild",
                        lambda logic, arguments, apiKey="", cwd=None: started.append(arguments[0]) or original(
                            logic, arguments, apiKey, cwd))
    for name in ("select", "describe"):
        monkeypatch.setattr(votemi_module.VoteMILogic, name,
                            lambda *args, **kwargs: pytest.fail("the self-test ran in the GUI process"))
    votemi_module.VoteMITest().runTest()
    assert started == ["select", "select", "select", "select", "describe"]
    logic = votemi_module.VoteMILogic()
    report = logic.reportNode(headless_slicer.scene.GetFirstNodeByName("VoteMIBlob"))
    summary = logic.reportSummary(report)
    assert "votemi-loopback" in summary and "edited by the user" in summary
    exported = logic.reportExport(report, "markdown")
    assert "AI-generated draft" in exported and "Reviewed." in exported


def test_logic_jumps_to_clicked_plot_point(votemi_module, headless_slicer):
    import VoteMISelfTestLib as mrml_selftest
    from VoteMILib import mrml

    phantom = mrml_selftest.blob_phantom()
    volume = mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, "blob")
    logic = votemi_module.VoteMILogic()
    result = logic.select(volume, planes=("axial", "coronal"), slicesPerPlane=1)
    series, = mrml.votemi_nodes(headless_slicer.scene, volume, role="series", plane="coronal")
    row = 10
    assert logic.jumpToSeriesPoint(series, row)
    center = mrml.table_rows(series.GetTableNode())[row]["center_ras"]
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Green"), center)) < 1e-6
    assert not logic.jumpToSeriesPoint(series, 10_000)
    assert result.planes["axial"].selected


def test_the_logic_takes_the_current_keyword_names_only(votemi_module, headless_slicer):
    """0.1's aliases are gone (topK=, protocol=, --top, --protocol): a script gets a TypeError naming the keyword
    rather than a silent default."""
    import VoteMISelfTestLib as mrml_selftest
    from VoteMILib import mrml

    phantom = mrml_selftest.blob_phantom()
    volume = mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, "blob")
    logic = votemi_module.VoteMILogic()
    result = logic.select(volume, planes=("axial",), slicesPerPlane=2, apply=False)
    assert len(result.planes["axial"].selected) == 2
    assert logic.describeOptions(volume, backend="ollama").backend == "ollama"
    assert logic.describeOptions(volume).backend == "openai"
    with pytest.raises(TypeError, match="topK"):
        logic.select(volume, topK=2, apply=False)
    with pytest.raises(TypeError, match="protocol"):
        logic.describeOptions(volume, protocol="ollama")


def test_the_server_check_reaches_the_child_with_its_backend(votemi_module):
    from VoteMILib.cli import build_parser
    from VoteMISlicerLib.servers import serverCheckArguments

    arguments = serverCheckArguments("http://127.0.0.1:11434", "ollama", probe=True, model="medgemma")
    assert "--backend" in arguments and "--protocol" not in arguments
    args = build_parser().parse_args(arguments)
    assert (args.func.__name__, args.server, args.backend, args.model, args.probe, args.events) == (
        "run_models", "http://127.0.0.1:11434", "ollama", "medgemma", True, True)
