"""``votemi batch`` on real cases: a local Dask cluster of two worker processes, and an external
``dask scheduler`` + ``dask worker`` started here on loopback; the same JSON as ``votemi select``,
resume, a corrupt case that does not stop the batch, and the case discovery."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed", reason="needs Dask (pip install -e .[batch])")

from VoteMILib.batch import SelectSettings, fingerprint_files, inputs_unchanged, is_done, settings_key  # noqa: E402
from VoteMILib.cli import main  # noqa: E402
from VoteMILib.datasets import discover_cases  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
BRAIN = os.path.join(DATA, "pyradiomics_brain1", "image.nrrd")
SARCOMA = os.path.join(DATA, "sarcoma", "sts001_ct", "image.nii.gz")
DICOM = os.path.join(DATA, "dicom", "sts001_ct", "series")

needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason="needs ../shared/data")


def _batch(*args):
    """Run the command as a user would (a child process); returns (exit code, stderr)."""
    done = subprocess.run([sys.executable, "-m", "VoteMILib.cli", "batch", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stderr


def _journal(out):
    with open(os.path.join(out, "summary.jsonl"), encoding="utf-8") as handle:
        return {record["case"]: record for record in map(json.loads, handle)}


def _select_json(tmp_path, image, name, *options):
    path = tmp_path / f"{name}.json"
    assert main(["select", image, "--json", str(path), "--quiet", *options]) == 0
    return _without_timing(path)


def _without_timing(path):
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    document.pop("timing_s")
    return document


@pytest.fixture(scope="module")
def case_table(tmp_path_factory):
    """A CSV of two real cases (brain MRI, sarcoma CT) and a corrupt one."""
    folder = tmp_path_factory.mktemp("batch-input")
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really a NIfTI file" * 40)
    table = folder / "cases.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerows([["case", "image"], ["brain1", os.path.abspath(BRAIN)],
                          ["sarcoma_ct", os.path.abspath(SARCOMA)], ["corrupt", "corrupt.nii.gz"]])
    return table


@needs_data
def test_local_cluster_same_json_as_select_resume_and_a_corrupt_case(tmp_path, case_table):
    out = tmp_path / "out"
    code, stderr = _batch(case_table, DICOM, "--out", out, "--workers", 2, "--pngs")
    assert code == 1, stderr  # one case failed, the others were done
    assert "on 2 local workers" in stderr and "4/4 cases (1 failed, 0 skipped)" in stderr
    assert "cases/min" in stderr and "ETA" in stderr
    records = _journal(out)
    assert set(records) == {"brain1", "sarcoma_ct", "corrupt", "sts001_ct"}  # a DICOM series is named by its folder
    corrupt = records.pop("corrupt")
    assert corrupt["status"] == "failed" and "corrupt.nii.gz is corrupt:" in corrupt["error"] and "\n" not in corrupt["error"]
    assert all(record["status"] == "ok" for record in records.values())
    assert os.getpid() not in {record["worker_pid"] for record in records.values()}
    # The same JSON as `votemi select` (but the timings), PNGs included with --pngs.
    batch_brain = _without_timing(out / "cases" / "brain1.json")
    selected = _select_json(tmp_path, BRAIN, "brain1", "--png-dir", str(tmp_path / "png"))
    pngs, select_pngs = batch_brain.pop("pngs"), selected.pop("pngs")
    assert len(pngs) == 9 and all(p.startswith(str(out / "png" / "brain1")) for p in pngs)
    assert [os.path.basename(p) for p in pngs] == [os.path.basename(p) for p in select_pngs]
    assert all(open(a, "rb").read() == open(b, "rb").read() for a, b in zip(pngs, select_pngs))
    assert batch_brain == selected
    batch_dicom = _without_timing(out / "cases" / "sts001_ct.json")
    assert len(batch_dicom.pop("pngs")) == 9 and batch_dicom.pop("windowing")
    assert batch_dicom == _select_json(tmp_path, DICOM, "dicom")
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == ["brain1", "sarcoma_ct", "corrupt", "sts001_ct"]
    assert rows[2]["status"] == "failed" and rows[2]["error"] == corrupt["error"]

    # Resume: done cases are skipped (their files untouched); the failed one is tried again.
    written = os.stat(out / "cases" / "brain1.json").st_mtime_ns
    code, stderr = _batch(case_table, DICOM, "--out", out, "--workers", 1, "--pngs")
    assert code == 1 and "4/4 cases (1 failed, 3 skipped)" in stderr
    assert os.stat(out / "cases" / "brain1.json").st_mtime_ns == written
    assert len(_journal(out)) == 4  # one line per case after the run
    # Other settings do not vouch for a done case.
    brain, record = discover_cases([case_table])[0], _journal(out)["brain1"]
    assert is_done(record, brain, settings_key(SelectSettings(pngs=True)), out)
    assert not is_done(record, brain, settings_key(SelectSettings(pngs=True, slices_per_plane=2)), out)
    os.remove(out / "cases" / "brain1.json")  # nor does a case whose JSON is gone
    assert not is_done(record, brain, settings_key(SelectSettings(pngs=True)), out)


@pytest.fixture
def external_cluster(tmp_path):
    """A real ``dask scheduler`` and one ``dask worker`` on 127.0.0.1; yields the scheduler address."""
    scheduler_file = tmp_path / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(scheduler_file)], **quiet)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but let it be closed
        address = json.loads(scheduler_file.read_text(encoding="utf-8"))["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                                   "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"], **quiet)
        from dask.distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


@needs_data
def test_external_scheduler_and_worker_processes(tmp_path, external_cluster):
    out = tmp_path / "out"
    table = tmp_path / "one.csv"
    table.write_text(f"case,image\nbrain1,{os.path.abspath(BRAIN)}\n", encoding="utf-8")
    code, stderr = _batch(table, "--out", out, "--scheduler", external_cluster)
    assert code == 0, stderr
    assert f"on {external_cluster}" in stderr and "1/1 cases (0 failed, 0 skipped)" in stderr
    assert _without_timing(out / "cases" / "brain1.json") == _select_json(tmp_path, BRAIN, "brain1")
    assert _journal(out)["brain1"]["worker_pid"] != os.getpid()


@needs_data
def test_discovery_of_tables_folders_and_dicom_series(tmp_path):
    shared = discover_cases([DATA])  # its cases.tsv
    assert [case.name for case in shared][:2] == ["pyradiomics_brain1", "pyradiomics_brain2"]
    assert shared[3].extras and shared[3].extras[0].endswith("flair.nii.gz")
    dicom = discover_cases([os.path.join(DATA, "dicom")])  # two series; the lone RTSTRUCT files are no cases
    assert [case.name for case in dicom] == ["sts001_ct/series", "sts001_mr_t1/series"]
    tree = tmp_path / "tree"
    (tree / "patient1").mkdir(parents=True)
    shutil.copy(os.path.join(DATA, "pyradiomics_brain2", "image.nrrd"), tree / "patient1" / "image.nrrd")
    shutil.copy(os.path.join(DATA, "pyradiomics_brain2", "mask.nrrd"), tree / "patient1" / "mask.nrrd")
    (tree / "loose").mkdir()
    shutil.copy(os.path.join(DATA, "pyradiomics_brain2", "image.nrrd"), tree / "loose" / "t1.nrrd")
    shutil.copy(os.path.join(DATA, "pyradiomics_brain2", "mask.nrrd"), tree / "loose" / "mask_t1.nrrd")
    assert [case.name for case in discover_cases([tree])] == ["loose/t1", "patient1"]
    with pytest.raises(ValueError, match="two cases are named"):
        discover_cases([tree, tree])
    with pytest.raises(ValueError, match="no such folder"):
        discover_cases([tmp_path / "missing"])


def test_fingerprint_vouches_by_content_not_by_time(tmp_path):
    path = tmp_path / "scan.nii"
    path.write_bytes(b"voxels" * 100)
    recorded = fingerprint_files([path])
    os.utime(path, ns=(1, 1))  # touched (or copied): same content, so unchanged
    assert inputs_unchanged(recorded, [path])
    path.write_bytes(b"VOXELS" * 100)  # same size, new content
    os.utime(path, ns=(2, 2))
    assert not inputs_unchanged(recorded, [path])
    assert not inputs_unchanged(recorded, [path, path])
