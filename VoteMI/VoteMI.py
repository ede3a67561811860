"""VoteMI: pick the representative slices of a 3D MRI or CT (Vote-MI) and draft a report with a local VLM.

The heavy lifting lives in the ``VoteMILib`` package next to this file: selection (numpy/scipy),
the MRML layer (``VoteMILib.mrml``, no Qt) and the vision-language model clients
(``VoteMILib.vlm``, standard library HTTP). This file holds the Slicer module, its panel and the
self-test. Selection and HTTP run in a worker thread; the panel polls it with a QTimer.
"""

import logging
import os
import queue
import threading
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

#: Where the server URL, protocol and model are remembered across sessions.
SETTINGS_PREFIX = "VoteMI/"
#: Node reference role, on the parameter node, of the optional extra sequences.
EXTRA_VOLUME_REFERENCE = "VoteMIExtraVolume"
DEFAULT_SERVER_URL = "http://127.0.0.1:11434"
README_URL = "https://github.com/VoteMI/SlicerVoteMI#readme"
#: How often the panel looks at the worker thread (ms).
POLL_INTERVAL_MS = 100


#
# VoteMI
#


class VoteMI(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoteMI")
        self.parent.categories = [_("Quantification")]
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
    serverUrl, protocol, model - the vision-language model server (also remembered in the settings).
    promptTemplate - instruction for the model; empty for VoteMI's default prompt.
    language - report language.
    timeoutSeconds - longest time a report may take.

    The optional extra sequences are node references (role ``VoteMIExtraVolume``) of the same
    parameter node; the API key is never stored.
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
    language: str = "English"
    timeoutSeconds: Annotated[int, WithinRange(10, 3600)] = 300


#
# Background work
#


class _BackgroundTask:
    """Runs ``function(post, cancelled)`` in a daemon thread; the GUI drains ``events`` with a QTimer.

    ``post(kind, *values)`` queues an event for the GUI thread; ``cancelled()`` tells the worker to
    stop. The worker never touches Qt or MRML.
    """

    def __init__(self, function, name):
        self.events = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(function,), name=name, daemon=True)

    def start(self):
        self._thread.start()

    def cancel(self):
        self._cancel.set()

    @property
    def cancelled(self):
        return self._cancel.is_set()

    def _run(self, function):
        try:
            function(self.post, self._cancel.is_set)
        except BaseException as error:  # reported to the GUI thread, which shows it
            self.post("error", error)
        finally:
            self.post("finished")

    def post(self, kind, *values):
        self.events.put((kind, values))

    def drain(self):
        while True:
            try:
                yield self.events.get_nowait()
            except queue.Empty:
                return


#
# VoteMIWidget
#


class VoteMIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The VoteMI panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._taskVolumeID = None
        self._taskReportNode = None
        self._describing = False
        self._reportNode = None
        self._updatingReport = False
        self._plotView = None
        self._timer = None
        self._shownVolumeID = None
        self._rows = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoteMI.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VoteMILogic()

        from VoteMILib.vlm import NOTICE

        self.ui.noticeLabel.text = NOTICE
        self.ui.resultsTable.setColumnCount(5)
        self.ui.resultsTable.setHorizontalHeaderLabels(
            [_("Plane"), _("Rank"), _("Slice"), _("Position (mm)"), _("Score")])
        self.ui.resultsTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.resultsTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.ui.resultsTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.modelsComboBox.visible = False
        self._setBusy(False)

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollTask)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        self.ui.selectDescribeButton.connect("clicked(bool)", lambda: self.onRun(describe=True))
        self.ui.selectButton.connect("clicked(bool)", lambda: self.onRun(describe=False))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.ui.modelsComboBox.connect("activated(int)", self.onModelChosen)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onResultClicked)
        self.ui.copyReportButton.connect("clicked(bool)", self.onCopyReport)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.reportTextEdit.connect("textChanged()", self.onReportEdited)
        self.ui.extraVolumesSelector.connect("checkedNodesChanged()", self.onExtraVolumesChanged)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancel()
        self.removeObservers()
        self._observeReport(None)
        self._connectPlotView(False)
        if self._timer is not None:
            self._timer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._connectPlotView(True)

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self._observeReport(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            self._refreshResults()
            self._connectPlotView(True)

    # ----------------------------------------------------------------------------------------
    # Parameter node

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        raw = parameterNode.parameterNode
        if raw.GetAttribute("VoteMI.SettingsApplied") != "true":
            # A new scene: start from what the user used last time.
            settings = qt.QSettings()
            parameterNode.serverUrl = str(settings.value(SETTINGS_PREFIX + "ServerURL", DEFAULT_SERVER_URL))
            protocol = str(settings.value(SETTINGS_PREFIX + "Protocol", "openai"))
            if protocol in ("openai", "ollama", "inprocess"):
                parameterNode.protocol = protocol
            parameterNode.model = str(settings.value(SETTINGS_PREFIX + "Model", ""))
            raw.SetAttribute("VoteMI.SettingsApplied", "true")
        if not parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                parameterNode.inputVolume = firstVolume
        self.setParameterNode(parameterNode)

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
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        volumeID = volumeNode.GetID() if volumeNode else None
        if volumeID != self._shownVolumeID:
            self._shownVolumeID = volumeID
            self.onInputChanged()

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

    def _planes(self):
        node = self._parameterNode
        return tuple(plane for plane, wanted in (("axial", node.axial), ("coronal", node.coronal),
                                                 ("sagittal", node.sagittal)) if wanted)

    def _updateButtons(self, caller=None, event=None) -> None:
        node = self._parameterNode
        busy = self._task is not None
        ready = bool(node and node.inputVolume and self._planes())
        self.ui.selectDescribeButton.enabled = ready and not busy
        self.ui.selectButton.enabled = ready and not busy
        self.ui.testConnectionButton.enabled = not busy
        if not node or not node.inputVolume:
            tip = _("Select an input volume.")
        elif not self._planes():
            tip = _("Select at least one plane.")
        else:
            tip = _("Select the representative slices, mark them, and draft a report with the model.")
        self.ui.selectDescribeButton.toolTip = tip

    def _rememberServerSettings(self):
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "ServerURL", self._parameterNode.serverUrl)
        settings.setValue(SETTINGS_PREFIX + "Protocol", self._parameterNode.protocol)
        settings.setValue(SETTINGS_PREFIX + "Model", self._parameterNode.model)

    def _describeSettings(self):
        from VoteMILib.vlm import DescribeSettings

        node = self._parameterNode
        return DescribeSettings(
            server_url=node.serverUrl.strip() or DEFAULT_SERVER_URL, protocol=node.protocol,
            model=node.model.strip(), api_key=self.ui.apiKeyLineEdit.text.strip(),
            prompt_template=node.promptTemplate.strip() or None, language=node.language.strip() or "English",
            window=self.logic.displayWindow(node.inputVolume) if node.inputVolume else None,
            timeout_s=float(node.timeoutSeconds))

    # ----------------------------------------------------------------------------------------
    # Running

    def onRun(self, describe: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("VoteMI could not start."), waitCursor=True):
            self._start(describe)

    def _start(self, describe):
        if self._task is not None:
            return
        node = self._parameterNode
        volumeNode = node.inputVolume
        if volumeNode is None:
            raise ValueError(_("Select an input volume."))
        planes = self._planes()
        if not planes:
            raise ValueError(_("Select at least one plane."))
        reportNode = self.logic.reportNode(volumeNode)
        if describe and self.logic.reportEdited(reportNode):
            if not slicer.util.confirmYesNoDisplay(
                    _("The report of {name} was edited. Replace it with a new draft?").format(
                        name=volumeNode.GetName()),
                    windowTitle="VoteMI"):
                return
        if describe:
            self._rememberServerSettings()
            if node.protocol == "inprocess" and not self.logic.ensureInProcessDependencies():
                return
            settings = self._describeSettings()
        # Copies of the voxels: the worker never touches MRML.
        volume = self.logic.volumeFromNode(volumeNode)
        extras = [self.logic.volumeFromNode(extra) for extra in self._extraVolumes()]
        topK, mode = int(node.slicesPerPlane), node.selectionMode
        waiting = _("Waiting for the model at {url}").format(url=settings.server_url) if describe else ""

        def work(post, cancelled):
            from VoteMILib.selection import select_slices

            result = select_slices(volume, planes=planes, top_k=topK, mode=mode, extra_volumes=extras,
                                   progress=lambda fraction, message: post("progress", 0.5 * fraction if describe
                                                                            else fraction, message),
                                   cancel=cancelled)
            post("selected", result)
            if not describe:
                return
            from VoteMILib.vlm import describe as describeSlices

            post("progress", 0.55, waiting)
            report = describeSlices(volume, result, settings, extra_volumes=extras,
                                    on_text=lambda text: post("text", text), cancel=cancelled)
            post("report", report)

        self._taskVolumeID = volumeNode.GetID()
        self._describing = describe
        self._task = _BackgroundTask(work, "VoteMI selection")
        self._setBusy(True, _("Selecting slices..."))
        self._task.start()
        self._timer.start()

    def _pollTask(self) -> None:
        task = self._task
        self._timer.stop()  # no re-entry while a message box is open
        if task is None:
            return
        for kind, values in task.drain():
            if task is not self._task:
                return  # cancelled or finished meanwhile
            try:
                self._handleEvent(kind, values)
            except Exception as error:
                logging.exception("VoteMI: handling %s failed", kind)
                self._finishTask()
                slicer.util.errorDisplay(_("VoteMI failed: {reason}").format(reason=error), windowTitle="VoteMI")
                return
        if task is self._task:
            self._timer.start()

    def _handleEvent(self, kind, values):
        volumeNode = slicer.mrmlScene.GetNodeByID(self._taskVolumeID) if self._taskVolumeID else None
        if kind == "progress":
            fraction, message = values
            self.ui.progressBar.value = int(round(100 * fraction))
            if message:
                self.ui.statusLabel.text = message
        elif kind == "selected":
            result, = values
            if volumeNode is None:
                raise RuntimeError(_("the input volume was removed from the scene"))
            self.logic.applySelection(volumeNode, result)
            self._refreshResults()
            self._connectPlotView(True)
            if self._describing:
                self._taskReportNode = self.logic.beginReport(volumeNode)
                if self._parameterNode and self._parameterNode.inputVolume is volumeNode:
                    self._observeReport(self._taskReportNode)
                self.ui.statusLabel.text = _("Slices selected; waiting for the model...")
        elif kind == "text":
            if self._taskReportNode is not None:
                self.logic.appendReport(self._taskReportNode, values[0])
                self.ui.progressBar.value = max(self.ui.progressBar.value, 60)
        elif kind == "report":
            report, = values
            if self._taskReportNode is not None:
                self.logic.finishReport(self._taskReportNode, report)
            self._showReportInfo()
            if not report.complete:
                slicer.util.warningDisplay(
                    _("The report is incomplete: {reason}").format(reason=report.incomplete_reason),
                    windowTitle="VoteMI")
        elif kind == "error":
            error, = values
            reportNode = self._taskReportNode
            self._finishTask()
            self._showError(error, reportNode)
        elif kind == "finished":
            self._finishTask(_("Done."))

    def _showError(self, error, reportNode=None):
        from VoteMILib.selection import Cancelled
        from VoteMILib.vlm import VLMCancelled, VLMError
        from VoteMILib.volumes import VolumeError

        if isinstance(error, (Cancelled, VLMCancelled)):
            partial = getattr(error, "report", None)
            if partial is not None and reportNode is not None:
                self.logic.finishReport(reportNode, partial)
            self.ui.statusLabel.text = _("Cancelled.")
            return
        if isinstance(error, VLMError):
            title = _("The vision-language model did not answer")
        elif isinstance(error, (VolumeError, ValueError)):
            title = _("VoteMI cannot use this input")
        else:
            title = _("VoteMI failed")
        logging.error("VoteMI: %s: %s", title, error, exc_info=(type(error), error, error.__traceback__))
        self.ui.statusLabel.text = f"{title}: {error}"
        slicer.util.errorDisplay(f"{title}:\n{error}", windowTitle="VoteMI")

    def _finishTask(self, message=None):
        self._task = None
        self._taskReportNode = None
        self._timer.stop()
        self._setBusy(False, message)

    def onCancel(self) -> None:
        """Stop at once: the worker is told to stop and its later output is ignored."""
        if self._task is None:
            return
        self._task.cancel()
        reportNode = self._taskReportNode if self._describing else None
        self._finishTask(_("Cancelled."))
        if reportNode is not None:
            self.logic.markReportCancelled(reportNode)
            self._showReportInfo()
        logging.info("VoteMI: cancelled; the worker thread stops at its next check and its output is discarded")

    def _setBusy(self, busy, message=None):
        self.ui.progressBar.visible = busy
        self.ui.cancelButton.visible = busy
        self.ui.cancelButton.enabled = busy
        if busy:
            self.ui.progressBar.value = 0
        if message is not None:
            self.ui.statusLabel.text = message
        self._updateButtons()

    # ----------------------------------------------------------------------------------------
    # Test connection

    def onTestConnection(self) -> None:
        if self._task is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot test the connection."), waitCursor=True):
            self._rememberServerSettings()
            settings = self._describeSettings()

            def work(post, cancelled):
                from VoteMILib.vlm import list_models

                post("models", list_models(settings))

            self._task = _BackgroundTask(work, "VoteMI test connection")
            self._taskVolumeID = None
            self._describing = False
            self._setBusy(True, _("Connecting to {url}...").format(url=settings.server_url))
            self.ui.progressBar.maximum = 0  # busy indicator
            self._task.start()
            self._connectionTimer = qt.QTimer()
            self._connectionTimer.setInterval(POLL_INTERVAL_MS)
            self._connectionTimer.timeout.connect(self._pollConnection)
            self._connectionTimer.start()

    def _pollConnection(self):
        task = self._task
        self._connectionTimer.stop()  # no re-entry while a message box is open
        if task is None:  # cancelled
            self.ui.progressBar.maximum = 100
            return
        for kind, values in task.drain():
            if kind == "models":
                models, = values
                self.ui.modelsComboBox.clear()
                for model in models:
                    self.ui.modelsComboBox.addItem(model)
                self.ui.modelsComboBox.visible = bool(models)
                if len(models) == 1 and not self._parameterNode.model:
                    self._parameterNode.model = models[0]
                message = (_("Connected; the server offers {count} model(s).").format(count=len(models)) if models
                           else _("Connected, but the server offers no models."))
                self.ui.statusLabel.text = message
            elif kind == "error":
                self._showError(values[0])
            elif kind == "finished":
                self.ui.progressBar.maximum = 100
                self._task = None
                self._setBusy(False)
                return
        if task is self._task:
            self._connectionTimer.start()

    def onModelChosen(self, index) -> None:
        if index >= 0 and self._parameterNode:
            self._parameterNode.model = self.ui.modelsComboBox.itemText(index)

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

    def onReportEdited(self) -> None:
        """Keep the user's edits in the report node (saved with the scene)."""
        if self._updatingReport:
            return
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if self._reportNode is None:
            if volumeNode is None or not self.ui.reportTextEdit.toPlainText():
                return
            self._observeReport(self.logic.reportNode(volumeNode, create=True))
        text = self.ui.reportTextEdit.toPlainText()
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

    def onCopyReport(self) -> None:
        qt.QApplication.clipboard().setText(self.logic.reportExport(self._reportNode, "text"))
        self.ui.statusLabel.text = _("Report copied to the clipboard (with the notice).")

    def onSaveReport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Saving the report failed."), waitCursor=True):
            volumeNode = self._parameterNode.inputVolume
            name = (volumeNode.GetName() if volumeNode else "report").replace(os.sep, "_")
            path = qt.QFileDialog.getSaveFileName(
                slicer.util.mainWindow(), _("Save report"), f"{name}_VoteMI_report.md",
                _("Markdown (*.md);;Text (*.txt);;JSON (*.json)"))
            if not path:
                return
            fmt = {".md": "markdown", ".json": "json"}.get(os.path.splitext(path)[1].lower(), "text")
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(self.logic.reportExport(self._reportNode, fmt))
            self.ui.statusLabel.text = _("Report saved to {path}").format(path=path)


#
# VoteMILogic
#


class VoteMILogic(ScriptedLoadableModuleLogic):
    """Selection, scene updates and reports; usable without the panel (scripts, tests).

    The methods that take nodes must run on the GUI thread; :meth:`select` and :meth:`describe`
    are synchronous versions of what the panel runs in a worker thread.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VoteMIParameterNode(super().getParameterNode())

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
        """Select slices of ``volumeNode`` and (if ``apply``) mark them in the scene; return the SelectionResult."""
        from VoteMILib.selection import select_slices

        volume = self.volumeFromNode(volumeNode)
        extras = [self.volumeFromNode(node) for node in extraVolumeNodes]
        result = select_slices(volume, planes=planes, top_k=topK, mode=mode, extra_volumes=extras,
                               progress=progress, cancel=cancel)
        if apply:
            self.applySelection(volumeNode, result)
        return result

    def applySelection(self, volumeNode, result, jump=True, showChart=True):
        """Marks, score tables, plot and view jumps for a selection (replacing VoteMI's earlier ones)."""
        from VoteMILib import mrml

        nodes = mrml.apply_selection(slicer.mrmlScene, volumeNode, result, jump=jump)
        if showChart and hasattr(slicer.modules, "plots") and slicer.app.layoutManager() is not None:
            slicer.modules.plots.logic().ShowChartInLayout(nodes.chart)
            # Showing the chart may switch the layout; the views of the new layout jump too.
            mrml.jump_to_best_slices(slicer.mrmlScene, result)
        return nodes

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
        """Ask the model for a report of ``result``; stream it into the report node if ``write``."""
        from VoteMILib.vlm import describe

        volume = self.volumeFromNode(volumeNode)
        extras = [self.volumeFromNode(node) for node in extraVolumeNodes]
        reportNode = self.beginReport(volumeNode) if write else None

        def received(text):
            if reportNode is not None:
                self.appendReport(reportNode, text)
            if onText is not None:
                onText(text)

        report = describe(volume, result, settings, extra_volumes=extras, on_text=received, cancel=cancel)
        if reportNode is not None:
            self.finishReport(reportNode, report)
        return report

    def reportNode(self, volumeNode, create=False):
        from VoteMILib import mrml

        return mrml.report_node(slicer.mrmlScene, volumeNode, create=create) if volumeNode else None

    @staticmethod
    def reportEdited(reportNode):
        from VoteMILib import mrml

        return mrml.report_edited(reportNode)

    def beginReport(self, volumeNode):
        from VoteMILib import mrml

        return mrml.begin_report(slicer.mrmlScene, volumeNode)

    @staticmethod
    def appendReport(reportNode, text):
        from VoteMILib import mrml

        mrml.append_report(reportNode, text)

    @staticmethod
    def finishReport(reportNode, report):
        from VoteMILib import mrml

        mrml.finish_report(reportNode, report)

    @staticmethod
    def markReportCancelled(reportNode):
        from VoteMILib import mrml

        reportNode.SetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "complete", "false")
        reportNode.SetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "incomplete_reason", "cancelled by the user")

    @staticmethod
    def reportSummary(reportNode):
        """One line on where the report came from, for the panel."""
        from VoteMILib import mrml

        def attribute(key):
            return reportNode.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + key) or ""

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
        """The report as text, Markdown or JSON, with the notice and the source, as the user left it."""
        from VoteMILib import mrml
        from VoteMILib.vlm import Report

        if reportNode is None:
            return ""
        meta = mrml.report_metadata(reportNode)
        complete = reportNode.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "complete") != "false"
        if not complete:
            meta.setdefault("incomplete_reason",
                            reportNode.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "incomplete_reason") or "")
        if mrml.report_edited(reportNode):
            meta["edited_by_user"] = True
        return Report(reportNode.GetText() or "", meta, complete=complete).export(fmt)

    # Optional in-process model

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
            requirement = "transformers>=5.0"
            try:
                import slicer.pydeps as pydeps
            except ImportError:
                pydeps = None
            if pydeps is not None and hasattr(pydeps, "pip_ensure"):
                from packaging.requirements import Requirement

                pydeps.pip_ensure([Requirement(requirement)], requester="VoteMI")
            else:
                if slicer.app.testingEnabled():
                    return False
                if not slicer.util.confirmOkCancelDisplay(
                        _("The in-process model needs the Python package '{package}'. Install it now?").format(
                            package=requirement), windowTitle="VoteMI"):
                    return False
                with slicer.util.WaitCursor():
                    slicer.util.pip_install(requirement)
            if importlib.util.find_spec("transformers") is None:
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
        self.test_DescribeLoopback()

    def _blobVolume(self):
        from VoteMILib.mrml_selftest import blob_phantom

        phantom = blob_phantom()
        volumeNode = slicer.util.addVolumeFromArray(phantom.array, ijkToRAS=phantom.ijk_to_ras, name="VoteMIBlob")
        return volumeNode, phantom

    def test_SelectMarksBlob(self):
        """The best axial slice passes through a bright blob; marks, tables, plot and views follow the selection."""
        from VoteMILib import mrml
        from VoteMILib.mrml_selftest import check_axial_pick_through_blob, check_scene

        self.delayDisplay("Selecting slices of a synthetic lesion")
        volumeNode, phantom = self._blobVolume()
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        logic = VoteMILogic()
        result = logic.select(volumeNode, topK=2)
        check_axial_pick_through_blob(result, phantom)
        check_scene(slicer.mrmlScene, volumeNode, result)
        logic.select(volumeNode, topK=2)  # a re-run replaces VoteMI's nodes
        check_scene(slicer.mrmlScene, volumeNode, result)
        self.assertEqual(len(mrml.voted_slices(slicer.mrmlScene, volumeNode)), 6)
        self.delayDisplay("Test passed")

    def test_DescribeLoopback(self):
        """A report streams from a local OpenAI-compatible server into the report node."""
        from VoteMILib.mrml_selftest import LoopbackServer, check_report_node
        from VoteMILib.vlm import DescribeSettings

        self.delayDisplay("Describing with a loopback model server")
        volumeNode, _phantom = self._blobVolume()
        logic = VoteMILogic()
        result = logic.select(volumeNode, planes=("axial",), topK=2)
        streamed = []
        with LoopbackServer() as server:
            settings = DescribeSettings(server_url=server.url, protocol="openai", model=server.model,
                                        window=logic.displayWindow(volumeNode), timeout_s=30.0, retries=0)
            report = logic.describe(volumeNode, result, settings, onText=streamed.append)
            self.assertEqual(server.images_received(), 2)
        check_report_node(logic.reportNode(volumeNode), report, streamed)
        reportNode = logic.reportNode(volumeNode)
        reportNode.SetText(reportNode.GetText() + "\nReviewed.")
        self.assertTrue(logic.reportEdited(reportNode))
        self.delayDisplay("Test passed")
