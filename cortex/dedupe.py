"""Dedupe stores for queue backends that do not keep dedupe keys themselves (Kafka).

The SQLite queue claims keys in the same transaction as its entries.  A Kafka queue cannot:
its ingest nodes first look the keys up (:meth:`DedupeStore.seen`), produce the new events
and wait for the broker's acknowledgement, and only then remember the keys
(:meth:`DedupeStore.remember`).  A crash between the two costs a duplicate (the SDK's retry
is produced again, with the same record ids, which idempotent sinks absorb), never an event.

``[queue.dedupe] backend``: ``"redis"`` shares the keys between every ingest node (the
multi-node setup); ``"local"`` keeps them in the node's own queue database (one ingest node).
"""

from __future__ import annotations

import time
from typing import Iterable, Protocol

__all__ = ["DedupeStore", "LocalDedupe", "RedisDedupe", "make_dedupe"]


class DedupeStore(Protocol):
    """Where the dedupe keys of accepted events are kept for the dedupe window."""

    def seen(self, keys: list[bytes]) -> set[bytes]:
        """The keys of ``keys`` already remembered (within the window)."""

    def remember(self, keys: Iterable[bytes]) -> None:
        """Remember ``keys`` for the dedupe window."""

    def prune(self) -> int:
        """Forget expired keys (bounded work); returns how many."""


class RedisDedupe:
    """Keys in Redis with the window as their expiry; shared by every node."""

    def __init__(self, url: str, window_seconds: int, prefix: str = "cortex:dedupe:"):
        import redis

        self.url = url
        self.window = max(1, int(window_seconds))
        self.prefix = prefix.encode()
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _name(self, key: bytes) -> bytes:
        return self.prefix + key.hex().encode()

    def seen(self, keys: list[bytes]) -> set[bytes]:
        """One MGET for all the keys."""
        if not keys:
            return set()
        values = self._client.mget([self._name(key) for key in keys])
        return {key for key, value in zip(keys, values) if value is not None}

    def remember(self, keys: Iterable[bytes]) -> None:
        """One pipelined SET ... EX per key."""
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.set(self._name(key), b"1", ex=self.window)
        pipe.execute()

    def prune(self) -> int:
        """Redis expires the keys itself."""
        return 0

    def close(self) -> None:
        """Drop the connection pool."""
        self._client.close()


class LocalDedupe:
    """Keys in the ``dedupe`` table of this node's SQLite queue database."""

    def __init__(self, queue, window_seconds: int):
        self.queue = queue
        self.window = window_seconds

    def seen(self, keys: list[bytes]) -> set[bytes]:
        """Keys present in the table."""
        found: set[bytes] = set()
        conn = self.queue.reader
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            sql = f"SELECT key FROM dedupe WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(row[0] for row in conn.execute(sql, chunk))
        return found

    def remember(self, keys: Iterable[bytes]) -> None:
        """Insert the keys (one transaction)."""
        seen = int(time.time())
        self.queue._write("INSERT OR IGNORE INTO dedupe (key, seen) VALUES (?, ?)",
                          [(key, seen) for key in keys], many=True)

    def prune(self) -> int:
        """Expired keys go, as in the SQLite queue."""
        return self.queue.prune_dedupe(self.window)

    def close(self) -> None:
        """Nothing of its own to close."""


def make_dedupe(config: dict, local_queue) -> DedupeStore:
    """The dedupe store ``[queue.dedupe]`` configures."""
    from cortex.config import ConfigError, reveal

    settings = config["queue"]["dedupe"]
    window = int(config["ingest"]["dedupe_window_days"] * 86400)
    if settings["backend"] == "redis":
        return RedisDedupe(str(reveal(settings["url"])), window, settings["prefix"])
    if settings["backend"] == "local":
        return LocalDedupe(local_queue, window)
    raise ConfigError('queue.dedupe.backend must be "local" or "redis"')
