"""One writer per output folder: an flock on the folder's .lock file, which the operating system releases when the
process ends, however it ends (a killed run leaves no stale lock). On Linux, flock works across the machines of an
NFS share too.

The lock is held until `release_folder` or the end of the process. A process that holds it may take it again (a test
calling a script's main twice on one folder); another process is refused at once, with no wait.
"""

import fcntl
import os

LOCK_FILE = ".lock"
_held = {}  # (device, inode) of a lock file -> its open descriptor, kept open while the process lives


def hold_folder(folder, flag, script):
    """Creates `folder` if needed and takes its lock for this process; a ValueError says when another process
    (a run of `script`, its output passed as `flag`) writes the folder."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    status = os.fstat(fd)
    key = (status.st_dev, status.st_ino)
    if key in _held:
        os.close(fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"{flag} {folder} is being written by another run of {script} (it holds {path}; `fuser -v {path}` "
            f"names it): wait for it to end, or choose another {flag}"
        ) from None
    _held[key] = fd


def release_folder(folder):
    """Gives up this process's lock of `folder` (nothing when it holds none)."""
    try:
        status = os.stat(os.path.join(folder, LOCK_FILE))
    except FileNotFoundError:
        return
    fd = _held.pop((status.st_dev, status.st_ino), None)
    if fd is not None:
        os.close(fd)  # which releases the flock
