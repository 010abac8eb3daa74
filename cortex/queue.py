"""The durable queue: a SQLite (WAL) database in the data directory, shared by all processes.

One request's accepted events are one queue *entry* (a serialised list of records), written
in the same transaction as their dedupe keys and the request's rejected events, so "200"
means: in the queue, deduplicated, atomically.  Each sink has a cursor (the last entry seq it
has); entries every sink has are pruned.

Durability: with ``durability = "os"`` (default) a commit is in the operating system's hands
before the request returns, which survives ``kill -9`` of any process; with ``"fsync"`` every
commit is also fsynced, which survives power loss.  Commits are grouped: while one thread of
a process commits, the others queue up behind it and the next commit takes them all, so one
fsync serves many requests.

Writers of all processes queue on an exclusive ``flock`` of ``<queue>.lock`` before they
open a write transaction (the threads of one process first take turns on a lock of their
own, since an ``flock`` belongs to the process): a waiting writer wakes the moment the lock
is free, where SQLite's own busy handler would sleep for milliseconds, holding up every
writer queued behind it.  Before all that, a commit takes its process's turn
(:mod:`cortex.turns`), so that the embedded dispatcher's thread does not compete with it for
the interpreter lock while it holds the writer lock.  WAL checkpoints are left to the
dispatcher's housekeeping (``checkpoint()``), so requests do not pay for them.

Each dedupe key is stored behind its device's four-byte group
(:func:`cortex.ingest.pipeline.key_group`), so the keys of one bundle are neighbours in the
dedupe index and a commit writes one or two of its pages, not one page per event.  Queues
that held keys before grouping existed keep storing them plain (``PRAGMA user_version``
records which layout a queue has), so retries of events accepted before an upgrade are
still recognised.

An entry's ``seq`` is one more than the newest entry's, and a seq is never used twice,
since the sinks' cursors are seqs: when the queue has been pruned empty, the next entry
follows the ``counted`` mark, which is at or past every entry ever pruned.  (SQLite's
``AUTOINCREMENT`` would keep that mark itself, at the price of one more page written by
every commit; queues made before this keep it, harmlessly.)

An entry stores what its records share (org, app, bundle fields, request context) once,
and each record only its own fields; :meth:`SQLiteQueue.read` gives whole records back.

The per-org counts (accepted, duplicate, rejected events) ride on the entries: each entry
holds its request's three numbers, and housekeeping folds the entries' numbers into the
``counters`` table now and then (:meth:`SQLiteQueue.fold_counts`; ``counted`` says up to
which entry).  A commit so writes no counter row of its own: one page fewer per request, a
sixth of a 1-event commit.  Entries are pruned only once counted, and
:meth:`SQLiteQueue.counters` adds the entries not yet folded, so the counts are exact at
any moment.  A request whose events were all duplicates has no entry and still counts
straight into ``counters``.

How many records the queue holds (metrics, backpressure, ``cortex status``) is read from
running totals: each entry carries the sum of the counts up to it, so any range's records
are two rows' difference (:func:`records_after`), and a commit writes no index page for it.
"""


from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import orjson

from cortex.pid import current_pid
from cortex.turns import Turn

#: what the queue counts per org, in the order of the ``entries`` columns that carry them
COUNTS = ("accepted", "duplicate", "rejected")
#: the sums of those columns, in that order
SUM_COUNTS = "coalesce(sum(accepted), 0), coalesce(sum(duplicate), 0), coalesce(sum(rejected), 0)"
#: adds (org, name, value) rows to the per-org counters
ADD_TO_COUNTERS = ("INSERT INTO counters (org, name, value) VALUES (?,?,?) "
                   "ON CONFLICT (org, name) DO UPDATE SET value = value + excluded.value")

#: ``PRAGMA user_version`` of a queue whose dedupe keys are stored plain (it held keys
#: before grouping existed) and of one that stores them behind their group
PLAIN_KEYS, GROUPED_KEYS = 1, 2

#: keys of one request from which the commit first assumes they are all new (see
#: ``_claim_keys``); below it, asking which are new costs less than the extra statements
ASSUME_NEW_KEYS = 16

#: the seq of the newest entry there ever was (0: none yet): the newest entry's, or when
#: the queue was pruned empty, the ``counted`` mark (no entry after it was pruned);
#: ``coalesce`` reads the mark only then
NEWEST_SEQ = "coalesce((SELECT max(seq) FROM entries), (SELECT seq FROM counted), 0)"
#: the seq of a new entry
NEXT_SEQ = f"{NEWEST_SEQ} + 1"
#: the running total of the newest entry that has one (0: none); a new entry's total is this
#: plus its count.  Entries of a version without totals are passed over, so the totals of
#: the others stay a running sum of their own counts (see :func:`records_after`)
NEWEST_TOTAL = "coalesce((SELECT total FROM entries WHERE total IS NOT NULL ORDER BY seq DESC LIMIT 1), 0)"
#: appends an entry from (org, app_id, count, records, enqueued_at, accepted, duplicate,
#: rejected), with the next seq and its running total
INSERT_ENTRY = (
    "INSERT INTO entries (seq, org, app_id, count, total, records, enqueued_at, accepted, duplicate, "
    f"rejected) VALUES ({NEXT_SEQ},?1,?2,?3,{NEWEST_TOTAL} + ?3,?4,?5,?6,?7,?8)"
)

#: pages the WAL may grow to before a writer checkpoints it itself (the dispatcher normally
#: does it first); bounds the WAL when no dispatcher runs
WAL_AUTOCHECKPOINT_PAGES = 16384

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    -- never reused: see NEXT_SEQ
    seq INTEGER PRIMARY KEY,
    org TEXT NOT NULL,
    app_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    -- the request's counts, until fold_counts adds them to counters (NULL: entries of a
    -- version that counted at commit); before the records, so that summing them does not
    -- read a large entry's overflow pages (a queue that gained them later has them last)
    accepted INTEGER,
    duplicate INTEGER,
    rejected INTEGER,
    -- the running sum of count over the entries up to this one (see records_after; NULL:
    -- an entry of a version without it)
    total INTEGER,
    records BLOB NOT NULL,
    enqueued_at REAL NOT NULL
);
-- one b-tree, keyed by the key (queues made before it have a rowid table and a unique index)
CREATE TABLE IF NOT EXISTS dedupe (
    key BLOB PRIMARY KEY,
    seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    record BLOB NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL,
    replayed_at REAL
);
CREATE INDEX IF NOT EXISTS dead_letters_sink ON dead_letters (sink, replayed_at);
CREATE TABLE IF NOT EXISTS ingest_errors (
    id INTEGER PRIMARY KEY,
    org TEXT NOT NULL,
    app_id INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    record BLOB NOT NULL,
    replayed_at REAL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS ingest_errors_org ON ingest_errors (org, received_at);
CREATE TABLE IF NOT EXISTS counters (
    org TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (org, name)
) WITHOUT ROWID;
-- the entries up to seq are in counters (one row)
CREATE TABLE IF NOT EXISTS counted (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enricher_errors (
    enricher TEXT NOT NULL,
    outcome TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (enricher, outcome)
) WITHOUT ROWID;
"""


class QueueUnavailable(Exception):
    """The queue cannot durably accept now (disk full, locked too long); retry later."""


@dataclass
class Submission:
    """One request's share of a group commit."""

    org: str
    app_id: int
    accepted: list[tuple[bytes, dict]]
    rejected: list[tuple[bytes, dict]]
    #: fields every accepted record shares, stored once (see :func:`expand`)
    shared: dict = field(default_factory=dict)
    accepted_count: int = 0
    duplicate_count: int = 0
    rejected_count: int = 0
    #: the rejected records that were stored (not duplicates), once committed
    stored_rejected: list[dict] = field(default_factory=list)
    #: after the commit: the keys of this submission that were new (the others were
    #: duplicates); the set the commit computes anyway, so reporting it costs nothing
    fresh_keys: "set[bytes] | frozenset[bytes]" = frozenset()
    #: the group the dedupe keys are stored behind (see the module docstring); all the
    #: keys of a submission share it, and one event always gets the same one
    key_group: bytes = b""


@dataclass
class Entry:
    """A queue entry as the dispatcher reads it."""

    seq: int
    org: str
    app_id: int
    records: list[dict]


class GroupCommit:
    """Group commit for the threads of one process: while one thread commits, the others
    queue their submissions up behind it, and the next commit takes them all (one fsync for
    many requests).  A store defines ``_commit_group(group)`` and calls
    :meth:`_init_group_commit` in its constructor."""

    #: errors of the store's commit that mean "cannot accept now" (:class:`QueueUnavailable`)
    unavailable_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def _init_group_commit(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[tuple[Submission, dict]] = []
        self._committing = False

    def _commit_group(self, group: list[tuple[Submission, dict]]) -> None:
        raise NotImplementedError

    def submit(self, submission: Submission) -> Submission:
        """Durably store a request's accepted and rejected records with their dedupe keys.

        Records whose key was seen within the dedupe window are counted as duplicates and
        not stored again.  Returns ``submission`` with its counts filled in once committed.
        Raises :class:`QueueUnavailable` when the queue cannot accept now.
        """
        state: dict[str, Any] = {"done": False, "error": None}
        with self._cond:
            self._pending.append((submission, state))
            while self._committing and not state["done"]:
                self._cond.wait()
            if state["done"]:
                return self._result(submission, state)
            self._committing = True
            group, self._pending = self._pending, []
        error: BaseException | None = None
        try:
            self._commit_group(group)
        except self.unavailable_errors as exc:
            error = QueueUnavailable(f"the queue cannot accept events now: {exc}")
        except BaseException as exc:  # every member of the group must learn of the failure
            error = exc
        finally:
            with self._cond:
                for _, member_state in group:
                    member_state["done"] = True
                    member_state["error"] = error
                self._committing = False
                self._cond.notify_all()
        return self._result(submission, state)

    @staticmethod
    def _result(submission: Submission, state: dict) -> Submission:
        if state["error"] is not None:
            raise state["error"]
        return submission


class SQLiteQueue(GroupCommit):
    """The embedded queue.  One instance per process; safe to share between its threads."""

    def __init__(self, path: str, durability: str = "os", busy_timeout: float = 10.0,
                 turn_of: "SQLiteQueue | None" = None):
        self.path = path
        #: the queue whose turn this one's commits take (a process's ingest shards share
        #: the turn of its queue, see :mod:`cortex.queue_shards`)
        self._turn_of = turn_of
        self.durability = durability
        self.busy_timeout = busy_timeout
        self._pid = None
        self._writer: sqlite3.Connection | None = None
        self._lock_file = None
        self._thread_lock = threading.Lock()
        self._turn = Turn()
        self._local = threading.local()
        self._init_group_commit()
        self._groups_keys: bool | None = None
        #: whether the dedupe table is a rowid table (queues made before it was not), and
        #: where the next sweep of a table without rowids starts
        self._dedupe_has_rowids: bool | None = None
        self._dedupe_sweep = b""

    # connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'fsync' else 'NORMAL'}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA mmap_size=268435456")
        return conn

    def _check_fork(self) -> None:
        # connections must not cross a fork: a gunicorn worker opens its own
        if self._pid != current_pid():
            self._pid = current_pid()
            self._writer = None
            self._groups_keys = None
            self._lock_file = None
            self._thread_lock = threading.Lock()
            self._turn = Turn()
            self._local = threading.local()

    @property
    def writer(self) -> sqlite3.Connection:
        self._check_fork()
        if self._writer is None:
            self._writer = self._connect()
        return self._writer

    @property
    def reader(self) -> sqlite3.Connection:
        """A connection of the calling thread's own, for reads and dispatcher writes."""
        self._check_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @property
    def turn(self) -> Turn:
        """This process's turn between request commits and the embedded dispatcher's batches
        (:mod:`cortex.turns`)."""
        if self._turn_of is not None:
            return self._turn_of.turn
        self._check_fork()
        return self._turn

    @contextmanager
    def write_lock(self):
        """Hold the writer lock of all processes and threads (see the module docstring)."""
        self._check_fork()
        # an flock is held by the process (its open file), not by a thread: a second thread
        # of this process would get it at once, and the first one's unlock would free it
        # while the second still writes, so the threads take turns first
        with self._thread_lock:
            if self._lock_file is None:
                self._lock_file = open(self.path + ".lock", "a+")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _write(self, sql: str, params: Any = (), many: bool = False) -> sqlite3.Cursor:
        """One write statement on this thread's connection, under the writer lock."""
        with self.write_lock():
            conn = self.reader
            return conn.executemany(sql, params) if many else conn.execute(sql, params)

    def create_schema(self) -> None:
        """Create the queue's tables (idempotent)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = self._connect()
        try:
            conn.executescript(SCHEMA)
            _add_missing_columns(conn)
            _settle_totals(conn)
            _settle_key_layout(conn)
            _settle_counted(conn)
        finally:
            conn.close()

    def close(self) -> None:
        """Close this thread's and the writer's connections."""
        for conn in (self._writer, getattr(self._local, "conn", None)):
            if conn is not None:
                conn.close()
        self._writer = None
        self._local = threading.local()

    # ingest --------------------------------------------------------------------------------
    def _commit_group(self, group: list[tuple[Submission, dict]]) -> None:
        turn = self.turn
        taken = turn.take()
        try:
            with self.write_lock():
                self._commit_locked(group)
        finally:
            if taken:
                turn.give_back()

    def _commit_locked(self, group: list[tuple[Submission, dict]]) -> None:
        conn = self.writer
        if self._groups_keys is None:
            self._groups_keys = conn.execute("PRAGMA user_version").fetchone()[0] == GROUPED_KEYS
        now = time.time()
        seen = int(now)
        with write_transaction(conn):
            counts: dict[tuple[str, str], int] = {}
            entries = []
            error_rows = []
            for submission, _ in group:
                prefix = submission.key_group if self._groups_keys else b""
                fresh = self._claim_keys(conn, submission.accepted + submission.rejected, seen, prefix)
                records, rejected = settle(submission, fresh)
                if records or rejected:
                    blob = entry_blob(submission, records, rejected)
                    entries.append((submission.org, submission.app_id, len(records) + len(rejected), blob, now,
                                    submission.accepted_count, submission.duplicate_count,
                                    submission.rejected_count))
                    error_rows.extend(
                        (submission.org, submission.app_id, r["id"], r["received_at"], orjson.dumps(r),
                         r.get("request_id"))
                        for r in rejected
                    )
                elif submission.duplicate_count:  # all duplicates: no entry to carry the count
                    key = (submission.org, "duplicate")
                    counts[key] = counts.get(key, 0) + submission.duplicate_count
            if entries:
                conn.executemany(INSERT_ENTRY, entries)
            if error_rows:
                conn.executemany(
                    "INSERT INTO ingest_errors (org, app_id, record_id, received_at, record, request_id) "
                    "VALUES (?,?,?,?,?,?)",
                    error_rows,
                )
            if counts:
                conn.executemany(ADD_TO_COUNTERS, [(org, name, value) for (org, name), value in counts.items()])

    @staticmethod
    def _claim_keys(conn, keyed: list[tuple[bytes, dict]], seen: int, prefix: bytes) -> set[bytes]:
        """Insert the dedupe keys behind ``prefix``; the ones returned (without it) were not
        there before."""
        fresh: set[bytes] = set()
        skip = len(prefix)
        # SQLite allows 32766 variables per statement; stay well below
        for start in range(0, len(keyed), 500):
            chunk = keyed[start:start + 500]
            sql = "INSERT OR IGNORE INTO dedupe (key, seen) VALUES " + ",".join(["(?,?)"] * len(chunk))
            params: list = []
            for key, _ in chunk:
                params.append(prefix + key)
                params.append(seen)
            if len(chunk) == 1:
                # one key (a 1-event bundle): whether a row was added says all, and an
                # insert that added none has nothing to undo
                before = conn.total_changes
                conn.execute(sql, params)
                if conn.total_changes - before == 1:
                    fresh.add(chunk[0][0])
                continue
            if len(chunk) >= ASSUME_NEW_KEYS:
                # nearly always every key is new: insert without RETURNING (a third cheaper
                # at 100 keys) and count the rows added; only when some key was there
                # already, undo the insert and ask which keys are new
                conn.execute("SAVEPOINT claim")
                before = conn.total_changes
                conn.execute(sql, params)
                if conn.total_changes - before == len(chunk):
                    conn.execute("RELEASE claim")
                    fresh.update(key for key, _ in chunk)
                    continue
                conn.execute("ROLLBACK TO claim")
                conn.execute("RELEASE claim")
            fresh.update(row[0][skip:] for row in conn.execute(sql + " RETURNING key", params))
        return fresh

    # dispatch ------------------------------------------------------------------------------
    def read(self, after_seq: int, max_records: int) -> list[Entry]:
        """Entries after ``after_seq`` in order, about ``max_records`` records in all."""
        entries: list[Entry] = []
        total = 0
        rows = self.reader.execute(
            "SELECT seq, org, app_id, count, records FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, max(1, max_records)),
        )
        for seq, org, app_id, count, blob in rows:
            records = expand(orjson.loads(blob))
            for record in records:
                record["seq"] = seq
            entries.append(Entry(seq, org, app_id, records))
            total += count
            if total >= max_records:
                break
        return entries

    def head(self) -> int:
        """The seq of the newest entry (0 when the queue has never held one)."""
        return self.reader.execute(f"SELECT {NEWEST_SEQ}").fetchone()[0]

    def cursor(self, sink: str) -> int:
        """The last seq ``sink`` has; a new sink starts at the oldest entry still queued."""
        conn = self.reader
        row = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        if row:
            return row[0]
        oldest = conn.execute("SELECT min(seq) FROM entries").fetchone()[0]
        start = (oldest - 1) if oldest is not None else self.head()
        self._write(
            "INSERT OR IGNORE INTO cursors (sink, seq, delivered, updated_at) VALUES (?,?,0,?)",
            (sink, start, time.time()),
        )
        return conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()[0]

    def advance(self, sink: str, seq: int, delivered: int) -> None:
        """Move ``sink``'s cursor to ``seq`` after it stored ``delivered`` records."""
        self._write(
            "UPDATE cursors SET seq = ?, delivered = delivered + ?, updated_at = ? WHERE sink = ?",
            (seq, delivered, time.time(), sink),
        )

    def dead_letter(self, sink: str, records: Iterable[dict], error: str) -> int:
        """Keep records a sink refused for good, with the reason; returns how many."""
        now = time.time()
        rows = [(sink, r.get("seq", 0), r.get("id", ""), orjson.dumps(r), error, now) for r in records]
        self._write(
            "INSERT INTO dead_letters (sink, seq, record_id, record, error, failed_at) VALUES (?,?,?,?,?,?)",
            rows,
            many=True,
        )
        return len(rows)

    def _replayable(self, table: str, columns: str, owner: tuple[str, str | None],
                    include_replayed: bool, limit: int) -> list[sqlite3.Row]:
        """Rows of a log table (dead letters, ingest errors), oldest first, optionally only
        those of one owner (``(column, value)``) and not yet replayed."""
        clauses, params = [], []
        if owner[1]:
            clauses.append(f"{owner[0]} = ?")
            params.append(owner[1])
        if not include_replayed:
            clauses.append("replayed_at IS NULL")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(limit)
        return self.reader.execute(f"SELECT {columns} FROM {table}{where} ORDER BY id LIMIT ?", params).fetchall()

    def _mark_replayed(self, table: str, ids: list[int]) -> None:
        self._write(f"UPDATE {table} SET replayed_at = ? WHERE id = ?", [(time.time(), i) for i in ids], many=True)

    def dead_letters(self, sink: str | None = None, include_replayed: bool = False, limit: int = 10**9) -> list[dict]:
        """Dead-lettered records, oldest first."""
        rows = self._replayable("dead_letters", "id, sink, seq, record_id, record, error, failed_at, replayed_at",
                                ("sink", sink), include_replayed, limit)
        return [
            {"id": r[0], "sink": r[1], "seq": r[2], "record_id": r[3], "record": orjson.loads(r[4]),
             "error": r[5], "failed_at": r[6], "replayed_at": r[7]}
            for r in rows
        ]

    def mark_dead_letters_replayed(self, ids: list[int]) -> None:
        """Record that these dead letters were delivered by ``cortex replay``."""
        self._mark_replayed("dead_letters", ids)

    def ingest_errors(self, org: str | None = None, include_replayed: bool = False, limit: int = 1000) -> list[dict]:
        """Rows of the ingest error log (invalid events with their reasons), oldest first."""
        rows = self._replayable("ingest_errors", "id, org, app_id, record, replayed_at, request_id",
                                ("org", org), include_replayed, limit)
        return [
            {"id": r[0], "org": r[1], "app_id": r[2], "record": orjson.loads(r[3]), "replayed_at": r[4],
             "request_id": r[5]}
            for r in rows
        ]

    def mark_errors_replayed(self, ids: list[int]) -> None:
        """Record that these error-log rows were accepted on replay."""
        self._mark_replayed("ingest_errors", ids)

    # housekeeping --------------------------------------------------------------------------
    def prune(self, sinks: list[str], batch: int = 5000) -> int:
        """Delete the oldest entries that every sink in ``sinks`` has, about ``batch``
        records' worth (at least one entry); returns how many entries.

        Call it until it returns 0.  Each call is one short transaction: deleting a large
        entry frees its pages one by one, and every request commit waits while the writer
        lock is held, so a batch is bounded by records, not entries (5,000 entries of 100
        events held the lock for about 100 ms).
        """
        if not sinks:
            return 0
        marks = [self.cursor(sink) for sink in sinks]
        # an entry's counts must be folded into the counters before it goes
        floor = min(min(marks), self.counted())
        conn = self.reader
        # chosen without the lock: the entries up to the floor do not change (another
        # process's prune may only take some away first)
        upto, records = None, 0
        for seq, count in conn.execute(
            "SELECT seq, count FROM entries WHERE seq <= ? ORDER BY seq LIMIT ?", (floor, max(1, batch))
        ).fetchall():
            upto, records = seq, records + count
            if records >= batch:
                break
        with self.write_lock(), write_transaction(conn):
            deleted = conn.execute("DELETE FROM entries WHERE seq <= ?", (upto,)).rowcount if upto else 0
            conn.execute("DELETE FROM cursors WHERE sink NOT IN (%s)" % ",".join("?" * len(sinks)), sinks)
        return deleted

    def prune_dedupe(self, window_seconds: float, batch: int = 20000) -> int:
        """Forget the dedupe keys older than the window among the next ``batch`` keys looked
        at; returns how many.  Each call looks at ``batch`` keys only, never the whole table,
        and without the writer lock: it is taken only to delete the expired keys found."""
        cutoff = int(time.time() - window_seconds)
        conn = self.reader
        if self._dedupe_has_rowids is None:
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'dedupe'").fetchone()[0]
            self._dedupe_has_rowids = "WITHOUT ROWID" not in sql.upper()
        if self._dedupe_has_rowids:
            # rowids grow with time: the oldest keys are the first rows
            expired = conn.execute(
                "SELECT rowid FROM (SELECT rowid, seen FROM dedupe ORDER BY rowid LIMIT ?) WHERE seen < ?",
                (batch, cutoff),
            ).fetchall()
            column = "rowid"
        else:
            # keys are in group order, not time order: sweep the table, ``batch`` keys a
            # call, from where the last call stopped, starting over at the end
            start = self._dedupe_sweep
            last = conn.execute(
                "SELECT key FROM dedupe WHERE key > ? ORDER BY key LIMIT 1 OFFSET ?", (start, batch - 1)
            ).fetchone()
            if last is None:
                expired = conn.execute("SELECT key FROM dedupe WHERE key > ? AND seen < ?", (start, cutoff)).fetchall()
                self._dedupe_sweep = b""
            else:
                expired = conn.execute(
                    "SELECT key FROM dedupe WHERE key > ? AND key <= ? AND seen < ?", (start, last[0], cutoff)
                ).fetchall()
                self._dedupe_sweep = last[0]
            column = "key"
        if not expired:
            return 0
        # ``seen`` is checked again: another process may have deleted one of these keys
        # meanwhile and a request claimed it anew, and that claim must stay
        with self.write_lock(), write_transaction(conn):
            return conn.executemany(
                f"DELETE FROM dedupe WHERE {column} = ? AND seen < ?", [(row[0], cutoff) for row in expired]
            ).rowcount

    def checkpoint(self) -> None:
        """Copy the WAL back into the database without waiting for readers (housekeeping)."""
        self.reader.execute("PRAGMA main.wal_checkpoint(PASSIVE)")  # not the attached shards'

    def counted(self) -> int:
        """The seq up to which the entries' counts are in the ``counters`` table."""
        row = self.reader.execute("SELECT seq FROM counted").fetchone()
        return row[0] if row else 0

    def fold_counts(self) -> int:
        """Add the counts of the entries not yet counted to ``counters`` (housekeeping;
        before they may be pruned); returns how many entries it counted."""
        conn = self.reader
        mark = self.counted()
        top = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
        if top is None or top <= mark:
            return 0
        # read without the writer lock: the entries up to ``top`` do not change, and none
        # after the mark is pruned (requests keep committing meanwhile)
        rows = conn.execute(
            f"SELECT org, {SUM_COUNTS}, count(*) FROM entries WHERE seq > ? AND seq <= ? GROUP BY org",
            (mark, top),
        ).fetchall()
        with self.write_lock(), write_transaction(conn):
            moved = conn.execute("UPDATE counted SET seq = ? WHERE seq = ?", (top, mark)).rowcount
            if moved:  # else another process folded these entries first
                conn.executemany(ADD_TO_COUNTERS, [(org, name, value) for org, *values, _ in rows
                                                   for name, value in zip(COUNTS, values) if value])
        return sum(row[-1] for row in rows) if moved else 0

    # status --------------------------------------------------------------------------------
    def counters(self) -> dict[str, dict[str, int]]:
        """org -> {accepted, duplicate, rejected} since the queue was created: the folded
        counts plus those of the entries not yet folded, read in one snapshot."""
        result: dict[str, dict[str, int]] = {}

        def add(org: str, name: str, value: int) -> None:
            counts = result.setdefault(org, dict.fromkeys(COUNTS, 0))
            counts[name] += value

        conn = self.reader
        conn.execute("BEGIN")
        try:
            for org, name, value in conn.execute("SELECT org, name, value FROM counters"):
                add(org, name, value)
            mark = conn.execute("SELECT seq FROM counted").fetchone()
            unfolded = conn.execute(
                f"SELECT org, {SUM_COUNTS} FROM entries WHERE seq > ? GROUP BY org",
                (mark[0] if mark else 0,),
            )
            for org, *values in unfolded:
                for name, value in zip(COUNTS, values):
                    add(org, name, value)
        finally:
            conn.execute("COMMIT")
        return result

    def count_enricher_errors(self, enricher: str, counts: dict[str, int]) -> None:
        """Add ``counts`` (outcome -> number) to ``enricher``'s error counts."""
        self._write(
            "INSERT INTO enricher_errors (enricher, outcome, value) VALUES (?,?,?) "
            "ON CONFLICT (enricher, outcome) DO UPDATE SET value = value + excluded.value",
            [(enricher, outcome, value) for outcome, value in counts.items()],
            many=True,
        )

    def enricher_errors(self) -> dict[str, dict[str, int]]:
        """enricher -> {outcome: count} since the queue was created (failures only)."""
        result: dict[str, dict[str, int]] = {}
        for enricher, outcome, value in self.reader.execute(
            "SELECT enricher, outcome, value FROM enricher_errors ORDER BY enricher, outcome"
        ):
            result.setdefault(enricher, {})[outcome] = value
        return result

    def sink_status(self, sinks: list[str]) -> dict[str, dict[str, int]]:
        """sink -> {delivered, pending, dead_lettered} for the given sink names."""
        conn = self.reader
        status = {}
        for sink in sinks:
            seq = self.cursor(sink)
            delivered = conn.execute("SELECT delivered FROM cursors WHERE sink = ?", (sink,)).fetchone()[0]
            pending = records_after(conn, seq)
            dead = conn.execute(
                "SELECT count(*) FROM dead_letters WHERE sink = ? AND replayed_at IS NULL", (sink,)
            ).fetchone()[0]
            status[sink] = {"cursor": seq, "delivered": delivered, "pending": pending, "dead_lettered": dead}
        return status

    def depth(self) -> dict[str, int]:
        """Entries and records in the queue (not yet pruned)."""
        conn = self.reader
        with read_snapshot(conn):
            entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
            return {"entries": entries, "records": records_after(conn, 0)}

    def stats(self) -> dict[str, Any]:
        """Entries and records held, and when the oldest entry was queued; cheap at any depth
        (the seq range and the running totals, never the records themselves)."""
        conn = self.reader
        with read_snapshot(conn):
            low, high = conn.execute("SELECT min(seq), max(seq) FROM entries").fetchone()
            if low is None:
                return {"entries": 0, "records": 0, "oldest_enqueued_at": None}
            records = records_after(conn, low - 1)
            oldest = conn.execute("SELECT enqueued_at FROM entries WHERE seq = ?", (low,)).fetchone()
        return {"entries": high - low + 1, "records": records, "oldest_enqueued_at": oldest[0] if oldest else None}

    def sink_lag(self, sink: str) -> dict[str, Any]:
        """How far ``sink`` is behind: entries it has not stored and when the oldest of them
        was queued (None when caught up).  Reads only; a sink without a cursor yet is behind
        by the whole queue."""
        conn = self.reader
        row = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        after = row[0] if row else 0
        first = conn.execute(
            "SELECT seq, enqueued_at FROM entries WHERE seq > ? ORDER BY seq LIMIT 1", (after,)
        ).fetchone()
        if first is None:
            return {"pending_entries": 0, "oldest_pending_at": None}
        high = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
        return {"pending_entries": high - first[0] + 1, "oldest_pending_at": first[1]}

    def probe_writable(self, timeout: float = 2.0) -> None:
        """Open and roll back a write transaction on a connection of its own, waiting at most
        ``timeout`` seconds for the write lock: raises ``sqlite3.Error`` when the queue cannot
        be written now (the readiness check)."""
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    def iter_all(self) -> Iterator[Entry]:
        """Every entry still queued (for tests and tools)."""
        yield from self.read(0, 10**12)


class write_transaction:  # noqa: N801 - used like a function, as contextlib's helpers are
    """``with write_transaction(conn):`` a write transaction (``BEGIN IMMEDIATE``, or
    ``begin``: a plain ``BEGIN`` takes no database's write lock until it writes there) on
    ``conn``, committed when the block ends and rolled back when it (or the commit) raises.
    A class rather than ``@contextmanager``: every request's commit goes through it."""

    __slots__ = ("conn", "begin")

    def __init__(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"):
        self.conn = conn
        self.begin = begin

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(self.begin)
        return self.conn

    def __exit__(self, exc_type, exc, traceback) -> None:
        conn = self.conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
                return
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def settle(submission: Submission, fresh: "set[bytes]") -> tuple[list[dict], list[dict]]:
    """The accepted and rejected records of ``submission`` to store, given the keys of it
    that were new; fills in its counts."""
    submission.fresh_keys = fresh
    records = _once_each(submission.accepted, fresh)
    rejected = _once_each(submission.rejected, fresh)
    submission.accepted_count = len(records)
    submission.duplicate_count = len(submission.accepted) + len(submission.rejected) - len(records) - len(rejected)
    submission.rejected_count = len(rejected)
    submission.stored_rejected = rejected
    return records, rejected


def entry_blob(submission: Submission, records: list[dict], rejected: list[dict]) -> bytes:
    """The stored form of an entry's records (see :func:`expand`)."""
    return orjson.dumps({"shared": submission.shared, "records": records, "rejected": rejected})


def _once_each(keyed: list[tuple[bytes, dict]], fresh: set[bytes]) -> list[dict]:
    """The records whose key is new, each key once: two events of one bundle with the same
    key (an SDK that sent one ``event_index`` twice) are one event, and the second is a
    duplicate like any retry."""
    taken: set[bytes] = set()
    records = []
    for key, record in keyed:
        if key in fresh and key not in taken:
            taken.add(key)
            records.append(record)
    return records


def _settle_key_layout(conn: sqlite3.Connection) -> None:
    """Record the dedupe key layout of a queue that has none yet: grouped when it holds no
    keys, plain when it holds keys from a version that stored them plain."""
    with write_transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            has_keys = conn.execute("SELECT 1 FROM dedupe LIMIT 1").fetchone() is not None
            conn.execute(f"PRAGMA user_version = {PLAIN_KEYS if has_keys else GROUPED_KEYS}")


#: table -> columns added since it was first released, with their SQL type
ADDED_COLUMNS = {
    "ingest_errors": (("request_id", "TEXT"),),
    "entries": (("accepted", "INTEGER"), ("duplicate", "INTEGER"), ("rejected", "INTEGER"), ("total", "INTEGER")),
}


def records_after(conn: sqlite3.Connection, seq: int) -> int:
    """How many records the entries after ``seq`` hold, from two rows' running totals.

    Each entry's ``total`` is the running sum of the counts of the entries up to it (those
    with a total), so the records of a range of entries are the newest entry's total minus
    the first one's, plus its count: the same at any depth, where summing the counts would
    read every entry (or, as before, an index on ``count`` that every commit wrote a page
    of).  While the range holds an entry without a total (written by an older version),
    the counts are summed.  Call it inside :func:`read_snapshot` when the answer must agree
    with other reads.
    """
    first = conn.execute("SELECT count, total FROM entries WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)).fetchone()
    if first is None:
        return 0
    newest = conn.execute("SELECT total FROM entries ORDER BY seq DESC LIMIT 1").fetchone()[0]
    if first[1] is None or newest is None or conn.execute(
        "SELECT 1 FROM entries INDEXED BY entries_without_total WHERE total IS NULL AND seq > ? LIMIT 1", (seq,)
    ).fetchone():
        return conn.execute("SELECT coalesce(sum(count), 0) FROM entries WHERE seq > ?", (seq,)).fetchone()[0]
    return newest - first[1] + first[0]


class read_snapshot:
    """``with read_snapshot(conn):`` the reads in the block see one state of the queue (a
    read transaction), unless ``conn`` is in a transaction already."""

    __slots__ = ("conn", "began")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.began = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.began = True
        return self.conn

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.began and self.conn.in_transaction:
            self.conn.execute("COMMIT")


def _settle_totals(conn: sqlite3.Connection) -> None:
    """Keep the running totals usable (see :func:`records_after`): an index of the entries
    without one (written by an older version, and none once they are pruned), and no more
    index on ``count``, which the totals replace."""
    conn.execute("CREATE INDEX IF NOT EXISTS entries_without_total ON entries (seq) WHERE total IS NULL")
    conn.execute("DROP INDEX IF EXISTS entries_count")


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring tables made by an older Cortex up to the current schema."""
    for table, added in ADDED_COLUMNS.items():
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, sql_type in added:
            if name in columns:
                continue
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
            except sqlite3.OperationalError as error:  # another process added it first
                if "duplicate column" not in str(error):
                    raise


def _settle_counted(conn: sqlite3.Connection) -> None:
    """Start the ``counted`` mark of a queue that has none: at its newest entry, whose
    counts (like all before it, from a version that counted at commit) are in ``counters``."""
    with write_transaction(conn):
        if conn.execute("SELECT 1 FROM counted").fetchone() is None:
            # a queue of an older version numbers its entries with AUTOINCREMENT, whose
            # record of the newest seq outlives the entries pruned
            legacy = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
            row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'entries'" if legacy else "SELECT max(seq) FROM entries"
            ).fetchone()
            conn.execute("INSERT INTO counted (id, seq) VALUES (1, ?)", (row[0] if row and row[0] else 0,))


def expand(entry: Any) -> list[dict]:
    """The whole records of a stored entry: shared fields merged into each accepted record
    (the record's own values win; ``warnings`` and ``extra`` are combined), then the
    rejected records as they are."""
    if isinstance(entry, list):  # entries written before records shared their fields
        return entry
    shared = entry["shared"]
    shared_warnings = shared.get("warnings")
    shared_extra = shared.get("extra")
    records = []
    for own in entry["records"]:
        record = {**shared, **own}
        # each record gets lists and dicts of its own: an enricher that adds a warning to
        # one record must not add it to its neighbours
        if shared_warnings:
            record["warnings"] = shared_warnings + own.get("warnings", [])
        if shared_extra:
            record["extra"] = {**shared_extra, **own.get("extra", {})}
        records.append(record)
    records.extend(entry["rejected"])
    return records


def make_queue(config: dict):
    """The queue backend ``[queue] backend`` names: the embedded SQLite queue (default) or
    Kafka (:class:`cortex.kafka_queue.KafkaQueue`, for several nodes)."""
    if config["queue"]["backend"] == "kafka":
        from cortex.kafka_queue import KafkaQueue

        return KafkaQueue(config)
    from cortex.queue_shards import ShardedQueue

    queue = config["queue"]
    return ShardedQueue(queue["path"], queue["durability"], queue["shards"], queue["ingest"],
                        queue["ingest_max_bytes"])
