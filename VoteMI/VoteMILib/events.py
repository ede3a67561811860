"""The ``--events`` contract of ``votemi select|describe|models``, and a thread-free reader of it.

With ``--events`` a command writes one JSON object per line on stdout, flushed after each line,
and nothing else (everything meant for people goes to stderr). Every object has ``"event"``:

* ``progress``: ``fraction`` (0..1 of the selection), ``message``;
* ``selection``: ``selection``, the selection document of ``votemi select --json``;
* ``text``: ``text``, the next piece of the report as the model streams it;
* ``findings``: ``findings``, the report as findings citing their images (before ``report``);
* ``report``: ``report`` (the model's text), ``report_meta``, ``complete``;
* ``dicom``: ``dicom_export``, the files and references ``describe --dicom-out`` wrote;
* ``models``: ``server``, ``models`` (``votemi models``);
* ``capabilities``: ``capabilities`` (what the model accepts), ``summary`` (one line) (``votemi models --probe``);
* ``error``: ``message``, the one line the command prints after ``votemi: error:``;
* ``done``: ``exit_code``, always the last line of a command that ran.

:class:`ChildProcess` runs such a command and reads its events without a reader thread: inside
Slicer a Python thread only runs while the GUI thread executes Python, so the GUI polls
:meth:`ChildProcess.poll` from a timer instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

# The event kinds (each object's "event"), named once so that writers and readers cannot drift apart.
PROGRESS = "progress"
SELECTION = "selection"
TEXT = "text"
FINDINGS = "findings"
REPORT = "report"
DICOM = "dicom"
MODELS = "models"
CAPABILITIES = "capabilities"
ERROR = "error"
DONE = "done"
#: Not written by a command: what :meth:`ChildProcess.poll` makes of an output line that is not an event.
LOG = "log"

#: The writer of the command running in event mode, if any.
_active = None


class EventWriter:
    """Writes events as JSON lines to a stream, flushing each line."""

    def __init__(self, stream):
        self._stream = stream

    def emit(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False, separators=(",", ":"), default=_plain)
        self._stream.write(line + "\n")
        self._stream.flush()

    def progress(self, fraction, message="") -> None:
        self.emit(PROGRESS, fraction=round(float(fraction), 4), message=str(message or ""))

    def text(self, chunk: str) -> None:
        if chunk:
            self.emit(TEXT, text=chunk)


def _plain(value):
    """JSON form of numpy scalars and arrays inside event fields."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class Session:
    """What :func:`session` yields: set ``exit_code`` before leaving."""

    exit_code = 0


@contextmanager
def session(enabled: bool):
    """Run a command in event mode if ``enabled``: stdout carries events only, ``done`` comes last.

    While it runs, ``print`` goes to stderr, so the summaries meant for people never mix with events.
    """
    global _active
    state = Session()
    if not enabled:
        yield state
        return
    stdout = sys.stdout
    _active = EventWriter(stdout)
    sys.stdout = sys.stderr
    try:
        yield state
    finally:
        sys.stdout = stdout
        writer, _active = _active, None
        writer.emit(DONE, exit_code=int(state.exit_code))


def active():
    """The :class:`EventWriter` of the command running in event mode, or None."""
    return _active


def emit(event: str, **fields) -> None:
    """Emit an event if a command runs in event mode; do nothing otherwise."""
    if _active is not None:
        _active.emit(event, **fields)


def progress_callback():
    """``progress(fraction, message)`` for the selection in event mode, else None."""
    return _active.progress if _active is not None else None


def print_error(message: str) -> None:
    """The command line's one-line error on stderr, and as an ``error`` event in event mode."""
    message = " ".join(str(message).split())
    print(f"votemi: error: {message}", file=sys.stderr)
    emit(ERROR, message=message)


# --------------------------------------------------------------------------------------------
# Reading a child's events


_WINDOWS = os.name == "nt"


class ChildProcess:
    """A command in a child process whose ``--events`` output is read without blocking.

    Parameters
    ----------
    argv : list of str
        The command, e.g. ``[sys.executable, "-m", "VoteMILib.cli", "select", path, "--events"]``.
    env : dict, optional
        Its environment (secrets go here, never into ``argv``).

    The child gets its own process group, so :meth:`kill` ends it and anything it started.
    """

    #: Bytes of stderr kept for the error message of a child that ended without an ``error`` event.
    STDERR_KEPT = 64 * 1024
    #: How long taskkill may take to end the child's process tree on Windows before the child alone is ended (s).
    WINDOWS_TREE_KILL_S = 1.0

    def __init__(self, argv, env=None, cwd=None):
        options = {}
        if not _WINDOWS:
            options["start_new_session"] = True
        else:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self.process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, cwd=cwd, **options)
        for pipe in (self.process.stdout, self.process.stderr):
            os.set_blocking(pipe.fileno(), False)
        self._pending = bytearray()
        self._stderr = bytearray()
        self._open = {"stdout": True, "stderr": True}
        self.exit_code = None

    def _read(self, pipe, name) -> bytes:
        chunks = []
        while self._open[name]:
            try:
                chunk = os.read(pipe.fileno(), 65536)
            except BlockingIOError:
                break
            except OSError:  # closed under us (killed)
                chunk = b""
            if not chunk:
                self._open[name] = False
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def poll(self) -> list:
        """Events that arrived since the last call (lines that are not JSON come as ``log`` events)."""
        self._stderr += self._read(self.process.stderr, "stderr")
        del self._stderr[:-self.STDERR_KEPT]
        self._pending += self._read(self.process.stdout, "stdout")
        *lines, rest = bytes(self._pending).split(b"\n")
        if not self._open["stdout"] and rest:
            lines, rest = [*lines, rest], b""
        self._pending = bytearray(rest)
        events = []
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            events.append(event if isinstance(event, dict) and "event" in event else {"event": LOG, "text": text})
        if not self._open["stdout"] and self.exit_code is None:
            self.exit_code = self.process.poll()
        return events

    @property
    def finished(self) -> bool:
        """True once the child has exited and all of its output was read."""
        return not self._open["stdout"] and self.exit_code is not None

    def stderr_tail(self) -> str:
        """The last non-empty line the child wrote to stderr."""
        lines = [line.strip() for line in self._stderr.decode("utf-8", errors="replace").splitlines()]
        lines = [line for line in lines if line]
        return lines[-1] if lines else ""

    def stderr_text(self) -> str:
        """What the child wrote to stderr (its last ``STDERR_KEPT`` bytes), for an error's details."""
        return self._stderr.decode("utf-8", errors="replace").strip()

    def kill(self) -> None:
        """End the child and its process group now, and reap it."""
        if self.process.poll() is None:
            try:
                if _WINDOWS:
                    self._kill_windows_tree()
                else:
                    os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()
        self.exit_code = self.process.returncode
        self.close()

    def _kill_windows_tree(self) -> None:
        # taskkill /T also ends what the child started; it gets no console window (a flash of one, and a
        # wait for it, on every Cancel otherwise) and is not waited for: the child itself is ended below.
        no_window = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            subprocess.Popen(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, creationflags=no_window)
        except OSError:
            pass
        try:
            self.process.wait(timeout=self.WINDOWS_TREE_KILL_S)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def close(self) -> None:
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        self._open = {"stdout": False, "stderr": False}
