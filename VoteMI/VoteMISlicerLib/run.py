"""One Select / Select & Describe run of the panel in a child process, and how the child is started.

Selection, describing and the in-process model run in ``python -m VoteMILib.cli ... --events``: Slicer's
GUI thread holds Python's GIL while it waits for events, so a Python thread would barely run. The
volumes go to the child as NRRD files in a run folder under Slicer's temporary path, with ASCII names; the
child starts in that folder and is given paths relative to it, and the nodes' names travel as data
(``--volume-name``): on Windows the child's ITK opens files through the narrow-character API, which cannot
spell a node called "Tête IRM" or a profile folder "Jürgen".
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time

import slicer
from slicer.i18n import tr as _
from VoteMILib.events import ERROR, FINDINGS, LOG, REPORT, SELECTION, TEXT
from VoteMILib.names import DEFAULT_BACKEND, DEFAULT_TIMEOUT_S, INPROCESS

#: Run folders (the input written for the child) older than this are left by a crash and removed (hours).
STALE_RUN_HOURS = 24


def describeRequest(volumeNode, server="", backend=DEFAULT_BACKEND, model="", language="",
                    timeoutSeconds=DEFAULT_TIMEOUT_S, prompt="", examples=""):
    """The :class:`~VoteMILib.child_run.DescribeRequest` of these settings; empty values take VoteMI's defaults.

    The window is the one ``volumeNode`` is displayed with, so the model sees what the radiologist sees.
    """
    from VoteMILib import mrml
    from VoteMILib.child_run import describe_request

    return describe_request(server=server, backend=backend, model=model, language=language,
                            timeout_s=timeoutSeconds, prompt=prompt, window=mrml.display_window(volumeNode),
                            examples_dir=examples)


def describeRequestFromParameterNode(parameterNode):
    """The describe settings of the panel (a ``VoteMIParameterNode``) for its input volume, in one step."""
    # The parameter node keeps the backend under its earlier name, "protocol": saved scenes hold that key.
    return describeRequest(parameterNode.inputVolume, server=parameterNode.serverUrl, backend=parameterNode.protocol,
                           model=parameterNode.model, language=parameterNode.language,
                           timeoutSeconds=parameterNode.timeoutSeconds, prompt=parameterNode.promptTemplate,
                           examples=parameterNode.examplesFolder)


def newRunFolder():
    """A new folder for one run's input, under Slicer's temporary path; removes the ones a crash left.

    The child reads patient voxels from here, so they stay where Slicer keeps its temporary files
    (which the user may have moved to an encrypted or private disk), never in the system's temp folder.
    """
    base = os.path.join(slicer.app.temporaryPath, "VoteMI")
    os.makedirs(base, exist_ok=True)
    oldest = time.time() - STALE_RUN_HOURS * 3600
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if name.startswith("run-") and os.path.isdir(path) and os.path.getmtime(path) < oldest:
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix="run-", dir=base)


def pythonExecutable():
    """The Python that runs the child processes: Slicer's own (PythonSlicer inside Slicer).

    ``sys.executable`` is empty when Slicer was started without its launcher; PythonSlicer on the PATH is
    the same interpreter then.
    """
    executable = sys.executable or shutil.which("PythonSlicer")
    if not executable:
        raise RuntimeError(_("VoteMI cannot find Slicer's Python to run in the background (sys.executable is "
                             "empty and PythonSlicer is not on the PATH). Start Slicer with its launcher "
                             "(the Slicer executable in the install folder)."))
    return executable


def startChild(arguments, apiKey="", cwd=None):
    """Start ``python -m VoteMILib.cli ARGUMENTS`` (with ``--events``) in folder ``cwd``; return its ChildProcess.

    The module folder goes first on PYTHONPATH, so the child runs this very engine; the API key
    reaches the child in its environment, never on its command line.
    """
    from VoteMILib.events import ChildProcess

    env = dict(os.environ)
    moduleFolder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds VoteMI.py and VoteMILib
    env["PYTHONPATH"] = os.pathsep.join([moduleFolder] + [p for p in [env.get("PYTHONPATH", "")] if p])
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", VOTEMI_API_KEY=apiKey)
    argv = [pythonExecutable(), "-m", "VoteMILib.cli", *arguments]
    logging.info("VoteMI: starting %s", " ".join(argv))
    return ChildProcess(argv, env=env, cwd=cwd)


class VoteMIRun:
    """One Select / Select & Describe run: its child process, its temporary files and its report.

    ``logic`` is the ``VoteMILogic`` that starts the child (:meth:`VoteMILogic.startChild`, where every child of
    the module starts), so a script or test that replaces it sees every run.
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

    def start(self, planes, slicesPerPlane, mode, describeRequest=None, apiKey="", guide=None):
        """Write the inputs and start the child.

        ``describeRequest`` is a :class:`~VoteMILib.child_run.DescribeRequest` (None selects only);
        ``guide`` as ``VoteMIWidget._guide`` returns it.
        """
        from VoteMILib import mrml
        from VoteMILib.child_run import ChildRun, child_arguments, volume_file_name, write_prompt_file

        self.startedAt = time.perf_counter()
        self.folder = newRunFolder()
        try:
            nodes = [self.volumeNode, *self.extraVolumeNodes]
            paths = [mrml.write_volume_file(node, os.path.join(self.folder, volume_file_name(number)))
                     for number, node in enumerate(nodes)]
            self.timings["write_s"] = time.perf_counter() - self.startedAt
            mask, labelNames, points = self._writeGuide(guide) if guide is not None else (None, (), ())
            if describeRequest is not None:
                describeRequest = write_prompt_file(describeRequest, self.folder)
                self.target = describeRequest.model if describeRequest.backend == INPROCESS else \
                    describeRequest.server
            request = ChildRun(
                image=paths[0], planes=tuple(planes), slices_per_plane=int(slicesPerPlane), extras=tuple(paths[1:]),
                mode=mode if guide is None or guide["thenUnsupervised"] else None,  # None: the guided slices only
                mask=mask, label_names=labelNames, points=points, describe=describeRequest,
                names=tuple(node.GetName() or "volume" for node in nodes))
            self.child = self.logic.startChild(child_arguments(request.relative_to(self.folder)), apiKey=apiKey,
                                               cwd=self.folder)
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

    def poll(self):
        """The child's new events; errors are kept for :meth:`failure`."""
        events = self.child.poll()
        for event in events:
            if event.get("event") == ERROR:
                self.error = event.get("message", "")
        return events

    @property
    def finished(self):
        return self.child.finished

    def handle(self, event):
        """Apply one event of the child to the scene: the selection's marks, the report as it streams."""
        kind = event.get("event")
        if kind == SELECTION:
            self.applySelection(event["selection"])
        elif kind == TEXT:
            self.report.append(event.get("text", ""))
        elif kind == FINDINGS:
            self.findings = event.get("findings")
        elif kind == REPORT:
            self.finishReport(event)
        elif kind == LOG:
            logging.info("VoteMI child: %s", event.get("text", ""))

    def wait(self, timeoutSeconds=None, pollSeconds=0.05):
        """Handle the child's events until it ends (Slicer's events processed meanwhile); return :meth:`failure`.

        After ``timeoutSeconds`` the run is cancelled and TimeoutError raised.
        """
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
                time.sleep(pollSeconds)
        finally:
            self.close()

    def applySelection(self, document):
        from VoteMILib.results import SelectionResult
        from VoteMISlicerLib.marks import applySelection

        if slicer.mrmlScene.GetNodeByID(self.volumeNode.GetID()) is not self.volumeNode:
            raise RuntimeError(_("the input volume was removed from the scene"))
        result = SelectionResult.from_dict(document)
        applySelection(self.volumeNode, result, switchLayout=self.switchLayout)
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
        if self.child is not None and not self.child.finished:
            self.child.kill()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
