"""The panel's findings (real Qt widgets, real .ui, real MRML, a real child process and loopback server):
citations that move the slice views, Accept / Reject / Edit, the review kept through a scene save and reload,
a confirmation before a new run replaces a review, and Save report... as HTML and PDF."""

from __future__ import annotations

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")

from PyQt5 import QtCore, QtTest, QtWidgets  # noqa: E402

from mrml_helpers import main_case_image  # noqa: E402
from vlm_fixtures import streamed  # noqa: E402

ANSWER = ["Findings:\n- An enhancing mass ", "in the right hemisphere [A1, C1].\n",
          "- Oedema around it [S1, S7].\n", "Impression: Glioma [A1]."]


def _describe(panel, headless_slicer, server):
    volume = headless_slicer.load_volume(main_case_image(), "tcga_du_7294")
    headless_slicer.show(volume)
    server.script = [streamed(ANSWER)]
    panel.setup()
    node = panel.widget._parameterNode
    node.serverUrl, node.model, node.slicesPerPlane = server.url, "tiny-vlm", 1
    panel.click(panel.ui.selectDescribeButton)
    panel.run_until(panel.idle, 120)
    assert not panel.slot_errors and panel.dialogs.of("errorDisplay") == []
    return volume


def _link(panel, row, image_id):
    cell = panel.ui.findingsTable.cellWidget(row, 2)
    found = [b for b in cell.findChildren(QtWidgets.QPushButton) if QtCore.QObject.objectName(b) == f"citation_{row}_{image_id}"]
    return found[0] if found else None


def _select(panel, row):
    table = panel.ui.findingsTable
    rect = table.visualItemRect(table.item(row, 0))
    QtTest.QTest.mouseClick(table.viewport(), QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, rect.center())


def _statuses(panel):
    return [panel.ui.findingsTable.item(row, 0).text() for row in range(panel.ui.findingsTable.rowCount)]


def test_findings_appear_with_citation_links_that_move_the_views(panel, headless_slicer, scripted_server):
    from VoteMILib import mrml

    volume = _describe(panel, headless_slicer, scripted_server)
    table = panel.ui.findingsTable
    assert table.rowCount == 3
    assert [table.item(row, 1).text() for row in range(3)] == [
        "An enhancing mass in the right hemisphere.", "Oedema around it.", "Glioma."]
    assert panel.ui.findingsStateLabel.text == "Review: Draft: 0 of 3 accepted"
    assert [table.verticalHeaderItem(row).text() for row in range(3)] == ["1", "2", "Impression"]
    assert _link(panel, 1, "S7") is None  # S7 was never sent: shown in red, not a link
    labels = [label.text for label in table.cellWidget(1, 2).findChildren(QtWidgets.QLabel)]
    assert labels == ["S7?"]
    result = _selection(headless_slicer, volume)
    coronal = result["coronal"]
    for view in ("Red", "Yellow", "Green"):  # somewhere else first
        headless_slicer.slice_node(view).JumpSliceByOffsetting(0.0, 0.0, 0.0)
    panel.click(_link(panel, 0, "C1"))
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Green"), coronal["center_ras"])) < 1e-3
    for view in ("Red", "Yellow"):
        assert abs(mrml.slice_offset_mm(headless_slicer.slice_node(view), coronal["mark"])) < 1e-3
    panel.click(_link(panel, 1, "S1"))
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Yellow"), result["sagittal"]["center_ras"])) < 1e-3
    assert panel.ui.statusLabel.text == "Showing S1."


def _selection(headless_slicer, volume):
    from VoteMILib import mrml

    picks = {}
    for pick in mrml.voted_slices(headless_slicer.scene, volume):
        if pick["rank"] == 1:
            marks, = mrml.votemi_nodes(headless_slicer.scene, volume, role="marks", plane=pick["plane"])
            picks[pick["plane"]] = dict(pick, mark=list(marks.GetNthControlPointPositionWorld(0)))
    return picks


def test_accept_reject_edit_persist_through_scene_save_and_reload(panel, headless_slicer, scripted_server,
                                                                   monkeypatch, tmp_path):
    from VoteMILib import mrml

    volume = _describe(panel, headless_slicer, scripted_server)
    assert not panel.ui.acceptFindingButton.enabled  # nothing selected yet
    panel.type_into(panel.ui.reviewerLineEdit, "Dr. Reader")
    _select(panel, 0)
    panel.click(panel.ui.acceptFindingButton)
    _select(panel, 1)
    panel.click(panel.ui.rejectFindingButton)
    _select(panel, 2)
    panel.click(panel.ui.editFindingButton)
    editor = QtWidgets.QApplication.focusWidget()
    assert isinstance(editor, QtWidgets.QLineEdit) and editor.text() == "Glioma."
    editor.selectAll()
    QtTest.QTest.keyClicks(editor, "High-grade glioma [A1, C1]")
    QtTest.QTest.keyClick(editor, QtCore.Qt.Key_Return)
    panel.qapp.processEvents()
    assert _statuses(panel) == ["accepted", "rejected", "edited"]
    assert panel.ui.findingsStateLabel.text.startswith(
        "Review: Reviewed: 2 of 3 accepted (1 edited), 1 rejected; reviewed by Dr. Reader")
    assert _link(panel, 2, "C1") is not None  # the edited text's tags became its citations
    findings = mrml.report_findings(mrml.report_node(headless_slicer.scene, volume))
    assert findings.items[2].original_text == "Glioma." and findings.items[2].reviewer == "Dr. Reader"
    state = panel.ui.findingsStateLabel.text
    mrml_path = headless_slicer.save_bundle(tmp_path / "scene")
    panel.close()

    from mrml_helpers import HeadlessSlicer
    from slicer_qt_harness import SlicerPanel

    restored = HeadlessSlicer()
    try:
        restored.load_scene(mrml_path)
        again = SlicerPanel(restored, monkeypatch, tmp_path / "again").setup()
        try:
            again.widget._parameterNode.inputVolume = restored.scene.GetFirstNodeByName("tcga_du_7294")
            again.qapp.processEvents()
            assert _statuses(again) == ["accepted", "rejected", "edited"]
            assert again.ui.findingsTable.item(2, 1).text() == "High-grade glioma"
            assert again.ui.findingsStateLabel.text == state
            assert mrml.report_findings(mrml.report_node(restored.scene, again.widget._parameterNode.inputVolume)
                                        ).to_dict() == findings.to_dict()
        finally:
            again.close()
    finally:
        restored.close()


def test_a_new_run_asks_before_replacing_a_review(panel, headless_slicer, scripted_server):
    from VoteMILib import mrml

    volume = _describe(panel, headless_slicer, scripted_server)
    _select(panel, 1)
    panel.click(panel.ui.rejectFindingButton)
    panel.dialogs.answers = [False]
    panel.click(panel.ui.selectDescribeButton)
    question, = [q for q in panel.dialogs.of("confirmYesNoDisplay") if "were reviewed" in q]
    assert "1 rejected" in question and panel.widget._run is None
    assert mrml.report_findings(mrml.report_node(headless_slicer.scene, volume)).items[1].status == "rejected"
    assert len(scripted_server.chat_requests()) == 1


def test_save_report_writes_html_with_the_images_and_pdf(panel, headless_slicer, scripted_server, tmp_path):
    _describe(panel, headless_slicer, scripted_server)
    panel.saved_path = str(tmp_path / "out" / "report.html")
    panel.click(panel.ui.saveReportButton)
    assert panel.save_dialog_args[2].endswith("tcga_du_7294_VoteMI_report.html")
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 + 4  # key images A1, C1, S1; thumbnails A1, C1, S1, A1
    assert "Draft: 0 of 3 accepted" in page and "AI-generated draft" in page
    panel.saved_path = str(tmp_path / "out" / "report.pdf")
    panel.click(panel.ui.saveReportButton)
    pdf = (tmp_path / "out" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000 and b"/Image" in pdf
    assert panel.dialogs.of("errorDisplay") == [] and not panel.slot_errors


class _DicomDatabase:
    """Slicer's DICOM database (ctk, not in slicer-core): instances by UID, files imported by copy."""

    def __init__(self, folder, sources):
        import pydicom

        self.folder = folder
        self.isOpen = True
        self.files = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): str(path)
                      for path in sources}
        self.imported = []

    def fileForInstance(self, uid):
        return self.files.get(uid, "")

    def importDicom(self, folder, dicomDatabase=None, copyFiles=False):
        import shutil
        from pathlib import Path

        assert copyFiles, "the export folder is removed after the import: the files must be copied"
        for path in sorted(Path(folder).iterdir()):
            self.imported.append(shutil.copy(path, self.folder))
        return True


def test_export_to_dicom_adds_key_images_and_the_report_to_the_database_in_the_source_study(
        panel, headless_slicer, scripted_server, monkeypatch, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    import sys
    import types
    from pathlib import Path

    import slicer

    from VoteMILib import mrml
    from VoteMILib.volumes import load_volume

    import engine_fixtures as ef

    series = ef.DATA / "dicom" / "sts001_ct" / "series"
    database = _DicomDatabase(tmp_path / "database", sorted(series.glob("*.dcm")))
    (tmp_path / "database").mkdir()
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    dicom_lib = types.ModuleType("DICOMLib")
    dicom_lib.DICOMUtils = types.SimpleNamespace(importDicom=database.importDicom)
    monkeypatch.setitem(sys.modules, "DICOMLib", dicom_lib)

    loaded = load_volume(str(series))
    volume = mrml.add_volume_from_array(headless_slicer.scene, loaded.array, loaded.ijk_to_ras, "sts001 CT")
    headless_slicer.show(volume)
    scripted_server.script = [streamed(["Findings:\n- A soft-tissue mass in the thigh [A1, C1].\n",
                                        "Impression: Sarcoma [A1]."])]
    panel.setup()
    assert not panel.ui.exportDicomButton.enabled  # no report yet
    node = panel.widget._parameterNode
    node.serverUrl, node.model, node.slicesPerPlane = scripted_server.url, "tiny-vlm", 1
    panel.click(panel.ui.selectDescribeButton)
    panel.run_until(panel.idle, 120)
    assert not panel.ui.exportDicomButton.enabled  # a report, but the volume did not come from the database
    assert "not loaded from the DICOM database" in panel.ui.exportDicomButton.toolTip

    volume.SetAttribute("DICOM.instanceUIDs", " ".join(database.files))
    panel.widget._review.showInfo()
    assert panel.ui.exportDicomButton.enabled
    panel.click(panel.ui.exportDicomButton)
    assert not panel.slot_errors and panel.dialogs.of("errorDisplay") == [], panel.dialogs.shown
    assert "Added to the DICOM database" in panel.ui.statusLabel.text

    written = [pydicom.dcmread(path) for path in database.imported]
    kinds = sorted(str(dataset.Modality) for dataset in written)
    assert kinds.count("KO") == 1 and kinds.count("SR") == 1 and kinds.count("OT") == 2  # coronal, sagittal SCs
    source = pydicom.dcmread(next(iter(database.files.values())), stop_before_pixels=True)
    assert {str(dataset.StudyInstanceUID) for dataset in written} == {str(source.StudyInstanceUID)}
    known = set(database.files) | {str(dataset.SOPInstanceUID) for dataset in written}
    kos = next(dataset for dataset in written if dataset.Modality == "KO")
    cited = [str(item.ReferencedSOPInstanceUID) for study in kos.CurrentRequestedProcedureEvidenceSequence
             for series_item in study.ReferencedSeriesSequence for item in series_item.ReferencedSOPSequence]
    assert cited and set(cited) <= known and set(cited) & set(database.files)  # the axial pick is a source image
    assert not list(Path(panel.app.temporaryPath, "VoteMI").glob("run-*"))  # the export folder is gone


def test_export_to_dicom_of_a_volume_not_from_the_database_says_why(panel, headless_slicer):
    volume = headless_slicer.load_volume(main_case_image(), "tcga_du_7294")
    panel.setup()
    from VoteMISlicerLib.reports import dicomSourceFiles

    with pytest.raises(ValueError, match="not loaded from the DICOM database"):
        dicomSourceFiles(volume)
