"""First-use installs on the real panel (Qt harness, real MRML): pydicom 3 on a Slicer that runs pydicom 2, and
declining any install.

Slicer 5.10 imports its pydicom 2.4.4 at start-up; the DICOM export needs pydicom 3. What stands in here: the
loaded pydicom (a module with ``__version__`` in ``sys.modules``), pip (``slicer.util.pip_install`` writes the new
distribution's metadata into a site folder on ``sys.path``, as pip would), ``slicer.util.restart``,
``slicer.packaging.pip_ensure`` (5.12+, raising what Slicer's raises when the user says no) and PyTorchUtils.
"""

from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")

REPO = Path(__file__).resolve().parents[1]


def _blob_volume(headless_slicer, name="Blob"):
    from VoteMILib import mrml
    from VoteMISelfTestLib import blob_phantom

    phantom = blob_phantom(seed=0)
    return mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, name)


def _distribution(site, name, version):
    """The metadata pip leaves for an installed distribution (what importlib.metadata reads)."""
    for old in site.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


class Slicer510Pydicom:
    """Slicer 5.10's pydicom: 2.4.4 on disk and already imported; pip and restart recorded."""

    def __init__(self, monkeypatch, tmp_path):
        import slicer
        import slicer.util

        self.site = tmp_path / "site-packages"
        _distribution(self.site, "pydicom", "2.4.4")
        monkeypatch.syspath_prepend(str(self.site))
        loaded = types.ModuleType("pydicom")
        loaded.__version__ = "2.4.4"
        monkeypatch.setitem(sys.modules, "pydicom", loaded)
        monkeypatch.delattr(slicer, "packaging", raising=False)
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer 5.10 has no slicer.packaging
        self.installed, self.restarts = [], []
        monkeypatch.setattr(slicer.util, "pip_install", self._pip_install, raising=False)
        monkeypatch.setattr(slicer.util, "restart", lambda: self.restarts.append(True))

    def _pip_install(self, requirements):
        self.installed.append(requirements)
        _distribution(self.site, "pydicom", "3.0.2")


def _report_from_the_dicom_database(panel, headless_slicer, monkeypatch, tmp_path):
    """A volume that came from the DICOM database (its source file in a stand-in database) with a report."""
    import slicer

    source = tmp_path / "database" / "1.dcm"
    source.parent.mkdir()
    source.write_bytes(b"")
    monkeypatch.setattr(slicer, "dicomDatabase", types.SimpleNamespace(
        isOpen=True, fileForInstance=lambda uid: str(source)), raising=False)
    volume = _blob_volume(headless_slicer)
    volume.SetAttribute("DICOM.instanceUIDs", "1.2.3.4")
    panel.setup()
    panel.ui.reportTextEdit.setPlainText("Findings: a round mass in the left lobe [A1].")
    panel.qapp.processEvents()
    assert panel.ui.exportDicomButton.enabled
    return volume


def test_the_dicom_extra_and_the_panels_install_require_pydicom_3():
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    extra = re.search(r"^dicom = \[(.*)\]$", pyproject, re.M).group(1)
    assert '"pydicom>=3.0.1"' in extra
    packages = (REPO / "VoteMI" / "VoteMISlicerLib" / "packages.py").read_text(encoding="utf-8")
    assert '"pydicom>=3.0.1"' in packages and "pydicom>=2" not in packages


def test_on_slicer_5_10_export_says_a_restart_is_needed_before_installing_and_offers_it(
        panel, headless_slicer, monkeypatch, tmp_path):
    slicer510 = Slicer510Pydicom(monkeypatch, tmp_path)
    _report_from_the_dicom_database(panel, headless_slicer, monkeypatch, tmp_path)
    panel.dialogs.answers = [True, True]  # install, then restart
    panel.click(panel.ui.exportDicomButton)
    assert not panel.slot_errors and not panel.dialogs.of("errorDisplay"), panel.dialogs.shown
    question = panel.dialogs.of("confirmOkCancelDisplay")[0]
    assert "pydicom 2.4.4" in question and "restarts" in question  # said before installing
    assert slicer510.installed == ["pydicom>=3.0.1 highdicom>=0.23"]
    assert "3.0.2" in panel.dialogs.of("confirmYesNoDisplay")[0]
    assert slicer510.restarts == [True]


def test_without_the_restart_export_to_dicom_is_off_and_its_tooltip_says_why(
        panel, headless_slicer, monkeypatch, tmp_path):
    slicer510 = Slicer510Pydicom(monkeypatch, tmp_path)
    _report_from_the_dicom_database(panel, headless_slicer, monkeypatch, tmp_path)
    panel.dialogs.answers = [True, False]  # install, restart later
    panel.click(panel.ui.exportDicomButton)
    assert not panel.slot_errors and not panel.dialogs.of("errorDisplay"), panel.dialogs.shown
    assert slicer510.installed and not slicer510.restarts
    assert not panel.ui.exportDicomButton.enabled
    assert "restart Slicer" in panel.ui.exportDicomButton.toolTip
    assert "pydicom 3.0.2" in panel.ui.exportDicomButton.toolTip and "2.4.4" in panel.ui.exportDicomButton.toolTip
    assert "restart Slicer" in panel.ui.statusLabel.text


def test_declining_pydicom_3_on_slicer_5_10_leaves_a_status_line_only(panel, headless_slicer, monkeypatch,
                                                                         tmp_path):
    slicer510 = Slicer510Pydicom(monkeypatch, tmp_path)
    _report_from_the_dicom_database(panel, headless_slicer, monkeypatch, tmp_path)
    panel.dialogs.answers = [False]
    panel.click(panel.ui.exportDicomButton)
    assert not panel.slot_errors and not slicer510.installed
    assert [kind for kind, _ in panel.dialogs.shown] == ["confirmOkCancelDisplay"]
    assert panel.ui.statusLabel.text == "DICOM export: 'pydicom>=3.0.1' was not installed."
    assert panel.ui.exportDicomButton.enabled  # nothing changed: the user may still agree later


def _in_process_describe(panel, headless_slicer, monkeypatch):
    from VoteMILib.names import INPROCESS

    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed: find_spec answers None
    _blob_volume(headless_slicer)
    panel.setup()
    panel.widget._parameterNode.protocol = INPROCESS
    panel.click(panel.ui.selectDescribeButton)


def _assert_quiet_decline(panel, status):
    assert not panel.slot_errors
    assert not panel.dialogs.of("errorDisplay") and not panel.dialogs.of("warningDisplay"), panel.dialogs.shown
    assert panel.ui.statusLabel.text == status
    assert panel.widget._run is None and panel.ui.selectDescribeButton.enabled


def test_declining_pip_ensure_on_slicer_5_12_returns_quietly_to_the_panel(panel, headless_slicer, monkeypatch):
    import slicer

    from VoteMISlicerLib.packages import PIP_ENSURE_DECLINED

    def pip_ensure(requirements, requester=None):  # Slicer 5.12's, when the user presses Cancel
        raise RuntimeError(PIP_ENSURE_DECLINED)

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    _in_process_describe(panel, headless_slicer, monkeypatch)
    _assert_quiet_decline(panel, "The in-process model: 'transformers>=5.0' was not installed.")


def test_declining_the_question_before_slicer_5_12_returns_quietly_to_the_panel(panel, headless_slicer,
                                                                                monkeypatch):
    import slicer

    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    panel.dialogs.answers = [False]
    _in_process_describe(panel, headless_slicer, monkeypatch)
    assert len(panel.dialogs.of("confirmOkCancelDisplay")) == 1
    _assert_quiet_decline(panel, "The in-process model: 'transformers>=5.0' was not installed.")


def test_declining_pytorch_returns_quietly_to_the_panel(panel, headless_slicer, monkeypatch):
    asked = []

    class PyTorchUtilsLogic:  # the PyTorch extension's logic; installTorch answers None when the user says no
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            asked.append(askConfirmation)
            return None

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    _in_process_describe(panel, headless_slicer, monkeypatch)
    assert asked == [True]
    _assert_quiet_decline(panel, "The in-process model: 'torch' was not installed.")


def test_a_failed_install_still_shows_its_error(panel, headless_slicer, monkeypatch):
    """Only declining is quiet: pip failing is an error the user must see."""
    import slicer

    def pip_ensure(requirements, requester=None):
        raise RuntimeError("pip exited with code 1")

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    _in_process_describe(panel, headless_slicer, monkeypatch)
    errors = panel.dialogs.of("errorDisplay")
    assert len(errors) == 1 and "pip exited with code 1" in errors[0] + panel.dialogs.details[-1]
    assert panel.widget._run is None
