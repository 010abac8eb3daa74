"""Where requests commit, in front of the queue: ingest shards or the LMDB ingest store.

A queue made with ``queue.ingest = "lmdb"`` takes requests into its LMDB ingest store
(:mod:`cortex.queue_lmdb`), and :class:`ShardedQueue` moves the store's entries into the
queue as it moves the shards' (the store's mark is the ``shard_marks`` row
:data:`LMDB_MARK`).  The rest of this docstring is about SQLite ingest shards, the store of
queues made with ``queue.ingest = "sqlite"`` (the default).

Every request commit takes its queue file's writer lock, so the gunicorn workers of one
file take turns at it, and while one commits the other waits with a CPU idle.  With
``[queue] shards = N`` (N > 1) a request commits to one of N *ingest shards*
(``queue.shard0.db`` ...), chosen by its device (:func:`shard_of`), so two workers seldom
want the same file at once.  Each shard is a whole :class:`~cortex.queue.SQLiteQueue`: the
request's entry, dedupe keys and ingest-error rows are still one transaction, so a ``200``
means what it always meant.

The dispatcher *moves* the shards' entries into the queue (``queue.db``) before it reads
(:meth:`ShardedQueue.move`): in one transaction of the queue it appends them, each with the
queue's next seq, with their ingest-error rows, and records in ``shard_marks`` up to which
shard seq it has them (one ``INSERT ... SELECT`` from the shard, attached to the queue's
connection, so the records' bytes never pass through Python); then it deletes them from the
shard.  A move that dies between the two steps is finished by the next one, which skips
what the mark says is there.  Everything
downstream (sink cursors, the order of seqs that the file sink relies on, counters, dead
letters, the ingest error log, privacy, retention) works on the queue as without shards.

What holds it together:

- **Dedupe stays exact.**  A bundle's keys share its device's group
  (:func:`cortex.ingest.pipeline.key_group`), which chooses the shard, so a retry always
  meets its keys.  A device's entries are in one shard, moved in their order.
- **The number of shards is kept in the queue**, with the *generation* of its shard files:
  a running Cortex never changes it, since a device whose shard changed would meet none of
  its dedupe keys.  A queue made before shards existed has one, and with one shard requests
  commit to the queue itself, as they always did.  ``cortex queue reshard``
  (:mod:`cortex.queue_reshard`) changes it while nothing else uses the queue: every process
  that uses it holds a shared lock of ``<queue>.users`` (:meth:`ShardedQueue.exclusive_use`).
- **Counts and depths are exact**: what is not moved yet is added from the shards, and a
  read that a move overtook is read again.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import sqlite3
from contextlib import contextmanager
from typing import Any

from cortex.queue import (
    COUNTS,
    NEWEST_SEQ,
    NEWEST_TOTAL,
    SQLiteQueue,
    Submission,
    read_snapshot,
    records_after,
    write_transaction,
)
from cortex.queue_lmdb import LMDBIngest, ingest_path

__all__ = ["QueueInUse", "ShardedQueue", "detach_shards", "move_shards", "shard_of", "shard_path"]

log = logging.getLogger("cortex.queue")

#: entries moved from one shard per transaction of the queue
MOVE_BATCH = 2000
#: where requests commit: SQLite ingest shards (or ``queue.db``) or the LMDB ingest store
INGEST_STORES = ("sqlite", "lmdb")
#: the ``shard_marks`` row of the LMDB ingest store
LMDB_MARK = -1

_MARKS_SCHEMA = """
-- the number of shards, the generation of their files (see shard_path), and where requests
-- commit: "sqlite" (the shard files, or queue.db for one) or "lmdb" (cortex.queue_lmdb)
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    count INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    store TEXT NOT NULL DEFAULT 'sqlite'
);
-- up to which seq (and ingest-error id) each shard's rows are in the queue
CREATE TABLE IF NOT EXISTS shard_marks (
    shard INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    error_id INTEGER NOT NULL
);
"""


def move_shards(queue) -> int:
    """Move what a queue's ingest shards hold into it, before working on its logs (a queue
    without shards, or of another backend, has nothing to move); returns how many entries."""
    move = getattr(queue, "move", None)
    return move() if move is not None else 0


#: shards a connection keeps attached (SQLite attaches at most 10 databases at once);
#: the others are attached for each move and detached after it
KEPT_ATTACHED = 8


def _attach(conn: sqlite3.Connection, path: str, index: int) -> str:
    """The schema name under which ``conn`` reads shard ``index`` at ``path`` (attached if it
    is not, or if a reshard gave the shard another file)."""
    name = f"shard{index}" if index < KEPT_ATTACHED else "shard_other"
    attached = conn.execute("SELECT file FROM pragma_database_list WHERE name = ?", (name,)).fetchone()
    if attached is not None and attached[0] != _real_path(path):
        conn.execute("DETACH DATABASE " + name)
        attached = None
    if attached is None:
        conn.execute("ATTACH DATABASE ? AS " + name, (path,))
    return name


def detach_shards(conn: sqlite3.Connection) -> None:
    """Detach every shard that ``conn`` has attached (before their files go away)."""
    for (name,) in conn.execute("SELECT name FROM pragma_database_list WHERE name LIKE 'shard%'").fetchall():
        conn.execute("DETACH DATABASE " + name)


@functools.lru_cache(maxsize=256)
def _real_path(path: str) -> str:
    """``path`` as SQLite names an attached file (absolute, symbolic links resolved)."""
    return os.path.realpath(path)


def _release(conn: sqlite3.Connection, name: str) -> None:
    """Detach ``name`` again unless it is one of the shards kept attached."""
    if name == "shard_other":
        conn.execute("DETACH DATABASE shard_other")


def shard_path(path: str, index: int, generation: int = 0) -> str:
    """The file of ingest shard ``index`` of the queue at ``path``: ``queue.shard0.db`` for
    the shards the queue was made with, ``queue.shard0.g1.db`` once it was resharded."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.shard{index}{f'.g{generation}' if generation else ''}{ext or '.db'}"


class QueueInUse(Exception):
    """Another process (a server, a worker, a command) uses the queue."""


def shard_of(key_group: bytes, shards: int) -> int:
    """The shard of a submission whose keys share ``key_group`` (0 without one)."""
    if shards <= 1 or not key_group:
        return 0
    return int.from_bytes(key_group, "big") % shards


class ShardedQueue:
    """The embedded queue with its ingest shards (see the module docstring).  One instance
    per process, as :class:`SQLiteQueue`; what it does not define is the queue's own."""

    def __init__(self, path: str, durability: str = "os", shards: int = 1, ingest: str = "sqlite",
                 ingest_max_bytes: int | None = None):
        self.path = path
        self.durability = durability
        self.wanted = max(1, int(shards))
        #: where a queue made now takes requests (a queue keeps the store it was made with)
        self.wanted_store = ingest
        self.ingest_max_bytes = ingest_max_bytes
        self.main = SQLiteQueue(path, durability)
        self._shards: list[SQLiteQueue] | None = None
        self._ingest: LMDBIngest | None = None
        self._generation = 0
        #: ``<queue>.users``, locked shared for as long as this process uses the queue
        self._users = None

    def __getattr__(self, name: str) -> Any:
        # the queue's own: reader, writer, write_lock, turn, cursors, dead letters, ...
        return getattr(self.main, name)

    # shards ----------------------------------------------------------------------------------
    @property
    def shards(self) -> list[SQLiteQueue]:
        """The ingest shards (none when the queue has one: requests commit to it)."""
        if self._shards is None:
            self._use()
            count, self._generation, store = self._stored_layout()
            self._ingest = LMDBIngest(ingest_path(self.path, self._generation), self.durability, turn_of=self.main,
                                      max_bytes=self.ingest_max_bytes) if store == "lmdb" else None
            self._shards = [] if count == 1 or self._ingest is not None else [
                SQLiteQueue(shard_path(self.path, i, self._generation), self.durability, turn_of=self.main)
                for i in range(count)
            ]
        return self._shards

    @property
    def ingest(self) -> LMDBIngest | None:
        """The LMDB ingest store requests commit to, if the queue has one (else shards or
        ``queue.db``)."""
        self.shards
        return self._ingest

    @property
    def store(self) -> str:
        """Where requests commit: ``"lmdb"`` or ``"sqlite"``."""
        return "lmdb" if self.ingest is not None else "sqlite"

    @property
    def generation(self) -> int:
        """The generation of the shard files (see :func:`shard_path`): how often the queue
        was resharded."""
        self.shards
        return self._generation

    @property
    def count(self) -> int:
        """How many shards requests commit to (1: the queue itself)."""
        return max(1, len(self.shards))

    def _stored_layout(self) -> tuple[int, int, str]:
        """The number of shards the queue has, the generation of their files and where
        requests commit: what is wanted for a queue not made yet, one shard and SQLite for
        one made before shards existed."""
        wanted = (self.wanted, 0, self.wanted_store)
        if not os.path.exists(self.path):
            return wanted
        conn = self.main.reader
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shards'").fetchone() is None:
            made = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'entries'").fetchone()
            return (1, 0, "sqlite") if made else wanted
        columns = {row[1] for row in conn.execute("PRAGMA table_info(shards)")}
        row = conn.execute(
            "SELECT count, " + ("generation" if "generation" in columns else "0") + ", "
            + ("store" if "store" in columns else "'sqlite'") + " FROM shards").fetchone()
        return tuple(row) if row else wanted

    # using the queue -------------------------------------------------------------------------
    def _use(self) -> None:
        """Hold ``<queue>.users`` shared from now on, waiting while a reshard holds it."""
        if self._users is not None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        users = open(self.path + ".users", "a+")
        try:
            fcntl.flock(users, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("the queue %s is being resharded (cortex queue reshard); waiting for it", self.path)
            fcntl.flock(users, fcntl.LOCK_SH)
        self._users = users

    @contextmanager
    def exclusive_use(self):
        """Hold the queue alone (for :mod:`cortex.queue_reshard`): raises :class:`QueueInUse`
        when another process uses it; processes that start meanwhile wait.  The layout is read
        again on entry and on exit."""
        self._use()
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # converting a lock may drop it first: hold it shared again
            fcntl.flock(self._users, fcntl.LOCK_SH)
            raise QueueInUse(
                f"the queue {self.path} is in use by another process (a server, `cortex worker` or another "
                "command): stop them, then run this again"
            ) from None
        self._shards = self._ingest = None  # as of now, under the exclusive lock
        try:
            yield
        finally:
            fcntl.flock(self._users, fcntl.LOCK_SH)
            self._shards = self._ingest = None

    def create_schema(self) -> None:
        """Create the queue's and the shards' (or the LMDB store's) tables, recording the
        layout (idempotent; an existing queue keeps its number of shards and its store)."""
        self._use()
        count, _, store = self._stored_layout()
        if store == "lmdb":
            count = self.wanted  # a store without shards: queue.shards does not apply
        if store != self.wanted_store:
            log.warning(
                "queue.ingest is %r, but the queue %s uses %r, which it keeps (its dedupe keys are there). "
                "Stop Cortex and run `cortex queue reshard` to move the queue to %r, or set queue.ingest = %r "
                "to match.",
                self.wanted_store, self.path, store, self.wanted_store, store,
            )
        elif count != self.wanted:
            log.warning(
                "queue.shards is %d, but the queue %s has %d; it keeps %d (a device's dedupe keys must "
                "stay in its shard). Stop Cortex and run `cortex queue reshard` to give the queue %d, or "
                "set queue.shards = %d to match.",
                self.wanted, self.path, count, count, self.wanted, count,
            )
        self.main.create_schema()
        with self.main.write_lock():
            conn = self.main.reader
            conn.executescript(_MARKS_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(shards)")}
            if "generation" not in columns:
                conn.execute("ALTER TABLE shards ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
            if "store" not in columns:
                conn.execute("ALTER TABLE shards ADD COLUMN store TEXT NOT NULL DEFAULT 'sqlite'")
            conn.execute("INSERT OR IGNORE INTO shards (id, count, store) VALUES (1, ?, ?)", (count, store))
        self._shards = self._ingest = None
        for shard in self.shards:
            shard.create_schema()
        if self.ingest is not None:
            self.ingest.create_schema()

    def close(self) -> None:
        """Close this thread's connections of the queue and its shards."""
        self.main.close()
        for shard in self._shards or []:
            shard.close()
        if self._ingest is not None:
            self._ingest.close()

    # ingest ----------------------------------------------------------------------------------
    def submit(self, submission: Submission) -> Submission:
        """Store a request's records in its device's shard (see :meth:`SQLiteQueue.submit`)."""
        shards = self.shards
        if self._ingest is not None:
            return self._ingest.submit(submission)
        if not shards:
            return self.main.submit(submission)
        return shards[shard_of(submission.key_group, len(shards))].submit(submission)

    def probe_writable(self, timeout: float = 2.0) -> None:
        """Raise ``sqlite3.Error`` when the queue or a shard cannot be written now."""
        self.main.probe_writable(timeout)
        for shard in self.shards:
            shard.probe_writable(timeout)
        if self.ingest is not None:
            self.ingest.probe_writable(timeout)

    # moving ----------------------------------------------------------------------------------
    def _marks(self) -> dict[int, tuple[int, int]]:
        return {shard: (seq, error_id) for shard, seq, error_id in
                self.main.reader.execute("SELECT shard, seq, error_id FROM shard_marks")}

    def move(self) -> int:
        """Move every shard's entries (and ingest-error rows) into the queue; returns how
        many entries.  Safe to call from any process at any time."""
        moved = 0
        if self.ingest is not None:
            return self.ingest.move_into(self.main, LMDB_MARK)
        for index, shard in enumerate(self.shards):
            while True:
                count = self._move_from(index, shard)
                moved += count
                if count < MOVE_BATCH:
                    break
        return moved

    def _move_from(self, index: int, shard: SQLiteQueue) -> int:
        conn = self.main.reader
        name = _attach(conn, shard.path, index)
        try:
            seq_mark, error_mark, moved = self._append_from(conn, name, index)
        finally:
            _release(conn, name)
        # also what a move cut short before this step left behind
        self._forget_moved(shard, seq_mark, error_mark)
        return moved

    def _append_from(self, conn: sqlite3.Connection, name: str, index: int) -> tuple[int, int, int]:
        """Append to the queue the entries (and ingest-error rows) of the shard attached as
        ``name`` that it does not have yet; returns the shard's new marks and how many entries."""
        # a deferred transaction (plain BEGIN): the shard is only read (its snapshot), so its
        # request commits go on; the queue's own writers wait for the lock held here
        with self.main.write_lock(), write_transaction(conn, "BEGIN"):
            mark = conn.execute("SELECT seq, error_id FROM main.shard_marks WHERE shard = ?", (index,)).fetchone()
            seq_mark, error_mark = mark if mark else (0, 0)
            top = conn.execute(
                f"SELECT max(seq) FROM (SELECT seq FROM {name}.entries WHERE seq > ? ORDER BY seq LIMIT ?)",
                (seq_mark, MOVE_BATCH),
            ).fetchone()[0]
            if top is None:
                return seq_mark, error_mark, 0
            # error rows are written with their entries: these are of the entries moved or
            # of later ones, which may go first
            error_top = conn.execute(
                f"SELECT coalesce(max(id), ?1) FROM {name}.ingest_errors WHERE id > ?1", (error_mark,),
            ).fetchone()[0]
            seq, total = conn.execute(f"SELECT {NEWEST_SEQ}, {NEWEST_TOTAL}").fetchone()
            # in SQL, so that the records' bytes never become Python objects: each entry
            # takes the queue's next seq and running total, in the shard's order
            moved = conn.execute(
                "INSERT INTO main.entries (seq, org, app_id, count, total, records, enqueued_at, "
                "accepted, duplicate, rejected) "
                "SELECT ?1 + row_number() OVER w, org, app_id, count, ?2 + sum(count) OVER w, records, "
                "enqueued_at, accepted, duplicate, rejected "
                f"FROM {name}.entries WHERE seq > ?3 AND seq <= ?4 "
                "WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING) ORDER BY seq",
                (seq, total, seq_mark, top),
            ).rowcount
            conn.execute(
                "INSERT INTO main.ingest_errors (org, app_id, record_id, received_at, record, replayed_at, "
                "request_id) SELECT org, app_id, record_id, received_at, record, replayed_at, request_id "
                f"FROM {name}.ingest_errors WHERE id > ? AND id <= ? ORDER BY id", (error_mark, error_top),
            )
            conn.execute(
                "INSERT INTO main.shard_marks (shard, seq, error_id) VALUES (?,?,?) ON CONFLICT (shard) "
                "DO UPDATE SET seq = excluded.seq, error_id = excluded.error_id", (index, top, error_top),
            )
        return top, error_top, moved

    @staticmethod
    def _forget_moved(shard: SQLiteQueue, seq_mark: int, error_mark: int) -> None:
        """Delete from ``shard`` what the queue has; its next entry still follows them."""
        conn = shard.reader
        if conn.execute("SELECT 1 FROM entries WHERE seq <= ? LIMIT 1", (seq_mark,)).fetchone() is None and \
                conn.execute("SELECT 1 FROM ingest_errors WHERE id <= ? LIMIT 1", (error_mark,)).fetchone() is None:
            return
        with shard.write_lock(), write_transaction(conn):
            conn.execute("DELETE FROM entries WHERE seq <= ?", (seq_mark,))
            conn.execute("DELETE FROM ingest_errors WHERE id <= ?", (error_mark,))
            # a shard pruned empty numbers its next entry after the mark (see NEXT_SEQ)
            conn.execute("UPDATE counted SET seq = max(seq, ?)", (seq_mark,))

    # reading (the dispatcher's calls move first) ------------------------------------------------
    def read(self, after_seq: int, max_records: int):
        """Entries after ``after_seq``, once the shards' entries are in the queue."""
        self.move()
        return self.main.read(after_seq, max_records)

    def head(self) -> int:
        """The seq of the newest entry, once the shards' entries are in the queue."""
        self.move()
        return self.main.head()

    def iter_all(self):
        """Every entry still queued (for tests and tools)."""
        yield from self.read(0, 10**12)

    def ingest_errors(self, *args, **kwargs) -> list[dict]:
        """The ingest error log (see :meth:`SQLiteQueue.ingest_errors`), shards' rows included."""
        self.move()
        return self.main.ingest_errors(*args, **kwargs)

    # housekeeping ----------------------------------------------------------------------------
    def prune_dedupe(self, window_seconds: float, batch: int = 20000) -> int:
        """Sweep the expired dedupe keys of the queue and of each shard."""
        return self.main.prune_dedupe(window_seconds, batch) + sum(
            store.prune_dedupe(window_seconds, batch) for store in self._stores())

    def checkpoint(self) -> None:
        """Checkpoint the WAL of the queue and of each shard."""
        self.main.checkpoint()
        for store in self._stores():
            store.checkpoint()

    def _stores(self) -> list:
        """Where requests commit besides ``queue.db``: the shards or the LMDB store."""
        return self.shards + ([self._ingest] if self._ingest is not None else [])

    # status: the queue's figures plus what the shards hold --------------------------------------
    def _with_unmoved(self, read_queue, read_shard, read_ingest):
        """``read_queue()`` and ``read_shard(shard's connection, its seq mark)`` for each
        shard, or ``read_ingest(the LMDB store, its seq mark)``, as of one set of marks: read
        again when a move overtook the reads."""
        if not self.shards and self.ingest is None:
            return read_queue(), []
        for _ in range(100):
            marks = self._marks()
            ours = read_queue()
            if self._ingest is not None:
                parts = [read_ingest(self._ingest, marks.get(LMDB_MARK, (0, 0))[0])]
            else:
                parts = []
                for index, shard in enumerate(self.shards):
                    conn = shard.reader
                    with read_snapshot(conn):
                        parts.append(read_shard(conn, marks.get(index, (0, 0))[0]))
            if self._marks() == marks:
                break
        return ours, parts

    def _with_backlog(self, read_queue) -> tuple[Any, int, int, float | None]:
        """``read_queue()``, and the entries and records the shards hold that are not moved
        yet and when the oldest of them was queued, as of one set of marks."""
        def backlog(conn, mark):
            first = conn.execute(
                "SELECT enqueued_at FROM entries WHERE seq > ? ORDER BY seq LIMIT 1", (mark,)).fetchone()
            return (conn.execute("SELECT count(*) FROM entries WHERE seq > ?", (mark,)).fetchone()[0],
                    records_after(conn, mark), first[0] if first else None)

        ours, parts = self._with_unmoved(read_queue, backlog, lambda ingest, mark: ingest.backlog(mark))
        oldest = [p[2] for p in parts if p[2] is not None]
        return ours, sum(p[0] for p in parts), sum(p[1] for p in parts), (min(oldest) if oldest else None)

    def counters(self) -> dict[str, dict[str, int]]:
        """org -> {accepted, duplicate, rejected}: the queue's, plus the shards' entries not
        moved yet and their all-duplicate requests (counted where they were committed)."""
        def unmoved(conn, mark):
            rows = conn.execute("SELECT org, name, value FROM counters").fetchall()
            for org, *values in conn.execute(
                "SELECT org, coalesce(sum(accepted), 0), coalesce(sum(duplicate), 0), "
                "coalesce(sum(rejected), 0) FROM entries WHERE seq > ? GROUP BY org", (mark,)
            ):
                rows.extend((org, name, value) for name, value in zip(COUNTS, values))
            return rows

        result, parts = self._with_unmoved(self.main.counters, unmoved,
                                           lambda ingest, mark: ingest.unmoved_counts(mark))
        for rows in parts:
            for org, name, value in rows:
                result.setdefault(org, dict.fromkeys(COUNTS, 0))[name] += value
        return result

    def depth(self) -> dict[str, int]:
        """Entries and records in the queue and not moved yet from the shards."""
        depth, entries, records, _ = self._with_backlog(self.main.depth)
        return {"entries": depth["entries"] + entries, "records": depth["records"] + records}

    def stats(self) -> dict[str, Any]:
        """Entries and records held (moved or not), and when the oldest was queued."""
        stats, entries, records, oldest = self._with_backlog(self.main.stats)
        times = [t for t in (stats["oldest_enqueued_at"], oldest) if t is not None]
        return {"entries": stats["entries"] + entries, "records": stats["records"] + records,
                "oldest_enqueued_at": min(times) if times else None}

    def sink_status(self, sinks: list[str]) -> dict[str, dict[str, int]]:
        """sink -> {cursor, delivered, pending, dead_lettered}; entries not moved yet are
        pending for every sink."""
        status, _, records, _ = self._with_backlog(lambda: self.main.sink_status(sinks))
        for sink in status.values():
            sink["pending"] += records
        return status

    def sink_lag(self, sink: str) -> dict[str, Any]:
        """How far ``sink`` is behind, counting the entries not moved yet."""
        lag, entries, _, oldest = self._with_backlog(lambda: self.main.sink_lag(sink))
        times = [t for t in (lag["oldest_pending_at"], oldest) if t is not None]
        return {"pending_entries": lag["pending_entries"] + entries,
                "oldest_pending_at": min(times) if times else None}
