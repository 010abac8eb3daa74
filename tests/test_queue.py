"""The durable queue: group commit across threads, dedupe, and what happens when it is full."""

from __future__ import annotations

import threading
from collections import Counter

import orjson
import pytest

from conftest import Cortex, iso
from cortex.queue import SQLiteQueue, Submission


@pytest.fixture
def cortex(tmp_path) -> Cortex:
    """A Cortex whose requests commit to the queue file itself (SQLite ingest, no shards):
    these tests look inside that file.  ``tests/test_queue_shards.py`` covers the shards,
    ``tests/test_queue_lmdb.py`` the LMDB ingest store."""
    return Cortex(tmp_path / "data", {"queue": {"shards": 1, "ingest": "sqlite"}})


def keyed(prefix: str, count: int) -> list[tuple[bytes, dict]]:
    return [(f"{prefix}-{i}".encode().ljust(16, b"."), {"id": f"{prefix}{i}", "received_at": "t"}) for i in range(count)]


def submit_from_threads(threads: int, submit) -> list[tuple[int, int]]:
    """(accepted, duplicate) of every submission ``submit(thread)`` yields, with ``threads``
    threads submitting at once."""
    results = []
    lock = threading.Lock()

    def run(number: int) -> None:
        for submission in submit(number):
            with lock:
                results.append((submission.accepted_count, submission.duplicate_count))

    started = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return results


def test_concurrent_submissions_are_grouped_and_counted_exactly(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"), durability="fsync")
    queue.create_schema()
    # every thread sends 10 events of its own and the same 5 shared ones
    results = submit_from_threads(
        16, lambda number: [queue.submit(Submission("org", 1, keyed(f"t{number}", 10) + keyed("shared", 5), []))])
    assert sum(a for a, _ in results) == 16 * 10 + 5
    assert sum(d for _, d in results) == 15 * 5
    assert queue.depth()["records"] == 165
    assert queue.counters() == {"org": {"accepted": 165, "duplicate": 75, "rejected": 0}}


def test_a_full_disk_answers_503_with_retry_after_and_recovers(cortex):
    writer = cortex.state.queue.writer
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    events = [{"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "x" * 30} for i in range(100)]
    response = cortex.post(cortex.bundle(events))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    writer.execute("PRAGMA max_page_count = 1073741823")
    assert cortex.post(cortex.bundle(events)).status_code == 200
    assert cortex.state.queue.depth()["records"] == 100


def test_dedupe_window_forgets_old_keys(cortex):
    queue = cortex.state.queue
    bundle = cortex.bundle([{"type": "dau", "event_datetime": iso()}])
    assert cortex.post(bundle).status_code == 200
    queue.reader.execute("UPDATE dedupe SET seen = seen - 8 * 86400")
    assert queue.prune_dedupe(7 * 86400) == 1
    assert cortex.post(bundle).status_code == 200
    assert queue.counters()["demo"]["accepted"] == 2


def test_records_of_one_entry_share_no_mutable_fields(cortex):
    events = [{"type": "dau", "event_datetime": iso()}, {"type": "install", "event_datetime": iso()}]
    bundle = cortex.bundle(events, user_tag=42, note="kept in extra")  # a warning and an extra field
    assert cortex.post(bundle).status_code == 200
    first, second = cortex.records()
    first["warnings"].append("added by an enricher")
    first["extra"]["added"] = True
    assert "added by an enricher" not in second["warnings"] and "added" not in second["extra"]


def dedupe_keys(queue: SQLiteQueue) -> list[bytes]:
    return [row[0] for row in queue.reader.execute("SELECT key FROM dedupe")]


def test_one_bundles_keys_are_stored_side_by_side_and_retries_are_still_duplicates(cortex):
    events = [{"type": "event", "kingdom": "k", "event_index": i, "event_datetime": iso()} for i in range(20)]
    assert cortex.post(cortex.bundle(events)).status_code == 200
    assert cortex.post(cortex.bundle(events, device_tag="device-2")).status_code == 200
    keys = dedupe_keys(cortex.state.queue)
    # each device's keys share their first four bytes (their group), so they are neighbours
    # in the dedupe index whatever their events' times
    assert len(keys) == 40 and {len(key) for key in keys} == {20}
    groups = Counter(key[:4] for key in keys)
    assert sorted(groups.values()) == [20, 20]
    # the record ids are the keys without the group
    assert sorted(record["id"] for record in cortex.records()) == sorted(key[4:].hex() for key in keys)
    assert cortex.post(cortex.bundle(events)).status_code == 200
    assert cortex.state.queue.counters()["demo"] == {"accepted": 40, "duplicate": 20, "rejected": 0}


def test_a_queue_with_keys_from_before_grouping_keeps_recognising_their_retries(tmp_path):
    from cortex.app import create_app

    first = Cortex(tmp_path / "data", {"queue": {"shards": 1, "ingest": "sqlite"}})  # as a version before shards made it
    old_bundle = first.bundle([{"type": "dau", "event_datetime": iso()}])
    assert first.post(old_bundle).status_code == 200
    # make the queue what a version that stored keys plain left behind
    writer = first.state.queue.reader
    writer.execute("UPDATE dedupe SET key = substr(key, 5)")
    writer.execute("PRAGMA user_version = 0")
    first.state.queue.close()

    app = create_app(overrides={"data_dir": str(tmp_path / "data"), "logging": {"level": "WARNING"}})
    upgraded = app.extensions["cortex"].queue
    client = app.test_client()

    def post(bundle):
        return client.post(f"/demo/1/track?current_time={iso()}", data=orjson.dumps(bundle), content_type="text/plain")

    assert post(old_bundle).status_code == 200
    assert post(first.bundle([{"type": "install", "event_datetime": iso()}])).status_code == 200
    assert upgraded.counters()["demo"] == {"accepted": 2, "duplicate": 1, "rejected": 0}
    assert {len(key) for key in dedupe_keys(upgraded)} == {16}


def test_expired_keys_are_swept_from_the_whole_table_a_batch_at_a_time(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    queue.submit(Submission("org", 1, keyed("old", 30), []))
    queue.reader.execute("UPDATE dedupe SET seen = seen - 8 * 86400")
    queue.submit(Submission("org", 1, keyed("new", 30), []))
    # ten keys are looked at per call: six calls cover the 60 keys, old and new interleaved
    removed = [queue.prune_dedupe(7 * 86400, batch=10) for _ in range(6)]
    assert sum(removed) == 30 and all(count <= 10 for count in removed)
    assert queue.prune_dedupe(7 * 86400, batch=10) == 0
    remaining = {key for key, in queue.reader.execute("SELECT key FROM dedupe")}
    assert remaining == {key for key, _ in keyed("new", 30)}
    # the sweep starts over at the end of the table
    queue.reader.execute("UPDATE dedupe SET seen = seen - 8 * 86400")
    assert sum(queue.prune_dedupe(7 * 86400, batch=10) for _ in range(4)) == 30


def test_a_queue_made_with_a_rowid_dedupe_table_prunes_its_oldest_rows(tmp_path):
    import sqlite3

    path = str(tmp_path / "q.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE dedupe (key BLOB NOT NULL UNIQUE, seen INTEGER NOT NULL)")
    conn.close()
    queue = SQLiteQueue(path)
    queue.create_schema()
    queue.submit(Submission("org", 1, keyed("old", 5), []))
    queue.reader.execute("UPDATE dedupe SET seen = seen - 8 * 86400")
    queue.submit(Submission("org", 1, keyed("new", 5), []))
    assert queue.prune_dedupe(7 * 86400) == 5
    assert queue.submit(Submission("org", 1, keyed("new", 5) + keyed("old", 5), [])).accepted_count == 5


def test_a_large_submission_with_some_keys_seen_before_keeps_only_the_new_records(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    first = queue.submit(Submission("org", 1, keyed("a", 30), [], key_group=b"grp1"))
    assert (first.accepted_count, first.duplicate_count) == (30, 0)
    # 20 keys seen before among 40: the commit's first guess (all new) is wrong and undone
    second = queue.submit(Submission("org", 1, keyed("a", 20) + keyed("b", 20), [], key_group=b"grp1"))
    assert (second.accepted_count, second.duplicate_count) == (20, 20)
    assert second.fresh_keys == {key for key, _ in keyed("b", 20)}
    stored = [record["id"] for entry in queue.iter_all() for record in entry.records]
    assert sorted(stored) == sorted([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(20)])
    assert queue.reader.execute("SELECT count(*) FROM dedupe").fetchone()[0] == 50


def counters_rows(queue) -> dict[tuple[str, str], int]:
    return {(org, name): value for org, name, value in queue.reader.execute("SELECT org, name, value FROM counters")}


def test_counts_stay_exact_as_entries_are_folded_into_the_counters_and_pruned(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    queue.submit(Submission("a", 1, keyed("x", 4), keyed("bad", 1)))
    queue.submit(Submission("b", 2, keyed("y", 3), []))
    queue.submit(Submission("a", 1, keyed("x", 2), []))  # all duplicates: no entry
    expected = {"a": {"accepted": 4, "duplicate": 2, "rejected": 1}, "b": {"accepted": 3, "duplicate": 0, "rejected": 0}}
    # the commits wrote only the all-duplicates request's count; the rest rides on the entries
    assert counters_rows(queue) == {("a", "duplicate"): 2}
    assert queue.counters() == expected
    # a sink has every entry, but they are not counted yet: none may go
    queue.cursor("sql")
    queue.advance("sql", queue.head(), 8)
    assert queue.prune(["sql"]) == 0
    assert queue.fold_counts() == 2
    assert queue.counted() == queue.head()
    assert counters_rows(queue) == {("a", "accepted"): 4, ("a", "duplicate"): 2, ("a", "rejected"): 1,
                                    ("b", "accepted"): 3}
    assert queue.counters() == expected
    assert queue.fold_counts() == 0
    assert queue.prune(["sql"]) == 2
    assert queue.counters() == expected
    queue.submit(Submission("b", 2, keyed("z", 5), []))
    assert queue.counters()["b"] == {"accepted": 8, "duplicate": 0, "rejected": 0}


def test_the_dispatchers_housekeeping_folds_the_counts_before_it_prunes(cortex):
    events = [{"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "k"} for i in range(3)]
    bundle = cortex.bundle(events)
    assert cortex.post(bundle).status_code == 200
    assert cortex.post(bundle).status_code == 200
    cortex.deliver()
    queue = cortex.state.queue
    assert queue.depth()["entries"] == 0
    assert counters_rows(queue) == {("demo", "accepted"): 3, ("demo", "duplicate"): 3}
    assert queue.counters()["demo"] == {"accepted": 3, "duplicate": 3, "rejected": 0}


def older_queue(path: str, script: str) -> None:
    """Make at ``path`` the entries table of an older version (counts not on the entries,
    seqs by AUTOINCREMENT), then run ``script``."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, org TEXT NOT NULL, app_id INTEGER NOT NULL,
                              count INTEGER NOT NULL, records BLOB NOT NULL, enqueued_at REAL NOT NULL);
    """ + script)
    conn.commit()
    conn.close()


def test_a_queue_that_counted_at_commit_is_not_counted_twice_after_an_upgrade(tmp_path):
    path = str(tmp_path / "q.db")
    # what an older version left: entries without counts, their counts already in counters
    blob = orjson.dumps({"shared": {}, "records": [{"id": f"r{i}"} for i in range(7)], "rejected": []})
    older_queue(path, f"""
        CREATE TABLE counters (org TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
                               PRIMARY KEY (org, name)) WITHOUT ROWID;
        INSERT INTO counters VALUES ('org', 'accepted', 7), ('org', 'duplicate', 1);
        INSERT INTO entries (org, app_id, count, records, enqueued_at) VALUES ('org', 1, 7, x'{blob.hex()}', 0);
    """)
    queue = SQLiteQueue(path)
    queue.create_schema()
    assert queue.counters() == {"org": {"accepted": 7, "duplicate": 1, "rejected": 0}}
    assert queue.counted() == 1
    queue.submit(Submission("org", 1, keyed("new", 2), []))
    assert queue.fold_counts() == 1
    assert queue.counters() == {"org": {"accepted": 9, "duplicate": 1, "rejected": 0}}
    queue.cursor("file")
    queue.advance("file", queue.head(), 9)
    assert queue.prune(["file"]) == 2


def test_entries_folded_by_another_process_meanwhile_are_not_counted_twice(tmp_path, monkeypatch):
    path = str(tmp_path / "q.db")
    first, second = SQLiteQueue(path), SQLiteQueue(path)
    first.create_schema()
    first.submit(Submission("org", 1, keyed("x", 3), []))
    stale_mark = second.counted()
    assert first.fold_counts() == 1
    # the second read the mark before the first folded: its update finds the mark moved
    monkeypatch.setattr(second, "counted", lambda: stale_mark)
    assert second.fold_counts() == 0
    assert counters_rows(first) == {("org", "accepted"): 3}
    assert first.counters() == {"org": {"accepted": 3, "duplicate": 0, "rejected": 0}}


def test_a_queue_pruned_empty_never_gives_a_seq_twice(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    queue.cursor("sql")
    queue.submit(Submission("org", 1, keyed("a", 1), []))
    queue.submit(Submission("org", 1, keyed("b", 1), []))
    assert queue.head() == 2
    queue.advance("sql", 2, 2)
    queue.fold_counts()
    assert queue.prune(["sql"]) == 2
    assert queue.depth()["entries"] == 0
    # the newest entry is gone: the head is still where it was, and the next entry follows
    # it, so the sink (whose cursor is at 2) does not skip it
    assert queue.head() == 2
    queue.submit(Submission("org", 1, keyed("c", 1), []))
    assert [entry.seq for entry in queue.read(queue.cursor("sql"), 100)] == [3]
    # a new process sees the same
    other = SQLiteQueue(queue.path)
    assert other.head() == 3


def test_a_queue_numbered_by_autoincrement_and_pruned_empty_continues_after_its_newest_seq(tmp_path):
    path = str(tmp_path / "q.db")
    # an older version's queue whose five entries were all delivered and pruned
    older_queue(path, """
        CREATE TABLE cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0,
                              updated_at REAL NOT NULL);
        INSERT INTO entries (org, app_id, count, records, enqueued_at)
            VALUES ('org', 1, 1, x'5b5d', 0), ('org', 1, 1, x'5b5d', 0), ('org', 1, 1, x'5b5d', 0),
                   ('org', 1, 1, x'5b5d', 0), ('org', 1, 1, x'5b5d', 0);
        DELETE FROM entries;
        INSERT INTO cursors VALUES ('sql', 5, 5, 0);
    """)
    queue = SQLiteQueue(path)
    queue.create_schema()
    assert queue.head() == 5
    queue.submit(Submission("org", 1, keyed("new", 1), []))
    assert [entry.seq for entry in queue.read(queue.cursor("sql"), 100)] == [6]


def test_the_writer_lock_keeps_out_the_other_threads_of_the_process(tmp_path):
    # an flock alone is the process's: the dispatcher's threads and the request thread
    # would all hold it at once, and SQLite's busy handler would sleep inside it
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    holding, release, entered = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with queue.write_lock():
            holding.set()
            release.wait(10)

    def second() -> None:
        holding.wait(10)
        with queue.write_lock():
            entered.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert holding.wait(10)
    assert not entered.wait(0.3), "a second thread got the writer lock while the first held it"
    release.set()
    assert entered.wait(10)
    for thread in threads:
        thread.join(10)


def held(queue: SQLiteQueue) -> int:
    """The records of the entries still queued, summed one by one (what the totals must say)."""
    return sum(len(entry.records) for entry in queue.iter_all())


def test_depth_pending_and_stats_stay_exact_through_group_commits_pruning_and_an_empty_queue(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    queue.cursor("sql")
    queue.cursor("file")
    threads = [threading.Thread(target=queue.submit, args=(Submission("org", 1, keyed(f"t{n}", n + 1), []),))
               for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.submit(Submission("org", 1, keyed("good", 2), keyed("bad", 3)))  # rejected records are held too
    assert queue.depth()["records"] == queue.stats()["records"] == held(queue) == 78 + 5
    assert queue.sink_status(["sql"])["sql"]["pending"] == 83
    # one sink takes the first half, the other all; pruning goes as far as the slower one
    entries = list(queue.iter_all())
    half = entries[len(entries) // 2 - 1].seq
    queue.advance("sql", half, 0)
    queue.advance("file", queue.head(), 0)
    status = queue.sink_status(["sql", "file"])
    assert status["sql"]["pending"] == sum(len(e.records) for e in entries if e.seq > half)
    assert status["file"]["pending"] == 0
    queue.fold_counts()
    assert queue.prune(["sql", "file"]) == len(entries) // 2
    assert queue.stats()["records"] == queue.depth()["records"] == held(queue) == status["sql"]["pending"]
    # pruned empty, the totals start again and stay exact
    queue.advance("sql", queue.head(), 0)
    queue.prune(["sql", "file"])
    assert queue.stats() == {"entries": 0, "records": 0, "oldest_enqueued_at": None}
    queue.submit(Submission("org", 1, keyed("again", 4), []))
    assert queue.stats()["records"] == queue.sink_status(["sql"])["sql"]["pending"] == 4


def test_a_queue_upgraded_with_entries_that_have_no_total_counts_them_all(tmp_path):
    path = str(tmp_path / "q.db")
    blob = orjson.dumps({"shared": {}, "records": [{"id": f"r{i}"} for i in range(7)], "rejected": []})
    older_queue(path, f"""
        CREATE INDEX entries_count ON entries (count);
        INSERT INTO entries (org, app_id, count, records, enqueued_at) VALUES ('org', 1, 7, x'{blob.hex()}', 0);
        INSERT INTO entries (org, app_id, count, records, enqueued_at) VALUES ('org', 1, 7, x'{blob.hex()}', 0);
    """)
    queue = SQLiteQueue(path)
    queue.create_schema()
    indexes = {row[1] for row in queue.reader.execute("PRAGMA index_list(entries)")}
    assert indexes == {"entries_without_total"}, "the count index is gone, replaced by the totals"
    queue.submit(Submission("org", 1, keyed("new", 3), []))
    assert queue.depth()["records"] == queue.stats()["records"] == 17
    # an entry without a total among newer ones (an older process still committing)
    queue.reader.execute(f"INSERT INTO entries (seq, org, app_id, count, records, enqueued_at) "
                         f"VALUES (4, 'org', 1, 7, x'{blob.hex()}', 0)")
    queue.submit(Submission("org", 1, keyed("newer", 2), []))
    assert queue.stats()["records"] == 26
    assert queue.sink_status(["sql"])["sql"]["pending"] == 26
    # once the entries without totals are pruned, the totals alone give the same answers
    queue.advance("sql", 4, 0)
    queue.fold_counts()
    assert queue.prune(["sql"]) == 4
    assert queue.reader.execute("SELECT count(*) FROM entries WHERE total IS NULL").fetchone()[0] == 0
    assert queue.stats()["records"] == queue.sink_status(["sql"])["sql"]["pending"] == held(queue) == 2


def wal_frames(queue: SQLiteQueue) -> int:
    """Frames in the queue's WAL (pages written since the last checkpoint)."""
    return queue.reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_a_one_event_commit_writes_about_two_pages(tmp_path):
    # the entry's page and its dedupe key's page: nothing else on a request's path is
    # written per commit (no counter row, no index of the entries)
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    for number in range(300):  # past the first pages' splits
        queue.submit(Submission("org", 1, keyed(f"warm{number}", 1), []))
    queue.reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    commits = 200
    for number in range(commits):
        queue.submit(Submission("org", 1, [(f"key{number}".encode().ljust(16, b"."), {"id": f"r{number}"})], [],
                                key_group=number.to_bytes(4, "big")))
    # 2.4 here: a new page for the entries now and then, and the database header with it;
    # an index of the entries would add one page to every commit
    assert wal_frames(queue) / commits < 2.75


def test_a_single_key_is_claimed_once_alone_and_as_the_last_of_a_large_submission(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    one = keyed("solo", 1)
    assert queue.submit(Submission("org", 1, one, [])).accepted_count == 1
    again = queue.submit(Submission("org", 1, one, []))
    assert (again.accepted_count, again.duplicate_count, again.fresh_keys) == (0, 1, set())
    # 501 keys are claimed 500 and then 1 at a time; the last one alone was seen before
    many = keyed("many", 500) + one
    result = queue.submit(Submission("org", 1, many, []))
    assert (result.accepted_count, result.duplicate_count) == (500, 1)
    assert result.fresh_keys == {key for key, _ in keyed("many", 500)}
    last_new = keyed("more", 500) + keyed("solo2", 1)
    assert queue.submit(Submission("org", 1, last_new, [])).accepted_count == 501
    assert held(queue) == 1 + 500 + 501


def test_prune_takes_about_a_batch_of_records_per_call_and_at_least_one_entry(tmp_path):
    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    queue.cursor("sql")
    for number in range(10):
        queue.submit(Submission("org", 1, keyed(f"b{number}-", 100), []))
    queue.advance("sql", queue.head(), 1000)
    queue.fold_counts()
    # one transaction per call, so request commits get the writer lock between them
    assert queue.prune(["sql"], batch=250) == 3
    assert queue.prune(["sql"], batch=50) == 1
    assert queue.prune(["sql"], batch=5000) == 6
    assert queue.prune(["sql"], batch=5000) == 0
    assert queue.depth() == {"entries": 0, "records": 0}


def test_the_dispatchers_housekeeping_prunes_a_large_backlog_batch_by_batch(cortex):
    events = [{"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "k"} for i in range(100)]
    for number in range(60):  # 6,000 records: more than one batch
        assert cortex.post(cortex.bundle(events, device_tag=f"device-{number}")).status_code == 200
    cortex.deliver()
    assert cortex.state.queue.depth() == {"entries": 0, "records": 0}


def test_a_dedupe_key_claimed_anew_while_the_sweep_looked_for_expired_ones_is_kept(tmp_path, monkeypatch):
    from contextlib import contextmanager

    queue = SQLiteQueue(str(tmp_path / "q.db"))
    queue.create_schema()
    queue.submit(Submission("org", 1, keyed("k", 1), []))
    queue.reader.execute("UPDATE dedupe SET seen = seen - 8 * 86400")
    locked = queue.write_lock

    @contextmanager
    def lock_after_a_race():
        # between the sweep's look and its lock, another process deleted the expired key
        # and a retry of its event claimed it anew
        queue.reader.execute("UPDATE dedupe SET seen = seen + 8 * 86400")
        with locked():
            yield

    monkeypatch.setattr(queue, "write_lock", lock_after_a_race)
    assert queue.prune_dedupe(7 * 86400) == 0
    monkeypatch.undo()
    assert len(dedupe_keys(queue)) == 1
    assert queue.submit(Submission("org", 1, keyed("k", 1), [])).duplicate_count == 1
