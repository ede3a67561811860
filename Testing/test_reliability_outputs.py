"""Outputs: every output path is checked before the work starts, inputs are never overwritten, and
``votemi describe`` keeps the selection and whatever text arrived when the model fails or Ctrl-C
stops it (real subprocess, real SIGINT, real loopback server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

import engine_fixtures as ef
from vlm_fixtures import error_answer, streamed
from VoteMILib.cli import main
from VoteMILib.vlm import NOTICE


@pytest.fixture
def blocker(tmp_path):
    """A file standing where an output folder would have to be."""
    path = tmp_path / "blocker"
    path.write_text("not a folder")
    return path


def _one_error_line(captured) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("votemi: error: "), captured.err
    return lines[0]


def test_select_checks_outputs_before_reading_the_image(blocker, capsys):
    # The image does not even exist: the output error shows the outputs were checked first.
    assert main(["select", "/nonexistent/scan.nii.gz", "--json", str(blocker / "out.json")]) == 1
    line = _one_error_line(capsys.readouterr())
    assert f"cannot write --json file {blocker}/out.json: {blocker} is a file, not a folder" in line
    assert main(["select", "/nonexistent/scan.nii.gz", "--png-dir", str(blocker)]) == 1
    assert f"--png-dir folder {blocker}: it is a file, not a folder" in _one_error_line(capsys.readouterr())


def test_describe_checks_outputs_before_selecting_or_contacting_the_server(scripted_server, image_path, blocker,
                                                                           tmp_path, capsys):
    common = ["describe", image_path, "--server", scripted_server.url, "--model", "tiny-vlm", "--quiet"]
    assert main(common + ["--report", str(blocker / "report.md")]) == 1
    assert "cannot write --report file" in _one_error_line(capsys.readouterr())
    same = str(tmp_path / "both.json")
    assert main(common + ["--json", same, "--report", same]) == 1
    assert "--report and --json both name" in _one_error_line(capsys.readouterr())
    before = open(image_path, "rb").read()
    assert main(common + ["--json", image_path]) == 1
    assert "is an input of this command" in _one_error_line(capsys.readouterr())
    assert open(image_path, "rb").read() == before
    assert scripted_server.requests == [] and not os.path.exists(same)


def test_bench_and_train_encoder_check_their_output_first(blocker):
    started = time.perf_counter()
    run = ef.run_votemi("bench", ef.DATA, "--json", blocker / "bench.json")
    elapsed = time.perf_counter() - started
    assert run.returncode == 1 and run.stdout == "", run.stdout  # no case was evaluated
    assert f"cannot write --json file {blocker}/bench.json" in run.stderr and "Traceback" not in run.stderr
    print(f"bench --json into a file's folder refused in {elapsed:.2f} s (whole process)")
    run = ef.run_votemi("train-encoder", ef.DATA, "--out", blocker / "encoder.npz")
    assert run.returncode == 1 and run.stdout == ""
    assert f"cannot write --out model file {blocker}/encoder.npz" in run.stderr


def test_model_error_still_writes_the_selection_and_keeps_an_earlier_report(scripted_server, image_path,
                                                                             tmp_path, capsys):
    scripted_server.script.append(error_answer(500, {"error": {"message": "CUDA out of memory"}}))
    out, report = tmp_path / "out.json", tmp_path / "report.md"
    report.write_text("an earlier report the user edited")
    code = main(["describe", image_path, "--server", scripted_server.url, "--model", "tiny-vlm", "--quiet",
                 "--long-side", "64", "--slices-per-plane", "1", "--json", str(out), "--report", str(report)])
    assert code == 1
    line = _one_error_line(capsys.readouterr())
    assert "HTTP 500" in line and "CUDA out of memory" in line
    document = json.loads(out.read_text(encoding="utf-8"))
    assert len(document["planes"]["axial"]["selected"]) == 1  # the selection is kept
    meta = document["report_meta"]
    assert document["report"] == "" and meta["complete"] is False and "CUDA out of memory" in meta["incomplete_reason"]
    assert meta["notice"] == NOTICE and [image["id"] for image in meta["images"]] == ["A1", "C1", "S1"]
    assert report.read_text(encoding="utf-8") == "an earlier report the user edited"  # no text arrived: nothing replaced


def test_ctrl_c_mid_stream_keeps_the_text_received(scripted_server, image_path, tmp_path):
    scripted_server.script.append(streamed([f"piece{n} " for n in range(400)], pause_s=0.05))
    out, report = tmp_path / "out.json", tmp_path / "report.md"
    process = subprocess.Popen(ef.votemi_command() + [
        "describe", image_path, "--server", scripted_server.url, "--model", "tiny-vlm", "--long-side", "64",
        "--slices-per-plane", "1", "--json", str(out), "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        shown = b""
        deadline = time.monotonic() + 120
        while b"piece2 " not in shown and time.monotonic() < deadline:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            shown += chunk
        assert b"piece2 " in shown, shown
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = err.decode("utf-8", "replace")
    assert process.returncode == 130, err
    assert "interrupted; saving what arrived" in err and err.strip().endswith("votemi: error: interrupted")
    assert "Traceback" not in err
    document = json.loads(out.read_text(encoding="utf-8"))
    text = document["report"]
    assert text.startswith("piece0 piece1 piece2 ") and "piece399" not in text
    assert (shown + rest).decode().find(text.strip()) >= 0  # what was shown is what was saved
    meta = document["report_meta"]
    assert meta["complete"] is False and meta["incomplete_reason"] == "interrupted by Ctrl-C"
    saved = report.read_text(encoding="utf-8")
    assert saved.startswith(f"> **{NOTICE}**") and text.strip() in saved
    assert "**Incomplete report:** interrupted by Ctrl-C" in saved
