"""VoteMI's real panel (``VoteMIWidget``) on real Qt widgets, the real ``.ui`` and a real MRML scene.

See ``slicer_qt_harness.py`` for what stands in for the Slicer application. Every run goes through
the panel's buttons, a real ``votemi ... --events`` child process and, for describing, a real HTTP
server on 127.0.0.1; the event loop holds the GIL while idle, as Slicer's GUI thread does.
"""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")

from mrml_helpers import main_case_image  # noqa: E402
from vlm_fixtures import error_answer, streamed  # noqa: E402
from engine_fixtures import COLIN27  # noqa: E402  (a healthy brain MRI: nothing stands out in it)


def _phantom_volume(headless_slicer, name="Blob", seed=0):
    from VoteMILib import mrml
    from VoteMISelfTestLib import blob_phantom

    phantom = blob_phantom(seed=seed)
    return mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, name)


def _wait(panel, timeout_s=90.0):
    panel.run_until(panel.idle, timeout_s)
    assert not panel.slot_errors, panel.slot_errors


def _click_select_describe(panel, server, model="tiny-vlm"):
    """Point the panel at the scripted loopback server and click Select & Describe."""
    panel.widget._parameterNode.serverUrl = server.url
    panel.widget._parameterNode.model = model
    panel.click(panel.ui.selectDescribeButton)


def _runs(panel, monkeypatch):
    """Every VoteMIRun the panel starts, in order."""
    started = []
    if panel.run_class is None:  # an older VoteMI.py (VOTEMI_HARNESS_MODULE_DIR)
        return started
    original = panel.run_class.start

    def start(run, *args, **kwargs):
        started.append(run)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(panel.run_class, "start", start)
    return started


def _no_selection_in_this_process(monkeypatch):
    """Selecting in the GUI process (a worker thread, as before) would starve in Slicer: make it fail here."""
    import VoteMILib.selection

    def refuse(*args, **kwargs):
        raise AssertionError("the selection ran in the GUI process")

    monkeypatch.setattr(VoteMILib.selection, "select_slices", refuse)


# --------------------------------------------------------------------------------------------
# Setup, text fields, settings


def test_setup_loads_the_real_ui_and_picks_the_first_image_volume(panel, headless_slicer):
    label_map = headless_slicer.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Mask")
    image = _phantom_volume(headless_slicer)
    panel.setup()
    assert panel.widget._parameterNode.inputVolume is image
    assert panel.ui.inputSelector.currentNode() is image
    assert label_map.GetID() != image.GetID()
    assert panel.ui.selectButton.enabled and panel.ui.selectDescribeButton.enabled
    assert not panel.ui.progressBar.visible and not panel.ui.cancelButton.visible
    assert "AI-generated draft" in panel.ui.noticeLabel.text
    assert not panel.slot_errors


@pytest.mark.parametrize("widget_name, parameter", [
    ("serverUrlLineEdit", "serverUrl"), ("modelLineEdit", "model"), ("languageLineEdit", "language"),
    ("promptTextEdit", "promptTemplate"), ("examplesLineEdit", "examplesFolder"), ("apiKeyLineEdit", None),
    ("reportTextEdit", None)])
def test_typing_into_every_text_field_keeps_the_text(panel, headless_slicer, widget_name, parameter):
    from PyQt5 import QtCore, QtTest

    volume = _phantom_volume(headless_slicer)
    panel.setup()
    widget = getattr(panel.ui, widget_name)
    widget.clear()
    panel.type_into(widget, "Describe it, please.")
    # Typing in the middle too: the binding Slicer's wrapper makes would move the cursor away.
    multiline = hasattr(widget, "toPlainText")
    QtTest.QTest.keyClick(widget, QtCore.Qt.Key_Home, QtCore.Qt.ControlModifier if multiline else QtCore.Qt.NoModifier)
    panel.type_into(widget, "Now ")
    text = widget.toPlainText() if multiline else widget.text
    assert text == "Now Describe it, please."
    if parameter:
        assert getattr(panel.widget._parameterNode, parameter) == text
    if widget_name == "reportTextEdit":
        assert panel.widget.logic.reportNode(volume).GetText() == text
    panel.run_until(panel.idle, 30)


def test_settings_are_remembered_for_a_new_scene(panel, headless_slicer, monkeypatch, tmp_path):
    from slicer_qt_harness import SlicerPanel

    panel.setup()
    panel.ui.coronalCheckBox.checked = False
    panel.ui.slicesPerPlaneSpinBox.value = 5
    panel.ui.timeoutSpinBox.value = 45
    panel.type_into(panel.ui.languageLineEdit, "ish")
    panel.type_into(panel.ui.promptTextEdit, "Short, please.")
    panel.ui.switchLayoutCheckBox.checked = False
    panel.run_until(panel.idle, 30)
    panel.close()
    # A new scene (the parameter node is gone) and a new panel, as after restarting Slicer.
    headless_slicer.scene.RemoveNode(headless_slicer.scene.GetSingletonNode("VoteMI", "vtkMRMLScriptedModuleNode"))
    again = SlicerPanel(headless_slicer, monkeypatch, tmp_path).setup()
    try:
        node = again.widget._parameterNode
        assert (node.axial, node.coronal, node.sagittal) == (True, False, True)
        assert (node.slicesPerPlane, node.timeoutSeconds) == (5, 45)
        assert node.language == "Englishish" and node.promptTemplate == "Short, please."
        assert not node.switchLayoutForChart and not again.ui.switchLayoutCheckBox.checked
        assert again.ui.promptTextEdit.toPlainText() == "Short, please."
        again.run_until(again.idle, 30)
    finally:
        again.close()


@pytest.mark.parametrize("stored, loaded", [("votemi", "findings"), ("plain", "representative")])
def test_scenes_with_the_earlier_mode_names_load_with_the_new_ones(panel, headless_slicer, stored, loaded):
    logic = panel.module.VoteMILogic()
    logic.getParameterNode().parameterNode.SetParameter("selectionMode", stored)  # as a saved scene holds it
    assert logic.getParameterNode().selectionMode == loaded
    panel.setup()
    assert panel.ui.selectionModeComboBox.currentText == loaded
    panel.run_until(panel.idle, 30)


# --------------------------------------------------------------------------------------------
# Runs from the buttons


def test_select_only_from_the_button_marks_the_real_case_in_a_child_process(panel, headless_slicer, monkeypatch):
    from VoteMILib import mrml

    volume = headless_slicer.load_volume(main_case_image(), "tcga_du_7294")
    headless_slicer.show(volume)
    _no_selection_in_this_process(monkeypatch)
    runs = _runs(panel, monkeypatch)
    panel.setup()
    panel.click(panel.ui.selectButton)
    assert panel.ui.cancelButton.visible and not panel.ui.selectButton.enabled
    _wait(panel)
    assert panel.dialogs.shown == [], panel.dialogs.shown
    # The status says what the scan was taken for, what stood out in each plane (a glioma: its asymmetry) and how
    # surely: the sagittal plane's best slice hardly stands above its other summits.
    assert panel.ui.statusLabel.text == ("Done (MRI head; axial: asymmetry stood out, confidence 0.91; coronal: "
                                         "asymmetry stood out, confidence 0.94; sagittal: asymmetry stood out, "
                                         "confidence 0.09).")
    assert runs and runs[0].child.exit_code == 0 and runs[0].folder is None  # temporary files removed
    assert panel.ui.resultsTable.rowCount == 9
    planes = [panel.ui.resultsTable.item(row, 0).text() for row in range(9)]
    assert planes == ["Axial"] * 3 + ["Coronal"] * 3 + ["Sagittal"] * 3
    assert [panel.ui.resultsTable.item(row, 5).text() for row in (0, 3, 6)] == ["0.91", "0.94", "0.09"]
    assert {panel.ui.resultsTable.item(row, 6).text() for row in range(9)} == {"yes: asymmetry"}
    assert panel.ui.resultsTable.item(0, 6).toolTip().startswith("asymmetry stood out, confidence 0.91.")
    for plane in ("axial", "coronal", "sagittal"):
        marks, = mrml.votemi_nodes(headless_slicer.scene, volume, role="marks", plane=plane)
        assert marks.GetNumberOfControlPoints() == 3
    best_axial = mrml.voted_slices(headless_slicer.scene, volume)[0]
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Red"), best_axial["center_ras"])) < 0.5
    # Clicking a row shows that slice.
    row = 4
    panel.ui.resultsTable.cellClicked.emit(row, 0)
    picked = mrml.voted_slices(headless_slicer.scene, volume)[row]
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Green"), picked["center_ras"])) < 0.5


def test_a_lesion_free_brain_reads_representative_nothing_stood_out_in_the_status_and_table(
        panel, headless_slicer, monkeypatch):
    volume = headless_slicer.load_volume(str(COLIN27), "colin27")
    headless_slicer.show(volume)
    _no_selection_in_this_process(monkeypatch)
    panel.setup()
    panel.click(panel.ui.selectButton)
    _wait(panel)
    assert panel.dialogs.shown == [], panel.dialogs.shown
    # Colin27 is a healthy brain: no plane's picks may read like a finding's.
    assert panel.ui.statusLabel.text == ("Done (MRI head; axial: representative (nothing stood out), confidence 0.14; "
                                         "coronal: representative (nothing stood out), confidence 0.15; sagittal: "
                                         "representative (nothing stood out), confidence 0.04).")
    table = panel.ui.resultsTable
    assert table.rowCount == 9
    assert table.horizontalHeaderItem(5).text() == "Confidence" and table.horizontalHeaderItem(6).text() == "Stood out"
    assert [table.item(row, 5).text() for row in (0, 3, 6)] == ["0.14", "0.15", "0.04"]
    assert {table.item(row, 6).text() for row in range(9)} == {"no (representative)"}
    assert table.item(6, 6).toolTip().startswith("representative (nothing stood out), confidence 0.04.")


def test_select_and_describe_streams_the_report_from_a_loopback_server(panel, headless_slicer, monkeypatch,
                                                                       scripted_server, tmp_path):
    import SimpleITK as sitk

    from VoteMILib import mrml
    from vlm_fixtures import make_volume

    case = tmp_path / "examples" / "case1"  # the Examples folder: one worked example
    case.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(make_volume("mri", shape_kji=(40, 48, 48)).array), str(case / "t1.nii.gz"))
    (case / "report.txt").write_text("Findings: no mass.\nImpression: normal.\n", encoding="utf-8")
    volume = headless_slicer.load_volume(main_case_image(), "tcga_du_7294")
    pieces = ["Findings: ", "an enhancing mass ", "[A1, C1].", "\nImpression: ", "glioma."]
    scripted_server.script = [streamed(pieces, pause_s=0.05)]
    _no_selection_in_this_process(monkeypatch)
    runs = _runs(panel, monkeypatch)
    panel.setup()
    node = panel.widget._parameterNode
    node.serverUrl, node.model, node.slicesPerPlane = scripted_server.url, "tiny-vlm", 1
    panel.type_into(panel.ui.apiKeyLineEdit, "secret-key")
    panel.type_into(panel.ui.examplesLineEdit, str(case.parent))
    panel.click(panel.ui.selectDescribeButton)
    assert panel.ui.reportTextEdit.readOnly
    _wait(panel)
    assert panel.dialogs.of("errorDisplay") == [] and panel.dialogs.of("warningDisplay") == []
    report = mrml.report_node(headless_slicer.scene, volume)
    assert report.GetText() == "".join(pieces)
    assert panel.ui.reportTextEdit.toPlainText() == "".join(pieces) and not panel.ui.reportTextEdit.readOnly
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "model") == "tiny-vlm"
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "complete") == "true"
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "images") == "A1, C1, S1"
    assert "tiny-vlm" in panel.ui.reportInfoLabel.text and panel.ui.saveReportButton.enabled
    assert panel.ui.resultsTable.rowCount == 3
    chat, = [request for request in scripted_server.requests if request[0] == "POST"]
    assert chat[2].get("Authorization") == "Bearer secret-key"
    example, answer, question = chat[3]["messages"]  # the worked example as an earlier turn
    assert answer == {"role": "assistant", "content": "Findings: no mass.\nImpression: normal."}
    assert example["role"] == question["role"] == "user" and "Worked example 1" in example["content"][0]["text"]
    assert "secret-key" not in " ".join(runs[0].child.process.args)  # the key went through the environment


def test_cancel_ends_the_child_within_a_second_and_keeps_the_previous_report(panel, headless_slicer, monkeypatch,
                                                                             scripted_server):
    from VoteMILib import mrml
    from VoteMILib.vlm import Report

    volume = _phantom_volume(headless_slicer)
    report = mrml.report_node(headless_slicer.scene, volume, create=True)
    mrml.finish_report(report, Report("The earlier report.", {"model": "earlier-model"}))
    scripted_server.script = [streamed([], tail="stall")]
    runs = _runs(panel, monkeypatch)
    panel.setup()
    _click_select_describe(panel, scripted_server)
    panel.run_until(lambda: runs and runs[0].selected and scripted_server.chat_requests(), 60)
    child = runs[0].child.process
    assert child.poll() is None
    clicked = time.perf_counter()
    panel.click(panel.ui.cancelButton)
    while child.poll() is None and time.perf_counter() - clicked < 5:
        time.sleep(0.005)
    assert child.poll() is not None and time.perf_counter() - clicked <= 1.0
    assert panel.ui.statusLabel.text == "Cancelled." and panel.widget._run is None
    assert report.GetText() == "The earlier report."
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "model") == "earlier-model"
    assert panel.ui.selectDescribeButton.enabled and not panel.ui.reportTextEdit.readOnly
    panel.run_until(panel.idle, 30)


def test_a_failed_describe_leaves_the_previous_report_and_says_why(panel, headless_slicer, scripted_server):
    from VoteMILib import mrml
    from VoteMILib.vlm import Report

    volume = _phantom_volume(headless_slicer)
    report = mrml.report_node(headless_slicer.scene, volume, create=True)
    mrml.finish_report(report, Report("The earlier report.", {"model": "earlier-model", "created": "yesterday"}))
    scripted_server.script = [error_answer(404, {"error": {"message": "model 'x' not found"}})]
    panel.setup()
    _click_select_describe(panel, scripted_server, "x")
    _wait(panel)
    error, = panel.dialogs.of("errorDisplay")
    assert error.startswith("The vision-language model did not answer:\n") and "not found" in error
    assert "\n" not in error.split("\n", 1)[1]  # one line, as the command line prints it
    assert report.GetText() == "The earlier report."
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "created") == "yesterday"
    assert panel.ui.reportTextEdit.toPlainText() == "The earlier report."


def test_other_sequences_go_to_the_child_with_the_input(panel, headless_slicer, monkeypatch):
    from PyQt5 import QtCore

    from VoteMILib import mrml

    volume = _phantom_volume(headless_slicer, "T1")
    flair = _phantom_volume(headless_slicer, "FLAIR", seed=1)
    runs = _runs(panel, monkeypatch)
    panel.setup()
    panel.widget._parameterNode.inputVolume = volume
    panel.ui.extraVolumesSelector.setCheckState(flair, QtCore.Qt.Checked)
    assert panel.widget._extraVolumes() == [flair]
    panel.click(panel.ui.selectButton)
    _wait(panel)
    arguments = runs[0].child.process.args
    extra = arguments[arguments.index("--extra") + 1]
    assert extra == "volume-1.nrrd" and arguments[arguments.index("select") + 1] == "volume-0.nrrd"
    names = [arguments[n + 1] for n, argument in enumerate(arguments) if argument == "--volume-name"]
    assert names == ["T1", "FLAIR"]
    assert panel.dialogs.shown == [] and len(mrml.voted_slices(headless_slicer.scene, volume)) == 9


def test_a_report_that_breaks_off_is_kept_and_marked_incomplete(panel, headless_slicer, scripted_server):
    from VoteMILib import mrml

    volume = _phantom_volume(headless_slicer)
    scripted_server.script = [streamed(["Findings: ", "a lesion"], tail="drop")]
    panel.setup()
    _click_select_describe(panel, scripted_server)
    _wait(panel)
    warning, = panel.dialogs.of("warningDisplay")
    assert warning.startswith("The report is incomplete: ") and panel.dialogs.of("errorDisplay") == []
    report = mrml.report_node(headless_slicer.scene, volume)
    assert report.GetText() == "Findings: a lesion"
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "complete") == "false"
    assert "incomplete" in panel.ui.reportInfoLabel.text and panel.ui.statusLabel.text.startswith("Done (")


def test_edits_made_to_the_report_node_while_it_streams_are_kept(panel, headless_slicer, monkeypatch,
                                                                 scripted_server):
    from VoteMILib import mrml

    volume = _phantom_volume(headless_slicer)
    pieces = [f"part {n}. " for n in range(12)]
    scripted_server.script = [streamed(pieces, pause_s=0.1)]
    runs = _runs(panel, monkeypatch)
    panel.setup()
    _click_select_describe(panel, scripted_server)
    panel.run_until(lambda: runs and runs[0].report.started, 60)
    assert panel.ui.reportTextEdit.readOnly
    node = runs[0].report.node
    node.SetText("Reviewer: " + node.GetText())  # a script or another widget edits the node meanwhile
    _wait(panel)
    assert node.GetText() == "Reviewer: " + "".join(pieces)
    assert mrml.report_edited(node) and "edited by the user" in panel.ui.reportInfoLabel.text
    assert node.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "complete") == "true"
    assert mrml.voted_slices(headless_slicer.scene, volume)


def test_an_unusable_volume_gets_a_one_line_error_and_no_marks(panel, headless_slicer):
    from VoteMILib import mrml

    volume = mrml.add_volume_from_array(headless_slicer.scene, np.full((20, 20, 20), 7.0, np.float32), np.eye(4),
                                        "Flat")
    panel.setup()
    panel.click(panel.ui.selectButton)
    _wait(panel)
    error, = panel.dialogs.of("errorDisplay")
    assert error == "VoteMI cannot use this input:\nFlat is constant (7): there is nothing to select from"
    assert mrml.votemi_nodes(headless_slicer.scene, volume) == []


def test_a_plain_http_server_elsewhere_is_confirmed_and_declining_sends_nothing(panel, headless_slicer,
                                                                                monkeypatch):
    _phantom_volume(headless_slicer)
    runs = _runs(panel, monkeypatch)
    panel.setup()
    panel.run_until(panel.idle, 30)
    # 203.0.113.0/24 is reserved for documentation: nothing may be sent there, and nothing is.
    panel.widget._parameterNode.serverUrl = "http://203.0.113.7:8000"
    panel.dialogs.answers = [False]
    panel.click(panel.ui.selectDescribeButton)
    question, = panel.dialogs.of("confirmOkCancelDisplay")
    assert "203.0.113.7" in question and "plain HTTP" in question and "unencrypted" in question
    assert runs == [] and panel.widget._run is None and panel.ui.selectDescribeButton.enabled
    # With an API key, the automatic status check does not send it over plain HTTP to another machine.
    panel.ui.apiKeyLineEdit.text = "key-for-the-gpu-box"
    panel.widget.checkServer(explicit=False)
    assert panel.widget._statusCheck is None and "not checked automatically" in panel.ui.serverStatusLabel.text
    from VoteMILib.server_urls import is_unencrypted_remote
    from VoteMISlicerLib.servers import remoteServerWarning

    assert is_unencrypted_remote("http://203.0.113.7:8000") and not is_unencrypted_remote("https://h:1")
    assert not is_unencrypted_remote("http://localhost:11434")
    assert remoteServerWarning("http://127.0.0.1:11434") is None
    assert remoteServerWarning("http://localhost:8000/v1") is None
    https = remoteServerWarning("https://gpu-box.example:8000")
    assert "gpu-box.example" in https and "plain HTTP" not in https


def test_status_line_shows_reachable_server_and_model_or_why_not(panel, headless_slicer, scripted_server,
                                                                 tmp_path):
    import socket

    panel.setup()
    panel.run_until(panel.idle, 30)
    panel.ui.serverUrlLineEdit.clear()
    panel.type_into(panel.ui.serverUrlLineEdit, scripted_server.url)  # checked once typing pauses
    panel.run_until(lambda: ": reachable" in panel.ui.serverStatusLabel.text, 30)
    assert panel.ui.serverStatusLabel.text == f"Server {scripted_server.url}: reachable; model tiny-vlm"
    assert panel.widget._parameterNode.model == "tiny-vlm"  # the server's only model
    assert scripted_server.chat_requests() == []  # typing never probes
    # Test connection also probes the model; this server takes every test image and ignores the schema, and
    # reports no prompt tokens, so whether the model sees every image cannot be told.
    panel.click(panel.ui.testConnectionButton)
    panel.run_until(lambda: "probed" in panel.ui.serverStatusLabel.text, 60)
    status = panel.ui.serverStatusLabel.text
    assert status.startswith(f"Server {scripted_server.url}: reachable; model tiny-vlm; images: 9 or more per "
                             "request; JSON schema: no; images seen: unverified (probed "), status
    from VoteMILib.vlm.capabilities import cached

    assert cached("openai", scripted_server.url, "tiny-vlm").max_images == 9  # describe runs will use it
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    panel.widget._parameterNode.serverUrl = closed
    panel.click(panel.ui.testConnectionButton)
    panel.run_until(panel.idle, 30)
    assert panel.ui.serverStatusLabel.text.startswith(f"Server unreachable: {closed}: connection refused")
    assert panel.dialogs.of("errorDisplay")  # asked explicitly: also a message box
    # An in-process model has no server: the line names the model folder (the run itself: test_events.py).
    panel.widget._parameterNode.protocol = "inprocess"
    panel.widget._parameterNode.model = str(tmp_path)
    panel.click(panel.ui.testConnectionButton)
    assert panel.ui.serverStatusLabel.text == f"In-process model: {tmp_path}"


def test_a_password_in_the_server_url_is_refused_and_never_saved(panel, headless_slicer, monkeypatch, tmp_path):
    from PyQt5 import QtCore

    _phantom_volume(headless_slicer)
    runs = _runs(panel, monkeypatch)
    panel.setup()
    panel.run_until(panel.idle, 30)
    panel.ui.serverUrlLineEdit.clear()
    panel.type_into(panel.ui.serverUrlLineEdit, "http://radiology:s3cret-pw@127.0.0.1:9/v1")
    panel.click(panel.ui.testConnectionButton)
    assert "user name and password" in panel.ui.serverStatusLabel.text
    assert panel.widget._statusCheck is None, "a server check was started with the password"
    panel.click(panel.ui.selectDescribeButton)
    panel.run_until(panel.idle, 30)
    assert runs == [] and panel.widget._run is None
    assert any("user name and password" in text for text in panel.dialogs.of("errorDisplay"))
    # The box keeps what was typed, for the user to correct; the scene and the settings never see it.
    assert panel.ui.serverUrlLineEdit.text == "http://radiology:s3cret-pw@127.0.0.1:9/v1"
    assert panel.widget._parameterNode.serverUrl == "http://127.0.0.1:9/v1"
    assert "s3cret-pw" not in str(QtCore.QSettings().value("VoteMI/ServerUrl"))
    scene_file = tmp_path / "scene.mrml"
    headless_slicer.scene.SetURL(str(scene_file))
    assert headless_slicer.scene.Commit()
    assert "s3cret-pw" not in scene_file.read_text(errors="replace")
    assert all("s3cret-pw" not in text for _kind, text in panel.dialogs.shown)
    # Corrected, the URL is taken again.
    panel.ui.serverUrlLineEdit.clear()
    panel.type_into(panel.ui.serverUrlLineEdit, "http://127.0.0.1:9/v1")
    assert panel.widget._parameterNode.serverUrl == "http://127.0.0.1:9/v1"
    panel.run_until(panel.idle, 30)


# --------------------------------------------------------------------------------------------
# Results, layout, reload, version, saving


def _select_with_logic(panel, headless_slicer, volume, switch_layout=True):
    from VoteMILib.selection import select_slices

    result = select_slices(panel.widget.logic.volumeFromNode(volume), planes=("axial", "coronal"), top_k=1)
    return panel.widget.logic.applySelection(volume, result, switchLayout=switch_layout)


def test_clear_results_removes_that_volumes_nodes_and_nothing_else(panel, headless_slicer):
    from VoteMILib import mrml

    first, second = _phantom_volume(headless_slicer, "First"), _phantom_volume(headless_slicer, "Second", seed=1)
    other = headless_slicer.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "User points")
    panel.setup()
    for volume in (first, second):
        _select_with_logic(panel, headless_slicer, volume)
    mrml.report_node(headless_slicer.scene, first, create=True)
    before = headless_slicer.scene.GetNumberOfNodes()
    second_nodes = mrml.votemi_nodes(headless_slicer.scene, second)
    panel.widget._parameterNode.inputVolume = first
    panel.click(panel.ui.clearResultsButton)
    assert mrml.votemi_nodes(headless_slicer.scene, first) == []
    assert mrml.votemi_nodes(headless_slicer.scene, second) == second_nodes
    assert headless_slicer.scene.GetNodeByID(other.GetID()) is other
    assert headless_slicer.scene.GetNodeByID(first.GetID()) is first
    assert panel.ui.resultsTable.rowCount == 0 and before > headless_slicer.scene.GetNumberOfNodes()
    assert mrml.votemi_folder(headless_slicer.scene, first, create=False) == 0


def test_the_chart_is_shown_without_switching_layout_when_the_user_says_so(panel, headless_slicer):
    import slicer

    volume = _phantom_volume(headless_slicer)
    panel.setup()
    layout = panel.layout_manager
    layout.layout = slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
    _select_with_logic(panel, headless_slicer, volume, switch_layout=False)
    assert layout.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
    layout.layout = slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView
    assert layout.plotViewCount == 1
    nodes = _select_with_logic(panel, headless_slicer, volume, switch_layout=False)
    plot_view = headless_slicer.scene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert plot_view.GetPlotChartNodeID() == nodes.chart.GetID()
    layout.layout = slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
    _select_with_logic(panel, headless_slicer, volume, switch_layout=True)  # Slicer's plots logic switches
    assert layout.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView


def test_reload_reloads_the_engine_and_the_slicer_side(panel):
    import VoteMILib.mrml
    import VoteMISelfTestLib
    import VoteMISlicerLib.run

    packages = ("VoteMILib", "VoteMISlicerLib", "VoteMISelfTestLib")
    panel.setup()
    before = (VoteMILib.mrml, VoteMISlicerLib.run, VoteMISelfTestLib)
    engine = {name: module for name, module in sys.modules.items() if name.split(".")[0] in packages}
    try:
        panel.widget.onReload()
        assert panel.widget.reloaded == 1
        assert not [name for name in sys.modules if name.split(".")[0] in packages]
        import VoteMILib.mrml as mrml
        import VoteMISelfTestLib as selftest
        import VoteMISlicerLib.run as run

        assert not {id(mrml), id(run), id(selftest)} & {id(module) for module in before}
    finally:  # the other tests hold the engine's classes: put them back
        for name in [name for name in sys.modules if name.split(".")[0] in packages]:
            del sys.modules[name]
        sys.modules.update(engine)


def test_older_slicer_gets_a_clear_message_instead_of_the_panel(headless_slicer, monkeypatch, tmp_path):
    from slicer_qt_harness import SlicerPanel, compat
    from PyQt5 import QtWidgets

    old = SlicerPanel(headless_slicer, monkeypatch, tmp_path, slicer_version=(5, 8)).setup()
    try:
        labels = [label.text for label in old.module_panel.findChildren(compat(QtWidgets.QLabel))]
        assert any(text.startswith("VoteMI needs 3D Slicer 5.10 or later (Python 3.10+); this is Slicer 5.8")
                   for text in labels), labels
        assert not hasattr(old.widget, "ui")
        module = old.module.VoteMI(types.SimpleNamespace())
        assert module.parent.helpText.startswith("VoteMI needs 3D Slicer 5.10")
    finally:
        old.close()


def test_save_report_opens_in_the_scene_folder_and_writes_atomically(panel, headless_slicer, tmp_path):
    from VoteMILib import mrml
    from VoteMILib.vlm import Report

    volume = _phantom_volume(headless_slicer, "Case 7")
    mrml.finish_report(mrml.report_node(headless_slicer.scene, volume, create=True),
                       Report("Findings: none.", {"model": "m"}))
    panel.setup()
    panel.saved_path = str(tmp_path / "out" / "report.md")
    panel.click(panel.ui.saveReportButton)
    assert panel.save_dialog_args[2] == str(tmp_path / "scenes" / "Case 7_VoteMI_report.html")
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "AI-generated draft" in text and "Findings: none." in text
    (tmp_path / "blocker").write_text("a file, not a folder")
    panel.saved_path = str(tmp_path / "blocker" / "report.md")
    panel.click(panel.ui.saveReportButton)
    error, = panel.dialogs.of("errorDisplay")
    assert error.startswith(f"cannot write report {tmp_path / 'blocker' / 'report.md'}:") and "\n" not in error
    panel.run_until(panel.idle, 30)


# --------------------------------------------------------------------------------------------
# Screenshot01.png


def _grab(widget):
    """A Qt grab of a widget as a PIL image."""
    from PIL import Image
    from PyQt5 import QtCore, QtGui

    image = widget.grab().toImage().convertToFormat(QtGui.QImage.Format_RGB888)
    buffer = QtCore.QBuffer()
    buffer.open(QtCore.QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    import io

    return Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")


def test_screenshot_panel_after_a_run_beside_the_slice_views(panel, headless_slicer, scripted_server, tmp_path):
    """The panel (Qt grab) after Select & Describe on a real case, beside the Red, Yellow and Green views
    rendered by slicer-core's slice view pipeline. ``VOTEMI_UPDATE_SCREENSHOT=1`` writes Screenshot01.png."""
    import os
    from pathlib import Path

    from PIL import Image

    from mrml_helpers import views_with_bars
    from VoteMILib import mrml
    from VoteMILib.geometry import NORMAL_INDEX

    volume = headless_slicer.load_volume(main_case_image(), "tcga_du_7294")
    headless_slicer.show(volume)
    scripted_server.models = ["medgemma-4b-it"]
    scripted_server.script = [streamed([
        "Findings:\n- A heterogeneous mass in the right hemisphere with surrounding signal change [A1, C1, S1].\n",
        "- Mass effect on the adjacent ventricle [A1, C1].\n", "Impression: Intra-axial mass; ",
        "correlate with the full study [A1]."])]
    panel.setup()
    panel.ui.serverUrlLineEdit.clear()
    panel.type_into(panel.ui.serverUrlLineEdit, scripted_server.url)
    panel.ui.vlmCollapsibleButton.collapsed = False
    panel.run_until(lambda: ": reachable" in panel.ui.serverStatusLabel.text, 30)
    panel.click(panel.ui.selectDescribeButton)
    _wait(panel)
    assert panel.dialogs.shown == [] and panel.ui.resultsTable.rowCount == 9
    assert mrml.report_node(headless_slicer.scene, volume).GetText().startswith("Findings:")
    # Findings under review: the first accepted by a named reader, the others still drafts.
    from PyQt5 import QtCore, QtTest

    panel.type_into(panel.ui.reviewerLineEdit, "Dr. Reader")
    findings = panel.ui.findingsTable
    QtTest.QTest.mouseClick(findings.viewport(), QtCore.Qt.LeftButton, QtCore.Qt.NoModifier,
                            findings.visualItemRect(findings.item(0, 0)).center())
    panel.click(panel.ui.acceptFindingButton)
    assert findings.item(0, 0).text() == "accepted" and findings.rowCount == 3
    panel.ui.vlmCollapsibleButton.collapsed = True
    panel.module_panel.resize(470, panel.module_panel.sizeHint.height() + 150)  # room for the table
    panel.qapp.processEvents()
    grabbed = _grab(panel.module_panel)
    result = SelectionResult_from_scene(headless_slicer, volume)
    captions = {name: f"{name[0]}: {plane.capitalize()} 1, {'RAS'[NORMAL_INDEX[plane]]} {result[plane]:+.1f} mm"
                for name, plane in (("Red", "axial"), ("Yellow", "sagittal"), ("Green", "coronal"))}
    views = views_with_bars(headless_slicer.render_views(), captions)
    views = views.resize((views.width * grabbed.height // (3 * views.height // 1), grabbed.height // 3))
    column = Image.new("RGB", (views.width // 3, grabbed.height), (0, 0, 0))
    third = views.width // 3
    for index in range(3):  # Red, Yellow, Green stacked beside the panel
        column.paste(views.crop((index * third, 0, (index + 1) * third, views.height)), (0, index * views.height))
    shot = Image.new("RGB", (grabbed.width + column.width, grabbed.height), (0, 0, 0))
    shot.paste(grabbed, (0, 0))
    shot.paste(column, (grabbed.width, 0))
    shot.save(tmp_path / "Screenshot01.png")
    panel_pixels = np.asarray(grabbed)
    assert len(np.unique(panel_pixels.reshape(-1, 3), axis=0)) > 50, "the panel grab looks blank"
    if os.environ.get("VOTEMI_UPDATE_SCREENSHOT"):
        shot.save(Path(__file__).resolve().parents[1] / "Screenshot01.png")


def SelectionResult_from_scene(headless_slicer, volume):
    """Best slice position of each plane, as the scene holds it."""
    from VoteMILib import mrml

    best = {}
    for pick in mrml.voted_slices(headless_slicer.scene, volume):
        best.setdefault(pick["plane"], pick["position_mm"])
    return best
