"""Giving an existing queue another ingest layout (``cortex queue reshard``): another number
of SQLite ingest shards, or the LMDB ingest store in their place (or back).

A device's dedupe keys live in its shard or in the store (:mod:`cortex.queue_shards`), so
the layout can only change while no process uses the queue, and the keys must follow their
devices to their new place.  :func:`reshard` does it in steps that a crash or a power
loss at any point leaves either undone or done, never half done:

1. Take the queue alone (:meth:`~cortex.queue_shards.ShardedQueue.exclusive_use`), and
   remove the files an earlier reshard left behind (of another generation than the
   queue's).
2. Move every shard's (or the store's) entries and ingest-error rows into the queue, as the
   dispatcher does.  They then hold only dedupe keys and the counts of all-duplicate
   requests.
3. Write the new shards as files of the next *generation* (``queue.shard0.g2.db`` ...),
   each with the keys of the devices it now has (:func:`~cortex.queue_shards.shard_of` of
   the key's group), or the new store (``queue.ingest.g2.mdb``) with all the keys, and
   sync them to disk.  Until step 4 nothing reads them.
4. In one transaction of the queue, synced: add the old shards' (or store's) counts to the
   queue's counters, record the new layout and generation, start the shard marks over,
   and (going to one shard) take the keys into the queue itself or (coming from one) drop
   them there.
5. Delete the old files.

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
from cortex.queue_lmdb import LMDBIngest, ingest_path
from cortex.queue_shards import INGEST_STORES, ShardedQueue, detach_shards, shard_of, shard_path

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
    #: where requests committed before and commit now ("sqlite" or "lmdb")
    store_before: str = "sqlite"
    store_after: str = "sqlite"
    #: entries moved from the old shards into the queue first
    moved_entries: int = 0
    #: dedupe keys now in the new shards (or in the queue, for one shard)
    keys: int = 0
    #: files of earlier generations (or of an interrupted reshard) removed
    removed_files: int = 0


def reshard(queue: ShardedQueue, count: int = 1, ingest: str | None = None) -> ReshardReport:
    """Give ``queue`` ``count`` SQLite ingest shards (1-64) or, with ``ingest = "lmdb"``, the
    LMDB ingest store (``ingest`` None: the store it has), keeping every entry, dedupe key
    and count; raises :class:`~cortex.queue_shards.QueueInUse` when another process uses the
    queue and :class:`ReshardError` when it cannot be resharded.  The queue's schema must be
    up to date (:meth:`~cortex.queue_shards.ShardedQueue.create_schema`, as the app does)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
        raise ReshardError(f"the number of shards must be a whole number from 1 to 64, not {count!r}")
    if ingest is not None and ingest not in INGEST_STORES:
        raise ReshardError(f'the ingest store must be "lmdb" or "sqlite", not {ingest!r}')
    with queue.exclusive_use():
        old_shards = list(queue.shards)
        old_store = queue.ingest
        wanted = ingest or queue.store
        after = 1 if wanted == "lmdb" else count
        report = ReshardReport(before=queue.count, after=after, store_before=queue.store, store_after=wanted)
        report.removed_files = _remove_other_generations(queue.path, queue.generation)
        if wanted == queue.store and after == report.before:
            return report
        if not old_shards and old_store is None and _keys_are_plain(queue.main):
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
        left = old_store.held_rows() if old_store is not None else 0
        if left:
            raise ReshardError(f"{old_store.path} still holds {left} rows after moving them; nothing was changed")
        generation = queue.generation + 1
        sources = _key_sources(old_shards, old_store) or [_keys_of(queue.main.reader)]
        if wanted == "lmdb":
            report.keys = _write_new_store(ingest_path(queue.path, generation), sources, queue.durability)
        elif after > 1:
            report.keys = _write_new_shards([shard_path(queue.path, i, generation) for i in range(after)], sources,
                                            queue.durability)
        report.keys += _switch(queue, old_shards, old_store, after, generation, wanted)
        for shard in old_shards:
            shard.close()
            report.removed_files += _remove_queue_file(shard.path)
        if old_store is not None:
            old_store.close()
            report.removed_files += _remove_store_file(old_store.path)
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


def _key_sources(old_shards: list[SQLiteQueue], old_store: LMDBIngest | None) -> list:
    """The dedupe keys of the old shards or store, as iterables of chunks of (key, seen)."""
    if old_store is not None:
        return [old_store.key_chunks(KEY_CHUNK)]
    return [_keys_of(shard.reader) for shard in old_shards]


def _write_new_store(path: str, sources: list, durability: str) -> int:
    """Create the LMDB store at ``path`` holding the keys of ``sources`` (iterables of
    chunks of (key, seen)), synced to disk; returns how many keys."""
    _remove_store_file(path)  # left by an interrupted reshard to the same generation
    store = LMDBIngest(path, durability)
    keys = 0
    try:
        for chunks in sources:
            for rows in chunks:
                store.add_keys(rows)
                keys += len(rows)
        store.sync()
    finally:
        store.close()
    _fsync(path)
    _fsync(os.path.dirname(os.path.abspath(path)))
    return keys


def _write_new_shards(paths: list[str], sources: list, durability: str) -> int:
    """Create the shards at ``paths`` holding the keys of ``sources`` (iterables of chunks
    of (key, seen)) by their device's shard, synced to disk; returns how many keys."""
    for path in paths:
        _remove_queue_file(path)  # left by an interrupted reshard to the same generation
        SQLiteQueue(path, durability).create_schema()
    targets = [sqlite3.connect(path, isolation_level=None) for path in paths]
    keys = 0
    try:
        for conn in targets:
            conn.execute("BEGIN")
        for chunks in sources:
            for rows in chunks:
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


def _switch(queue: ShardedQueue, old_shards: list[SQLiteQueue], old_store: LMDBIngest | None, count: int,
            generation: int, store: str) -> int:
    """Step 4 of the module docstring; returns how many keys it took into the queue."""
    conn = queue.main.reader
    taken = 0
    conn.execute("PRAGMA synchronous=FULL")  # this commit must be on disk before old files go
    try:
        with queue.main.write_lock(), write_transaction(conn):
            for shard in old_shards:
                for org, name, value in shard.reader.execute("SELECT org, name, value FROM counters"):
                    conn.execute(ADD_TO_COUNTERS, (org, name, value))
            if old_store is not None:
                conn.executemany(ADD_TO_COUNTERS, old_store.counts())
            if store == "sqlite" and count == 1:
                for chunks in _key_sources(old_shards, old_store):
                    for rows in chunks:
                        conn.executemany("INSERT OR IGNORE INTO dedupe (key, seen) VALUES (?, ?)", rows)
                        taken += len(rows)
            elif not old_shards and old_store is None:
                conn.execute("DELETE FROM dedupe")  # the shards or the store have them now
            conn.execute("UPDATE shards SET count = ?, generation = ?, store = ?", (count, generation, store))
            conn.execute("DELETE FROM shard_marks")  # the new shards or store number their entries from 1
    finally:
        conn.execute(f"PRAGMA synchronous={'FULL' if queue.durability == 'fsync' else 'NORMAL'}")
    return taken


_GENERATION = re.compile(r"\.shard\d+(?:\.g(\d+))?\.")


def _remove_other_generations(path: str, generation: int) -> int:
    """Remove the shard and store files of ``path`` of any generation but ``generation``."""
    stem, ext = os.path.splitext(path)
    removed = 0
    for name in glob.glob(glob.escape(stem) + ".shard*" + (ext or ".db")):
        found = _GENERATION.search(name[len(stem):])
        if found and int(found.group(1) or 0) != generation:
            removed += _remove_queue_file(name)
    for name in glob.glob(glob.escape(stem) + ".ingest*.mdb"):
        found = _STORE_GENERATION.fullmatch(name[len(stem):])
        if found and int(found.group(1) or 0) != generation:
            removed += _remove_store_file(name)
    return removed


_STORE_GENERATION = re.compile(r"\.ingest(?:\.g(\d+))?\.mdb")


def _remove_store_file(path: str) -> int:
    """Remove an LMDB store file with its lock file; returns 1 if it was there."""
    return _remove_with(path, ("-lock",))


def _remove_queue_file(path: str) -> int:
    """Remove a queue file with its WAL, shared-memory and lock files; returns 1 if it was there."""
    return _remove_with(path, ("-wal", "-shm", ".lock"))


def _remove_with(path: str, suffixes: tuple[str, ...]) -> int:
    """Remove ``path`` and the files named it plus each of ``suffixes``; returns 1 if
    ``path`` was there."""
    there = os.path.exists(path)
    for name in (path, *(path + suffix for suffix in suffixes)):
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
