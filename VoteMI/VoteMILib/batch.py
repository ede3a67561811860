"""``votemi batch``: the selection of many cases on a Dask cluster, resumable.

Cases come from :func:`VoteMILib.datasets.discover_cases` (folders, case tables or single image files).
Each case runs as one Dask task on a worker process, which returns the selection document (and the
PNGs, as bytes); the driver writes every output, so workers need to read the inputs but never write.

A journal, ``summary.jsonl`` in the output folder, gets one line per finished case as soon as it
finishes. A later run with the same output folder skips every case whose input files and settings
are unchanged and whose JSON is still there; failed cases are tried again.

The same runner (:func:`run_cases`) drives ``votemi eval`` with another task.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from . import __version__
from .datasets import Case, case_name, files_of
from .machine import peak_memory_mb, physical_memory_bytes
from .request import SelectionRequest

JOURNAL = "summary.jsonl"
SUMMARY_CSV = "summary.csv"
#: Memory of one selection per voxel of its volume, and the worker's own footprint: Testing/bench_batch.py
#: measured a worker's peak growing by about 13 bytes per voxel of its largest volume over ~320 MiB; three
#: times that leaves room for volumes the selection resamples less.
BYTES_PER_VOXEL = 40
WORKER_BASE_BYTES = 600 * 2 ** 20
_HASH_CHUNK = 1 << 20


class BatchError(ValueError):
    """A batch that cannot start (unusable output folder, no Dask, no scheduler); one line for the user.

    A bad input list is a :class:`~VoteMILib.datasets.CaseError`.
    """


# ---------------------------------------------------------------------------------------------
# Fingerprints (what makes a finished case worth keeping)


def file_digest(path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_files(paths) -> list:
    """``[{path, size, mtime_ns, digest}]`` of the files (content digest, and the stat that vouches for it)."""
    entries = []
    for path in paths:
        stat = os.stat(path)
        entries.append({"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                        "digest": file_digest(path)})
    return entries


def inputs_unchanged(recorded: list, paths) -> bool:
    """Whether the files are those of ``recorded``: same list, and each the same size and modification
    time, or else the same content (a copied or touched file is not a changed one)."""
    paths = [os.path.abspath(p) for p in paths]
    if [entry.get("path") for entry in recorded] != paths:
        return False
    for entry, path in zip(recorded, paths):
        try:
            stat = os.stat(path)
        except OSError:
            return False
        if stat.st_size != entry.get("size"):
            return False
        if stat.st_mtime_ns != entry.get("mtime_ns") and file_digest(path) != entry.get("digest"):
            return False
    return True


def settings_key(settings) -> str:
    """A digest of everything that changes a case's result: ``settings.journal_fields()`` (never an API key)
    and the votemi version."""
    data = settings.journal_fields()
    text = json.dumps({"settings": data, "version": __version__}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# ---------------------------------------------------------------------------------------------
# The selection task (runs on a worker)


@dataclass
class SelectSettings:
    """The ``votemi select`` options a batch applies to every case; :meth:`request` makes a case's
    :class:`~VoteMILib.request.SelectionRequest` of them."""

    planes: tuple = ("axial", "coronal", "sagittal")
    slices_per_plane: int = 3
    seed: int = 0
    mode: str | None = None
    encoder: str | None = None
    pngs: bool = False
    modality: str = "auto"
    ct_preset: str | None = None
    window: tuple | None = None
    #: Digest of the encoder file, so that a retrained encoder re-runs the cases.
    encoder_digest: str = ""

    def journal_fields(self) -> dict:
        """The fields :func:`settings_key` digests, under the names the journals of earlier versions hold
        (``top`` for ``slices_per_plane``), so that a resumed batch does not start over."""
        fields = asdict(self)
        fields["top"] = fields.pop("slices_per_plane")
        return fields

    def request(self, case: Case) -> SelectionRequest:
        """The selection of one case with these settings."""
        return SelectionRequest(image=case.image, extras=tuple(case.extras), planes=tuple(self.planes),
                                slices_per_plane=self.slices_per_plane, seed=self.seed, mode=self.mode,
                                encoder=self.encoder, modality=self.modality, ct_preset=self.ct_preset,
                                window=tuple(self.window) if self.window else None)


def select_case(case: Case, settings: SelectSettings) -> dict:
    """Run ``votemi select`` on one case; returns its record, with ``document`` and ``png_bytes`` for the driver.

    Whatever goes wrong becomes ``status: failed`` with the one-line error, so that the batch goes on.
    """
    from .run import run_selection, selection_document

    started = time.perf_counter()
    record = new_record(case)
    try:
        record["inputs"] = fingerprint_files(case.input_files())
        request = settings.request(case)
        volume, extras, result = run_selection(request, progress=lambda fraction, message="": None)
        record["warnings"] = [w for v in (volume, *extras) for w in v.metadata.get("warnings", [])]
        document = selection_document(request, volume, result)
        record["png_bytes"] = _render_pngs(volume, result, request, document) if settings.pngs else {}
        record.update(status="ok", document=document, region=result.region.get("name", ""),
                      modality=result.region.get("modality", ""),
                      picks={plane: [s.index for s in plane_result.selected]
                             for plane, plane_result in result.planes.items()})
    except Exception as error:  # noqa: BLE001 - a failing case is recorded and the batch goes on
        record.update(status="failed", error=one_line(error))
    return finish_record(record, started)


def _render_pngs(volume, result, request: SelectionRequest, document) -> dict:
    """The PNGs ``votemi select --png-dir`` writes, as {file name: bytes}; records the windowing."""
    import tempfile

    from .run import save_pngs

    with tempfile.TemporaryDirectory(prefix="votemi-batch-") as folder:
        pngs = {}
        for path in save_pngs(request, volume, result, folder, document):
            with open(path, "rb") as handle:
                pngs[os.path.basename(path)] = handle.read()
    return pngs


def new_record(case: Case) -> dict:
    return {"case": case.name, "status": "failed", "error": "", "image": case.image, "extras": list(case.extras)}


def finish_record(record: dict, started: float) -> dict:
    record.update(seconds=round(time.perf_counter() - started, 3), peak_memory_mb=peak_memory_mb(),
                  worker_pid=os.getpid(), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return record


def one_line(error: BaseException) -> str:
    """The first line of an error's message, with its kind when the message alone would be unclear."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (ValueError, OSError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# The journal and the outputs (driver side)


class Journal:
    """``summary.jsonl``: one JSON line per finished case, appended (and flushed) as each finishes."""

    def __init__(self, path):
        self.path = path

    def load(self) -> dict:
        """The latest record of each case (lines cut off by a crash are ignored)."""
        records = {}
        if not os.path.exists(self.path):
            return records
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "case" in record:
                    records[record["case"]] = record
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def merge(self, names: list) -> dict:
        """Rewrite the journal with one line per case (the latest), ``names`` first; returns {case: record}.

        Read again from the file, not from memory: another run on the same folder (another machine behind a
        stale lock, an older votemi without the lock) may have appended its own cases meanwhile.
        """
        from .outputs import write_atomic

        latest = self.load()
        order = [name for name in names if name in latest] + [name for name in latest if name not in set(names)]
        write_atomic(self.path, "".join(json.dumps(latest[n], sort_keys=True) + "\n" for n in order), what="journal")
        return latest


def is_done(record: dict | None, case: Case, key: str, out: str) -> bool:
    """Whether a journal record still stands for ``case``: finished, same settings, same input, outputs there."""
    if not record or record.get("status") != "ok" or record.get("settings_key") != key:
        return False
    if any(not os.path.exists(os.path.join(out, path)) for path in record.get("outputs", [])):
        return False
    try:
        return inputs_unchanged(record.get("inputs", []), case.input_files())
    except OSError:
        return False


class Progress:
    """Cases done, failed and skipped, the rate and the time left, on one line of stderr."""

    def __init__(self, total: int, skipped: int, label: str = "batch", stream=None):
        self.total, self.skipped, self.label = total, skipped, label
        self.done = self.failed = 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, record: dict) -> None:
        self.done += 1
        self.failed += record.get("status") != "ok"
        if record.get("status") != "ok":
            self._write(f"votemi {self.label}: {record['case']} failed: {record.get('error', '')}", final=True)
        self.show()

    def show(self) -> None:
        self._write(self.line())

    def line(self) -> str:
        finished = self.done + self.skipped
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed * 60 if elapsed > 0 else 0.0
        left = self.total - finished
        eta = f", ETA {format_duration(left / rate * 60)}" if rate > 0 and left else ""
        return (f"votemi {self.label}: {finished}/{self.total} cases ({self.failed} failed, {self.skipped} skipped), "
                f"{rate:.1f} cases/min{eta}")

    def _write(self, text: str, final: bool = False) -> None:
        if self._tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ---------------------------------------------------------------------------------------------
# Dask


def estimate_voxels(case: Case) -> int:
    """Voxels of the case's volumes, from the file headers (a DICOM series: one slice times the count)."""
    import SimpleITK as sitk

    from .volumes import VolumeError, check_itk_path

    total = 0
    for path in (case.image, *case.extras):
        files = files_of(path)
        reader = sitk.ImageFileReader()
        try:
            check_itk_path(files[0])  # a name ITK cannot take would abort the whole batch here
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
        except (RuntimeError, VolumeError):
            continue  # unreadable: the case fails on its worker with the reader's message
        size = reader.GetSize()
        total += math.prod(size[:3]) * (len(files) if os.path.isdir(path) else 1)
    return total


def worker_memory_limit(cases, workers: int, total_bytes: int | None = None, extra_bytes: int = 0) -> int:
    """Memory limit per worker (bytes): what the largest case needs (plus ``extra_bytes``, e.g. an in-process
    model), capped by a fair share of the machine."""
    largest = max((estimate_voxels(case) for case in cases), default=0)
    wanted = WORKER_BASE_BYTES + BYTES_PER_VOXEL * largest + extra_bytes
    total = total_bytes or physical_memory_bytes()
    if not total:  # the platform does not tell: what the largest case needs
        return int(wanted)
    return int(min(wanted, 0.9 * total / max(workers, 1)))


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None, memory_limit: int | None = None):
    """A Dask client: of the cluster at ``scheduler``, or of a new local cluster of ``workers`` processes."""
    require_dask()
    import logging

    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as error:
            raise BatchError(f"cannot reach the Dask scheduler at {scheduler}: {one_line(error)}") from None
        with client:
            yield client
        return
    # One thread per process: the selection holds the GIL in places, and processes keep memory apart.
    # A worker over its limit is restarted and its case recorded as failed (after one more try), never
    # paused: a paused worker waits for memory that a running selection does not give back.
    memory = {"distributed.worker.memory.pause": False, "distributed.worker.memory.target": False,
              "distributed.worker.memory.spill": False, "distributed.worker.memory.terminate": 0.95,
              "distributed.scheduler.allowed-failures": 1}
    with dask.config.set(memory):
        with _sigint_ignored():
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   memory_limit=memory_limit or "auto", dashboard_address=None,
                                   silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            client.register_plugin(_ignore_ctrl_c_plugin())  # a worker restarted later (memory) was not started above
            yield client


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore Ctrl-C while the local workers start, so that they inherit it and leave Ctrl-C to the command.

    Ctrl-C in a terminal reaches every process of its group: each worker would die printing its traceback
    (dozens of lines) while the command itself stops the cluster anyway. The command's own handler is back once
    the workers run; with no handler to change (not the main thread), nothing is done.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ignore_sigint_here() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore_ctrl_c_plugin():
    """A Dask worker plugin making each local worker, also one restarted after the start, ignore Ctrl-C (see
    :func:`_sigint_ignored`). Defined here so that importing this module never imports Dask."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreCtrlC(WorkerPlugin):
        name = "votemi-ignore-ctrl-c"

        def setup(self, worker):
            worker.loop.add_callback(_ignore_sigint_here)  # the loop runs on the worker process's main thread

    return IgnoreCtrlC()


def require_dask() -> None:
    """Refuse in one line, before any work, when Dask cannot be imported (:func:`dask_import_message`)."""
    try:
        import dask  # noqa: F401
        from dask.distributed import Client, LocalCluster  # noqa: F401
    except ImportError as error:
        raise BatchError(dask_import_message(error)) from None


def dask_import_message(error: ImportError) -> str:
    """"Needs Dask" only when Dask itself is missing; a module Dask needs that is missing or broken is named."""
    missing = getattr(error, "name", None) or ""
    if isinstance(error, ModuleNotFoundError) and missing.split(".")[0] in ("dask", "distributed"):
        return "this command needs Dask: pip install 'votemi[batch]'"
    return (f"Dask is installed but cannot be imported: {one_line(error)}; repair that package (pip install "
            "--force-reinstall 'votemi[batch]')")


def run_cases(client, cases, task, settings, out: str, store, label: str = "batch", stream=None,
              case_timeout: float | None = None) -> list:
    """Run ``task(case, settings)`` on the cluster for every case not already done; returns all records.

    Parameters
    ----------
    client : dask.distributed.Client
    cases : list of Case
    task : callable(Case, settings) -> dict
        A record (``status`` "ok" or "failed"); importable by the workers.
    settings : dataclass
        Passed to every task; its digest decides which finished cases still stand.
    out : str
        Output folder (holds the journal).
    store : callable(dict) -> dict
        Writes a finished record's outputs (driver side) and returns the record as journaled, with
        ``outputs`` (paths relative to ``out``) that must exist for the case to count as done.
    case_timeout : float, optional
        Seconds a case may take; a case still running then is recorded as failed (:func:`timed_task`).

    Raises
    ------
    BatchInterrupted
        On Ctrl-C, once the journal holds every case finished so far.
    """
    from dask.distributed import as_completed

    journal = Journal(os.path.join(out, JOURNAL))
    previous = journal.load()
    key = settings_key(settings)
    todo = [case for case in cases if not is_done(previous.get(case.name), case, key, out)]
    progress = Progress(len(cases), len(cases) - len(todo), label, stream)
    if progress.skipped:
        progress.show()
    # A few tasks ahead of the workers, not the whole archive: memory stays flat and Ctrl-C is prompt.
    threads = sum(client.nthreads().values())
    if not threads:
        print(f"votemi {label}: the cluster has no workers yet; waiting for them", file=progress.stream)
    window = max(2, 2 * threads)
    memory_limit = memory_limit_of(client)
    pending = iter(todo)
    futures, running = {}, as_completed()
    submit = (task, case_timeout, settings, futures, running)
    try:
        for case in _take(pending, window):
            _submit(client, case, *submit)
        for future in running:
            case = futures.pop(future)
            record = _finished_record(future, case, key, store, memory_limit)
            journal.append(record)
            progress.update(record)
            for case in _take(pending, 1):
                _submit(client, case, *submit)
    except KeyboardInterrupt:
        raise BatchInterrupted(f"votemi: interrupted; {progress.done + progress.skipped} of {len(cases)} cases are "
                               f"finished and kept in {journal.path}; run the same command again to do the rest"
                               ) from None
    finally:
        progress.close()
        latest = journal.merge([case.name for case in cases])
    return [latest[case.name] for case in cases if case.name in latest]


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch; its message says what was kept."""


def _finished_record(future, case: Case, key: str, store, memory_limit: int | None) -> dict:
    """The record of a finished task, its outputs written; a worker lost or an output that cannot be written
    fails this case only."""
    try:
        record = future.result()
    except Exception as error:  # noqa: BLE001 - a worker that died (memory, signal) fails its case only
        record = {**new_record(case), "error": worker_lost_message(error, memory_limit),
                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record["settings_key"] = key
    try:
        return store(record)
    except OSError as error:  # e.g. a name the file system refuses, a full disk: this case fails, not the batch
        record.pop("document", None)
        record.pop("png_bytes", None)
        return {**record, "status": "failed", "error": f"cannot write its outputs: {one_line(error)}"}


def worker_lost_message(error: BaseException, memory_limit: int | None = None) -> str:
    """What a task that never returned means: Dask's ``KilledWorker`` is, with memory limits on, the memory."""
    if type(error).__name__ == "KilledWorker":
        limit = f" of {memory_limit / 2 ** 30:.1f} GiB" if memory_limit else ""
        return (f"worker lost: its process died twice on this case, most likely over its memory limit{limit}; "
                "give each worker more with fewer --workers or a machine with more memory, or check the case alone "
                "with 'votemi select'")
    return f"worker lost: {one_line(error)}"


def memory_limit_of(client) -> int | None:
    """The largest memory limit of the cluster's workers (bytes), or None when they have none."""
    limits = [worker.get("memory_limit") or 0 for worker in client.scheduler_info().get("workers", {}).values()]
    return max(limits, default=0) or None


def timed_task(task, case: Case, settings, timeout: float | None) -> dict:
    """``task(case, settings)``, given up after ``timeout`` seconds as a failed record.

    The case runs on a daemon thread of the worker: a read that blocks for good (a FIFO, a hung network share)
    cannot be interrupted, but the worker leaves it behind and goes on with the next case.
    """
    if not timeout:
        return task(case, settings)
    import threading

    started = time.perf_counter()
    box = {}
    thread = threading.Thread(target=lambda: box.update(record=task(case, settings)), daemon=True,
                              name=f"votemi-case-{case.name}")
    thread.start()
    thread.join(timeout)
    if "record" in box:
        return box["record"]
    record = new_record(case)
    record["error"] = (f"still running after the --case-timeout of {timeout:g} s (a file that blocks, such as a "
                       "FIFO or a hung network share, or a very large volume); check it alone with 'votemi select'"
                       if thread.is_alive() else "the case ended without a record")
    return finish_record(record, started)


def _take(iterator, count):
    for _ in range(count):
        item = next(iterator, None)
        if item is None:
            return
        yield item


def _submit(client, case, task, timeout, settings, futures, running):
    future = client.submit(timed_task, task, case, settings, timeout, pure=False,
                           key=f"votemi-{case_name(case.name)}-{time.time_ns()}")
    futures[future] = case
    running.add(future)


# ---------------------------------------------------------------------------------------------
# votemi batch


def store_selection(out: str):
    """The ``store`` of :func:`run_cases` for selections: ``cases/<name>.json`` and ``png/<name>/*.png``."""
    from .outputs import write_atomic, write_json_atomic

    def store(record: dict) -> dict:
        document = record.pop("document", None)
        pngs = record.pop("png_bytes", {}) or {}
        if record["status"] != "ok":
            return record
        outputs = []
        if pngs:
            folder = os.path.join(out, "png", record["case"])
            paths = [write_atomic(os.path.join(folder, name), data, what="PNG") for name, data in pngs.items()]
            document["pngs"] = [os.path.abspath(path) for path in paths]
            outputs += [os.path.relpath(path, out) for path in paths]
        json_path = os.path.join(out, "cases", record["case"] + ".json")
        write_json_atomic(json_path, document, what="selection JSON")
        record["json"] = os.path.relpath(json_path, out)
        record["outputs"] = [record["json"], *outputs]
        return record

    return store


SUMMARY_COLUMNS = ("case", "status", "image", "region", "modality", "picks", "seconds", "peak_memory_mb", "json",
                   "error")


def write_summary_csv(path, records) -> None:
    """One row per case: status, what was found, where the JSON is, the error of a failed case."""
    from .outputs import write_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for record in records:
        picks = "; ".join(f"{plane} {','.join(map(str, indices))}" for plane, indices in
                          (record.get("picks") or {}).items())
        writer.writerow([record.get("case"), record.get("status"), record.get("image"), record.get("region", ""),
                         record.get("modality", ""), picks, record.get("seconds", ""),
                         record.get("peak_memory_mb", ""), record.get("json", ""), record.get("error", "")])
    write_atomic(path, buffer.getvalue(), what="summary CSV")


LOCK = ".votemi.lock"


@contextlib.contextmanager
def out_lock(out: str, label: str = "batch"):
    """Hold ``OUT/.votemi.lock`` while a run writes ``out``: one run per output folder.

    The lock is a file created exclusively (``O_EXCL`` works on every platform and on network shares, unlike
    ``fcntl``), holding the owner's pid, host and start time. A lock of this host whose process is gone is
    stale and taken over; one of another host cannot be checked, so the message says how to remove it.

    Raises
    ------
    BatchError
        When another run holds the lock, in one line saying who.
    """
    path = os.path.join(out, LOCK)
    owner = {"pid": os.getpid(), "host": _host(), "command": label,
             "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for attempt in range(2):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            holder = _read_lock(path)
            if attempt or not _is_stale(holder, path):
                raise BatchError(_held_message(holder, path, label)) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(owner, handle)
    try:
        yield path
    finally:
        holder = _read_lock(path)
        if (holder.get("pid"), holder.get("host")) == (owner["pid"], owner["host"]):  # never another run's lock
            with contextlib.suppress(OSError):
                os.remove(path)


def _host() -> str:
    import socket

    return socket.gethostname()


def _read_lock(path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.load(handle)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_stale(holder: dict, path) -> bool:
    """Whether a lock is left over: its process, on this host, is gone; or it is empty and older than 10 s (a
    run killed between creating it and writing its owner)."""
    if not holder:
        try:
            return time.time() - os.path.getmtime(path) > 10
        except OSError:
            return True
    if holder.get("host") != _host() or not isinstance(holder.get("pid"), int):
        return False
    return not process_alive(holder["pid"])


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs, on Windows and POSIX alike (``os.kill(pid, 0)`` would signal the
    process on Windows); psutil comes with Dask."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def _held_message(holder: dict, path, label: str) -> str:
    if not holder:
        return (f"{os.path.dirname(path)} is in use by another votemi run (its lock {path} is being written); "
                "wait for it, or give another --out")
    where = "" if holder.get("host") == _host() else f" on {holder.get('host')}"
    return (f"{os.path.dirname(path)} is in use by votemi {holder.get('command', label)} (pid {holder.get('pid')}"
            f"{where}, started {holder.get('started', '?')}); wait for it or give another --out (if that run is "
            f"over, delete {path})")


def prepare_out(out: str) -> str:
    from .outputs import check_output_folder

    return check_output_folder(out, "--out folder")
