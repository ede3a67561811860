"""The panel's report: the report box, its findings with their review and citation links, and copy, save and
DICOM export of the report.

The report node is read and written through :mod:`VoteMILib.mrml` (and ``VoteMILogic``'s scene adapters) only;
this class shows it and turns the user's edits and review into node updates.
"""

from __future__ import annotations

import logging
import os

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

#: Application setting holding the reviewer name recorded with each review.
REVIEWER_SETTING = "VoteMI/reviewer"


def reviewStatusText(status):
    """The review state in the user's language (each word a literal, so that lupdate finds it)."""
    return {"pending": _("pending"), "accepted": _("accepted"), "rejected": _("rejected"),
            "edited": _("edited")}.get(status, status)


def reviewToolTip(finding):
    if finding.status == "pending":
        return _("Not reviewed yet")
    tip = _("{status} by {who} at {when}").format(status=reviewStatusText(finding.status),
                                                 who=finding.reviewer or _("unnamed"), when=finding.reviewed_at)
    return tip + (_("; the model wrote: {text}").format(text=finding.original_text) if finding.original_text else "")


class ReportReview(VTKObservationMixin):
    """The report box and the findings table of the input volume's report node.

    ``logic`` is the module's VoteMILogic (its report adapters); ``ui`` the panel's widgets; ``inputVolume``
    and ``extraVolumes`` return the panel's volumes; ``running`` tells whether a run is under way (no review
    meanwhile).
    """

    def __init__(self, logic, ui, inputVolume, extraVolumes, running):
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.ui = ui
        self._inputVolume = inputVolume
        self._extraVolumes = extraVolumes
        self._running = running
        #: The report node shown, observed for changes (by a run, a script or another module).
        self.reportNode = None
        self._updatingReport = False
        self._findings = None
        self._updatingFindings = False
        self._exportDicomToolTip = ui.exportDicomButton.toolTip  # a reason is added while export is off

    def setUp(self):
        """Set up the findings table and connect the report's widgets."""
        table = self.ui.findingsTable
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels([_("Review"), _("Finding"), _("Images")])
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, qt.QHeaderView.Stretch)
        header.setSectionResizeMode(2, qt.QHeaderView.ResizeToContents)
        table.verticalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        table.setWordWrap(True)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)  # the text is edited through Edit only
        table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.updateReviewButtons()
        self.ui.copyReportButton.connect("clicked(bool)", self.onCopyReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.reportTextEdit.connect("textChanged()", self.onReportEdited)
        table.connect("itemChanged(QTableWidgetItem*)", self.onFindingEdited)
        table.connect("itemSelectionChanged()", self.updateReviewButtons)
        self.ui.acceptFindingButton.connect("clicked(bool)", lambda: self.onReviewFinding("accept"))
        self.ui.rejectFindingButton.connect("clicked(bool)", lambda: self.onReviewFinding("reject"))
        self.ui.editFindingButton.connect("clicked(bool)", self.onEditFinding)
        self.ui.reviewerLineEdit.text = qt.QSettings().value(REVIEWER_SETTING, "") or ""
        self.ui.reviewerLineEdit.connect("textChanged(QString)",
                                         lambda text: qt.QSettings().setValue(REVIEWER_SETTING, text.strip()))

    def close(self):
        self.observe(None)
        self.removeObservers()

    # Report box

    def observe(self, reportNode):
        """Show ``reportNode`` (None: no report) and follow its changes."""
        if self.reportNode is not None:
            self.removeObserver(self.reportNode, vtk.vtkCommand.ModifiedEvent, self._onReportNodeModified)
        self.reportNode = reportNode
        if reportNode is not None:
            self.addObserver(reportNode, vtk.vtkCommand.ModifiedEvent, self._onReportNodeModified)
        self._onReportNodeModified()

    def _onReportNodeModified(self, caller=None, event=None):
        text = self.logic.reportText(self.reportNode)
        box = self.ui.reportTextEdit
        if box.toPlainText() != text:
            self._updatingReport = True
            try:
                box.setPlainText(text)
                box.moveCursor(qt.QTextCursor.End)
            finally:
                self._updatingReport = False
        self.showInfo()
        self._showFindings()

    def onReportEdited(self) -> None:
        """Keep the user's edits in the report node (saved with the scene)."""
        if self._updatingReport:
            return
        text = self.ui.reportTextEdit.toPlainText()
        volumeNode = self._inputVolume()
        if self.reportNode is None:
            if volumeNode is None or not text:
                return
            self.logic.editReportText(self.logic.reportNode(volumeNode, create=True), text)  # the user started one
            self.observe(self.logic.reportNode(volumeNode))
            return
        self._updatingReport = True
        try:
            self.logic.editReportText(self.reportNode, text)
        finally:
            self._updatingReport = False
        self.showInfo()

    def showInfo(self):
        """The line on where the report came from, and which of copy, save and DICOM export can run."""
        from VoteMISlicerLib.packages import dicomExportRestartReason
        from VoteMISlicerLib.reports import dicomInstanceUIDs

        self.ui.reportInfoLabel.text = self.logic.reportSummary(self.reportNode) if self.reportNode else ""
        hasText = bool(self.ui.reportTextEdit.toPlainText().strip())
        self.ui.copyReportButton.enabled = hasText
        self.ui.saveReportButton.enabled = hasText
        volumeNode = self._inputVolume()
        fromDicom = dicomInstanceUIDs(volumeNode) if volumeNode else []
        restartReason = dicomExportRestartReason()
        self.ui.exportDicomButton.enabled = hasText and bool(fromDicom) and not restartReason
        reasons = [] if fromDicom else [_("The input volume was not loaded from the DICOM database.")]
        reasons += [restartReason] if restartReason else []
        self.ui.exportDicomButton.toolTip = "\n".join([self._exportDicomToolTip] + reasons)

    # Findings: citations and review

    def _showFindings(self):
        """Show the findings of the report node with their review and a link per cited image."""
        from VoteMILib import mrml

        self._findings = mrml.report_findings(self.reportNode) if self.reportNode is not None else None
        items = self._findings.items if self._findings is not None else []
        table = self.ui.findingsTable
        selected = self._selectedFinding()
        self._updatingFindings = True
        try:
            table.setRowCount(len(items))
            for row, finding in enumerate(items):
                status = qt.QTableWidgetItem(reviewStatusText(finding.status))
                status.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                status.setToolTip(reviewToolTip(finding))
                text = qt.QTableWidgetItem(finding.text)
                text.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEditable)
                text.setToolTip(_("Impression") if finding.section == "impression" else _("Finding"))
                table.setItem(row, 0, status)
                table.setItem(row, 1, text)
                table.setCellWidget(row, 2, self._citationLinks(row, finding))
            # Row labels: findings numbered, the impression marked (its text may cite images too).
            table.setVerticalHeaderLabels([_("Impression") if f.section == "impression" else str(n + 1)
                                           for n, f in enumerate(items)])
        finally:
            self._updatingFindings = False
        if selected is not None and selected < len(items):
            table.selectRow(selected)
        self.ui.findingsStateLabel.text = (_("Review: {state}").format(state=self._findings.summary_line())
                                           if items else "")
        self.updateReviewButtons()

    def _citationLinks(self, row, finding):
        """One link-styled button per cited image; IDs the selection does not hold struck through, not clickable."""
        cell = qt.QWidget()
        layout = qt.QHBoxLayout(cell)
        layout.setContentsMargins(2, 0, 2, 0)
        for imageId in finding.cites:
            link = qt.QPushButton(imageId)
            link.objectName = f"citation_{row}_{imageId}"
            link.flat = True
            # The palette's link colour: readable in Slicer's light and dark themes alike.
            link.styleSheet = "color: palette(link); text-decoration: underline; padding: 0 2px;"
            link.toolTip = _("Show {id} in the slice views").format(id=imageId)
            link.connect("clicked(bool)", lambda checked=False, imageId=imageId: self.onCitationClicked(imageId))
            layout.addWidget(link)
        for imageId in finding.unknown_cites:
            label = qt.QLabel(f"{imageId}?")
            # Struck through in the text colour (no fixed red, which dark themes would not match).
            label.styleSheet = "color: palette(text); text-decoration: line-through;"
            label.toolTip = _("The model cited {id}, which was not among the images sent").format(id=imageId)
            layout.addWidget(label)
        layout.addStretch(1)
        return cell

    def _selectedFinding(self):
        rows = sorted({index.row() for index in self.ui.findingsTable.selectionModel().selectedRows()})
        return rows[0] if rows else None

    def updateReviewButtons(self):
        chosen = self._findings is not None and self._selectedFinding() is not None and not self._running()
        for button in (self.ui.acceptFindingButton, self.ui.rejectFindingButton, self.ui.editFindingButton):
            button.enabled = chosen

    def onCitationClicked(self, imageId) -> None:
        """Move the cited plane's views to the cited slice and the other views through its mark."""
        from VoteMILib import mrml

        volumeNode = self._inputVolume()
        if volumeNode is None or not mrml.jump_to_citation(slicer.mrmlScene, volumeNode, imageId):
            self.ui.statusLabel.text = _("{id} is not a slice of this report.").format(id=imageId)
            return
        self.ui.statusLabel.text = _("Showing {id}.").format(id=imageId)

    def _storeFindings(self):
        from VoteMILib import mrml

        mrml.store_findings(self.reportNode, self._findings)  # the node's Modified event redraws the table

    def onReviewFinding(self, action) -> None:
        row = self._selectedFinding()
        if row is None or self._findings is None:
            return
        getattr(self._findings, action)(row, self.ui.reviewerLineEdit.text.strip())
        self._storeFindings()

    def onEditFinding(self) -> None:
        row = self._selectedFinding()
        if row is not None:
            self.ui.findingsTable.editItem(self.ui.findingsTable.item(row, 1))

    def onFindingEdited(self, item) -> None:
        if self._updatingFindings or self._findings is None or item.column() != 1:
            return
        row, text = item.row(), item.text().strip()
        if row >= len(self._findings.items) or not text or text == self._findings.items[row].text:
            return
        self._findings.edit(row, text, self.ui.reviewerLineEdit.text.strip())
        self._storeFindings()

    # Copy, save, export

    def onCopyReport(self) -> None:
        qt.QApplication.clipboard().setText(self.logic.reportExport(self.reportNode, "text"))
        self.ui.statusLabel.text = _("Report copied to the clipboard (with the notice).")

    def onSaveReport(self) -> None:
        from VoteMISlicerLib.reports import saveReport

        volumeNode = self._inputVolume()
        name = (volumeNode.GetName() if volumeNode else "report").replace(os.sep, "_")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Save report"),
            os.path.join(slicer.app.defaultScenePath, f"{name}_VoteMI_report.html"),
            _("HTML page with the key images (*.html);;PDF (*.pdf);;Markdown (*.md);;Text (*.txt);;JSON (*.json)"))
        if not path:
            return
        try:
            with slicer.util.WaitCursor():
                saveReport(self.reportNode, path, volumeNode, self._extraVolumes())
        except OSError as error:
            slicer.util.errorDisplay(str(error), windowTitle="VoteMI")
            return
        self.ui.statusLabel.text = _("Report saved to {path}").format(path=path)

    def onExportDicom(self) -> None:
        from VoteMISlicerLib.packages import InstallDeclined, dicomExportRestartReason
        from VoteMISlicerLib.reports import exportReportToDicomDatabase

        with slicer.util.tryWithErrorDisplay(_("The report could not be exported to DICOM."), waitCursor=True):
            try:
                written = exportReportToDicomDatabase(self.reportNode, self._inputVolume(), self._extraVolumes())
            except InstallDeclined as declined:  # the user's choice: a status line, no error box
                self.ui.statusLabel.text = str(declined)
                return
            if written is None:
                self.showInfo()  # a restart may be pending now: the button says so
                self.ui.statusLabel.text = (dicomExportRestartReason()
                                            or _("Not exported: what DICOM export needs is not installed."))
                return
            sources = sum(1 for ref in written.references.values() if ref["kind"] == "source")
            self.ui.statusLabel.text = _(
                "Added to the DICOM database, in the input's study: key images ({source} acquired, {derived} "
                "derived) and the report. Send them from the DICOM module.").format(
                source=sources, derived=len(written.derived))
            for line in written.skipped:
                logging.info("VoteMI: DICOM export skipped %s", line)
