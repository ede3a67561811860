"""Writing output files safely: checked before the work starts, replaced atomically when it ends.

A reader (or a crash, a full disk, Ctrl-C) never sees half a file: data goes to a temporary file
in the destination folder, is flushed to disk, and then renamed over the destination in one step.
Errors are :class:`OutputError` (an ``OSError``) whose one-line message names the file. An output
that is a symbolic link is written through to its target (the link stays); a FIFO, a device or a
socket is refused, never replaced by a regular file.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile


class OutputError(OSError):
    """An output file that cannot be written; the message names the file and says why."""

    def __str__(self) -> str:  # OSError's default adds errno noise; the message is the user's line
        return self.args[0] if self.args else "cannot write output"


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _make_folder(folder: str) -> None:
    """Create ``folder`` and its parents; the OSError names a file standing where a folder must be."""
    existing = folder
    while existing and not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if existing and os.path.exists(existing) and not os.path.isdir(existing):
        raise OSError(f"{existing} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create folder {folder}: {_reason(error)}") from None


def _writable_folder(folder: str, refusal: str, not_writable: str) -> None:
    """Create ``folder`` if missing and check that files can be made in it; OutputError ``"{refusal}: ..."`` with
    the OSError's reason, or with ``not_writable``, otherwise."""
    try:
        _make_folder(folder)
    except OSError as error:
        raise OutputError(f"{refusal}: {error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{refusal}: {not_writable}")


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _destination(path: str, what: str) -> str:
    """The regular file ``path`` stands for: a symbolic link's final target, so that the rename replaces the
    target and leaves the link in place. OutputError for a FIFO, device or socket: renaming over one would
    replace it (as root even ``/dev/stdout``) and its reader would get nothing."""
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return target  # missing (a new file, or a dangling link's target): created; other errors come later
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            raise OutputError(f"cannot write {what} {path}: it is {kind}, not a regular file; give a file path")
    return target


def check_output_file(path, what: str = "output file") -> str:
    """Check, before any work, that ``path`` can be written; return its absolute path.

    The parent folder is created if missing. A directory in the way, a read-only folder, a read-only
    existing file and a FIFO, device or socket are refused; a symbolic link is checked at its target.

    Raises
    ------
    OutputError
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"cannot write {what} {path}: it is a folder")
    target = _destination(path, what)
    folder = os.path.dirname(target)
    _writable_folder(folder, f"cannot write {what} {path}", f"folder {folder} is not writable")
    if os.path.exists(target) and not os.access(target, os.W_OK):
        raise OutputError(f"cannot write {what} {path}: the file is read-only")
    return path


def check_output_folder(folder, what: str = "output folder") -> str:
    """Check, before any work, that files can be written into ``folder`` (created if missing)."""
    folder = os.path.abspath(os.fspath(folder))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"cannot write into {what} {folder}: it is a file, not a folder")
    _writable_folder(folder, f"cannot write into {what} {folder}", "it is not writable")
    return folder


def write_atomic(path, data, what: str = "output file", encoding: str = "utf-8") -> str:
    """Write ``data`` (str or bytes) to ``path`` so that the file is either the old one or the new one.

    Returns the absolute path. A symbolic link is written through: its target is replaced, the link stays.

    Raises
    ------
    OutputError
        Naming the file, when the folder or the file cannot be written (nothing is left behind), or when
        it is a FIFO, a device or a socket.
    """
    given = os.path.abspath(os.fspath(path))
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    path = _destination(given, what)
    folder = os.path.dirname(path)
    temporary = None
    try:
        _make_folder(folder)
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        if os.path.exists(path):
            # Keep the permissions the user gave the file it replaces.
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        raise OutputError(f"cannot write {what} {given}: {_reason(error)}") from None
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
    return given


def write_json_atomic(path, document, what: str = "JSON file", indent: int = 1) -> str:
    """Serialise ``document`` (strict JSON: NaN and infinity refused) and write it atomically."""
    try:
        text = json.dumps(document, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        raise OutputError(f"cannot write {what} {os.path.abspath(os.fspath(path))}: {error}") from None
    return write_atomic(path, text + "\n", what=what)


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()
