"""Files that survive a crash or a power loss, and one writer at a time per folder.

Every state file advrepair keeps (results.json, per-record arrays, per-batch evaluation
state, training state, checkpoints) is written the same way: to a temporary name in the
same folder, flushed and fsynced, renamed over the old file, and then the folder itself is
fsynced so the rename is on disk too. A crash at any point leaves either the old file or
the new one, never an empty or half-written one.

``FolderLock`` is the operating system's advisory lock (``fcntl.flock``) on
``<folder>/.advrepair.lock``. The kernel drops it when its holder dies, even by kill -9,
so a lock never outlives its process; the file names the last holder's PID and host for
the message a blocked writer prints.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Callable

from advrepair.errors import StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, writes stay durable
    fcntl = None  # type: ignore[assignment]  # the module or nothing: checked before each use

LOCK_NAME = ".advrepair.lock"


def _storage_error(exc: OSError, path: Path, what: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "permission denied or read-only file system"
    else:
        reason = exc.strerror or str(exc)
    return StorageError(exc.errno or 0, f"cannot {what} {path}: {reason}; the previous {path.name} (if any) is "
                                        f"unchanged")


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durably(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` with what ``write(file)`` writes, atomically and durably.

    Raises:
        StorageError: the disk is full, or the folder cannot be written; ``path`` is
            left as it was and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _storage_error(exc, path, "write") from exc
    fsync_folder(path.parent)


def write_text_durably(path: str | os.PathLike[str], text: str) -> None:
    data = text.encode()
    write_durably(path, lambda f: f.write(data))


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with a StorageError that names the folder instead of a traceback."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StorageError(errno.ENOTDIR, f"{folder} is a file; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage_error(exc, folder, "create the folder") from exc
    if not os.access(folder, os.W_OK):
        raise StorageError(errno.EACCES, f"cannot write to the folder {folder}: permission denied")
    return folder


class FolderLock:
    """An exclusive advisory lock on a folder, for the duration of a ``with`` block.

    Reentrant within a process: every FolderLock on the same folder shares one lock, so
    nested blocks (a store writing while the report holds the folder) never wait on
    themselves. A writer that cannot get it within ``timeout`` seconds gets a StorageError
    naming the holder.
    """

    _held: dict[str, list[int]] = {}  # folder -> [file descriptor, depth]
    _guard = threading.RLock()

    def __init__(self, folder: str | os.PathLike[str], timeout: float = 600.0) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.timeout = timeout
        self._id = str(Path(folder).resolve())

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "an unknown process"
        return f"PID {info.get('pid', '?')} on host {info.get('host', '?')}"

    def __enter__(self) -> "FolderLock":
        self._guard.acquire()
        held = self._held.get(self._id)
        if held is not None:
            held[1] += 1
            return self
        try:
            self._held[self._id] = [self._acquire(), 1]
        except BaseException:
            self._guard.release()
            raise
        return self

    def _acquire(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _storage_error(exc, self.path, "create the lock file") from exc
        if fcntl is None:
            return fd
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StorageError(errno.EAGAIN, f"{self.path.parent} is locked by {self.holder()} for more "
                                                     f"than {self.timeout:.0f} s; wait for it or stop it") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        return fd

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        held = self._held[self._id]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self._id]
            if fcntl is not None:
                fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])
        self._guard.release()
