"""The panel's Log section: the child's events and the step timings as a run goes, cleared at each run start.

``RunLog`` is checked line by line on a clock the test moves; the panel's Log on real runs (Qt harness, real MRML,
real ``votemi`` child processes).
"""

from __future__ import annotations

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_run_log_times_each_step_and_lists_the_selection_and_the_report(panel):  # panel: Slicer's i18n
    from VoteMISlicerLib.runlog import RunLog

    clock = Clock()
    log = RunLog(clock)
    lines = log.started("Select & Describe of Brain", writeSeconds=0.06)
    clock.now += 0.5
    lines += log.lines({"event": "progress", "fraction": 0.1, "message": "Loading"})
    clock.now += 0.25
    lines += log.lines({"event": "progress", "fraction": 0.2, "message": "Loading"})  # the same step
    clock.now += 0.25
    lines += log.lines({"event": "progress", "fraction": 0.5, "message": "Voting"})
    clock.now += 1.0
    lines += log.lines({"event": "selection", "selection": {
        "planes": {"axial": {"selected": [{}, {}, {}]}, "coronal": {"selected": [{}]}},
        "timing_s": {"load": 0.5, "select": 1.25}}})
    lines += log.lines({"event": "log", "text": "a line that is not JSON"})
    clock.now += 2.0
    lines += log.lines({"event": "text", "text": "Findings"})
    lines += log.lines({"event": "text", "text": ": none"})  # streamed text is the report box's, said once
    clock.now += 3.0
    lines += log.lines({"event": "report", "complete": False,
                        "report_meta": {"model": "tiny-vlm", "duration_s": 5.0, "incomplete_reason": "timeout"}})
    lines += log.lines({"event": "done", "exit_code": 0})
    lines += log.childOutput("selected 4 slices\n\nwarning: slow disk\n")
    assert lines == [
        "   0.00 s  Started: Select & Describe of Brain",
        "   0.00 s  Input written for the child in 0.06 s",
        "   0.50 s  Loading",
        "   1.00 s  done in 0.50 s: Loading",
        "   1.00 s  Voting",
        "   2.00 s  done in 1.00 s: Voting",
        "   2.00 s  Slices selected: axial 3, coronal 1",
        "   2.00 s  Selection step timings: load 0.50 s, select 1.25 s",
        "   2.00 s  a line that is not JSON",
        "   4.00 s  The model started answering.",
        "   7.00 s  Report incomplete: timeout (model tiny-vlm); the model took 5.00 s",
        "   7.00 s  The child process ended (exit code 0).",
        "Child process messages:",
        "    selected 4 slices",
        "    warning: slow disk",
    ]


def _blob_volume(headless_slicer, name="Blob"):
    from VoteMILib import mrml
    from VoteMISelfTestLib import blob_phantom

    phantom = blob_phantom(seed=0)
    return mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, name)


def test_the_log_section_is_collapsed_and_fills_from_the_childs_events_cleared_at_each_run(panel, headless_slicer):
    _blob_volume(headless_slicer)
    panel.setup()
    assert panel.ui.logCollapsibleButton.collapsed and panel.ui.logTextEdit.readOnly
    seen_during_run = []
    for _ in range(2):
        panel.click(panel.ui.selectButton)
        assert panel.ui.logTextEdit.toPlainText().count("Started:") == 1  # cleared at the start
        panel.run_until(lambda: seen_during_run.append(panel.ui.logTextEdit.toPlainText().count("\n"))
                        or panel.idle(), 90)
        assert not panel.slot_errors and not panel.dialogs.of("errorDisplay"), panel.dialogs.shown
    text = panel.ui.logTextEdit.toPlainText()
    lines = text.splitlines()
    assert text.count("Started: Select only of Blob") == 1
    assert lines[0].endswith("Started: Select only of Blob") and "Input written for the child in" in lines[1]
    assert any("done in" in line for line in lines)  # a progress step ended with its duration
    assert any("Slices selected: axial 3, coronal 3, sagittal 3" in line for line in lines)
    assert any("Selection step timings:" in line and "select" in line for line in lines)
    assert "The child process ended (exit code 0)." in text
    assert len(set(seen_during_run)) > 2  # filled as the run went, not at its end only


def test_cancel_is_written_to_the_log(panel, headless_slicer):
    _blob_volume(headless_slicer)
    panel.setup()
    panel.click(panel.ui.selectButton)
    panel.click(panel.ui.cancelButton)
    assert panel.ui.logTextEdit.toPlainText().splitlines()[-1].endswith("Cancelled: the child process was ended.")
