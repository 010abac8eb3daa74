"""API key lookups for the hot path, cached per process for a few seconds."""

from __future__ import annotations

import threading
import time

from cortex.control import ControlStore, KeyOwner


class KeyCache:
    """Answers "who owns this key?" from memory, asking the control database at most once per
    key every ``ttl`` seconds, so a revoked key stops working within ``ttl``.  Unknown keys
    are cached too, so a client hammering with a bad key does not reach the database."""

    def __init__(self, store: ControlStore, ttl: float = 5.0, max_entries: int = 100_000):
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, KeyOwner | None]] = {}
        self._lock = threading.Lock()

    def owner(self, key: str) -> KeyOwner | None:
        """The live owner of ``key``, or None when the key is unknown or revoked."""
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        owner = self.store.lookup_key(key)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (now + self.ttl, owner)
        return owner

    def clear(self) -> None:
        """Forget every cached answer (after a change made in this process)."""
        with self._lock:
            self._entries.clear()


class AppDirectory:
    """Answers "which app of this org has this name?" (the generic API's ``business_id``)
    from memory, reading an org's apps from the control database at most once every
    ``ttl`` seconds."""

    def __init__(self, store: ControlStore, ttl: float = 5.0, max_orgs: int = 10_000):
        self.store = store
        self.ttl = ttl
        self.max_orgs = max_orgs
        self._orgs: dict[str, tuple[float, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def app_id(self, org: str, name: str) -> int | None:
        """The id of app ``name`` of ``org``, or None when the org has no such app."""
        now = time.monotonic()
        cached = self._orgs.get(org)
        if cached is None or cached[0] <= now or (name not in cached[1] and cached[0] - self.ttl + 1 <= now):
            # an app created a moment ago is found within a second, not within ttl
            apps = self.store.org_apps(org)
            with self._lock:
                if len(self._orgs) >= self.max_orgs:
                    self._orgs.clear()
                self._orgs[org] = (now + self.ttl, apps)
            cached = self._orgs[org]
        return cached[1].get(name)
