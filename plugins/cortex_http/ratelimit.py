"""A token bucket shared by the threads of one sink: its own request rate limit."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """Allows ``rate`` acquisitions a second on average, ``burst`` at once.

    ``rate`` 0 means unlimited.  :meth:`acquire` blocks the calling thread until a token
    is free; it is fair enough for a handful of sender threads.
    """

    def __init__(self, rate: float, burst: int | None = None):
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(1, int(rate)))
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        """Take one token, sleeping until one is available."""
        if self.rate <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)
