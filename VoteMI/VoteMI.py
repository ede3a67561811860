"""VoteMI: pick the representative slices of a 3D MRI or CT (Vote-MI) and draft a report with a local VLM.

The heavy lifting lives in the ``VoteMILib`` package next to this file: selection (numpy/scipy),
the MRML layer (``VoteMILib.mrml``, no Qt) and the vision-language model clients
(``VoteMILib.vlm``, standard library HTTP). This file holds the Slicer module, its panel and the
self-test. Selection, describing and the in-process model run in a child process
(``VoteMILib.cli ... --events``): Slicer's GUI thread holds Python's GIL while it waits for events,
so a Python thread would barely run. The panel reads the child's events from a QTimer.

This file must stay readable by Python 3.9 (Slicer 5.8), so that older Slicers show why the
module cannot run instead of failing to load it.
"""

import logging
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin
from VoteMILib.names import DEFAULT_LANGUAGE, DEFAULT_SERVER_URL

#: Where panel settings are remembered across sessions.
SETTINGS_PREFIX = "VoteMI/"
#: Node reference role, on the parameter node, of the optional extra sequences.
EXTRA_VOLUME_REFERENCE = "VoteMIExtraVolume"
#: Parameter node attribute: the guide segmentation's segment IDs the user unchecked, one per line.
SKIPPED_SEGMENTS_ATTRIBUTE = "VoteMI.GuideSkippedSegments"
README_URL = "https://github.com/VoteMI/SlicerVoteMI#readme"
#: How often the panel reads the child process (ms).
POLL_INTERVAL_MS = 50
#: Wait after the last edit of the server settings before checking the server (ms).
STATUS_CHECK_DELAY_MS = 800
#: Application setting holding the reviewer name recorded with each review.
REVIEWER_SETTING = "VoteMI/reviewer"
#: Oldest Slicer VoteMI runs in (Python 3.12; the engine needs Python 3.10).
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)
#: Run folders (the input written for the child) older than this are left by a crash and removed (hours).
STALE_RUN_HOURS = 24


def unsupportedReason():
    """Why this Slicer cannot run VoteMI (a sentence for the user), or None."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version < MINIMUM_SLICER or tuple(sys.version_info[:2]) < MINIMUM_PYTHON:
        return _("VoteMI needs 3D Slicer {needed} or later (Python {python}+); this is Slicer {version} with "
                 "Python {running}. Install a newer Slicer from download.slicer.org.").format(
            needed="%d.%d" % MINIMUM_SLICER, python="%d.%d" % MINIMUM_PYTHON, version="%d.%d" % version,
            running="%d.%d" % tuple(sys.version_info[:2]))
    return None


#
# VoteMI
#


class VoteMI(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoteMI")
        # Category names are translated in the core module context, where Slicer keeps its categories.
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["VoteMI developers (VoteMI project)"]
        self.parent.helpText = _(
            "Selects the most representative slices of a 3D MRI or CT with the unsupervised Vote-MI method, "
            "marks them in the slice views with a per-slice score plot, and asks a vision-language model that "
            "you host yourself (Ollama, vLLM, llama.cpp, LM Studio, or any OpenAI-compatible server) to draft a "
            "report of those slices. The report is an AI-generated draft, not for diagnostic use; it requires "
            "review by a radiologist.<br>"
            f'See the <a href="{README_URL}">documentation</a> for setup and usage.')
        self.parent.acknowledgementText = _(
            "The slice selection implements Vote-MI, described in: Yuli Wang et al., \"Enhancing vision-language "
            "models for medical imaging: bridging the 3D gap with innovative slice selection\", NeurIPS 2024 "
            "Datasets and Benchmarks Track. VoteMI is an independent open-source implementation for 3D Slicer, "
            "released under the Apache 2.0 license.")
        reason = unsupportedReason()
        if reason:
            logging.error("VoteMI: %s", reason)
            self.parent.helpText = reason + "<br><br>" + self.parent.helpText


#
# VoteMIParameterNode
#


@parameterNodeWrapper
class VoteMIParameterNode:
    """Panel state, saved with the scene.

    inputVolume - the volume slices are selected from.
    axial, coronal, sagittal - planes to select in.
    slicesPerPlane - voted slices per plane.
    selectionMode - "findings" (votes weighted by abnormality) or "representative" (the paper's Vote-MI).
    serverUrl, protocol, model - the vision-language model server.
    promptTemplate - instruction for the model; empty for VoteMI's default prompt.
    language - report language.
    timeoutSeconds - longest time a report may take.
    switchLayoutForChart - switch to a layout with a plot view to show the score plot.
    guideSegmentation, guidePoints - optional guide: a segmentation whose segments to show, a point list.
    guideThenUnsupervised - after the guided slices, add the best slice of selectionMode outside them.
    examplesFolder - worked examples sent before the question (one folder per case: an image and report.txt).

    The text fields (serverUrl, model, promptTemplate, language, examplesFolder) are connected to their widgets by
    the panel itself: the wrapper's binding rewrites a text widget on every change of the node,
    which moves the cursor while the user types. The optional extra sequences are node references
    (role ``VoteMIExtraVolume``) of the same parameter node; the segments of guideSegmentation the user
    unchecked are its attribute ``VoteMI.GuideSkippedSegments`` (IDs, one per line; new segments are shown); the
    API key is never stored.
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    axial: bool = True
    coronal: bool = True
    sagittal: bool = True
    slicesPerPlane: Annotated[int, WithinRange(1, 10)] = 3
    selectionMode: Annotated[str, Choice(["findings", "representative"])] = "findings"
    serverUrl: str = DEFAULT_SERVER_URL
    protocol: Annotated[str, Choice(["openai", "ollama", "inprocess"])] = "openai"
    model: str = ""
    promptTemplate: str = ""
    language: str = DEFAULT_LANGUAGE
    timeoutSeconds: Annotated[int, WithinRange(10, 3600)] = 300
    switchLayoutForChart: bool = True
    guideSegmentation: slicer.vtkMRMLSegmentationNode
    guidePoints: slicer.vtkMRMLMarkupsFiducialNode
    guideThenUnsupervised: bool = False
    examplesFolder: str = ""


#
# VoteMIWidget
#


class VoteMIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The VoteMI panel."""

    #: Text widgets and the parameter each edits (connected by the panel, see VoteMIParameterNode).
    TEXT_PARAMETERS = (("serverUrlLineEdit", "serverUrl"), ("modelLineEdit", "model"),
                       ("languageLineEdit", "language"), ("promptTextEdit", "promptTemplate"),
                       ("examplesLineEdit", "examplesFolder"))
    #: Parameters remembered across sessions in the application settings.
    REMEMBERED = ("axial", "coronal", "sagittal", "slicesPerPlane", "selectionMode", "serverUrl", "protocol",
                  "model", "promptTemplate", "language", "timeoutSeconds", "switchLayoutForChart", "examplesFolder")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._statusCheck = None
        self._modelsShown = False
        self._reportNode = None
        self._updatingReport = False
        self._plotView = None
        self._timer = None
        self._statusTimer = None
        self._shownVolumeID = None
        self._shownSegments = None
        self._rows = []
        self._findings = None
        self._updatingFindings = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        reason = unsupportedReason()
        if reason:
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoteMI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self._exportDicomToolTip = self.ui.exportDicomButton.toolTip  # a reason is added while export is off
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VoteMILogic()

        from VoteMILib.vlm import NOTICE

        self.ui.noticeLabel.text = NOTICE
        self.ui.resultsTable.setColumnCount(5)
        self.ui.resultsTable.setHorizontalHeaderLabels(
            [_("Plane"), _("Rank"), _("Slice"), _("Position (mm)"), _("Score")])
        header = self.ui.resultsTable.horizontalHeader()
        header.setSectionResizeMode(qt.QHeaderView.ResizeToContents)  # headers and values never cut
        header.setStretchLastSection(True)
        self.ui.resultsTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.ui.resultsTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.modelsComboBox.visible = False
        self._setUpFindingsTable()
        self._setBusy(False)

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollChildren)
        self._statusTimer = qt.QTimer()
        self._statusTimer.setSingleShot(True)
        self._statusTimer.setInterval(STATUS_CHECK_DELAY_MS)
        self._statusTimer.timeout.connect(lambda: self.checkServer(explicit=False))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.selectDescribeButton.connect("clicked(bool)", lambda: self.onRun(describe=True))
        self.ui.selectButton.connect("clicked(bool)", lambda: self.onRun(describe=False))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.testConnectionButton.connect("clicked(bool)", lambda: self.checkServer(explicit=True))
        self.ui.clearResultsButton.connect("clicked(bool)", self.onClearResults)
        self.ui.modelsComboBox.connect("activated(int)", self.onModelChosen)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onResultClicked)
        self.ui.copyReportButton.connect("clicked(bool)", self.onCopyReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.reportTextEdit.connect("textChanged()", self.onReportEdited)
        self.ui.findingsTable.connect("itemChanged(QTableWidgetItem*)", self.onFindingEdited)
        self.ui.findingsTable.connect("itemSelectionChanged()", self._updateReviewButtons)
        self.ui.acceptFindingButton.connect("clicked(bool)", lambda: self.onReviewFinding("accept"))
        self.ui.rejectFindingButton.connect("clicked(bool)", lambda: self.onReviewFinding("reject"))
        self.ui.editFindingButton.connect("clicked(bool)", self.onEditFinding)
        self.ui.reviewerLineEdit.text = qt.QSettings().value(REVIEWER_SETTING, "") or ""
        self.ui.reviewerLineEdit.connect("textChanged(QString)",
                                         lambda text: qt.QSettings().setValue(REVIEWER_SETTING, text.strip()))
        self.ui.extraVolumesSelector.connect("checkedNodesChanged()", self.onExtraVolumesChanged)
        self.ui.guideSegmentsList.connect("itemChanged(QListWidgetItem*)", self.onGuideSegmentsChanged)
        for widgetName, parameter in self.TEXT_PARAMETERS:
            widget = getattr(self.ui, widgetName)
            widget.connect("textChanged()" if widgetName.endswith("TextEdit") else "textChanged(QString)",
                           lambda *args, widget=widget, parameter=parameter: self._onTextEdited(widget, parameter))

        self.initializeParameterNode()
        self.checkServer(explicit=False)

    def cleanup(self) -> None:
        if self.logic is None:
            return
        self.onCancel()
        self._endStatusCheck()
        self._observeReport(None)
        self.removeObservers()
        self._connectPlotView(False)
        self._timer.stop()
        self._statusTimer.stop()

    def enter(self) -> None:
        if self.logic is None:
            return
        self._shownSegments = None  # segments may have been added or renamed in the Segment Editor meanwhile
        self.initializeParameterNode()
        self._connectPlotView(True)

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onReload(self) -> None:
        """Reload the engine too: Slicer's reload re-reads VoteMI.py only."""
        self.onCancel()
        for name in [name for name in sys.modules if name == "VoteMILib" or name.startswith("VoteMILib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self._observeReport(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node) -> None:
        """A volume loaded while no input is chosen becomes the input (the button would stay disabled)."""
        if slicer.mrmlScene.IsImporting() or not VoteMILogic.isImageVolume(node):
            return  # a scene import ends with onSceneEndImport
        # Deferred: the node is added before its image data and display node are set.
        qt.QTimer.singleShot(0, lambda: self._adoptInputVolume(node))

    def _adoptInputVolume(self, node) -> None:
        if (self._parameterNode is not None and not self._parameterNode.inputVolume
                and slicer.mrmlScene.IsNodePresent(node)):
            self._parameterNode.inputVolume = node

    def onSceneEndImport(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            self._refreshResults()
            self._connectPlotView(True)

    # ----------------------------------------------------------------------------------------
    # Parameter node and settings

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        raw = parameterNode.parameterNode
        if raw.GetAttribute("VoteMI.SettingsApplied") != "true":
            self._applyRememberedSettings(parameterNode)  # a new scene: start from what the user used last
            raw.SetAttribute("VoteMI.SettingsApplied", "true")
        if not parameterNode.inputVolume:
            parameterNode.inputVolume = self.logic.firstImageVolume()
        self.setParameterNode(parameterNode)

    @staticmethod
    def _applyRememberedSettings(parameterNode):
        settings = qt.QSettings()
        for name in VoteMIWidget.REMEMBERED:
            key = SETTINGS_PREFIX + name[0].upper() + name[1:]
            if not settings.contains(key):
                continue
            current = getattr(parameterNode, name)
            text = str(settings.value(key))
            try:
                value = (text.lower() == "true") if isinstance(current, bool) else type(current)(text)
                setattr(parameterNode, name, value)
            except ValueError:  # a value this version does not accept (e.g. an older mode name)
                logging.info("VoteMI: ignoring the remembered %s '%s'", name, text)

    def _rememberSettings(self):
        settings = qt.QSettings()
        for name in self.REMEMBERED:
            value = getattr(self._parameterNode, name)
            settings.setValue(SETTINGS_PREFIX + name[0].upper() + name[1:],
                              ("true" if value else "false") if isinstance(value, bool) else str(value))

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._shownVolumeID = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._loadExtraVolumesIntoGui()
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._updateButtons()
        if self._parameterNode is None:
            return
        self._showTextParameters()
        self._rememberSettings()
        self._showGuideSegments()
        volumeNode = self._parameterNode.inputVolume
        volumeID = volumeNode.GetID() if volumeNode else None
        if volumeID != self._shownVolumeID:
            self._shownVolumeID = volumeID
            self.onInputChanged()

    def _showTextParameters(self):
        """Show the node's text parameters; a widget is only written when its text differs (cursor kept)."""
        for widgetName, parameter in self.TEXT_PARAMETERS:
            widget = getattr(self.ui, widgetName)
            value = getattr(self._parameterNode, parameter)
            isTextEdit = widgetName.endswith("TextEdit")
            shown = widget.toPlainText() if isTextEdit else widget.text
            if shown == value or (parameter == "serverUrl" and self.logic.storableServerUrl(shown) == value):
                continue  # a URL with a password stays in the box for the user to correct; the node has it without
            wasBlocked = widget.blockSignals(True)
            if isTextEdit:
                widget.setPlainText(value)
            else:
                widget.text = value
            widget.blockSignals(wasBlocked)

    def _onTextEdited(self, widget, parameter) -> None:
        if self._parameterNode is None:
            return
        text = widget.toPlainText() if hasattr(widget, "toPlainText") else widget.text
        # The node is saved with the scene and remembered in the settings: a password never goes there.
        value = self.logic.storableServerUrl(text) if parameter == "serverUrl" else text
        if getattr(self._parameterNode, parameter) != value:
            setattr(self._parameterNode, parameter, value)
        if parameter == "serverUrl":
            problem = self.logic.serverUrlProblem(text)
            if problem:
                self._endStatusCheck()
                self._statusTimer.stop()
                self.ui.serverStatusLabel.text = problem
            else:
                self._statusTimer.start()

    def _serverUrlProblem(self):
        """Why the URL in the box (or, from an older scene, in the node) cannot be used, or None."""
        return (self.logic.serverUrlProblem(self.ui.serverUrlLineEdit.text)
                or self.logic.serverUrlProblem(self._parameterNode.serverUrl))

    def _loadExtraVolumesIntoGui(self):
        raw = self._parameterNode.parameterNode
        wanted = {raw.GetNthNodeReferenceID(EXTRA_VOLUME_REFERENCE, i)
                  for i in range(raw.GetNumberOfNodeReferences(EXTRA_VOLUME_REFERENCE))}
        selector = self.ui.extraVolumesSelector
        wasBlocked = selector.blockSignals(True)
        for index in range(selector.nodeCount()):
            node = selector.nodeFromIndex(index)
            selector.setCheckState(node, qt.Qt.Checked if node.GetID() in wanted else qt.Qt.Unchecked)
        selector.blockSignals(wasBlocked)

    def onExtraVolumesChanged(self) -> None:
        if not self._parameterNode:
            return
        raw = self._parameterNode.parameterNode
        raw.RemoveNodeReferenceIDs(EXTRA_VOLUME_REFERENCE)
        for node in self.ui.extraVolumesSelector.checkedNodes():
            raw.AddNodeReferenceID(EXTRA_VOLUME_REFERENCE, node.GetID())

    def _extraVolumes(self):
        raw = self._parameterNode.parameterNode
        inputVolume = self._parameterNode.inputVolume
        nodes = [raw.GetNthNodeReference(EXTRA_VOLUME_REFERENCE, i)
                 for i in range(raw.GetNumberOfNodeReferences(EXTRA_VOLUME_REFERENCE))]
        return [node for node in nodes if node is not None and node is not inputVolume]

    # Guide

    def _showGuideSegments(self):
        """List the guide segmentation's segments, checked unless the user unchecked them (only when they changed)."""
        from VoteMILib import mrml

        node = self._parameterNode
        segments = mrml.segments_of(node.guideSegmentation)
        skipped = self._skippedSegments()
        shown = (node.guideSegmentation.GetID() if node.guideSegmentation else None, segments, skipped)
        if shown == self._shownSegments:
            return
        self._shownSegments = shown
        segmentsList = self.ui.guideSegmentsList
        wasBlocked = segmentsList.blockSignals(True)
        segmentsList.clear()
        for segmentID, name in segments:
            item = qt.QListWidgetItem(name)
            item.setData(qt.Qt.UserRole, segmentID)
            item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked if segmentID in skipped else qt.Qt.Checked)
            segmentsList.addItem(item)
        segmentsList.blockSignals(wasBlocked)

    def onGuideSegmentsChanged(self, item=None) -> None:
        if not self._parameterNode:
            return
        from VoteMILib import mrml

        node = self._parameterNode
        segmentsList = self.ui.guideSegmentsList
        items = [segmentsList.item(row) for row in range(segmentsList.count)]
        skipped = [item.data(qt.Qt.UserRole) for item in items if item.checkState() != qt.Qt.Checked]
        # The list already shows this: it is not rebuilt from within its own signal.
        self._shownSegments = (node.guideSegmentation.GetID() if node.guideSegmentation else None,
                               mrml.segments_of(node.guideSegmentation), set(skipped))
        node.parameterNode.SetAttribute(SKIPPED_SEGMENTS_ATTRIBUTE, "\n".join(skipped))

    def _skippedSegments(self):
        return set((self._parameterNode.parameterNode.GetAttribute(SKIPPED_SEGMENTS_ATTRIBUTE) or "").splitlines())

    def _guide(self):
        """The panel's guide as {"segmentation", "segmentIDs", "points"}, or None when nothing guides."""
        from VoteMILib import mrml

        node = self._parameterNode
        segmentation = node.guideSegmentation
        skipped = self._skippedSegments()
        segmentIDs = [segmentID for segmentID, _ in mrml.segments_of(segmentation) if segmentID not in skipped]
        if segmentation is not None and not segmentIDs:
            raise ValueError(_("Check at least one segment of {name}, or choose no segmentation.").format(
                name=segmentation.GetName()))
        points = node.guidePoints
        if segmentation is None and points is None:
            return None
        return {"segmentation": segmentation, "segmentIDs": segmentIDs, "points": points,
                "thenUnsupervised": bool(node.guideThenUnsupervised)}

    def _planes(self):
        node = self._parameterNode
        return tuple(plane for plane, wanted in (("axial", node.axial), ("coronal", node.coronal),
                                                 ("sagittal", node.sagittal)) if wanted)

    def _updateButtons(self, caller=None, event=None) -> None:
        node = self._parameterNode
        busy = self._run is not None
        ready = bool(node and node.inputVolume and self._planes())
        self.ui.selectDescribeButton.enabled = ready and not busy
        self.ui.selectButton.enabled = ready and not busy
        self.ui.clearResultsButton.enabled = bool(node and node.inputVolume) and not busy
        if not node or not node.inputVolume:
            tip = _("Select an input volume.")
        elif not self._planes():
            tip = _("Select at least one plane.")
        else:
            tip = _("Select the representative slices, mark them, and draft a report with the model.")
        self.ui.selectDescribeButton.toolTip = tip

    # ----------------------------------------------------------------------------------------
    # Running in a child process

    def onRun(self, describe: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("VoteMI could not start.")):
            self._start(describe)

    def _start(self, describe):
        if self._run is not None:
            return
        node = self._parameterNode
        volumeNode = node.inputVolume
        if volumeNode is None:
            raise ValueError(_("Select an input volume."))
        planes = self._planes()
        if not planes:
            raise ValueError(_("Select at least one plane."))
        if describe and node.protocol != "inprocess":
            problem = self._serverUrlProblem()
            if problem:
                raise ValueError(problem)
        if describe and not self._confirmDescribe(volumeNode):
            return
        guide = self._guide()
        with slicer.util.WaitCursor():
            run = self.logic.run(volumeNode, describe, planes=planes, topK=int(node.slicesPerPlane),
                                 mode=node.selectionMode, extraVolumeNodes=self._extraVolumes(),
                                 describeOptions=self._describeOptions() if describe else None,
                                 apiKey=self.ui.apiKeyLineEdit.text.strip(), guide=guide,
                                 switchLayout=node.switchLayoutForChart)
        self._run = run
        self.ui.reportTextEdit.readOnly = describe
        self._setBusy(True, _("Selecting slices guided by {what}...").format(what=run.guidedBy) if run.guidedBy
                      else _("Selecting slices..."))
        self._timer.start()

    def _confirmDescribe(self, volumeNode) -> bool:
        """Ask before replacing an edited report, before images leave this machine, and for missing packages."""
        node = self._parameterNode
        if self.logic.reportEdited(self.logic.reportNode(volumeNode)) and not slicer.util.confirmYesNoDisplay(
                _("The report of {name} was edited. Replace it with a new draft?").format(name=volumeNode.GetName()),
                windowTitle="VoteMI"):
            return False
        findings = self.logic.reportFindings(self.logic.reportNode(volumeNode))
        if findings is not None and findings.has_review and not slicer.util.confirmYesNoDisplay(
                _("The findings of {name} were reviewed ({review}). A new draft replaces them and their review. "
                  "Continue?").format(name=volumeNode.GetName(), review=findings.summary_line()),
                windowTitle="VoteMI"):
            return False
        if node.protocol != "inprocess":
            warning = self.logic.remoteServerWarning(node.serverUrl.strip() or DEFAULT_SERVER_URL)
            if warning and not slicer.util.confirmOkCancelDisplay(warning, windowTitle="VoteMI"):
                return False
        return node.protocol != "inprocess" or self.logic.ensureInProcessDependencies()

    def _describeOptions(self):
        node = self._parameterNode
        return self.logic.describeOptions(node.inputVolume, server=node.serverUrl, protocol=node.protocol,
                                          model=node.model, language=node.language,
                                          timeoutSeconds=node.timeoutSeconds, prompt=node.promptTemplate,
                                          examples=node.examplesFolder)

    def _pollChildren(self) -> None:
        self._timer.stop()  # no re-entry while a message box is open
        if self._statusCheck is not None:
            self._pollStatusCheck()
        run = self._run
        if run is not None:
            try:
                for event in run.poll():
                    self._handleEvent(event)
            except Exception as error:
                logging.exception("VoteMI: applying the child's output failed")
                self._finishRun()
                slicer.util.errorDisplay(_("VoteMI failed: {reason}").format(reason=error), windowTitle="VoteMI")
                return
            if run is self._run and run.finished:
                self._runEnded(run)
        if self._run is not None or self._statusCheck is not None:
            self._timer.start()

    def _handleEvent(self, event):
        kind = event.get("event")
        run = self._run
        started = run.report.started
        run.handle(event)
        if kind == "progress":
            fraction = float(event.get("fraction", 0.0)) * (0.5 if run.describe else 1.0)
            self.ui.progressBar.value = int(round(100 * fraction))
            if event.get("message"):
                self.ui.statusLabel.text = event["message"]
        elif kind == "selection":
            self._refreshResults()
            self._connectPlotView(True)
            if run.describe:
                self.ui.progressBar.value = 55
                self.ui.statusLabel.text = _("Slices selected; waiting for the model at {target}...").format(
                    target=run.target)
        elif kind == "text":
            if not started and self._parameterNode and self._parameterNode.inputVolume is run.volumeNode:
                self._observeReport(run.report.node)
            self.ui.progressBar.value = max(self.ui.progressBar.value, 60)
        elif kind == "report":
            self._observeReport(self._reportNode)
            if not event.get("complete", True):
                slicer.util.warningDisplay(
                    _("The report is incomplete: {reason}").format(
                        reason=event.get("report_meta", {}).get("incomplete_reason", "")), windowTitle="VoteMI")

    def _runEnded(self, run):
        self._finishRun()
        message = run.failure()
        if message is None:
            self.ui.statusLabel.text = (_("Done ({summary}).").format(summary=run.summary) if run.summary
                                        else _("Done."))
            return
        if run.describe and run.selected:
            title = _("The vision-language model did not answer")
        else:
            title = _("VoteMI cannot use this input")
        details = run.child.stderr_text() if run.child is not None else ""
        logging.error("VoteMI: %s: %s\n%s", title, message, details)
        self.ui.statusLabel.text = f"{title}: {message}"
        # The child's own words (a traceback, a library's warning) under "Show Details...".
        slicer.util.errorDisplay(f"{title}:\n{message}", windowTitle="VoteMI", detailedText=details)

    def _finishRun(self, message=None):
        run, self._run = self._run, None
        if run is not None:
            run.close()
        self.ui.reportTextEdit.readOnly = False
        self._setBusy(False, message)
        self._showReportInfo()

    def onCancel(self) -> None:
        """Stop at once: the child process is killed; a report that had started is marked incomplete."""
        run = self._run
        if run is None:
            return
        run.cancel()
        self._finishRun(_("Cancelled."))
        logging.info("VoteMI: cancelled; the child process was ended")

    def _setBusy(self, busy, message=None):
        self.ui.progressBar.visible = busy
        self.ui.cancelButton.visible = busy
        self.ui.cancelButton.enabled = busy
        if busy:
            self.ui.progressBar.value = 0
        if message is not None:
            self.ui.statusLabel.text = message
        self._updateButtons()
        self._updateReviewButtons()

    # ----------------------------------------------------------------------------------------
    # Server status

    def checkServer(self, explicit: bool) -> None:
        """Update the status line: is the server reachable, which models does it offer."""
        if self._parameterNode is None:
            return
        node = self._parameterNode
        if node.protocol == "inprocess":
            folder = node.model.strip()
            found = bool(folder) and os.path.isdir(folder)
            self.ui.serverStatusLabel.text = (
                _("In-process model: {folder}").format(folder=folder) if found
                else _("In-process model: choose the model folder as the model"))
            return
        self._endStatusCheck()
        url = node.serverUrl.strip() or DEFAULT_SERVER_URL
        problem = self._serverUrlProblem()
        if problem:
            self.ui.serverStatusLabel.text = problem
            if explicit:
                slicer.util.errorDisplay(problem, windowTitle="VoteMI")
            return
        apiKey = self.ui.apiKeyLineEdit.text.strip()
        if apiKey and not explicit and self.logic.isUnencryptedRemote(url):
            # The key would cross the network in clear text: only when the user asks for it.
            self.ui.serverStatusLabel.text = _("Server {url}: not checked automatically (plain HTTP to another "
                                               "machine would send the API key unencrypted); Test connection checks "
                                               "it").format(url=url)
            return
        # Only an explicit check probes: the probe asks the model for a few one-token answers.
        self._modelsShown = False
        self._statusCheck = (self.logic.startServerCheck(url, node.protocol, apiKey, probe=explicit,
                                                         model=node.model.strip()), explicit)
        self.ui.serverStatusLabel.text = _("Server {url}: checking...").format(url=url)
        self._timer.start()

    def _pollStatusCheck(self):
        child, explicit = self._statusCheck
        for event in child.poll():
            if event.get("event") == "models":
                self._showModels(event.get("server", ""), event.get("models", []))
                self._modelsShown = True
            elif event.get("event") == "capabilities":
                self.ui.serverStatusLabel.text = _("{status}; {capabilities}").format(
                    status=self.ui.serverStatusLabel.text, capabilities=event.get("summary", ""))
            elif event.get("event") == "error" and self._modelsShown:
                # The server answered; only the probe of the model failed.
                self.ui.serverStatusLabel.text = _("{status}; probe failed: {reason}").format(
                    status=self.ui.serverStatusLabel.text, reason=event["message"])
            elif event.get("event") == "error":
                self.ui.serverStatusLabel.text = _("Server unreachable: {reason}").format(reason=event["message"])
                if explicit:
                    slicer.util.errorDisplay(_("The vision-language model server did not answer:\n{reason}").format(
                        reason=event["message"]), windowTitle="VoteMI")
        if child.finished:
            if child.exit_code not in (0, 1):
                self.ui.serverStatusLabel.text = _("Server check failed: {reason}").format(
                    reason=child.stderr_tail() or f"exit code {child.exit_code}")
            self._endStatusCheck()

    def _endStatusCheck(self):
        if self._statusCheck is not None:
            self._statusCheck[0].kill()
            self._statusCheck = None

    def _showModels(self, url, models):
        self.ui.modelsComboBox.clear()
        for model in models:
            self.ui.modelsComboBox.addItem(model)
        self.ui.modelsComboBox.visible = bool(models)
        node = self._parameterNode
        if len(models) == 1 and not node.model.strip():
            node.model = models[0]
        chosen = node.model.strip()
        if not models:
            self.ui.serverStatusLabel.text = _("Server {url}: reachable, but it offers no models").format(url=url)
        elif chosen and chosen not in models:
            self.ui.serverStatusLabel.text = _("Server {url}: reachable; model {model} not offered (offers: {models})"
                                               ).format(url=url, model=chosen, models=", ".join(models[:5]))
        else:
            self.ui.serverStatusLabel.text = _("Server {url}: reachable; model {model}").format(
                url=url, model=chosen or ", ".join(models[:5]))

    def onModelChosen(self, index) -> None:
        if index >= 0 and self._parameterNode:
            self._parameterNode.model = self.ui.modelsComboBox.itemText(index)
            self.checkServer(explicit=False)

    # ----------------------------------------------------------------------------------------
    # Results table and plot

    def onInputChanged(self) -> None:
        """Show the voted slices and the report of the (new) input volume."""
        self._refreshResults()
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        self._observeReport(self.logic.reportNode(volumeNode) if volumeNode else None)

    def _refreshResults(self):
        table = self.ui.resultsTable
        table.setRowCount(0)
        self._rows = []
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if volumeNode is None:
            return
        self._rows = self.logic.votedSlices(volumeNode)
        table.setRowCount(len(self._rows))
        for row, pick in enumerate(self._rows):
            values = [pick["plane"].capitalize(), str(pick["rank"]), str(pick["slice"]),
                      f"{pick['position_mm']:+.1f}", f"{pick['score']:.3f}"]
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setToolTip(_("Click to show this slice"))
                table.setItem(row, column, item)

    def onResultClicked(self, row, column) -> None:
        if 0 <= row < len(self._rows):
            self.logic.jumpToSlice(self._rows[row]["plane"], self._rows[row]["center_ras"])

    def onClearResults(self) -> None:
        """Remove VoteMI's marks, tables, plot and report of the input volume (asks if the report was edited)."""
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if volumeNode is None or self._run is not None:
            return
        if self.logic.reportEdited(self.logic.reportNode(volumeNode)) and not slicer.util.confirmYesNoDisplay(
                _("The report of {name} was edited. Remove it with the other VoteMI results?").format(
                    name=volumeNode.GetName()), windowTitle="VoteMI"):
            return
        self._observeReport(None)
        removed = self.logic.clearResults(volumeNode)
        self._refreshResults()
        self.ui.statusLabel.text = _("Removed {count} VoteMI node(s) of {name}.").format(
            count=removed, name=volumeNode.GetName())

    def _connectPlotView(self, connect):
        layoutManager = slicer.app.layoutManager() if connect else None
        plotView = None
        if layoutManager is not None and layoutManager.plotViewCount > 0:
            plotView = layoutManager.plotWidget(0).plotView()
        if self._plotView is not None and self._plotView is not plotView:
            self._plotView.disconnect("dataSelected(vtkStringArray*,vtkCollection*)", self.onPlotDataSelected)
            self._plotView = None
        if plotView is not None and self._plotView is None:
            plotView.connect("dataSelected(vtkStringArray*,vtkCollection*)", self.onPlotDataSelected)
            self._plotView = plotView

    def onPlotDataSelected(self, seriesIDs, selections) -> None:
        """A click on the score plot jumps the views to that slice."""
        for index in range(seriesIDs.GetNumberOfValues()):
            series = slicer.mrmlScene.GetNodeByID(seriesIDs.GetValue(index))
            points = selections.GetItemAsObject(index)
            if series is None or points is None or points.GetNumberOfTuples() < 1:
                continue
            if self.logic.jumpToSeriesPoint(series, int(points.GetValue(0))):
                return

    # ----------------------------------------------------------------------------------------
    # Report box

    def _observeReport(self, reportNode):
        if self._reportNode is not None:
            self.removeObserver(self._reportNode, vtk.vtkCommand.ModifiedEvent, self._onReportNodeModified)
        self._reportNode = reportNode
        if reportNode is not None:
            self.addObserver(reportNode, vtk.vtkCommand.ModifiedEvent, self._onReportNodeModified)
        self._onReportNodeModified()

    def _onReportNodeModified(self, caller=None, event=None):
        text = self._reportNode.GetText() or "" if self._reportNode is not None else ""
        box = self.ui.reportTextEdit
        if box.toPlainText() != text:
            self._updatingReport = True
            try:
                box.setPlainText(text)
                box.moveCursor(qt.QTextCursor.End)
            finally:
                self._updatingReport = False
        self._showReportInfo()
        self._showFindings()

    def onReportEdited(self) -> None:
        """Keep the user's edits in the report node (saved with the scene)."""
        if self._updatingReport:
            return
        text = self.ui.reportTextEdit.toPlainText()
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if self._reportNode is None:
            if volumeNode is None or not text:
                return
            self.logic.reportNode(volumeNode, create=True).SetText(text)  # the user started a report
            self._observeReport(self.logic.reportNode(volumeNode))
            return
        if self._reportNode.GetText() != text:
            self._updatingReport = True
            try:
                self._reportNode.SetText(text)
            finally:
                self._updatingReport = False
        self._showReportInfo()

    def _showReportInfo(self):
        self.ui.reportInfoLabel.text = self.logic.reportSummary(self._reportNode) if self._reportNode else ""
        hasText = bool(self.ui.reportTextEdit.toPlainText().strip())
        self.ui.copyReportButton.enabled = hasText
        self.ui.saveReportButton.enabled = hasText
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        fromDicom = self.logic.dicomInstanceUIDs(volumeNode) if volumeNode else []
        self.ui.exportDicomButton.enabled = hasText and bool(fromDicom)
        self.ui.exportDicomButton.toolTip = self._exportDicomToolTip + ("" if fromDicom else "\n" + _(
            "The input volume was not loaded from the DICOM database."))

    # ----------------------------------------------------------------------------------------
    # Findings: citations and review

    def _setUpFindingsTable(self):
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
        self._updateReviewButtons()

    def _showFindings(self):
        """Show the findings of the report node with their review and a link per cited image."""
        self._findings = self.logic.reportFindings(self._reportNode)
        items = self._findings.items if self._findings is not None else []
        table = self.ui.findingsTable
        selected = self._selectedFinding()
        self._updatingFindings = True
        try:
            table.setRowCount(len(items))
            for row, finding in enumerate(items):
                status = qt.QTableWidgetItem(_(finding.status))
                status.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                status.setToolTip(self._reviewToolTip(finding))
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
        self._updateReviewButtons()

    @staticmethod
    def _reviewToolTip(finding):
        if finding.status == "pending":
            return _("Not reviewed yet")
        tip = _("{status} by {who} at {when}").format(status=finding.status, who=finding.reviewer or _("unnamed"),
                                                     when=finding.reviewed_at)
        return tip + (_("; the model wrote: {text}").format(text=finding.original_text) if finding.original_text else "")

    def _citationLinks(self, row, finding):
        """One link-styled button per cited image; IDs the selection does not hold in red, not clickable."""
        cell = qt.QWidget()
        layout = qt.QHBoxLayout(cell)
        layout.setContentsMargins(2, 0, 2, 0)
        for imageId in finding.cites:
            link = qt.QPushButton(imageId)
            link.objectName = f"citation_{row}_{imageId}"
            link.flat = True
            link.styleSheet = "color: #1a5fb4; text-decoration: underline; padding: 0 2px;"
            link.toolTip = _("Show {id} in the slice views").format(id=imageId)
            link.connect("clicked(bool)", lambda checked=False, imageId=imageId: self.onCitationClicked(imageId))
            layout.addWidget(link)
        for imageId in finding.unknown_cites:
            label = qt.QLabel(f"{imageId}?")
            label.styleSheet = "color: #b03a2e;"
            label.toolTip = _("The model cited {id}, which was not among the images sent").format(id=imageId)
            layout.addWidget(label)
        layout.addStretch(1)
        return cell

    def _selectedFinding(self):
        rows = sorted({index.row() for index in self.ui.findingsTable.selectionModel().selectedRows()})
        return rows[0] if rows else None

    def _updateReviewButtons(self):
        chosen = self._findings is not None and self._selectedFinding() is not None and self._run is None
        for button in (self.ui.acceptFindingButton, self.ui.rejectFindingButton, self.ui.editFindingButton):
            button.enabled = chosen

    def onCitationClicked(self, imageId) -> None:
        """Move the cited plane's views to the cited slice and the other views through its mark."""
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if volumeNode is None or not self.logic.jumpToCitation(volumeNode, imageId):
            self.ui.statusLabel.text = _("{id} is not a slice of this report.").format(id=imageId)
            return
        self.ui.statusLabel.text = _("Showing {id}.").format(id=imageId)

    def _storeFindings(self):
        self.logic.storeFindings(self._reportNode, self._findings)  # the node's Modified event redraws the table

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

    def onCopyReport(self) -> None:
        qt.QApplication.clipboard().setText(self.logic.reportExport(self._reportNode, "text"))
        self.ui.statusLabel.text = _("Report copied to the clipboard (with the notice).")

    def onSaveReport(self) -> None:
        volumeNode = self._parameterNode.inputVolume
        name = (volumeNode.GetName() if volumeNode else "report").replace(os.sep, "_")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Save report"),
            os.path.join(slicer.app.defaultScenePath, f"{name}_VoteMI_report.html"),
            _("HTML page with the key images (*.html);;PDF (*.pdf);;Markdown (*.md);;Text (*.txt);;JSON (*.json)"))
        if not path:
            return
        try:
            with slicer.util.WaitCursor():
                self.logic.saveReport(self._reportNode, path, volumeNode, self._extraVolumes())
        except OSError as error:
            slicer.util.errorDisplay(str(error), windowTitle="VoteMI")
            return
        self.ui.statusLabel.text = _("Report saved to {path}").format(path=path)

    def onExportDicom(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The report could not be exported to DICOM."), waitCursor=True):
            written = self.logic.exportReportToDicomDatabase(self._reportNode, self._parameterNode.inputVolume,
                                                             self._extraVolumes())
            if written is None:
                return
            sources = sum(1 for ref in written.references.values() if ref["kind"] == "source")
            self.ui.statusLabel.text = _(
                "Added to the DICOM database, in the input's study: key images ({source} acquired, {derived} "
                "derived) and the report. Send them from the DICOM module.").format(
                source=sources, derived=len(written.derived))
            for line in written.skipped:
                logging.info("VoteMI: DICOM export skipped %s", line)


#
# VoteMIRun
#


class VoteMIRun:
    """One Select / Select & Describe run of the panel: its child process, its temporary files and its report.

    The volumes go to the child as NRRD files in a temporary folder; the child is
    ``python -m VoteMILib.cli select|describe ... --events`` and its events are read by :meth:`poll`.
    """

    def __init__(self, logic, volumeNode, extraVolumeNodes, describe, switchLayout=True):
        from VoteMILib import mrml

        self.logic = logic
        self.volumeNode = volumeNode
        self.extraVolumeNodes = list(extraVolumeNodes)
        self.describe = describe
        self.switchLayout = switchLayout
        self.report = mrml.ReportStream(slicer.mrmlScene, volumeNode)
        self.child = None
        self.folder = None
        self.target = ""
        self.selected = False
        self.result = None  # the SelectionResult, once the child sent it
        self.summary = ""
        self.reported = False
        self.findings = None  # the "findings" event of the child, applied with the report
        self.error = None
        self.cancelled = False
        self.timings = {}
        self.startedAt = None
        self.guidedBy = ""

    def start(self, planes, topK, mode, describeOptions=None, apiKey="", guide=None):
        """Write the inputs and start the child; ``guide`` as :meth:`VoteMIWidget._guide` returns it."""
        import time

        from VoteMILib import mrml
        from VoteMILib.child_run import ChildRun, child_arguments

        self.startedAt = time.perf_counter()
        self.folder = self.logic.newRunFolder()
        try:
            paths = []
            for number, node in enumerate([self.volumeNode, *self.extraVolumeNodes]):
                # One folder per volume: the file is named after its node, and names may repeat.
                folder = os.path.join(self.folder, str(number))
                os.mkdir(folder)
                paths.append(mrml.write_volume_file(node, os.path.join(folder, mrml.file_name_for(node))))
            self.timings["write_s"] = time.perf_counter() - self.startedAt
            mask, labelNames, points = self._writeGuide(guide) if guide is not None else (None, (), ())
            request = ChildRun(
                image=paths[0], planes=tuple(planes), top_k=int(topK), extras=tuple(paths[1:]),
                mode=mode if guide is None or guide["thenUnsupervised"] else None,  # None: the guided slices only
                mask=mask, label_names=labelNames, points=points,
                describe=self._describeRequest(describeOptions) if describeOptions is not None else None)
            self.child = self.logic.startChild(child_arguments(request), apiKey=apiKey)
        except BaseException:
            self.close()
            raise

    def _writeGuide(self, guide):
        """The chosen segments as a named label map on the input volume's grid, and the points (RAS mm)."""
        from VoteMILib import mrml

        mask, labelNames, names = None, (), []
        if guide["segmentation"] is not None:
            mask = os.path.join(self.folder, "guide-segments.nrrd")
            labels = mrml.write_segments_file(guide["segmentation"], guide["segmentIDs"], self.volumeNode, mask)
            labelNames = tuple(labels.items())
            names = list(labels.values())
        points = tuple(mrml.guide_points(guide["points"]))
        self.guidedBy = mrml.guide_description(names, len(points))
        return mask, labelNames, points

    def _describeRequest(self, options):
        from VoteMILib.child_run import DescribeRequest
        from VoteMILib.outputs import write_atomic

        promptFile = None
        if options["prompt"]:
            promptFile = os.path.join(self.folder, "prompt.txt")
            write_atomic(promptFile, options["prompt"], what="prompt file")
        self.target = options["model"] if options["protocol"] == "inprocess" else options["server"]
        return DescribeRequest(server=options["server"], protocol=options["protocol"], model=options["model"],
                               language=options["language"], timeout_s=float(options["timeout"]),
                               prompt_file=promptFile, window=options["window"],
                               examples_dir=options.get("examples") or None)

    def poll(self):
        """The child's new events; errors are kept for :meth:`failure`."""
        events = self.child.poll()
        for event in events:
            if event.get("event") == "error":
                self.error = event.get("message", "")
        return events

    @property
    def finished(self):
        return self.child.finished

    def handle(self, event):
        """Apply one event of the child to the scene: the selection's marks, the report as it streams."""
        kind = event.get("event")
        if kind == "selection":
            self.applySelection(event["selection"])
        elif kind == "text":
            self.report.append(event.get("text", ""))
        elif kind == "findings":
            self.findings = event.get("findings")
        elif kind == "report":
            self.finishReport(event)
        elif kind == "log":
            logging.info("VoteMI child: %s", event.get("text", ""))

    def wait(self, timeoutSeconds=None):
        """Handle the child's events until it ends (Slicer's events processed meanwhile); return :meth:`failure`.

        After ``timeoutSeconds`` the run is cancelled and TimeoutError raised.
        """
        import time

        began = time.monotonic()
        try:
            while True:
                for event in self.poll():
                    self.handle(event)
                if self.finished:
                    return self.failure()
                if timeoutSeconds is not None and time.monotonic() - began > timeoutSeconds:
                    self.cancel()
                    raise TimeoutError(_("VoteMI did not finish within {seconds} s").format(seconds=timeoutSeconds))
                slicer.app.processEvents()
                time.sleep(POLL_INTERVAL_MS / 1000.0)
        finally:
            self.close()

    def applySelection(self, document):
        import time

        from VoteMILib.results import SelectionResult

        if slicer.mrmlScene.GetNodeByID(self.volumeNode.GetID()) is not self.volumeNode:
            raise RuntimeError(_("the input volume was removed from the scene"))
        result = SelectionResult.from_dict(document)
        self.logic.applySelection(self.volumeNode, result, switchLayout=self.switchLayout)
        self.result = result
        self.selected = True
        self.summary = result.cue_summary()
        self.timings["marks_s"] = time.perf_counter() - self.startedAt

    def finishReport(self, event):
        from VoteMILib.findings import Findings
        from VoteMILib.vlm import Report

        findings = Findings.from_dict(self.findings) if self.findings else None
        self.report.finish(Report(event.get("report", ""), event.get("report_meta", {}),
                                  complete=bool(event.get("complete", True)), findings=findings))
        self.reported = True

    def failure(self):
        """None if the run succeeded (an incomplete report was already shown as a warning), else its one-line error."""
        if self.cancelled or self.child.exit_code == 0 or (self.reported and not self.error):
            return None
        if self.error:
            return self.error
        return self.child.stderr_tail() or _("the VoteMI process ended with exit code {code}").format(
            code=self.child.exit_code)

    def cancel(self):
        self.cancelled = True
        if self.child is not None:
            self.child.kill()
        self.report.cancel()

    def close(self):
        import shutil

        if self.child is not None and not self.child.finished:
            self.child.kill()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


#
# VoteMILogic
#


class VoteMILogic(ScriptedLoadableModuleLogic):
    """Selection, scene updates and reports; usable without the panel (scripts, tests).

    The methods that take nodes must run on the GUI thread; :meth:`select` and :meth:`describe`
    are synchronous versions of what the panel runs in a child process (:meth:`startChild`).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        """The module's parameter node; scenes saved before the modes were renamed load with the new names."""
        from VoteMILib.names import canonical_mode

        raw = super().getParameterNode()
        mode = raw.GetParameter("selectionMode")
        if mode:
            try:
                canonical = canonical_mode(mode)
            except ValueError:
                canonical = "findings"
            if canonical != mode:
                raw.SetParameter("selectionMode", canonical)
        return VoteMIParameterNode(raw)

    @staticmethod
    def isImageVolume(node):
        """True for the volumes the input selector lists: plain scalar volumes.

        Label maps, RGB/vector and tensor volumes are subclasses of vtkMRMLScalarVolumeNode that the
        selector hides, so the class is compared exactly.
        """
        return node is not None and node.GetClassName() == "vtkMRMLScalarVolumeNode"

    @classmethod
    def firstImageVolume(cls):
        """The first volume of the scene the input selector lists, or None."""
        volumes = slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for index in range(volumes.GetNumberOfItems()):
            node = volumes.GetItemAsObject(index)
            if cls.isImageVolume(node):
                return node
        return None

    # Volumes

    @staticmethod
    def volumeFromNode(volumeNode):
        from VoteMILib import mrml

        return mrml.volume_from_node(volumeNode)

    @staticmethod
    def displayWindow(volumeNode):
        from VoteMILib import mrml

        return mrml.display_window(volumeNode)

    # Selection

    def select(self, volumeNode, planes=("axial", "coronal", "sagittal"), topK=3, mode="findings",
               extraVolumeNodes=(), apply=True, progress=None, cancel=None):
        """Select slices of ``volumeNode`` in this process and (if ``apply``) mark them; return the SelectionResult.

        For scripts that want the result object at once; the panel and the self-test use :meth:`run`
        (a child process, so Slicer's GUI stays responsive).
        """
        from VoteMILib.selection import select_slices

        volume = self.volumeFromNode(volumeNode)
        extras = [self.volumeFromNode(node) for node in extraVolumeNodes]
        result = select_slices(volume, planes=planes, top_k=topK, mode=mode, extra_volumes=extras,
                               progress=progress, cancel=cancel)
        if apply:
            self.applySelection(volumeNode, result)
        return result

    def applySelection(self, volumeNode, result, jump=True, switchLayout=True):
        """Marks, score tables, plot and view jumps for a selection (replacing VoteMI's earlier ones).

        The score plot goes into the layout's plot views; if ``switchLayout`` and the layout has
        none, Slicer switches to a layout with one. Otherwise the user's layout is kept.
        """
        from VoteMILib import mrml

        nodes = mrml.apply_selection(slicer.mrmlScene, volumeNode, result, jump=jump)
        if switchLayout and hasattr(slicer.modules, "plots") and slicer.app.layoutManager() is not None:
            slicer.modules.plots.logic().ShowChartInLayout(nodes.chart)
            # Showing the chart may switch the layout; the views of the new layout jump too.
            mrml.jump_to_best_slices(slicer.mrmlScene, result)
        else:
            plotViews = slicer.mrmlScene.GetNodesByClass("vtkMRMLPlotViewNode")
            for index in range(plotViews.GetNumberOfItems()):
                plotViews.GetItemAsObject(index).SetPlotChartNodeID(nodes.chart.GetID())
        return nodes

    def clearResults(self, volumeNode):
        """Remove every node VoteMI made for ``volumeNode``; return how many."""
        from VoteMILib import mrml

        return mrml.clear_results(slicer.mrmlScene, volumeNode)

    def votedSlices(self, volumeNode):
        from VoteMILib import mrml

        return mrml.voted_slices(slicer.mrmlScene, volumeNode)

    def jumpToSlice(self, plane, centerRAS):
        from VoteMILib import mrml

        moved = mrml.jump_to_slice(slicer.mrmlScene, plane, centerRAS)
        if not moved:  # no view shows this plane: centre all views on the point
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *centerRAS, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
        return moved

    def jumpToSeriesPoint(self, seriesNode, row):
        """Jump to the slice of a clicked point of a VoteMI score series; False if not a VoteMI series."""
        from VoteMILib import mrml

        if seriesNode.GetAttribute(mrml.ROLE_ATTRIBUTE) != "series":
            return False
        table = seriesNode.GetTableNode()
        rows = mrml.table_rows(table) if table is not None else []
        if not 0 <= row < len(rows):
            return False
        self.jumpToSlice(seriesNode.GetAttribute(mrml.PLANE_ATTRIBUTE), rows[row]["center_ras"])
        return True

    # Reports

    def describe(self, volumeNode, result, settings, extraVolumeNodes=(), onText=None, cancel=None, write=True):
        """Ask the model for a report of ``result``; stream it into the report node if ``write``.

        The previous report stays until the first piece of text arrives.
        """
        from VoteMILib import mrml
        from VoteMILib.vlm import describe

        volume = self.volumeFromNode(volumeNode)
        extras = [self.volumeFromNode(node) for node in extraVolumeNodes]
        stream = mrml.ReportStream(slicer.mrmlScene, volumeNode) if write else None

        def received(text):
            if stream is not None:
                stream.append(text)
            if onText is not None:
                onText(text)

        report = describe(volume, result, settings, extra_volumes=extras, on_text=received, cancel=cancel)
        if stream is not None:
            stream.finish(report)
        return report

    # Child processes

    def run(self, volumeNode, describe=False, planes=("axial", "coronal", "sagittal"), topK=3, mode="findings",
            extraVolumeNodes=(), describeOptions=None, apiKey="", guide=None, switchLayout=True, wait=False,
            timeoutSeconds=None):
        """Select (and describe) ``volumeNode`` in a child process, as the panel's buttons do; return the VoteMIRun.

        With ``wait`` the call returns when the child has ended, its selection marked and its report in the
        report node (``run.failure()`` says why not, None if it succeeded); otherwise the caller polls
        ``run.poll()``/``run.handle(event)`` (the panel does, from a timer) and may ``run.cancel()``.
        ``describeOptions``: server, protocol, model, language, timeout, prompt and window, as
        :meth:`describeOptions` returns them.
        """
        run = VoteMIRun(self, volumeNode, extraVolumeNodes, describe, switchLayout)
        run.start(planes, topK, mode, describeOptions, apiKey=apiKey, guide=guide)
        if wait:
            run.wait(timeoutSeconds)
        return run

    @staticmethod
    def newRunFolder():
        """A new folder for one run's input, under Slicer's temporary path; removes the ones a crash left.

        The child reads patient voxels from here, so they stay where Slicer keeps its temporary files
        (which the user may have moved to an encrypted or private disk), never in the system's temp folder.
        """
        import shutil
        import tempfile
        import time

        base = os.path.join(slicer.app.temporaryPath, "VoteMI")
        os.makedirs(base, exist_ok=True)
        oldest = time.time() - STALE_RUN_HOURS * 3600
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if name.startswith("run-") and os.path.isdir(path) and os.path.getmtime(path) < oldest:
                shutil.rmtree(path, ignore_errors=True)
        return tempfile.mkdtemp(prefix="run-", dir=base)

    @classmethod
    def describeOptions(cls, volumeNode, server="", protocol="openai", model="", language="", timeoutSeconds=300,
                        prompt="", examples=""):
        """The describe settings :meth:`run` hands to the child; empty values take VoteMI's defaults.

        The window is the one ``volumeNode`` is displayed with, so the model sees what the radiologist sees.
        """
        return {"server": server.strip() or DEFAULT_SERVER_URL, "protocol": protocol, "model": model.strip(),
                "language": language.strip() or DEFAULT_LANGUAGE, "timeout": int(timeoutSeconds),
                "prompt": prompt.strip(), "window": cls.displayWindow(volumeNode), "examples": examples.strip()}

    @staticmethod
    def pythonExecutable():
        """The Python that runs the child processes: Slicer's own (PythonSlicer inside Slicer).

        ``sys.executable`` is empty when Slicer was started without its launcher; PythonSlicer on the PATH is
        the same interpreter then.
        """
        import shutil

        executable = sys.executable or shutil.which("PythonSlicer")
        if not executable:
            raise RuntimeError(_("VoteMI cannot find Slicer's Python to run in the background (sys.executable is "
                                 "empty and PythonSlicer is not on the PATH). Start Slicer with its launcher "
                                 "(the Slicer executable in the install folder)."))
        return executable

    def startChild(self, arguments, apiKey=""):
        """Start ``python -m VoteMILib.cli ARGUMENTS`` (with ``--events``); return its ChildProcess.

        The module folder goes first on PYTHONPATH, so the child runs this very engine; the API key
        reaches the child in its environment, never on its command line.
        """
        from VoteMILib.events import ChildProcess

        moduleFolder = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([moduleFolder] + [p for p in [env.get("PYTHONPATH", "")] if p])
        env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", VOTEMI_API_KEY=apiKey)
        argv = [self.pythonExecutable(), "-m", "VoteMILib.cli", *arguments]
        logging.info("VoteMI: starting %s", " ".join(argv))
        return ChildProcess(argv, env=env)

    def startServerCheck(self, url, protocol, apiKey="", probe=False, model=""):
        """Ask the server for its models in a child process (``votemi models --events``); with ``probe``, also
        what the model accepts (``--probe``: images, images per request, context length, JSON schema)."""
        arguments = ["models", "--server", url, "--protocol", protocol, "--timeout", "10", "--events"]
        if probe:
            arguments += ["--probe"] + (["--model", model] if model else [])
        return self.startChild(arguments, apiKey=apiKey)

    @staticmethod
    def serverUrlProblem(url):
        """Why the panel cannot use ``url``, or None.

        The panel keeps its settings in the scene and in Slicer's settings, so a password in the URL
        would be saved there; it is refused (the command line sends such URLs as Basic auth).
        """
        from VoteMILib.vlm.clients import url_has_credentials

        if url_has_credentials(url):
            return _("The server URL holds a user name and password, which the panel would save in the scene. "
                     "Remove them from the URL and enter the server's key as API key.")
        return None

    @staticmethod
    def storableServerUrl(url):
        """``url`` as the scene and the settings may keep it: without a user name and password."""
        from VoteMILib.vlm.clients import redact_url, url_has_credentials

        return redact_url(url) if url_has_credentials(url) else url

    @staticmethod
    def _serverHost(url):
        """(scheme, host) of a server URL; host "" if it has none."""
        from urllib.parse import urlparse

        parsed = urlparse(url if "://" in url else "http://" + url)
        return parsed.scheme, (parsed.hostname or "").lower()

    @staticmethod
    def _isLoopback(host):
        return host in ("localhost", "::1") or host.startswith("127.")

    @classmethod
    def isUnencryptedRemote(cls, url):
        """True for a plain-http server on another machine."""
        scheme, host = cls._serverHost(url)
        return scheme != "https" and not cls._isLoopback(host)

    @classmethod
    def remoteServerWarning(cls, url):
        """A warning to confirm before images go to ``url``, or None for a server on this machine."""
        scheme, host = cls._serverHost(url)
        if cls._isLoopback(host):
            return None
        warning = _("The slice images of this volume will be sent to {host}, a server on another machine.").format(
            host=host or url)
        if scheme != "https":
            warning += " " + _("The connection is plain HTTP: the images and the report cross the network "
                               "unencrypted. Use https:// for servers beyond this machine.")
        return warning + " " + _("Send them?")

    def reportNode(self, volumeNode, create=False):
        from VoteMILib import mrml

        return mrml.report_node(slicer.mrmlScene, volumeNode, create=create) if volumeNode else None

    @staticmethod
    def reportEdited(reportNode):
        from VoteMILib import mrml

        return mrml.report_edited(reportNode)

    @staticmethod
    def reportSummary(reportNode):
        """One line on where the report came from, for the panel."""
        from VoteMILib import mrml

        def attribute(key):
            return mrml.report_attribute(reportNode, key)

        if not attribute("model") and not (reportNode.GetText() or "").strip():
            return ""
        parts = [part for part in (attribute("model"), attribute("created")) if part]
        if attribute("complete") == "false":
            parts.append(_("incomplete: {reason}").format(reason=attribute("incomplete_reason") or _("not finished")))
        if mrml.report_edited(reportNode):
            parts.append(_("edited by the user"))
        return "; ".join(parts)

    @staticmethod
    def reportExport(reportNode, fmt="text"):
        """The report as text, Markdown or JSON, with the notice, the source and the review, as the user left it."""
        from VoteMILib import mrml

        return mrml.report_from_node(reportNode).export(fmt) if reportNode is not None else ""

    def saveReport(self, reportNode, path, volumeNode=None, extraVolumeNodes=()):
        """Save the report by extension: HTML with the key images (re-rendered from the volumes), PDF (that
        page printed by Qt), Markdown, JSON or text; atomically. OSError names the file."""
        from VoteMILib.outputs import write_atomic

        extension = os.path.splitext(path)[1].lower()
        if extension in (".html", ".htm", ".pdf"):
            from VoteMILib.vlm.html_export import report_html

            report = self.reportObject(reportNode)
            page = report_html(report, self.reportImages(report.meta, volumeNode, extraVolumeNodes))
            if extension == ".pdf":
                return self.savePdf(page, path)
            return write_atomic(path, page, what="HTML report")
        fmt = {".md": "markdown", ".json": "json"}.get(extension, "text")
        return write_atomic(path, self.reportExport(reportNode, fmt), what="report")

    @staticmethod
    def reportObject(reportNode):
        """The report node as a :class:`~VoteMILib.vlm.Report` (see :func:`VoteMILib.mrml.report_from_node`)."""
        from VoteMILib import mrml

        return mrml.report_from_node(reportNode)

    @staticmethod
    def dicomInstanceUIDs(volumeNode):
        """SOP Instance UIDs of the DICOM files the volume was loaded from (Slicer's DICOM module sets them)."""
        return (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split() if volumeNode is not None else []

    def dicomSourceFiles(self, volumeNode):
        """The DICOM database's files of the volume's instances; ValueError says why there are none."""
        uids = self.dicomInstanceUIDs(volumeNode)
        if not uids:
            raise ValueError(_("'{name}' was not loaded from the DICOM database, so there is no study for key images "
                               "and a report to belong to. Load the series with the DICOM module, or save the report "
                               "as HTML instead.").format(name=volumeNode.GetName() if volumeNode else ""))
        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            raise ValueError(_("Slicer's DICOM database is not open: open it in the DICOM module first."))
        files = [database.fileForInstance(uid) for uid in uids]
        missing = [uid for uid, path in zip(uids, files) if not path or not os.path.isfile(path)]
        if missing:
            raise ValueError(_("{count} of the {total} source files of '{name}' are no longer in the DICOM "
                               "database (first: instance {uid}).").format(
                count=len(missing), total=len(uids), name=volumeNode.GetName(), uid=missing[0]))
        return files

    def exportReportToDicomDatabase(self, reportNode, volumeNode, extraVolumeNodes=()):
        """Write the KOS, the Secondary Captures and the SR of the report and add them to the DICOM database.

        Returns the :class:`~VoteMILib.dicom_export.DicomExport`, or None if the user declined to install
        what the export needs (pydicom, highdicom). Raises ValueError (or DicomExportError) with the reason.
        """
        import shutil

        from VoteMILib import mrml
        from VoteMILib.dicom_export import export_dicom

        files = self.dicomSourceFiles(volumeNode)
        if not self.ensureDicomExportDependencies():
            return None
        volume = mrml.volume_from_node(volumeNode)
        volume.metadata["dicom_files"] = files
        report = mrml.report_from_node(reportNode)
        pngs = self.reportImages(report.meta, volumeNode, extraVolumeNodes)
        folder = self.newRunFolder()
        try:
            written = export_dicom(volume, report, pngs, folder)
            from DICOMLib import DICOMUtils

            # Copied into the database: the run folder goes away below.
            if not DICOMUtils.importDicom(folder, copyFiles=True):
                raise ValueError(_("Slicer's DICOM database did not accept the exported files (see the error log)."))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return written

    @staticmethod
    def reportImages(meta, volumeNode, extraVolumeNodes=()):
        """Image ID -> PNG of the report's images, rendered again from the volumes as they were sent."""
        from VoteMILib import mrml
        from VoteMILib.render import Windowing
        from VoteMILib.vlm.imaging import render_png

        nodes = {1: volumeNode, **{node.GetName(): node for node in extraVolumeNodes if node is not None}}
        volumes, pngs = {}, {}
        for image in meta.get("images") or []:
            key = 1 if image.get("sequence_number", 1) == 1 else image.get("sequence")
            node = nodes.get(key)
            if node is None or "window" not in image:
                continue
            if key not in volumes:
                volumes[key] = mrml.volume_from_node(node)
            window = image["window"]
            windowing = Windowing(window["modality"], tuple(tuple(w) for w in window["windows"]), window["source"])
            pngs[image["id"]], _size = render_png(volumes[key], image["plane"], int(image["index"]), windowing,
                                                  max(int(image.get("width", 896)), int(image.get("height", 896))))
        return pngs

    @staticmethod
    def savePdf(page, path):
        """Print an HTML page to PDF with Qt (images registered as resources: Qt's rich text reads no data URLs)."""
        import base64
        import re
        import tempfile

        from VoteMILib.outputs import OutputError, check_output_file

        path = check_output_file(path, "PDF report")
        document = qt.QTextDocument()
        for source in set(re.findall(r'src="(data:image/png;base64,[^"]+)"', page)):
            image = qt.QImage()
            image.loadFromData(qt.QByteArray(base64.b64decode(source.split(",", 1)[1])), "PNG")
            document.addResource(qt.QTextDocument.ImageResource, qt.QUrl(source), image)
        document.setHtml(page)
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".pdf",
                                             dir=os.path.dirname(path))
        os.close(handle)
        try:
            printer = qt.QPrinter(qt.QPrinter.HighResolution)
            printer.setOutputFormat(qt.QPrinter.PdfFormat)
            printer.setOutputFileName(temporary)
            (getattr(document, "print_", None) or getattr(document, "print"))(printer)
            if os.path.getsize(temporary) == 0:
                raise OutputError(f"cannot write PDF report {path}: Qt printed nothing")
            os.replace(temporary, path)
            temporary = None
        finally:
            if temporary is not None and os.path.exists(temporary):
                os.remove(temporary)
        return path

    @staticmethod
    def reportFindings(reportNode):
        from VoteMILib import mrml

        return mrml.report_findings(reportNode) if reportNode is not None else None

    @staticmethod
    def storeFindings(reportNode, findings):
        from VoteMILib import mrml

        mrml.store_findings(reportNode, findings)

    def jumpToCitation(self, volumeNode, imageId):
        """Show a cited slice in the slice views; {} if the report holds no such image."""
        from VoteMILib import mrml

        return mrml.jump_to_citation(slicer.mrmlScene, volumeNode, imageId)

    # Optional in-process model

    @staticmethod
    def _installPackage(requirement, moduleName, purpose):
        """Install ``requirement`` with Slicer's own tools, after the user agreed; True if ``moduleName`` is
        importable then. ``purpose`` completes "... needs the Python package" in the question."""
        import importlib.util

        try:  # a submodule: not an attribute of ``slicer`` until someone imports it
            import slicer.packaging as slicerPackaging
        except ImportError:
            slicerPackaging = None
        if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):  # 5.12+: asks, shows progress
            from packaging.requirements import Requirement

            slicerPackaging.pip_ensure([Requirement(requirement)], requester="VoteMI")
        else:
            if slicer.app.testingEnabled():
                return False
            if not slicer.util.confirmOkCancelDisplay(
                    _("{purpose} needs the Python package '{package}'. Install it now?").format(
                        purpose=purpose, package=requirement), windowTitle="VoteMI"):
                return False
            progress = slicer.util.createProgressDialog(
                labelText=_("Installing {package}...").format(package=requirement), maximum=0, windowTitle="VoteMI")
            try:
                slicer.app.processEvents()
                slicer.util.pip_install(requirement)
            finally:
                progress.close()
        importlib.invalidate_caches()
        return importlib.util.find_spec(moduleName) is not None

    @staticmethod
    def ensureInProcessDependencies():
        """Install torch (through the PyTorch extension) and transformers when the user asks for an in-process model.

        Returns False if the user declined or something is missing; nothing is installed while testing.
        """
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.errorDisplay(
                    _("An in-process model needs PyTorch. Install the 'PyTorch' extension from the Extensions "
                      "Manager, restart Slicer, and try again; or run the model in a server (Ollama, vLLM, "
                      "'votemi serve') and choose the openai or ollama protocol."), windowTitle="VoteMI")
                return False
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=">=2.2") is None:
                    return False
        if importlib.util.find_spec("transformers") is None:
            return VoteMILogic._installPackage("transformers>=5.0", "transformers", _("The in-process model"))
        return True

    @staticmethod
    def ensureDicomExportDependencies():
        """pydicom (shipped with Slicer) and highdicom, installed on first use after the user agreed."""
        import importlib.util

        for requirement, moduleName in (("pydicom>=2.4", "pydicom"), ("highdicom>=0.23", "highdicom")):
            if importlib.util.find_spec(moduleName) is None and not VoteMILogic._installPackage(
                    requirement, moduleName, _("DICOM export")):
                return False
        return True


#
# VoteMITest
#


class VoteMITest(ScriptedLoadableModuleTest):
    """Self-test: selection on a synthetic lesion, marks in the scene, and a report from a loopback model server."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SelectMarksBlob()
        self.setUp()
        self.test_CancelEndsTheChild()
        self.setUp()
        self.test_DescribeLoopback()

    def _blobVolume(self):
        from VoteMISelfTestLib import blob_phantom

        phantom = blob_phantom()
        volumeNode = slicer.util.addVolumeFromArray(phantom.array, ijkToRAS=phantom.ijk_to_ras, name="VoteMIBlob")
        return volumeNode, phantom

    def test_SelectMarksBlob(self):
        """Through the child process, as the Select button: the best axial slice passes through a bright blob;
        marks, tables, plot and views follow the selection."""
        from VoteMILib import mrml
        from VoteMISelfTestLib import check_axial_pick_through_blob, check_scene

        self.delayDisplay("Selecting slices of a synthetic lesion")
        volumeNode, phantom = self._blobVolume()
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        logic = VoteMILogic()
        run = logic.run(volumeNode, topK=2, wait=True, timeoutSeconds=300)
        self.assertEqual(run.failure(), None)
        check_axial_pick_through_blob(run.result, phantom)
        check_scene(slicer.mrmlScene, volumeNode, run.result)
        again = logic.run(volumeNode, topK=2, wait=True, timeoutSeconds=300)  # a re-run replaces VoteMI's nodes
        check_scene(slicer.mrmlScene, volumeNode, again.result)
        self.assertEqual(len(mrml.voted_slices(slicer.mrmlScene, volumeNode)), 6)
        self.delayDisplay("Test passed")

    def test_CancelEndsTheChild(self):
        """Cancel, as the panel's button: the child ends at once, its files go, the earlier marks stay."""
        import time

        from VoteMILib import mrml

        self.delayDisplay("Cancelling a run")
        volumeNode, _phantom = self._blobVolume()
        logic = VoteMILogic()
        logic.run(volumeNode, planes=("axial",), topK=1, wait=True, timeoutSeconds=300)
        marked = mrml.voted_slices(slicer.mrmlScene, volumeNode)
        run = logic.run(volumeNode, topK=3)
        began = time.monotonic()
        while not any(event.get("event") == "progress" for event in run.poll()):  # the child is at work
            self.assertTrue(time.monotonic() - began < 120)
            time.sleep(0.02)
        began = time.monotonic()
        run.cancel()
        run.close()
        self.assertTrue(time.monotonic() - began < 2.0)
        self.assertTrue(run.child.exit_code is not None and run.failure() is None)
        self.assertTrue(run.folder is None)
        self.assertEqual(mrml.voted_slices(slicer.mrmlScene, volumeNode), marked)
        self.delayDisplay("Test passed")

    def test_DescribeLoopback(self):
        """Through the child process, as Select & Describe: a report streams from a local OpenAI-compatible
        server into the report node."""
        from VoteMILib import mrml
        from VoteMISelfTestLib import LoopbackServer

        self.delayDisplay("Describing with a loopback model server")
        volumeNode, _phantom = self._blobVolume()
        logic = VoteMILogic()
        with LoopbackServer() as server:
            options = logic.describeOptions(volumeNode, server=server.url, protocol="openai", model=server.model,
                                            timeoutSeconds=60)
            run = logic.run(volumeNode, describe=True, planes=("axial",), topK=2, describeOptions=options,
                            wait=True, timeoutSeconds=300)
            self.assertEqual(run.failure(), None)
            self.assertEqual(server.images_received(), 2)
        reportNode = logic.reportNode(volumeNode)
        self.assertTrue(reportNode is not None and reportNode.GetText().strip() != "")
        self.assertEqual(mrml.report_attribute(reportNode, "model"), server.model)
        self.assertEqual(mrml.report_attribute(reportNode, "complete"), "true")
        self.assertTrue(not logic.reportEdited(reportNode))
        reportNode.SetText(reportNode.GetText() + "\nReviewed.")
        self.assertTrue(logic.reportEdited(reportNode))
        self.delayDisplay("Test passed")
