"""An exclusive, non-blocking lock on a directory, so that two processes never append to
the same files (their lines would interleave and the duplicate check would be wrong)."""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryLock", "DirectoryLocked"]


class DirectoryLocked(RuntimeError):
    """Another process (or another open sink) already writes to the directory."""


class DirectoryLock:
    """``flock`` on a lock file; released by :meth:`release` or when the process ends."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DirectoryLocked` at once."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                raise DirectoryLocked(
                    f"{self.path.parent} is in use by another file sink (lock {self.path} is "
                    "held); give each sink its own path"
                ) from error
        self._fd = fd

    def release(self) -> None:
        """Release the lock (harmless when not held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
