"""Giving an existing queue another number of ingest shards (``cortex queue reshard``).

A device's dedupe keys live in its shard (:mod:`cortex.queue_shards`), so the number of
shards can only change while no process uses the queue, and the keys must follow their
devices to their new shards.  :func:`reshard` does it in steps that a crash or a power
loss at any point leaves either undone or done, never half done:

1. Take the queue alone (:meth:`~cortex.queue_shards.ShardedQueue.exclusive_use`), and
   remove the files an earlier reshard left behind (of another generation than the
   queue's).
2. Move every shard's entries and ingest-error rows into the queue, as the dispatcher does.
   The shards then hold only dedupe keys and the counts of all-duplicate requests.
3. Write the new shards as files of the next *generation* (``queue.shard0.g2.db`` ...),
   each with the keys of the devices it now has (:func:`~cortex.queue_shards.shard_of` of
   the key's group), and sync them to disk.  Until step 4 nothing reads them.
4. In one transaction of the queue, synced: add the old shards' counts to the queue's
   counters, record the new number and generation, start the shard marks over, and (going
   to one shard) take the keys into the queue itself or (coming from one) drop them there.
5. Delete the old shard files.

The queue's entries, cursors, dead letters and ingest error log stay where they are, so the
sinks go on from their cursors.  A queue whose keys are stored without their device group
(made before grouping, see :mod:`cortex.queue`) cannot be resharded.
"""

from __future__ import annotations

import glob
import os
import re
import sqlite3
from dataclasses import dataclass

from cortex.queue import ADD_TO_COUNTERS, PLAIN_KEYS, SQLiteQueue, write_transaction
from cortex.queue_shards import ShardedQueue, detach_shards, shard_of, shard_path

__all__ = ["ReshardError", "ReshardReport", "reshard"]

#: dedupe keys copied per statement
KEY_CHUNK = 10_000
#: bytes of a stored key that are its device's group (see cortex.ingest.pipeline.key_group)
GROUP_BYTES = 4


class ReshardError(Exception):
    """The queue cannot be resharded as asked (the message says why and what to do)."""


@dataclass
class ReshardReport:
    """What :func:`reshard` did."""

    before: int
    after: int
    #: entries moved from the old shards into the queue first
    moved_entries: int = 0
    #: dedupe keys now in the new shards (or in the queue, for one shard)
    keys: int = 0
    #: files of earlier generations (or of an interrupted reshard) removed
    removed_files: int = 0


def reshard(queue: ShardedQueue, count: int) -> ReshardReport:
    """Give ``queue`` ``count`` ingest shards (1-64), keeping every entry, dedupe key and
    count; raises :class:`~cortex.queue_shards.QueueInUse` when another process uses the
    queue and :class:`ReshardError` when it cannot be resharded.  The queue's schema must be
    up to date (:meth:`~cortex.queue_shards.ShardedQueue.create_schema`, as the app does)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
        raise ReshardError(f"the number of shards must be a whole number from 1 to 64, not {count!r}")
    with queue.exclusive_use():
        if queue.ingest is not None:
            raise ReshardError(
                f"the queue {queue.path} takes requests into its LMDB ingest store ({queue.ingest.path}), which "
                "has no shards: many processes write it without waiting for each other. Ingest shards are for "
                "queues made with queue.ingest = \"sqlite\"")
        old_shards = list(queue.shards)
        report = ReshardReport(before=queue.count, after=count)
        report.removed_files = _remove_other_generations(queue.path, queue.generation)
        if count == report.before:
            return report
        if not old_shards and _keys_are_plain(queue.main):
            raise ReshardError(
                f"the queue {queue.path} stores its dedupe keys without their device (it held keys before "
                "Cortex grouped them), so they cannot be given to shards. Once everything is delivered and "
                "the dedupe window has passed, stop Cortex and remove the queue files instead (see the "
                "README's Upgrades)"
            )
        report.moved_entries = queue.move()
        detach_shards(queue.main.reader)  # the moves attached the old files
        for shard in old_shards:
            left = shard.reader.execute(
                "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM ingest_errors)").fetchone()[0]
            if left:
                raise ReshardError(f"{shard.path} still holds {left} rows after moving them; nothing was changed")
        generation = queue.generation + 1
        sources = [shard.reader for shard in old_shards] or [queue.main.reader]
        new_paths = [shard_path(queue.path, i, generation) for i in range(count)] if count > 1 else []
        if new_paths:
            report.keys = _write_new_shards(new_paths, sources, queue.durability)
        report.keys += _switch(queue, old_shards, count, generation)
        for shard in old_shards:
            shard.close()
            report.removed_files += _remove_queue_file(shard.path)
        return report


def _keys_are_plain(queue: SQLiteQueue) -> bool:
    return queue.reader.execute("PRAGMA user_version").fetchone()[0] == PLAIN_KEYS


def _keys_of(conn: sqlite3.Connection):
    """Every (key, seen) of a queue file's dedupe table, in chunks."""
    cursor = conn.execute("SELECT key, seen FROM dedupe")
    while True:
        rows = cursor.fetchmany(KEY_CHUNK)
        if not rows:
            return
        yield rows


def _write_new_shards(paths: list[str], sources: list[sqlite3.Connection], durability: str) -> int:
    """Create the shards at ``paths`` holding the keys of ``sources`` by their device's
    shard, synced to disk; returns how many keys."""
    for path in paths:
        _remove_queue_file(path)  # left by an interrupted reshard to the same generation
        SQLiteQueue(path, durability).create_schema()
    targets = [sqlite3.connect(path, isolation_level=None) for path in paths]
    keys = 0
    try:
        for conn in targets:
            conn.execute("BEGIN")
        for source in sources:
            for rows in _keys_of(source):
                routed: list[list] = [[] for _ in paths]
                for row in rows:
                    routed[shard_of(row[0][:GROUP_BYTES], len(paths))].append(row)
                for conn, part in zip(targets, routed):
                    if part:
                        conn.executemany("INSERT OR IGNORE INTO dedupe (key, seen) VALUES (?, ?)", part)
                keys += len(rows)
        for conn in targets:
            conn.execute("COMMIT")
            # everything into the database file itself, then the file to the disk
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        for conn in targets:
            conn.close()
    for path in paths:
        _fsync(path)
    if paths:
        _fsync(os.path.dirname(os.path.abspath(paths[0])))
    return keys


def _switch(queue: ShardedQueue, old_shards: list[SQLiteQueue], count: int, generation: int) -> int:
    """Step 4 of the module docstring; returns how many keys it took into the queue."""
    conn = queue.main.reader
    taken = 0
    conn.execute("PRAGMA synchronous=FULL")  # this commit must be on disk before old files go
    try:
        with queue.main.write_lock(), write_transaction(conn):
            for shard in old_shards:
                for org, name, value in shard.reader.execute("SELECT org, name, value FROM counters"):
                    conn.execute(ADD_TO_COUNTERS, (org, name, value))
            if count == 1:
                for shard in old_shards:
                    for rows in _keys_of(shard.reader):
                        conn.executemany("INSERT OR IGNORE INTO dedupe (key, seen) VALUES (?, ?)", rows)
                        taken += len(rows)
            elif not old_shards:
                conn.execute("DELETE FROM dedupe")  # the shards have them now
            conn.execute("UPDATE shards SET count = ?, generation = ?", (count, generation))
            conn.execute("DELETE FROM shard_marks")  # the new shards number their entries from 1
    finally:
        conn.execute(f"PRAGMA synchronous={'FULL' if queue.durability == 'fsync' else 'NORMAL'}")
    return taken


_GENERATION = re.compile(r"\.shard\d+(?:\.g(\d+))?\.")


def _remove_other_generations(path: str, generation: int) -> int:
    """Remove the shard files of ``path`` of any generation but ``generation``."""
    stem, ext = os.path.splitext(path)
    removed = 0
    for name in glob.glob(glob.escape(stem) + ".shard*" + (ext or ".db")):
        found = _GENERATION.search(name[len(stem):])
        if found and int(found.group(1) or 0) != generation:
            removed += _remove_queue_file(name)
    return removed


def _remove_queue_file(path: str) -> int:
    """Remove a queue file with its WAL, shared-memory and lock files; returns 1 if it was there."""
    there = os.path.exists(path)
    for name in (path, path + "-wal", path + "-shm", path + ".lock"):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass
    return int(there)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
