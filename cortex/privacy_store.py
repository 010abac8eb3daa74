"""What data-subject requests and retention keep in the queue database.

- ``tombstones``: people whose events are dropped by the dispatcher (when
  ``privacy.drop_tombstoned`` is on).  A tombstone holds a SHA-256 digest of the org, the
  kind of identifier and each value it may be stored under, never the identifier itself.
- ``tombstone_drops``: how many records each sink's dispatcher thread dropped, per org.
- ``erasures``: one row per sink of a deletion request, done by the dispatcher's thread of
  that sink (it holds the sink open) or, when no dispatcher runs, by the requester.  The
  person's identifiers are kept only until the sink has done it.

It also erases and expires the queue's own logs (ingest error log, dead letters).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import orjson

from cortex.queue import SQLiteQueue
from cortex.subjects import IDENTITY_FIELDS, Subject, identity_digest

__all__ = ["PrivacyStore", "TombstoneFilter"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tombstones (
    id INTEGER PRIMARY KEY,
    org TEXT NOT NULL,
    kind TEXT NOT NULL,
    digest BLOB NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (org, kind, digest)
);
CREATE TABLE IF NOT EXISTS tombstone_drops (
    org TEXT NOT NULL,
    sink TEXT NOT NULL,
    dropped INTEGER NOT NULL,
    PRIMARY KEY (org, sink)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS erasures (
    id INTEGER PRIMARY KEY,
    request TEXT NOT NULL,
    sink TEXT NOT NULL,
    org TEXT NOT NULL,
    subject BLOB,
    status TEXT NOT NULL,
    removed INTEGER,
    error TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS erasures_pending ON erasures (sink, status);
CREATE INDEX IF NOT EXISTS erasures_request ON erasures (request);
"""

#: log tables the privacy operations and retention work on: table -> time column, and
#: whether the time is epoch seconds (else ISO 8601 text)
_LOGS = {"dead_letters": ("failed_at", True), "ingest_errors": ("received_at", False)}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class PrivacyStore:
    """The privacy tables of one queue database."""

    _created: set[str] = set()
    _created_lock = threading.Lock()

    def __init__(self, queue: SQLiteQueue):
        self.queue = queue
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        with self._created_lock:
            if self.queue.path in self._created:
                return
            with self.queue.write_lock():
                self.queue.reader.executescript(SCHEMA)
            self._created.add(self.queue.path)

    def _write(self, sql: str, params: Any = (), many: bool = False) -> sqlite3.Cursor:
        with self.queue.write_lock():
            conn = self.queue.reader
            return conn.executemany(sql, params) if many else conn.execute(sql, params)

    # tombstones ---------------------------------------------------------------------------
    def add_tombstone(self, subject: Subject) -> int:
        """Record a tombstone for every stored form of the subject's identifiers."""
        now = time.time()
        rows = [
            (subject.org, kind, identity_digest(subject.org, kind, value), now)
            for kind, values in subject.identities.items()
            for value in values
        ]
        self._write("INSERT OR IGNORE INTO tombstones (org, kind, digest, created_at) VALUES (?,?,?,?)",
                    rows, many=True)
        return len(rows)

    def tombstone_version(self) -> tuple[int, int]:
        """Changes whenever a tombstone is added or removed (cheap to ask each batch)."""
        return tuple(self.queue.reader.execute("SELECT coalesce(max(id), 0), count(*) FROM tombstones").fetchone())

    def tombstones(self) -> dict[str, dict[str, set[bytes]]]:
        """org -> kind -> digests."""
        result: dict[str, dict[str, set[bytes]]] = {}
        for org, kind, digest in self.queue.reader.execute("SELECT org, kind, digest FROM tombstones"):
            result.setdefault(org, {}).setdefault(kind, set()).add(bytes(digest))
        return result

    def remove_tombstone(self, subject: Subject) -> int:
        """Forget the tombstones of the subject (events of that person are accepted again)."""
        rows = [
            (subject.org, kind, identity_digest(subject.org, kind, value))
            for kind, values in subject.identities.items()
            for value in values
        ]
        cur = self._write("DELETE FROM tombstones WHERE org = ? AND kind = ? AND digest = ?", rows, many=True)
        return cur.rowcount

    def count_drops(self, sink: str, per_org: dict[str, int]) -> None:
        """Add to the counts of records a sink's thread dropped for tombstones."""
        self._write(
            "INSERT INTO tombstone_drops (org, sink, dropped) VALUES (?,?,?) "
            "ON CONFLICT (org, sink) DO UPDATE SET dropped = dropped + excluded.dropped",
            [(org, sink, n) for org, n in per_org.items()],
            many=True,
        )

    def drops(self) -> dict[str, dict[str, int]]:
        """org -> sink -> records dropped because of a tombstone."""
        result: dict[str, dict[str, int]] = {}
        for org, sink, dropped in self.queue.reader.execute("SELECT org, sink, dropped FROM tombstone_drops"):
            result.setdefault(org, {})[sink] = dropped
        return result

    # erasure requests ---------------------------------------------------------------------
    def request_erasure(self, subject: Subject, sinks: Iterable[str]) -> str:
        """Queue a deletion of ``subject`` for each sink; returns the request id."""
        request = uuid.uuid4().hex
        blob = orjson.dumps({"org": subject.org, "identities": {k: list(v) for k, v in subject.identities.items()}})
        now = time.time()
        self._write(
            "INSERT INTO erasures (request, sink, org, subject, status, created_at) VALUES (?,?,?,?,'pending',?)",
            [(request, sink, subject.org, blob, now) for sink in sinks],
            many=True,
        )
        return request

    def pending_erasures(self, sink: str) -> list[tuple[int, Subject]]:
        """The sink's deletions not done yet, oldest first."""
        rows = self.queue.reader.execute(
            "SELECT id, subject FROM erasures WHERE sink = ? AND status = 'pending' ORDER BY id", (sink,)
        ).fetchall()
        result = []
        for row_id, blob in rows:
            data = orjson.loads(blob)
            result.append((row_id, Subject(data["org"], {k: tuple(v) for k, v in data["identities"].items()})))
        return result

    def finish_erasure(self, row_id: int, removed: int | None, error: str | None = None) -> None:
        """Record the outcome of one sink's deletion and forget the person's identifiers."""
        self._write(
            "UPDATE erasures SET status = ?, removed = ?, error = ?, subject = NULL, done_at = ? WHERE id = ?",
            ("failed" if error else "done", removed, error, time.time(), row_id),
        )

    def erasure_status(self, request: str) -> dict[str, dict[str, Any]]:
        """sink -> {status, removed, error} of one request."""
        return {
            sink: {"status": status, "removed": removed, "error": error}
            for sink, status, removed, error in self.queue.reader.execute(
                "SELECT sink, status, removed, error FROM erasures WHERE request = ? ORDER BY id", (request,)
            )
        }

    # the queue's own logs -----------------------------------------------------------------
    def _matching_log_rows(self, subject: Subject, table: str) -> Iterator[tuple[int, dict]]:
        """(id, record) of the subject's rows in a queue log, oldest first."""
        where, params = ("org = ? AND", [subject.org]) if table == "ingest_errors" else ("", [])
        needles = [value.encode("utf-8") for value in subject.values()]
        last = 0
        while True:
            rows = self.queue.reader.execute(
                f"SELECT id, record FROM {table} WHERE {where} id > ? ORDER BY id LIMIT 1000", [*params, last]
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for row_id, blob in rows:
                text = bytes(blob)
                if any(needle in text for needle in needles):
                    record = orjson.loads(text)
                    if subject.matches(record):
                        yield row_id, record

    def log_records(self, subject: Subject, table: str) -> Iterator[dict]:
        """The subject's records in a queue log (``ingest_errors`` or ``dead_letters``)."""
        for _, record in self._matching_log_rows(subject, table):
            yield record

    def erase_logs(self, subject: Subject) -> dict[str, int]:
        """Delete the subject's rows from the ingest error log and the dead-letter store."""
        removed = {}
        for table in _LOGS:
            doomed = [row_id for row_id, _ in self._matching_log_rows(subject, table)]
            if doomed:
                with self.queue.write_lock():
                    conn = self.queue.reader
                    # zero the freed bytes, so that the identifiers do not linger in the file
                    conn.execute("PRAGMA secure_delete = ON")
                    try:
                        conn.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in doomed])
                    finally:
                        conn.execute("PRAGMA secure_delete = OFF")
            removed[table] = len(doomed)
        return removed

    def forget_errors(self, record_ids: list[str]) -> None:
        """Delete ingest-error-log rows of these record ids (records dropped for a tombstone)."""
        for start in range(0, len(record_ids), 500):
            chunk = record_ids[start:start + 500]
            self._write(f"DELETE FROM ingest_errors WHERE record_id IN ({','.join('?' * len(chunk))})", chunk)

    def expire_log(self, table: str, cutoff_epoch: float, batch: int) -> int:
        """Delete up to ``batch`` rows of a queue log older than ``cutoff_epoch``; returns how many."""
        column, epoch = _LOGS[table]
        cutoff: Any = cutoff_epoch if epoch else _iso(cutoff_epoch)
        # ids grow with time: only the oldest ``batch`` rows are looked at, never the whole
        # table (which would hold the queue's writer lock for long)
        cur = self._write(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT ?) AND {column} < ?",
            (batch, cutoff),
        )
        return cur.rowcount


@functools.lru_cache(maxsize=65536)
def _cached_digest(org: str, kind: str, value: str) -> bytes:
    # a batch holds many records of the same people: each tag is hashed once
    return identity_digest(org, kind, value)


class TombstoneFilter:
    """Drops the records of tombstoned people before a sink gets them (dispatcher side)."""

    def __init__(self, store: PrivacyStore, sink: str, enabled: bool):
        self.store = store
        self.sink = sink
        self.enabled = enabled
        self._version: tuple[int, int] | None = None
        self._tombstones: dict[str, dict[str, set[bytes]]] = {}

    def _refresh(self) -> None:
        version = self.store.tombstone_version()
        if version != self._version:
            self._tombstones = self.store.tombstones()
            self._version = version

    def _is_tombstoned(self, record: dict, kinds: dict[str, set[bytes]]) -> bool:
        org = record.get("org")
        places = [record]
        if record.get("kind") == "rejected":
            places += [p for p in (record.get("payload"), record.get("bundle")) if isinstance(p, dict)]
        for kind, digests in kinds.items():
            for name in IDENTITY_FIELDS[kind]:
                for place in places:
                    value = place.get(name)
                    if value is None or isinstance(value, (dict, list)):
                        continue
                    if _cached_digest(org, kind, str(value)) in digests:
                        return True
        return False

    def filter(self, records: list[dict]) -> list[dict]:
        """``records`` without those of tombstoned people; counts what it drops."""
        if not self.enabled:
            return records
        self._refresh()
        if not self._tombstones:
            return records
        kept, dropped, dropped_errors = [], {}, []
        for record in records:
            kinds = self._tombstones.get(record.get("org"))
            if kinds and self._is_tombstoned(record, kinds):
                dropped[record["org"]] = dropped.get(record["org"], 0) + 1
                if record.get("kind") == "rejected":
                    dropped_errors.append(record.get("id"))
                continue
            kept.append(record)
        if dropped:
            self.store.count_drops(self.sink, dropped)
            self.store.forget_errors(dropped_errors)
        return kept
