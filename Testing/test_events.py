"""The ``--events`` contract of ``votemi select|describe|models`` (what Slicer's panel reads from its child).

Each command runs as a real child process (``python -m VoteMILib.cli``), as the panel starts it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrml_helpers import main_case_image
from vlm_fixtures import streamed
from VoteMILib.events import ChildProcess
from VoteMILib.results import SelectionResult

ENGINE = str(Path(__file__).resolve().parents[1] / "VoteMI")


def _environment(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ENGINE, os.environ.get("PYTHONPATH", "")]),
               PYTHONIOENCODING="utf-8", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def votemi_events(*arguments, **extra_env):
    """Run ``votemi ARGUMENTS --events``; return (exit code, events, stderr). Every stdout line must be JSON."""
    done = subprocess.run([sys.executable, "-m", "VoteMILib.cli", *arguments, "--events"], capture_output=True,
                          env=_environment(**extra_env), timeout=300)
    lines = done.stdout.decode("utf-8").splitlines()
    events = [json.loads(line) for line in lines]  # raises on anything that is not a JSON line
    assert all(isinstance(event, dict) and isinstance(event.get("event"), str) for event in events)
    assert events and events[-1]["event"] == "done" and [e["event"] for e in events].count("done") == 1
    assert events[-1]["exit_code"] == done.returncode
    return done.returncode, events, done.stderr.decode("utf-8")


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    """A small synthetic T1 on disk (describing needs no real anatomy; selection on it takes 0.1 s)."""
    import SimpleITK as sitk

    from vlm_fixtures import make_volume

    image = sitk.GetImageFromArray(make_volume("mri", shape_kji=(40, 48, 48), name="T1").array)
    path = tmp_path_factory.mktemp("events") / "T1.nii.gz"
    sitk.WriteImage(image, str(path))
    return str(path)


def _of(events, kind):
    return [event for event in events if event["event"] == kind]


def test_select_events_progress_then_the_selection(tmp_path):
    out = tmp_path / "selection.json"
    code, events, stderr = votemi_events("select", str(main_case_image()), "--slices-per-plane", "2",
                                         "--json", str(out))
    assert code == 0, stderr
    kinds = [event["event"] for event in events]
    assert kinds[-2:] == ["selection", "done"] and set(kinds) == {"progress", "selection", "done"}
    fractions = [event["fraction"] for event in _of(events, "progress")]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0
    assert all(isinstance(event["message"], str) for event in _of(events, "progress"))
    document = _of(events, "selection")[0]["selection"]
    assert document == json.loads(out.read_text(encoding="utf-8"))  # the same document as --json
    result = SelectionResult.from_dict(document)
    assert [pick.label for pick in result.selected()] == ["A1", "A2", "C1", "C2", "S1", "S2"]
    assert "id  plane" in stderr and f"wrote {out}" in stderr  # what people read goes to stderr


def test_select_events_error_for_a_missing_file(tmp_path):
    missing = tmp_path / "nothing.nii.gz"
    code, events, stderr = votemi_events("select", str(missing))
    assert code == 1
    assert [event["event"] for event in events] == ["error", "done"]
    assert events[0]["message"] == f"no such file or folder: {missing}"
    assert f"votemi: error: {events[0]['message']}" in stderr


def test_describe_events_stream_the_report_from_a_loopback_server(scripted_server, small_image):
    pieces = ["Findings: ", "mass ", "[A1].", "\nImpression: ", "tumour."]
    scripted_server.script = [streamed(pieces)]
    code, events, stderr = votemi_events("describe", small_image, "--planes", "axial", "--slices-per-plane", "1",
                                         "--server", scripted_server.url, "--model", "tiny-vlm")
    assert code == 0, stderr
    kinds = [event["event"] for event in events]
    assert kinds.index("selection") < kinds.index("text") and kinds[-2:] == ["report", "done"]
    assert "".join(event["text"] for event in _of(events, "text")) == "".join(pieces)
    report, = _of(events, "report")
    assert report["report"] == "".join(pieces) and report["complete"] is True
    assert report["report_meta"]["model"] == "tiny-vlm" and [i["id"] for i in report["report_meta"]["images"]] == ["A1"]
    assert "AI-generated draft" in stderr  # the notice printed for people goes to stderr here


def test_describe_events_error_for_an_unreachable_server(small_image):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code, events, stderr = votemi_events("describe", small_image, "--planes", "axial", "--slices-per-plane", "1",
                                         "--server", url, "--model", "m")
    assert code == 1
    assert [event["event"] for event in events][-3:] == ["selection", "error", "done"]
    message = _of(events, "error")[0]["message"]
    assert message.startswith(f"{url}: connection refused") and "\n" not in message


def test_describe_events_with_the_in_process_model_in_the_child(tiny_vlm_dir, small_image):
    code, events, stderr = votemi_events("describe", small_image, "--planes", "axial", "--slices-per-plane", "1",
                                         "--backend", "inprocess", "--model", tiny_vlm_dir, "--max-tokens", "8",
                                         "--long-side", "64")
    assert code in (0, 3), stderr  # a random model may stop at its token limit (incomplete, exit 3)
    report, = _of(events, "report")
    assert report["report_meta"]["protocol"] == "inprocess"
    assert "".join(event["text"] for event in _of(events, "text")) == report["report"]


def test_models_events(scripted_server):
    code, events, stderr = votemi_events("models", "--server", scripted_server.url)
    assert code == 0, stderr
    assert events[0] == {"event": "models", "server": scripted_server.url, "models": ["tiny-vlm"]}


# --------------------------------------------------------------------------------------------
# Reading a child without threads


def _python(code):
    return [sys.executable, "-c", code]


def _poll_until_finished(child, timeout_s=30):
    events = []
    started = time.monotonic()
    while not child.finished:
        assert time.monotonic() - started < timeout_s, "child did not finish"
        events += child.poll()
        time.sleep(0.01)
    return events + child.poll()


def test_child_events_split_across_reads_and_plain_lines():
    child = ChildProcess(_python(
        "import sys, time\n"
        "sys.stdout.write('{\"event\": \"progress\", '); sys.stdout.flush(); time.sleep(0.3)\n"
        "sys.stdout.write('\"fraction\": 0.5}\\nnot json\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('first\\nlast words\\n'); sys.exit(4)\n"))
    events = _poll_until_finished(child)
    assert events == [{"event": "progress", "fraction": 0.5}, {"event": "log", "text": "not json"}]
    assert child.exit_code == 4 and child.stderr_tail() == "last words"


def _gone(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" in status.read()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see the grandchild")
def test_kill_ends_the_child_and_what_it_started():
    child = ChildProcess(_python(
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(grandchild.pid, flush=True); time.sleep(60)\n"))
    events = []
    while not events:
        events = child.poll()
        time.sleep(0.01)
    grandchild = int(events[0]["text"])
    child.kill()
    assert child.finished and child.process.poll() is not None
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(grandchild)


def test_kill_on_windows_starts_taskkill_without_a_console_and_does_not_wait_for_it(monkeypatch):
    """Windows cannot run here: what the kill asks of the OS is recorded, and the child is really ended."""
    from VoteMILib import events

    child = ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"])
    started = []
    real_popen = subprocess.Popen

    def record(argv, **options):
        hanging = real_popen([sys.executable, "-c", "import time; time.sleep(30)"])  # a taskkill that hangs
        started.append((argv, options, hanging))
        return hanging

    create_no_window = 0x08000000
    monkeypatch.setattr(events, "_WINDOWS", True)
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", create_no_window, raising=False)
    monkeypatch.setattr(events.subprocess, "Popen", record)
    monkeypatch.setattr(events.subprocess, "run", lambda *args, **kwargs: pytest.fail("kill waited for taskkill"))
    began = time.perf_counter()
    child.kill()
    took = time.perf_counter() - began
    (argv, options, hanging), = started
    hanging.kill()
    hanging.wait()
    assert argv[:4] == ["taskkill", "/F", "/T", "/PID"] and argv[4] == str(child.process.pid)
    assert options["creationflags"] & create_no_window
    assert child.exit_code is not None and took < ChildProcess.WINDOWS_TREE_KILL_S + 5
