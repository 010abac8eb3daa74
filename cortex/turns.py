"""Turns: one process's request commits and its embedded dispatcher take turns at the CPU.

Under gunicorn the embedded dispatcher is a thread in one of the workers, so it shares that
worker's interpreter lock with the thread answering requests.  A request commit holds the
queue's writer lock, which every worker waits for; when the commit's thread has to wait for
the interpreter lock while the dispatcher runs Python (up to the switch interval, 5 ms), the
other workers wait with it and their CPUs go idle.  With a turn, the dispatcher delivers a
batch only while no commit of its process is under way, and a commit never starts in the
middle of a batch: the commit waits for the batch to end (outside the writer lock, where
the other workers can commit) and then runs without competition.

No one waits long: whoever holds the turn for longer than its ``patience`` (a slow sink, a
retry) is passed by, and the others go on without the turn until it is released.  After
each batch the dispatcher lets a waiting commit go first.
"""

from __future__ import annotations

import threading
import time

#: seconds a holder may keep the others waiting; after that they go on without the turn
PATIENCE = 0.05


class Turn:
    """A lock for taking turns whose waits are bounded by ``patience`` (see the module docstring)."""

    def __init__(self, patience: float = PATIENCE):
        self.patience = patience
        self._lock = threading.Lock()
        #: when the current holder took the turn
        self._since = 0.0
        #: set while someone waits for the turn, and when a waiter has taken it
        self._wanted = threading.Event()
        self._granted = threading.Event()

    def take(self) -> bool:
        """Take the turn, waiting while the holder is within its patience.

        Returns whether the turn was taken; the caller goes on either way, and calls
        :meth:`give_back` only when it was.
        """
        if self._lock.acquire(blocking=False):
            self._since = time.monotonic()
            return True
        wait = self._since + self.patience - time.monotonic()
        if wait <= 0:
            return False
        self._wanted.set()
        taken = self._lock.acquire(timeout=wait)
        self._wanted.clear()
        if taken:
            self._since = time.monotonic()
            self._granted.set()
        return taken

    def give_back(self, let_waiter_first: bool = False) -> None:
        """Release a turn :meth:`take` returned True for.

        With ``let_waiter_first`` (the dispatcher, after a batch), wait until a thread that
        was waiting for the turn has it, so that the releasing thread cannot take it again
        before the waiter wakes (a lock is not fair).
        """
        if not let_waiter_first:
            self._lock.release()
            return
        self._granted.clear()
        self._lock.release()
        if self._wanted.is_set():
            self._granted.wait(self.patience)
