"""Files written whole or not at all: every checkpoint, log, descriptor file and export of the project.

A file is written to a temporary file in its folder (`.tmp-<host>-<pid>-<random><suffix>`), fsynced and
renamed over its path, so a crash at any point leaves the previous file or the new one, never a partial
file. The temporary file is removed on every error, and one left by a killed process is removed by the
next write in that folder (or by `remove_stale_temporary_files` at start-up). Files get the mode a plain
`open` gives (0666 less the umask).
"""

import contextlib
import errno
import os
import re
import secrets
import socket
import time

TEMPORARY_FILE = re.compile(r"^\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{16}(\.\w+)?$")
# A temporary file of another machine (or of a live process id) this long untouched is left from a crash:
# no single write takes that long.
STALE_AFTER_S = 6 * 3600


class WriteError(OSError):
    """A file could not be written; the message says why and that the previous file is intact."""


def _process_is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, run by another user
    return True


def remove_stale_temporary_files(folder):
    """Removes the temporary files that writes killed midway left in `folder`: those of this machine whose
    writing process is gone, and any untouched for STALE_AFTER_S. Other files, and the temporary files of
    writes in progress (another process, another machine), are left alone. Returns the names removed."""
    if not os.path.isdir(folder):
        return []
    host, removed = socket.gethostname(), []
    for name in sorted(os.listdir(folder)):
        match = TEMPORARY_FILE.match(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):  # another process of the run removed it first
            dead_writer = match["host"] == host and not _process_is_running(int(match["pid"]))
            if dead_writer or time.time() - os.stat(path).st_mtime > STALE_AFTER_S:
                os.remove(path)
                removed.append(name)
    if removed:
        print(
            f"removed {len(removed)} temporary files left by interrupted writes in {folder}: {', '.join(removed)}",
            flush=True,
        )
    return removed


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, what="file"):
    """Yields a temporary path for the caller to write `path`'s content to; on success the file is fsynced
    and renamed to `path`. An OSError (a full disk...) becomes a WriteError naming `what` and `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporary_files(folder)
    suffix = os.path.splitext(path)[1]
    tmp_path = os.path.join(folder, f".tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}{suffix}")
    try:
        yield tmp_path
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            previous = f"the previous {path} is intact" if os.path.exists(path) else f"no {path} was written"
            cause = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "the write failed"
            raise WriteError(e.errno, f"cannot write {what} {path}: {cause} ({e}); {previous}") from e
        raise
    _fsync_path(folder)


class _RecordingFile:
    """A binary file whose first write error is kept: torch.save turns it into an uninformative
    RuntimeError ("unexpected pos")."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except BaseException as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.file.flush()


@contextlib.contextmanager
def open_atomic(path, what="file"):
    """A UTF-8 text file to write `path`'s content to, atomically (see atomic_path); opened with newline="", as
    the csv module writes."""
    with atomic_path(path, what) as tmp_path:
        with open(tmp_path, "x", newline="", encoding="utf-8") as f:
            yield f


def write_atomic(path, write, what="file"):
    """Calls write(binary file) to give `path` its content, atomically (see atomic_path)."""
    with atomic_path(path, what) as tmp_path:
        with os.fdopen(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)
            except Exception as e:
                raise recording.error or e from None
