"""The in-process rate-limit storage behind ``rate_limits.storage_uri = "memory://"``.

It is flask-limiter's memory storage (:class:`limits.storage.MemoryStorage`) with one
change.  That storage expires counters in a ``threading.Timer`` that it starts again, as
a new thread, on the first counter change after the previous timer ran: under steady load,
a thread every 10 ms, and the request that starts it waits for the thread to come up
(2-3 ms on a busy machine, and +50 µs of CPU per request on average in
``bench/ratelimit_bench.py``).  Here expired counters are swept inline instead, at most
once every :data:`SWEEP_SECONDS`, by the request that finds the sweep due; a counter read
after its window has ended is reset on the spot as before, so the sweep only bounds memory.

:meth:`SweepingMemoryStorage.count` is its ``incr`` for the fixed-window check of every
ingest request: ``limits`` wraps each storage's ``incr`` and ``get`` in an error-translating
layer, once per class (so twice here), and ``incr`` calls ``get``; four wrapper calls, two
clock reads and repeated lookups made the two limits of a request cost about a tenth of a
1-event request in ``bench/ratelimit_bench.py``.
"""

from __future__ import annotations

import time

from limits.storage import MemoryStorage

#: how often expired counters of clients that went quiet are dropped
SWEEP_SECONDS = 5.0

#: the scheme Cortex gives flask-limiter for "memory://"
SCHEME = "cortex-memory"


class SweepingMemoryStorage(MemoryStorage):
    """:class:`MemoryStorage` without its expiry thread (see the module docstring)."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()  # the one timer the parent starts; no other follows
        self._next_sweep = time.monotonic() + SWEEP_SECONDS

    # MemoryStorage calls this (name-mangled) before every change of a counter
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            self._MemoryStorage__expire_events()

    def count(self, key: str, expiry: float) -> int:
        """Add one to the counter ``key`` and return it: ``incr(key, expiry)`` without the
        wrappers (see the module docstring).  A counter whose window has ended starts again
        at 1 and gets ``expiry`` seconds; ``get``, ``get_expiry`` and ``clear`` see the same
        counters."""
        now = time.time()
        expirations = self.expirations
        if expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            expirations.pop(key, None)
            self.locks.pop(key, None)
        self._MemoryStorage__schedule_expiry()
        with self.locks[key]:
            counters = self.storage
            value = counters[key] + 1
            counters[key] = value
            if value == 1:
                expirations[key] = now + expiry
        return value

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.timer.cancel()


def limiter_uri(uri: str) -> str:
    """The storage URI to give flask-limiter: ``memory://`` becomes this module's storage."""
    return SCHEME + uri[len("memory"):] if uri.startswith("memory://") else uri
