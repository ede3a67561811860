"""``votemi batch`` faults of issue 33: a case that fails never stops the others.

Long case names, a second run on the same ``--out`` (the lock), two runs' journal records, a case that blocks
(``--case-timeout``), Ctrl-C, and the messages of a worker lost to memory and of a Dask that cannot be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import engine_fixtures as ef
import pytest

distributed = pytest.importorskip("distributed", reason="needs Dask (pip install -e .[batch])")

from VoteMILib.batch import (LOCK, BatchError, Journal, SelectSettings, dask_import_message, out_lock,  # noqa: E402
                             run_cases, timed_task, worker_lost_message)
from VoteMILib.datasets import MAX_NAME_BYTES, Case, case_name  # noqa: E402

LONG = "patient_" + "x" * 300


def _journal(out):
    with open(os.path.join(out, "summary.jsonl"), encoding="utf-8") as handle:
        return {record["case"]: record for record in map(json.loads, handle)}


def _fifo_mhd(folder) -> str:
    """An .mhd whose data file is a FIFO nobody writes to: reading it blocks for good."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(os.path.join(folder, "blocked.raw"))
    path = os.path.join(folder, "blocked.mhd")
    with open(path, "w", encoding="ascii") as handle:
        handle.write("ObjectType = Image\nNDims = 3\nDimSize = 40 40 40\nElementType = MET_SHORT\n"
                     "ElementSpacing = 2 2 2\nElementDataFile = blocked.raw\n")
    return path


# -- long names --------------------------------------------------------------------------------------


def test_long_case_names_are_shortened_stably_and_stay_distinct():
    first, second = case_name(LONG), case_name(LONG + "y")
    assert len(first.encode()) <= MAX_NAME_BYTES and len(second.encode()) <= MAX_NAME_BYTES
    assert first != second and first == case_name(LONG)  # the same on every rerun: resume finds it
    assert first.startswith("patient_xxx")
    nested = case_name("ward/" + "é" * 150)  # 300 bytes of two-byte characters, never cut in half
    assert nested.startswith("ward/") and len(nested.split("/")[1].encode()) <= MAX_NAME_BYTES
    assert case_name("brain1") == "brain1"


# -- the lock on --out -------------------------------------------------------------------------------


def test_a_second_run_on_the_same_out_is_told_who_holds_it(tmp_path):
    image = ef.write_array(tmp_path / "scan.nii.gz", ef.head_phantom())
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        import socket

        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "command": "batch",
                                            "started": "2026-12-08T02:00:00+00:00"}))
        run = ef.run_votemi("batch", image, "--out", out, "--workers", "1", timeout=120)
    finally:
        holder.kill()
        holder.wait()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert f"pid {holder.pid}" in lines[0] and "started 2026-12-08T02:00:00+00:00" in lines[0]
    assert "in use by votemi batch" in lines[0] and "another --out" in lines[0]
    assert not (out / "summary.jsonl").exists()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free now
    import socket

    (tmp_path / LOCK).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    with out_lock(str(tmp_path)) as path:
        assert json.loads(open(path, encoding="utf-8").read())["pid"] == os.getpid()
        with pytest.raises(BatchError, match=rf"in use by votemi batch \(pid {os.getpid()}, started "):
            with out_lock(str(tmp_path)):
                pass
    assert not os.path.exists(tmp_path / LOCK)


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "scanner-pc", "started": "yesterday"}))
    with pytest.raises(BatchError, match=r"pid 1 on scanner-pc, started yesterday.*delete .*\.votemi\.lock"):
        with out_lock(str(tmp_path)):
            pass


# -- journal records of another run, outputs that cannot be written ------------------------------------


def ok_task(case, settings):
    """A task the in-process workers can run: a finished record."""
    return {"case": case.name, "status": "ok", "image": case.image, "error": ""}


def test_the_final_journal_keeps_records_another_run_appended(tmp_path):
    out = str(tmp_path)
    journal = Journal(os.path.join(out, "summary.jsonl"))
    cases = [Case("a", "a.nii"), Case("b", "b.nii"), Case("c", "c.nii")]

    def store(record):
        if record["case"] == "a":  # meanwhile another run on the same folder finished its own case
            journal.append({"case": "theirs", "status": "ok"})
        if record["case"] == "b":
            raise OSError(36, "File name too long")
        return record

    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        records = run_cases(client, cases, ok_task, SelectSettings(), out, store, stream=open(os.devnull, "w"))
    assert [r["case"] for r in records] == ["a", "b", "c"]
    kept = _journal(out)
    assert set(kept) == {"a", "b", "c", "theirs"}
    assert kept["b"]["status"] == "failed" and kept["b"]["error"].startswith("cannot write its outputs: ")
    assert kept["b"]["error"].endswith("File name too long")
    assert kept["a"]["status"] == kept["c"]["status"] == "ok"


# -- a case that blocks ------------------------------------------------------------------------------


def slow_task(case, settings):
    time.sleep(30)
    return ok_task(case, settings)


def test_timed_task_gives_up_on_a_case_that_does_not_finish():
    started = time.monotonic()
    record = timed_task(slow_task, Case("slow", "slow.nii"), None, 0.3)
    assert time.monotonic() - started < 5
    assert record["status"] == "failed" and "--case-timeout of 0.3 s" in record["error"]
    assert timed_task(ok_task, Case("quick", "q.nii"), None, 5)["status"] == "ok"


def test_batch_with_a_long_name_and_a_blocking_case_finishes(tmp_path):
    folder = str(tmp_path)
    blocked = _fifo_mhd(folder)
    good = shutil.copyfile(ef.cases()[ef.MAIN_CASE]["image"], tmp_path / "good.nii.gz")
    table = tmp_path / "cases.csv"
    table.write_text(f"case,image\n{LONG},{good}\nblocked,{blocked}\n", encoding="utf-8")
    run = ef.run_votemi("batch", table, "--out", tmp_path / "out", "--workers", "1", "--case-timeout", "20",
                        timeout=240)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    records = _journal(tmp_path / "out")
    assert records[case_name(LONG)]["status"] == "ok"
    assert os.path.isfile(tmp_path / "out" / records[case_name(LONG)]["json"])
    assert records["blocked"]["status"] == "failed" and "--case-timeout of 20 s" in records["blocked"]["error"]
    assert "2/2 cases (1 failed, 0 skipped)" in run.stderr


# -- Ctrl-C ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="a terminal's Ctrl-C reaches the process group (POSIX)")
def test_ctrl_c_prints_one_line_saying_what_was_kept(tmp_path):
    blocked = _fifo_mhd(str(tmp_path))
    good = shutil.copyfile(ef.cases()[ef.MAIN_CASE]["image"], tmp_path / "good.nii.gz")
    out = tmp_path / "out"
    process = subprocess.Popen([*ef.votemi_command(), "batch", blocked, good, "--out", str(out), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "summary.jsonl").exists() and time.monotonic() < deadline:  # the good case is done,
        time.sleep(0.2)  # the other worker is blocked in its read
    time.sleep(1)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group
    interrupted = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - interrupted < 30
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and len(lines) == 3, stderr  # the start, one case done, the interrupt
    assert lines[-1] == (f"votemi: interrupted; 1 of 2 cases are finished and kept in {out / 'summary.jsonl'}; "
                         "run the same command again to do the rest")
    assert _journal(out)["good"]["status"] == "ok" and not os.path.exists(out / LOCK)


# -- messages ----------------------------------------------------------------------------------------


def test_a_worker_killed_twice_names_memory_and_what_to_do():
    message = worker_lost_message(distributed.KilledWorker("votemi-brain-1", "tcp://127.0.0.1:1", None), 3 * 2 ** 29)
    assert "memory limit of 1.5 GiB" in message and "fewer --workers" in message and "KilledWorker" not in message


def test_a_broken_module_inside_dask_is_named_not_called_missing_dask(tmp_path):
    image = ef.write_array(tmp_path / "scan.nii.gz", ef.head_phantom())
    code = ("import sys; sys.modules['tornado'] = None; from VoteMILib.cli import main; "
            f"sys.exit(main(['batch', {str(image)!r}, '--out', {str(tmp_path / 'out')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and "needs Dask" not in run.stderr, run.stderr
    assert "Dask is installed but cannot be imported" in lines[0] and "tornado" in lines[0]
    missing = ModuleNotFoundError("No module named 'distributed'", name="distributed")
    assert dask_import_message(missing).startswith("this command needs Dask")


def _sigint_ignored_here() -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_local_workers_ignore_ctrl_c_also_after_a_restart():
    from VoteMILib.batch import dask_client

    with dask_client(workers=1) as client:
        assert all(client.run(_sigint_ignored_here).values())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command keeps its Ctrl-C
        client.restart()  # what Dask does to a worker over its memory limit
        client.wait_for_workers(1, timeout=60)
        time.sleep(0.5)  # the plugin's callback runs on the new worker's loop
        assert all(client.run(_sigint_ignored_here).values())
