"""The LMDB ingest store: where requests commit their events, in front of ``queue.db``, when
the queue is made with ``queue.ingest = "lmdb"`` (or moved to it by ``cortex queue reshard``).

A request's commit is the one write every ingest request makes, and under gunicorn it
was most of what a request cost beyond the framework's floor.  Not SQLite's work itself
(in one process a 1-event commit takes some 25 µs) but what several processes writing one
file cost it: each commit found the file changed by another worker, dropped its page cache
and read the pages back, and took and released five locks with as many system calls.
LMDB is a B-tree in a memory map built for many processes: every process reads the one map
of the file, so nothing is read back after another process wrote, and a writer takes a
mutex in shared memory (no system call while nobody waits).  On the 2-core development
machine a 1-event request cost 0.23 ms of CPU with it against 0.29 with SQLite ingest
shards (see the README's *Performance*).

The store is one LMDB environment, the file ``<queue>.ingest.mdb`` (and its lock file
``<queue>.ingest.mdb-lock``), with these databases:

- ``dedupe``: the dedupe keys, each behind its device's group (as in ``queue.db``), to the
  second it was first seen (8 bytes, big-endian);
- ``entries``: one per request with events to store, by its seq (8 bytes, big-endian; one
  more than the last, never reused), holding a JSON header (org, app id, count, running
  total, enqueued at, and the request's accepted, duplicate and rejected counts), a newline,
  and the records as ``queue.db`` stores them;
- ``errors``: the rejected events of those requests for the ingest error log, by id;
- ``counts``: the duplicates of requests whose events were all duplicates (no entry);
- ``meta``: the last seq and error id given out.

The dispatcher moves the entries into ``queue.db`` (:meth:`LMDBIngest.move_into`), as it
moves the entries of SQLite ingest shards, and everything downstream is the same.  A
commit is in the operating system's hands when it returns, so it survives ``kill -9`` of
any process; with ``durability = "fsync"`` it is also synced to disk (group-committed).
Without syncs LMDB stays consistent only where the filesystem keeps the order of writes,
which ext4 and XFS do not promise: a power cut or kernel crash can leave the file corrupt,
where SQLite's WAL loses at most the last commits.  That is why SQLite ingest shards stay
the default.
A process killed while it holds the writer mutex does not block the others: LMDB's mutex
is robust, and the next writer rolls the dead one's transaction back.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import lmdb
import orjson

from cortex.pid import current_pid
from cortex.queue import NEWEST_SEQ, NEWEST_TOTAL, GroupCommit, Submission, entry_blob, settle, write_transaction

__all__ = ["LMDBIngest", "ingest_path"]

#: the most the store's file may grow to by default (``queue.ingest_max_bytes``): address
#: space reserved, not disk; the file grows as it is written, and moved entries' pages are
#: reused
MAP_SIZE = 64 << 30
#: entries moved into the queue per transaction of the queue
MOVE_BATCH = 2000


def ingest_path(queue_path: str, generation: int = 0) -> str:
    """The LMDB file of the queue at ``queue_path``: ``queue.ingest.mdb`` for ``queue.db``,
    ``queue.ingest.g2.mdb`` for one that ``cortex queue reshard`` gave the store in its
    second generation."""
    stem, _ = os.path.splitext(queue_path)
    return f"{stem}.ingest{f'.g{generation}' if generation else ''}.mdb"


def _number(value: int) -> bytes:
    return value.to_bytes(8, "big")


def _value(data: bytes | None) -> int:
    return int.from_bytes(data, "big") if data else 0


def _first_key(txn, db) -> float:
    """The first key of ``db`` as a number (infinity: ``db`` is empty)."""
    cursor = txn.cursor(db=db)
    return _value(cursor.key()) if cursor.first() else float("inf")


def _start(cursor, after: bytes | None) -> bool:
    """Put ``cursor`` on the first key after ``after`` (None, or empty: the first key); False
    when there is none."""
    return cursor.set_range(after + b"\0") if after else cursor.first()


def _split(value: bytes) -> tuple[list, bytes]:
    """An entry's or error row's header (a JSON list) and the bytes after it."""
    cut = value.index(b"\n")
    return orjson.loads(value[:cut]), value[cut + 1:]


class _OpenEnvironments:
    """The environments this process has open, shared by every :class:`LMDBIngest` of a
    file: LMDB allows one per file and process (its locks belong to the process)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        #: real path -> [environment, its databases, users]
        self._open: dict[str, list] = {}

    def acquire(self, path: str, durability: str, map_size: int) -> tuple[lmdb.Environment, dict[bytes, Any]]:
        """The environment of ``path`` and its databases, opened if no one has it open."""
        with self._lock:
            if self._pid != current_pid():
                # a forked child: its parent's environments are not its own, and closing
                # them here would end the parent's reads.  It cannot open a file its parent
                # had open at the fork either (py-lmdb refuses), so a process that forks
                # workers (gunicorn's master) lets go of the store first (create_schema)
                self._pid = current_pid()
                self._open = {}
            key = os.path.realpath(path)
            if key not in self._open:
                os.makedirs(os.path.dirname(key), exist_ok=True)
                env = lmdb.open(
                    path, map_size=map_size, subdir=False, max_dbs=8, max_readers=1024,
                    sync=durability == "fsync", metasync=durability == "fsync", readahead=False,
                )
                dbs = {name: env.open_db(name) for name in (b"dedupe", b"entries", b"errors", b"counts", b"meta")}
                self._open[key] = [env, dbs, 0]
            held = self._open[key]
            held[2] += 1
            return held[0], held[1]

    def release(self, path: str) -> None:
        """One user fewer of ``path``'s environment; the last one closes it."""
        with self._lock:
            key = os.path.realpath(path)
            held = self._open.get(key)
            if held is None or self._pid != current_pid():
                return
            held[2] -= 1
            if held[2] <= 0:
                del self._open[key]
                held[0].close()


_OPEN = _OpenEnvironments()


class LMDBIngest(GroupCommit):
    """The ingest store of one queue (see the module docstring).  One instance per process;
    safe to share between its threads.  ``turn_of``: the queue whose turn the commits take
    (:mod:`cortex.turns`)."""

    unavailable_errors = (lmdb.Error,)

    def __init__(self, path: str, durability: str = "os", turn_of=None, max_bytes: int | None = None):
        self.path = path
        self.durability = durability
        #: the most the file may grow to (LMDB's map size)
        self.max_bytes = int(max_bytes or MAP_SIZE)
        self._turn_of = turn_of
        self._pid = None
        self._env: lmdb.Environment | None = None
        self._dbs: dict[bytes, Any] = {}
        #: where the next sweep of expired dedupe keys starts
        self._dedupe_sweep = b""
        self._init_group_commit()

    # the environment -----------------------------------------------------------------------
    @property
    def env(self) -> lmdb.Environment:
        """This process's environment of the store (an environment must not cross a fork)."""
        if self._env is None or self._pid != current_pid():
            self._pid = current_pid()
            self._env, self._dbs = _OPEN.acquire(self.path, self.durability, self.max_bytes)
        return self._env

    def db(self, name: bytes):
        """One of the store's databases (``b"entries"``, ...)."""
        self.env
        return self._dbs[name]

    def create_schema(self) -> None:
        """Create the file and its databases (idempotent).  The environment is closed again
        unless it was open: a process must not hold it open when it forks (a gunicorn
        master), since its children could then not open it."""
        was_open = self._env is not None and self._pid == current_pid()
        self.env
        if not was_open:
            self.close()

    def close(self) -> None:
        """Let go of this process's environment (closed once no instance uses it)."""
        if self._env is not None and self._pid == current_pid():
            _OPEN.release(self.path)
        self._env = None

    # ingest --------------------------------------------------------------------------------
    def _commit_group(self, group: list[tuple[Submission, dict]]) -> None:
        turn = self._turn_of.turn if self._turn_of is not None else None
        taken = turn.take() if turn is not None else False
        try:
            self._commit_locked(group)
        except lmdb.MapFullError:
            raise lmdb.MapFullError(
                f"the ingest store {self.path} is full ({self.max_bytes} bytes, queue.ingest_max_bytes): the "
                "dispatcher moves entries out of it as it delivers; if it runs, raise the setting") from None
        finally:
            if taken:
                turn.give_back()

    def _commit_locked(self, group: list[tuple[Submission, dict]]) -> None:
        env = self.env
        dedupe, entries, errors, counts, meta = (self._dbs[n] for n in (b"dedupe", b"entries", b"errors", b"counts",
                                                                       b"meta"))
        now = time.time()
        seen = _number(int(now))
        with env.begin(write=True) as txn:
            seq = _value(txn.get(b"seq", db=meta))
            error_id = _value(txn.get(b"error_id", db=meta))
            total = None
            duplicates: dict[str, int] = {}
            for submission, _ in group:
                prefix = submission.key_group
                fresh = {key for key, _ in submission.accepted + submission.rejected
                         if txn.put(prefix + key, seen, overwrite=False, db=dedupe)}
                records, rejected = settle(submission, fresh)
                if records or rejected:
                    count = len(records) + len(rejected)
                    if total is None:
                        total = self._newest_total(txn)
                    total += count
                    seq += 1
                    header = orjson.dumps([submission.org, submission.app_id, count, total, now,
                                           submission.accepted_count, submission.duplicate_count,
                                           submission.rejected_count])
                    if not txn.put(_number(seq), header + b"\n" + entry_blob(submission, records, rejected),
                                   db=entries, append=True):
                        raise lmdb.Error(f"entry {seq} exists already in {self.path}")
                    for record in rejected:
                        error_id += 1
                        header = orjson.dumps([submission.org, submission.app_id, record["id"],
                                               record["received_at"], record.get("request_id")])
                        if not txn.put(_number(error_id), header + b"\n" + orjson.dumps(record), db=errors,
                                       append=True):
                            raise lmdb.Error(f"ingest error {error_id} exists already in {self.path}")
                elif submission.duplicate_count:
                    duplicates[submission.org] = duplicates.get(submission.org, 0) + submission.duplicate_count
            for org, value in duplicates.items():
                key = org.encode() + b"\0duplicate"
                txn.put(key, _number(_value(txn.get(key, db=counts)) + value), db=counts)
            if total is not None:
                txn.put(b"seq", _number(seq), db=meta)
                txn.put(b"error_id", _number(error_id), db=meta)

    def _newest_total(self, txn) -> int:
        """The running total of the newest entry (0: none)."""
        cursor = txn.cursor(db=self._dbs[b"entries"])
        if not cursor.last():
            return _value(txn.get(b"total", db=self._dbs[b"meta"]))
        return _split(cursor.value())[0][3]

    def probe_writable(self, timeout: float = 2.0) -> None:
        """Raise ``lmdb.Error`` when the store cannot be written now (the readiness check).
        ``timeout`` does not apply: an LMDB writer waits for the writer mutex, which no one
        holds for longer than a commit or a move's deletion (a dead holder's is released)."""
        with self.env.begin(write=True) as txn:
            txn.put(b"probe", b"", db=self._dbs[b"meta"])
            txn.delete(b"probe", db=self._dbs[b"meta"])

    # moving into the queue -----------------------------------------------------------------
    def move_into(self, queue, mark_shard: int) -> int:
        """Append the entries and ingest-error rows after the queue's mark for this store to
        ``queue`` (a :class:`~cortex.queue.SQLiteQueue` with ``shard_marks``), then delete
        them here; returns how many entries.  Safe to call from any process at any time."""
        moved = 0
        while True:
            count, seq_mark, error_mark = self._append_to(queue, mark_shard)
            self._forget(seq_mark, error_mark)
            moved += count
            if count < MOVE_BATCH:
                return moved

    def _append_to(self, queue, mark_shard: int) -> tuple[int, int, int]:
        conn = queue.reader
        with queue.write_lock(), write_transaction(conn):
            mark = conn.execute("SELECT seq, error_id FROM shard_marks WHERE shard = ?", (mark_shard,)).fetchone()
            seq_mark, error_mark = mark if mark else (0, 0)
            rows, errors = [], []
            with self.env.begin() as txn:
                cursor = txn.cursor(db=self._dbs[b"entries"])
                if cursor.set_range(_number(seq_mark + 1)):
                    for key, value in cursor:
                        (org, app_id, count, _, enqueued_at, accepted, duplicate, rejected), blob = _split(value)
                        rows.append((_value(key), org, app_id, count, blob, enqueued_at, accepted, duplicate,
                                     rejected))
                        if len(rows) >= MOVE_BATCH:
                            break
                if not rows:
                    return 0, seq_mark, error_mark
                # error rows are written with their entries: these are of the entries moved
                # or of later ones, which may go first
                cursor = txn.cursor(db=self._dbs[b"errors"])
                if cursor.set_range(_number(error_mark + 1)):
                    for key, value in cursor:
                        (org, app_id, record_id, received_at, request_id), record = _split(value)
                        errors.append((_value(key), org, app_id, record_id, received_at, record, request_id))
            seq, total = conn.execute(f"SELECT {NEWEST_SEQ}, {NEWEST_TOTAL}").fetchone()
            appended = []
            for position, (_, org, app_id, count, blob, enqueued_at, accepted, duplicate, rejected) in enumerate(rows):
                total += count
                appended.append((seq + position + 1, org, app_id, count, total, blob, enqueued_at, accepted,
                                 duplicate, rejected))
            conn.executemany(
                "INSERT INTO entries (seq, org, app_id, count, total, records, enqueued_at, accepted, duplicate, "
                "rejected) VALUES (?,?,?,?,?,?,?,?,?,?)", appended)
            if errors:
                conn.executemany(
                    "INSERT INTO ingest_errors (org, app_id, record_id, received_at, record, request_id) "
                    "VALUES (?,?,?,?,?,?)", [row[1:] for row in errors])
            seq_mark = rows[-1][0]
            error_mark = errors[-1][0] if errors else error_mark
            conn.execute(
                "INSERT INTO shard_marks (shard, seq, error_id) VALUES (?,?,?) ON CONFLICT (shard) "
                "DO UPDATE SET seq = excluded.seq, error_id = excluded.error_id", (mark_shard, seq_mark, error_mark))
        return len(rows), seq_mark, error_mark

    def _forget(self, seq_mark: int, error_mark: int) -> None:
        """Delete what the queue has (up to the marks); the next seq still follows them."""
        entries, errors, meta = self._dbs[b"entries"], self._dbs[b"errors"], self._dbs[b"meta"]
        with self.env.begin() as txn:
            if _first_key(txn, entries) > seq_mark and _first_key(txn, errors) > error_mark:
                return
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=entries)
            last_total = None
            while cursor.first() and _value(cursor.key()) <= seq_mark:
                last_total = _split(cursor.value())[0][3]
                cursor.delete()
            if last_total is not None:
                # the running total goes on from the last entry forgotten when none is left
                txn.put(b"total", _number(last_total), db=meta)
            cursor = txn.cursor(db=errors)
            while cursor.first() and _value(cursor.key()) <= error_mark:
                cursor.delete()

    # what is not moved yet ------------------------------------------------------------------
    def backlog(self, mark: int) -> tuple[int, int, float | None]:
        """Entries and records after seq ``mark``, and when the oldest of them was queued."""
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._dbs[b"entries"])
            if not cursor.set_range(_number(mark + 1)):
                return 0, 0, None
            first_seq = _value(cursor.key())
            _, _, count, total, enqueued_at, *_ = _split(cursor.value())[0]
            cursor.last()
            newest_seq, newest_total = _value(cursor.key()), _split(cursor.value())[0][3]
        return newest_seq - first_seq + 1, newest_total - total + count, enqueued_at

    def unmoved_counts(self, mark: int) -> list[tuple[str, str, int]]:
        """(org, name, value) rows: the counts of the entries after seq ``mark`` and of the
        all-duplicate requests."""
        with self.env.begin() as txn:
            rows = self._counts(txn)
            cursor = txn.cursor(db=self._dbs[b"entries"])
            if cursor.set_range(_number(mark + 1)):
                for _, value in cursor:
                    header = _split(value)[0]
                    rows.extend((header[0], name, count) for name, count in
                                zip(("accepted", "duplicate", "rejected"), header[5:8]))
        return rows

    def _counts(self, txn) -> list[tuple[str, str, int]]:
        rows = []
        for key, value in txn.cursor(db=self._dbs[b"counts"]):
            org, name = key.split(b"\0", 1)
            rows.append((org.decode(), name.decode(), _value(value)))
        return rows

    # housekeeping ----------------------------------------------------------------------------
    def prune_dedupe(self, window_seconds: float, batch: int = 20000) -> int:
        """Forget the dedupe keys older than the window among the next ``batch`` keys looked
        at (a sweep in key order that starts over at the end); returns how many."""
        cutoff = int(time.time() - window_seconds)
        dedupe = self.db(b"dedupe")
        expired = []
        with self.env.begin() as txn:
            cursor = txn.cursor(db=dedupe)
            found = _start(cursor, self._dedupe_sweep)
            looked = 0
            last = b""
            while found and looked < batch:
                last = cursor.key()
                if _value(cursor.value()) < cutoff:
                    expired.append(last)
                looked += 1
                found = cursor.next()
            self._dedupe_sweep = last if found else b""
        if not expired:
            return 0
        removed = 0
        with self.env.begin(write=True) as txn:
            for key in expired:
                # checked again: another process may have deleted it meanwhile and a
                # request claimed it anew, and that claim must stay
                if _value(txn.get(key, db=dedupe)) < cutoff and txn.delete(key, db=dedupe):
                    removed += 1
        return removed

    def key_chunks(self, size: int):
        """Every (key, seen) of the dedupe keys, ``size`` at a time (for a reshard)."""
        after = None
        while True:
            with self.env.begin() as txn:
                cursor = txn.cursor(db=self._dbs[b"dedupe"])
                found = _start(cursor, after)
                rows = []
                while found and len(rows) < size:
                    rows.append((cursor.key(), _value(cursor.value())))
                    found = cursor.next()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def counts(self) -> list[tuple[str, str, int]]:
        """(org, name, value): the counts of the all-duplicate requests (for a reshard)."""
        with self.env.begin() as txn:
            return self._counts(txn)

    def held_rows(self) -> int:
        """How many entries and ingest-error rows the store holds."""
        with self.env.begin() as txn:
            return sum(txn.stat(self.db(name))["entries"] for name in (b"entries", b"errors"))

    def add_keys(self, rows: list[tuple[bytes, int]]) -> None:
        """Store dedupe keys (key, seen) that are not there yet, in one transaction."""
        dedupe = self.db(b"dedupe")
        with self.env.begin(write=True) as txn:
            for key, seen in rows:
                txn.put(bytes(key), _number(seen), overwrite=False, db=dedupe)

    def sync(self) -> None:
        """Flush the store to disk (after a reshard wrote it)."""
        self.env.sync(True)

    def checkpoint(self) -> None:
        """Clear the reader slots of processes that died in a read (LMDB would otherwise keep
        the pages they could see)."""
        self.env.reader_check()
