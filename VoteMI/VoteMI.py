"""VoteMI: pick the representative slices of a 3D MRI or CT (Vote-MI) and draft a report with a local VLM.

The heavy lifting lives in the ``VoteMILib`` package next to this file: selection (numpy/scipy),
the MRML layer (``VoteMILib.mrml``, no Qt; the only code that knows the report node's format) and the
vision-language model clients (``VoteMILib.vlm``, standard library HTTP). What needs the Slicer
application besides the panel is in ``VoteMISlicerLib`` (the child process run, marks and views,
server messages, report export, package installs, the panel's helpers). This file holds the Slicer module, its
panel, ``VoteMILogic`` (the work and the scene adapters scripts need) and the self-test. Selection, describing and
the in-process model run in a child process (``VoteMILib.cli ... --events``): Slicer's GUI thread holds Python's
GIL while it waits for events, so a Python thread would barely run. The panel reads the child's events from a QTimer.

This file must stay readable by Python 3.9 (Slicer 5.8), so that older Slicers show why the
module cannot run instead of failing to load it.
"""

import logging
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
from VoteMILib.names import (BACKENDS, DEFAULT_BACKEND, DEFAULT_LANGUAGE, DEFAULT_SERVER_URL, DEFAULT_TIMEOUT_S,
                             INPROCESS, MODES)

#: Where panel settings are remembered across sessions.
SETTINGS_PREFIX = "VoteMI/"
#: Node reference role, on the parameter node, of the optional extra sequences.
EXTRA_VOLUME_REFERENCE = "VoteMIExtraVolume"
#: Parameter node attribute: the guide segmentation's segment IDs the user unchecked, one per line.
SKIPPED_SEGMENTS_ATTRIBUTE = "VoteMI.GuideSkippedSegments"
README_URL = "https://github.com/VoteMI/SlicerVoteMI#readme"
#: How often the panel reads the child process (ms).
POLL_INTERVAL_MS = 50
#: Volumes of Slicer's Sample Data module offered by *Load sample*, as that module names them.
SAMPLE_VOLUMES = ("MRBrainTumor1", "CTChest")
#: Oldest Slicer VoteMI runs in (Python 3.12; the engine needs Python 3.10).
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)


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
            'See the <a href="{url}">documentation</a> for setup and usage.').format(url=README_URL)
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
    selectionMode: Annotated[str, Choice(list(MODES))] = MODES[0]
    serverUrl: str = DEFAULT_SERVER_URL
    protocol: Annotated[str, Choice(list(BACKENDS))] = DEFAULT_BACKEND  # the backend; saved scenes keep this name
    model: str = ""
    promptTemplate: str = ""
    language: str = DEFAULT_LANGUAGE
    timeoutSeconds: Annotated[int, WithinRange(10, 3600)] = DEFAULT_TIMEOUT_S
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
        self._runLog = None
        self._serverStatus = None  # VoteMISlicerLib.serverstatus.ServerStatus, once set up
        self._review = None  # VoteMISlicerLib.review.ReportReview, once set up
        self._votedSlices = None  # VoteMISlicerLib.votedslices.VotedSlicesView, once set up
        self._guideSegments = None  # VoteMISlicerLib.guide.GuideSegments, once set up
        self._timer = None
        self._shownVolumeID = None

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
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VoteMILogic()

        from VoteMILib.vlm import NOTICE
        from VoteMISlicerLib.guide import GuideSegments
        from VoteMISlicerLib.review import ReportReview
        from VoteMISlicerLib.serverstatus import ServerStatus
        from VoteMISlicerLib.votedslices import VotedSlicesView

        self.ui.noticeLabel.text = NOTICE
        self._votedSlices = VotedSlicesView(self.logic, self.ui.resultsTable)
        self._votedSlices.setUp()
        self._guideSegments = GuideSegments(self.ui.guideSegmentsList, lambda: self._parameterNode,
                                            SKIPPED_SEGMENTS_ATTRIBUTE)
        self.ui.modelsComboBox.visible = False
        self._fillSampleChoices()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollChildren)
        self._serverStatus = ServerStatus(self.logic, self.ui, lambda: self._parameterNode, self._timer.start)
        self._review = ReportReview(self.logic, self.ui, self._inputVolume, self._extraVolumes,
                                    lambda: self._run is not None)
        self._review.setUp()
        self._setBusy(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.selectDescribeButton.connect("clicked(bool)", lambda: self.onRun(describe=True))
        self.ui.selectButton.connect("clicked(bool)", lambda: self.onRun(describe=False))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.testConnectionButton.connect("clicked(bool)", lambda: self.checkServer(explicit=True))
        self.ui.clearResultsButton.connect("clicked(bool)", self.onClearResults)
        self.ui.modelsComboBox.connect("activated(int)", self._serverStatus.onModelChosen)
        self.ui.sampleComboBox.connect("activated(int)", self.onLoadSample)
        self.ui.extraVolumesSelector.connect("checkedNodesChanged()", self.onExtraVolumesChanged)
        self.ui.guideSegmentsList.connect("itemChanged(QListWidgetItem*)", self._guideSegments.onChanged)
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
        self._serverStatus.close()
        self._review.close()
        self.removeObservers()
        self._votedSlices.connectPlotView(False)
        self._timer.stop()

    def enter(self) -> None:
        if self.logic is None:
            return
        self._guideSegments.shown = None  # segments may have been added or renamed in the Segment Editor meanwhile
        self.initializeParameterNode()
        self._votedSlices.connectPlotView(True)

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onReload(self) -> None:
        """Reload the packages beside the module too: Slicer's reload re-reads VoteMI.py only."""
        self.onCancel()
        packages = ("VoteMILib", "VoteMISlicerLib", "VoteMISelfTestLib")
        for name in [name for name in sys.modules if name.split(".")[0] in packages]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self._review.observe(None)
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
            self._votedSlices.refresh(self._inputVolume())
            self._votedSlices.connectPlotView(True)

    def _fillSampleChoices(self):
        box = self.ui.sampleComboBox
        box.addItem(_("Load sample..."))
        what = {"MRBrainTumor1": _("brain MRI with a tumour"), "CTChest": _("chest CT")}
        for name in SAMPLE_VOLUMES:
            box.addItem(_("{name} ({what})").format(name=name, what=what[name]))

    def onLoadSample(self, index) -> None:
        """Load the chosen Sample Data volume and make it the input; the box goes back to "Load sample..."."""
        self.ui.sampleComboBox.currentIndex = 0
        if not 1 <= index <= len(SAMPLE_VOLUMES) or self._parameterNode is None:
            return
        name = SAMPLE_VOLUMES[index - 1]
        with slicer.util.tryWithErrorDisplay(_("The sample {name} could not be loaded.").format(name=name),
                                             waitCursor=True):
            self._parameterNode.inputVolume = self.logic.loadSample(name)
            self.ui.statusLabel.text = _("Sample {name} loaded: it is the input volume.").format(name=name)

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
        self._guideSegments.show()
        volumeNode = self._parameterNode.inputVolume
        volumeID = volumeNode.GetID() if volumeNode else None
        if volumeID != self._shownVolumeID:
            self._shownVolumeID = volumeID
            self.onInputChanged()

    def _showTextParameters(self):
        """Show the node's text parameters; a widget is only written when its text differs (cursor kept)."""
        from VoteMILib.server_urls import storable_server_url

        for widgetName, parameter in self.TEXT_PARAMETERS:
            widget = getattr(self.ui, widgetName)
            value = getattr(self._parameterNode, parameter)
            isTextEdit = widgetName.endswith("TextEdit")
            shown = widget.toPlainText() if isTextEdit else widget.text
            if shown == value or (parameter == "serverUrl" and storable_server_url(shown) == value):
                continue  # a URL with a password stays in the box for the user to correct; the node has it without
            wasBlocked = widget.blockSignals(True)
            if isTextEdit:
                widget.setPlainText(value)
            else:
                widget.text = value
            widget.blockSignals(wasBlocked)

    def _onTextEdited(self, widget, parameter) -> None:
        from VoteMILib.server_urls import storable_server_url

        if self._parameterNode is None:
            return
        text = widget.toPlainText() if hasattr(widget, "toPlainText") else widget.text
        # The node is saved with the scene and remembered in the settings: a password never goes there.
        value = storable_server_url(text) if parameter == "serverUrl" else text
        if getattr(self._parameterNode, parameter) != value:
            setattr(self._parameterNode, parameter, value)
        if parameter == "serverUrl":
            self._serverStatus.urlEdited(text)

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

    def _inputVolume(self):
        return self._parameterNode.inputVolume if self._parameterNode else None

    def _extraVolumes(self):
        raw = self._parameterNode.parameterNode
        inputVolume = self._parameterNode.inputVolume
        nodes = [raw.GetNthNodeReference(EXTRA_VOLUME_REFERENCE, i)
                 for i in range(raw.GetNumberOfNodeReferences(EXTRA_VOLUME_REFERENCE))]
        return [node for node in nodes if node is not None and node is not inputVolume]

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
        from VoteMISlicerLib.packages import InstallDeclined

        with slicer.util.tryWithErrorDisplay(_("VoteMI could not start.")):
            try:
                self._start(describe)
            except InstallDeclined as declined:  # the user's choice: a status line, no error box
                self.ui.statusLabel.text = str(declined)

    def _start(self, describe):
        from VoteMISlicerLib.run import describeRequestFromParameterNode

        if self._run is not None:
            return
        node = self._parameterNode
        volumeNode = node.inputVolume
        if volumeNode is None:
            raise ValueError(_("Select an input volume."))
        planes = self._planes()
        if not planes:
            raise ValueError(_("Select at least one plane."))
        if describe and node.protocol != INPROCESS:
            problem = self._serverStatus.urlProblem()
            if problem:
                raise ValueError(problem)
        request = describeRequestFromParameterNode(node) if describe else None
        if describe and not self._confirmDescribe(volumeNode, request):
            return
        guide = self._guideSegments.guide()
        with slicer.util.WaitCursor():
            run = self.logic.run(volumeNode, describe, planes=planes, slicesPerPlane=int(node.slicesPerPlane),
                                 mode=node.selectionMode, extraVolumeNodes=self._extraVolumes(),
                                 describeOptions=request, apiKey=self.ui.apiKeyLineEdit.text.strip(), guide=guide,
                                 switchLayout=node.switchLayoutForChart)
        self._run = run
        self._startLog(run, describe)
        self.ui.reportTextEdit.readOnly = describe
        self._setBusy(True, _("Selecting slices guided by {what}...").format(what=run.guidedBy) if run.guidedBy
                      else _("Selecting slices..."))
        self._timer.start()

    def _startLog(self, run, describe):
        """Empty the Log section for a new run and say what runs."""
        from VoteMISlicerLib.runlog import RunLog

        self._runLog = RunLog()
        self.ui.logTextEdit.clear()
        what = _("Select & Describe of {name}") if describe else _("Select only of {name}")
        self._appendLog(self._runLog.started(what.format(name=run.volumeNode.GetName()),
                                             run.timings.get("write_s")))

    def _appendLog(self, lines):
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)

    def _confirmDescribe(self, volumeNode, request) -> bool:
        """Ask before replacing an edited report, before images leave this machine, and for missing packages."""
        from VoteMILib import mrml
        from VoteMISlicerLib.packages import ensureInProcessDependencies
        from VoteMISlicerLib.servers import remoteServerWarning

        if self.logic.reportEdited(self.logic.reportNode(volumeNode)) and not slicer.util.confirmYesNoDisplay(
                _("The report of {name} was edited. Replace it with a new draft?").format(name=volumeNode.GetName()),
                windowTitle="VoteMI"):
            return False
        reportNode = self.logic.reportNode(volumeNode)
        findings = mrml.report_findings(reportNode) if reportNode is not None else None
        if findings is not None and findings.has_review and not slicer.util.confirmYesNoDisplay(
                _("The findings of {name} were reviewed ({review}). A new draft replaces them and their review. "
                  "Continue?").format(name=volumeNode.GetName(), review=findings.summary_line()),
                windowTitle="VoteMI"):
            return False
        if request.backend != INPROCESS:
            warning = remoteServerWarning(request.server)
            if warning and not slicer.util.confirmOkCancelDisplay(warning, windowTitle="VoteMI"):
                return False
        return request.backend != INPROCESS or ensureInProcessDependencies()

    def _pollChildren(self) -> None:
        self._timer.stop()  # no re-entry while a message box is open
        self._serverStatus.poll()
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
        if self._run is not None or self._serverStatus.check is not None:
            self._timer.start()

    def _handleEvent(self, event):
        kind = event.get("event")
        run = self._run
        started = run.report.started
        self._appendLog(self._runLog.lines(event))
        run.handle(event)
        if kind == "progress":
            fraction = float(event.get("fraction", 0.0)) * (0.5 if run.describe else 1.0)
            self.ui.progressBar.value = int(round(100 * fraction))
            if event.get("message"):
                self.ui.statusLabel.text = event["message"]
        elif kind == "selection":
            self._votedSlices.refresh(self._inputVolume())
            self._votedSlices.connectPlotView(True)
            if run.describe:
                self.ui.progressBar.value = 55
                self.ui.statusLabel.text = _("Slices selected; waiting for the model at {target}...").format(
                    target=run.target)
        elif kind == "text":
            if not started and self._parameterNode and self._parameterNode.inputVolume is run.volumeNode:
                self._review.observe(run.report.node)
            self.ui.progressBar.value = max(self.ui.progressBar.value, 60)
        elif kind == "report":
            self._review.observe(self._review.reportNode)
            if not event.get("complete", True):
                slicer.util.warningDisplay(
                    _("The report is incomplete: {reason}").format(
                        reason=event.get("report_meta", {}).get("incomplete_reason", "")), windowTitle="VoteMI")

    def _runEnded(self, run):
        self._appendLog(self._runLog.childOutput(run.child.stderr_text() if run.child is not None else ""))
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
        self.ui.statusLabel.text = _("{title}: {message}").format(title=title, message=message)
        # The child's own words (a traceback, a library's warning) under "Show Details...".
        slicer.util.errorDisplay(f"{title}:\n{message}", windowTitle="VoteMI", detailedText=details)

    def _finishRun(self, message=None):
        run, self._run = self._run, None
        if run is not None:
            run.close()
        self.ui.reportTextEdit.readOnly = False
        self._setBusy(False, message)
        self._review.showInfo()

    def onCancel(self) -> None:
        """Stop at once: the child process is killed; a report that had started is marked incomplete."""
        run = self._run
        if run is None:
            return
        run.cancel()
        self._appendLog(self._runLog.note(_("Cancelled: the child process was ended.")))
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
        self._review.updateReviewButtons()

    # ----------------------------------------------------------------------------------------
    # Server status (VoteMISlicerLib.serverstatus)

    @property
    def _statusCheck(self):
        """The server check under way as (child process, explicit), or None."""
        return self._serverStatus.check if self._serverStatus is not None else None

    def checkServer(self, explicit: bool) -> None:
        """Update the status line: is the server reachable, which models does it offer."""
        self._serverStatus.checkServer(explicit)

    # ----------------------------------------------------------------------------------------
    # Results (VoteMISlicerLib.votedslices) and the report (VoteMISlicerLib.review)

    def onInputChanged(self) -> None:
        """Show the voted slices and the report of the (new) input volume."""
        volumeNode = self._inputVolume()
        self._votedSlices.refresh(volumeNode)
        self._review.observe(self.logic.reportNode(volumeNode) if volumeNode else None)

    def onClearResults(self) -> None:
        """Remove VoteMI's marks, tables, plot and report of the input volume (asks if the report was edited)."""
        volumeNode = self._inputVolume()
        if volumeNode is None or self._run is not None:
            return
        if self.logic.reportEdited(self.logic.reportNode(volumeNode)) and not slicer.util.confirmYesNoDisplay(
                _("The report of {name} was edited. Remove it with the other VoteMI results?").format(
                    name=volumeNode.GetName()), windowTitle="VoteMI"):
            return
        self._review.observe(None)
        removed = self.logic.clearResults(volumeNode)
        self._votedSlices.refresh(volumeNode)
        self.ui.statusLabel.text = _("Removed {count} VoteMI node(s) of {name}.").format(
            count=removed, name=volumeNode.GetName())


#
# VoteMILogic
#


class VoteMILogic(ScriptedLoadableModuleLogic):
    """The module's work, usable without the panel (scripts, the self-test): a run in a child process and the
    scene adapters a script needs (marks, voted slices, the report node).

    As in Slicer's scripted-module template, the panel calls the rest (server status, review, export, installs)
    from ``VoteMISlicerLib`` directly. The methods that take nodes must run on the GUI thread; :meth:`run`
    starts the child process the panel's buttons start, :meth:`select` and :meth:`describe` are synchronous
    in-process versions for scripts. Every child of the module starts in :meth:`startChild`.
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

    # Volumes

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

    @staticmethod
    def loadSample(name):
        """Load the volume ``name`` of Slicer's Sample Data module (downloaded once, then cached) and return it."""
        import SampleData

        volumeNode = SampleData.SampleDataLogic().downloadSample(name)
        if volumeNode is None:
            raise ValueError(_("Slicer's Sample Data module did not load {name} (see the error log).").format(
                name=name))
        return volumeNode

    @staticmethod
    def volumeFromNode(volumeNode):
        from VoteMILib import mrml

        return mrml.volume_from_node(volumeNode)

    # Runs in a child process, as the panel's buttons

    def run(self, volumeNode, describe=False, planes=("axial", "coronal", "sagittal"), slicesPerPlane=3,
            mode="findings", extraVolumeNodes=(), describeOptions=None, apiKey="", guide=None, switchLayout=True,
            wait=False, timeoutSeconds=None):
        """Select (and describe) ``volumeNode`` in a child process, as the panel's buttons do; return the VoteMIRun.

        With ``wait`` the call returns when the child has ended, its selection marked and its report in the
        report node (``run.failure()`` says why not, None if it succeeded); otherwise the caller polls
        ``run.poll()``/``run.handle(event)`` (the panel does, from a timer) and may ``run.cancel()``.
        ``describeOptions``: the DescribeRequest :meth:`describeOptions` returns (its defaults if None).
        """
        from VoteMISlicerLib.run import VoteMIRun

        if describe and describeOptions is None:
            describeOptions = self.describeOptions(volumeNode)
        run = VoteMIRun(self, volumeNode, extraVolumeNodes, describe, switchLayout)
        run.start(planes, int(slicesPerPlane), mode, describeOptions if describe else None, apiKey=apiKey, guide=guide)
        if wait:
            run.wait(timeoutSeconds, pollSeconds=POLL_INTERVAL_MS / 1000.0)
        return run

    @staticmethod
    def describeOptions(volumeNode, server="", backend=DEFAULT_BACKEND, model="", language="",
                        timeoutSeconds=DEFAULT_TIMEOUT_S, prompt="", examples=""):
        """The :class:`~VoteMILib.child_run.DescribeRequest` :meth:`run` hands to the child; empty values take
        VoteMI's defaults, the window is the one ``volumeNode`` is displayed with."""
        from VoteMISlicerLib.run import describeRequest

        return describeRequest(volumeNode, server=server, backend=backend, model=model, language=language, timeoutSeconds=timeoutSeconds, prompt=prompt,
                               examples=examples)

    def startChild(self, arguments, apiKey="", cwd=None):
        """Start ``python -m VoteMILib.cli ARGUMENTS`` (with ``--events``) in folder ``cwd``; return its ChildProcess.

        Every child of the module starts here (runs and server checks); the API key goes in its environment.
        """
        from VoteMISlicerLib.run import startChild

        return startChild(arguments, apiKey=apiKey, cwd=cwd)

    # In this process, for scripts

    def select(self, volumeNode, planes=("axial", "coronal", "sagittal"), slicesPerPlane=3, mode="findings",
               extraVolumeNodes=(), apply=True, progress=None, cancel=None):
        """Select slices of ``volumeNode`` in this process and (if ``apply``) mark them; return the SelectionResult.

        For scripts that want the result object at once; the panel and the self-test use :meth:`run`
        (a child process, so Slicer's GUI stays responsive).
        """
        from VoteMILib.selection import select_slices

        volume = self.volumeFromNode(volumeNode)
        extras = [self.volumeFromNode(node) for node in extraVolumeNodes]
        result = select_slices(volume, planes=planes, top_k=int(slicesPerPlane), mode=mode, extra_volumes=extras,
                               progress=progress, cancel=cancel)
        if apply:
            self.applySelection(volumeNode, result)
        return result

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

    # Marks, plot and views

    @staticmethod
    def applySelection(volumeNode, result, jump=True, switchLayout=True):
        """Marks, score tables, plot and view jumps for a selection (replacing VoteMI's earlier ones)."""
        from VoteMISlicerLib.marks import applySelection

        return applySelection(volumeNode, result, jump=jump, switchLayout=switchLayout)

    @staticmethod
    def clearResults(volumeNode):
        """Remove every node VoteMI made for ``volumeNode``; return how many."""
        from VoteMILib import mrml

        return mrml.clear_results(slicer.mrmlScene, volumeNode)

    @staticmethod
    def votedSlices(volumeNode):
        from VoteMILib import mrml

        return mrml.voted_slices(slicer.mrmlScene, volumeNode)

    @staticmethod
    def jumpToSeriesPoint(seriesNode, row):
        """Jump to the slice of a clicked point of a VoteMI score series; False if not a VoteMI series."""
        from VoteMISlicerLib.marks import jumpToSeriesPoint

        return jumpToSeriesPoint(seriesNode, row)

    # Reports (the scene adapters the self-test and scripts use)

    @staticmethod
    def reportNode(volumeNode, create=False):
        from VoteMILib import mrml

        return mrml.report_node(slicer.mrmlScene, volumeNode, create=create) if volumeNode else None

    @staticmethod
    def reportEdited(reportNode):
        from VoteMILib import mrml

        return mrml.report_edited(reportNode)

    @staticmethod
    def reportText(reportNode):
        from VoteMILib import mrml

        return mrml.report_text(reportNode)

    @staticmethod
    def editReportText(reportNode, text):
        """Keep text the user typed in the report node; the report counts as edited."""
        from VoteMILib import mrml

        mrml.edit_report_text(reportNode, text)

    @staticmethod
    def reportSummary(reportNode):
        """One line on where the report came from, for the panel."""
        from VoteMISlicerLib.reports import reportSummary

        return reportSummary(reportNode)

    @staticmethod
    def reportExport(reportNode, fmt="text"):
        """The report as text, Markdown or JSON, with the notice, the source and the review, as the user left it."""
        from VoteMISlicerLib.reports import reportExport

        return reportExport(reportNode, fmt)


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
        run = logic.run(volumeNode, slicesPerPlane=2, wait=True, timeoutSeconds=300)
        self.assertEqual(run.failure(), None)
        check_axial_pick_through_blob(run.result, phantom)
        check_scene(slicer.mrmlScene, volumeNode, run.result)
        # A re-run replaces VoteMI's nodes.
        again = logic.run(volumeNode, slicesPerPlane=2, wait=True, timeoutSeconds=300)
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
        logic.run(volumeNode, planes=("axial",), slicesPerPlane=1, wait=True, timeoutSeconds=300)
        marked = mrml.voted_slices(slicer.mrmlScene, volumeNode)
        run = logic.run(volumeNode, slicesPerPlane=3)
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
            options = logic.describeOptions(volumeNode, server=server.url, backend="openai", model=server.model,
                                            timeoutSeconds=60)
            run = logic.run(volumeNode, describe=True, planes=("axial",), slicesPerPlane=2, describeOptions=options,
                            wait=True, timeoutSeconds=300)
            self.assertEqual(run.failure(), None)
            self.assertEqual(server.images_received(), 2)
        reportNode = logic.reportNode(volumeNode)
        status = mrml.report_status(reportNode)
        self.assertTrue(reportNode is not None and status.has_text)
        self.assertEqual(status.model, server.model)
        self.assertTrue(status.complete and not status.edited)
        logic.editReportText(reportNode, logic.reportText(reportNode) + "\nReviewed.")
        self.assertTrue(logic.reportEdited(reportNode))
        self.delayDisplay("Test passed")
