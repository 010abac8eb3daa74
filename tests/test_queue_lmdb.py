"""The LMDB ingest store (``[queue] ingest = "lmdb"``): requests commit to
``queue.ingest.mdb``, the dispatcher moves the entries into ``queue.db``, and everything
that reads the queue sees them all, exactly once."""

from __future__ import annotations

import threading

import orjson
import pytest

from conftest import Cortex, iso
from cortex.config import ConfigError
from cortex.queue import Submission
from cortex.queue_lmdb import LMDBIngest, ingest_path
from cortex.queue_shards import LMDB_MARK, ShardedQueue
from test_privacy import ALICE, BOB, TAGS, person_bundles
from test_queue import submit_from_threads
from test_queue_shards import (
    device_bundle,
    post_refused_in_strict_mode,
    replay_without_strict_mode,
    submit_while_moving,
)


LMDB = {"ingest": "lmdb"}


@pytest.fixture
def cortex(tmp_path) -> Cortex:
    """A Cortex whose queue takes requests into the LMDB ingest store."""
    return Cortex(tmp_path / "data", {"queue": LMDB})


def store_rows(queue: ShardedQueue) -> dict[str, list[bytes]]:
    """Every value of every database of the queue's LMDB store."""
    ingest = queue.ingest
    with ingest.env.begin() as txn:
        return {name.decode(): [bytes(value) for _, value in txn.cursor(db=ingest.db(name))]
                for name in (b"dedupe", b"entries", b"errors", b"counts")}


def test_requests_commit_to_the_store_and_every_event_lands_once(cortex):
    queue = cortex.state.queue
    assert queue.store == "lmdb" and queue.shards == []
    assert queue.ingest.path == str(cortex.data_dir / "queue.ingest.mdb")
    bundles = [device_bundle(cortex, device) for device in range(40)]
    for bundle in bundles:
        assert cortex.post(bundle).status_code == 200
        assert cortex.post(bundle).status_code == 200  # a retry: a duplicate
    assert len(store_rows(queue)["entries"]) == 40
    # counted and measured before the dispatcher moved anything
    status = orjson.loads(cortex.cli("status", "--json").output)
    assert status["orgs"]["demo"] == {"accepted": 120, "duplicate": 120, "rejected": 0}
    assert status["queue"] == {"entries": 40, "records": 120, "shards": 1, "ingest": "lmdb"}
    assert "queue: 120 records in 40 entries (LMDB ingest store)" in cortex.cli("status").output
    assert queue.depth() == {"entries": 40, "records": 120}
    assert queue.stats()["oldest_enqueued_at"] is not None
    assert status["sinks"]["sql"]["pending"] == 120

    cortex.deliver()
    rows = cortex.sql("SELECT id, seq FROM events")
    assert len(rows) == 120 and len({row[0] for row in rows}) == 120
    assert len({row[1] for row in rows}) == 40  # the queue numbered the moved entries
    assert store_rows(queue)["entries"] == []  # moved and deleted from the store
    status = orjson.loads(cortex.cli("status", "--json").output)
    assert status["sinks"]["sql"]["delivered"] == 120 and status["sinks"]["sql"]["pending"] == 0
    assert status["orgs"]["demo"] == {"accepted": 120, "duplicate": 120, "rejected": 0}
    # retries after the move are still duplicates: the keys stay in the store
    assert cortex.post(bundles[7]).status_code == 200
    assert queue.counters()["demo"]["duplicate"] == 123


def test_a_move_cut_short_between_its_two_steps_loses_and_doubles_nothing(cortex, monkeypatch):
    queue = cortex.state.queue
    for device in range(20):
        assert cortex.post(device_bundle(cortex, device, size=1)).status_code == 200
    assert [e.seq for e in queue.read(0, 10**6)] == list(range(1, 21))
    for device in range(20, 30):
        assert cortex.post(device_bundle(cortex, device, size=1)).status_code == 200

    def crash(*args):
        raise RuntimeError("killed")

    # the queue has the entries; the store does not let them go
    monkeypatch.setattr(LMDBIngest, "_forget", crash)
    with pytest.raises(RuntimeError):
        queue.move()
    monkeypatch.undo()
    assert len(store_rows(queue)["entries"]) == 10
    assert queue.depth()["entries"] == 30  # nothing counted twice meanwhile
    queue.move()
    entries = queue.read(0, 10**6)
    assert [e.seq for e in entries] == list(range(1, 31))
    assert len({e.records[0]["id"] for e in entries}) == 30
    assert store_rows(queue)["entries"] == []
    # the store numbers its next entries after the ones it let go, and so does the queue
    assert cortex.post(device_bundle(cortex, 99, size=1)).status_code == 200
    assert [e.seq for e in queue.read(30, 10)] == [31]
    assert queue.counters()["demo"]["accepted"] == 31


def test_processes_moving_while_requests_commit_move_each_entry_once(cortex):
    def submission(n: int) -> Submission:
        key = f"key-{n}".encode().ljust(16, b".")
        rejected = [(key + b"r", {"id": f"x{n}", "received_at": "t"})] if n % 10 == 0 else []
        return Submission("demo", 1, [(key, {"id": f"r{n}", "received_at": "t"})], rejected,
                          key_group=n.to_bytes(4, "big"))

    writer = submit_while_moving(cortex.state.config["queue"]["path"], map(submission, range(300)))
    entries = list(writer.iter_all())
    assert [e.seq for e in entries] == list(range(1, 301))
    assert sorted(e.records[0]["id"] for e in entries) == sorted(f"r{n}" for n in range(300))
    assert len(writer.ingest_errors()) == 30
    assert writer.counters() == {"demo": {"accepted": 300, "duplicate": 0, "rejected": 30}}


def test_concurrent_commits_are_grouped_and_counted_exactly_with_fsync(tmp_path):
    store = LMDBIngest(str(tmp_path / "q.ingest.mdb"), durability="fsync")

    def post(thread: int):
        for n in range(10):
            # every thread sends 10 keys of its own and, from thread 1 on, 5 of thread 0's
            keyed = [(f"t{thread}-{n}".encode().ljust(16, b"."), {"id": f"{thread}-{n}", "received_at": "t"})]
            if thread and n < 5:
                keyed.append((f"t0-{n}".encode().ljust(16, b"."), {"id": f"0-{n}", "received_at": "t"}))
            yield store.submit(Submission("org", 1, keyed, [], key_group=b"grp1"))

    results = submit_from_threads(16, post)
    assert sum(a for a, _ in results) == 160 and sum(d for _, d in results) == 75
    assert store.backlog(0) == (160, 160, store.backlog(0)[2])
    store.close()


def test_a_full_store_answers_503_with_retry_after_and_recovers(make_cortex, caplog):
    app = make_cortex(queue={**LMDB, "ingest_max_bytes": 1 << 20})
    events = lambda device: [  # noqa: E731
        {"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "x" * 30, "phylum": f"d{device}"}
        for i in range(100)]
    first_refused, bundle = None, None
    for device in range(200):  # until the store is full
        bundle = app.bundle(events(device), device_tag=f"full-{device}")
        if app.post(bundle).status_code == 503:
            first_refused = device
            break
    assert first_refused, "the store never filled up"
    # the refused commit was rolled back, so the same bundle meets the same full store
    refused = app.post(bundle)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "is full (1048576 bytes, queue.ingest_max_bytes)" in caplog.text
    assert app.state.queue.depth()["entries"] == first_refused
    # nothing of a refused bundle was kept (not even its dedupe keys): once there is room
    # (here: a larger map, as a larger disk would be), it is accepted whole
    app.state.queue.ingest.env.set_mapsize(64 * 1024 * 1024)
    assert app.post(bundle).status_code == 200
    app.deliver()
    assert app.state.queue.counters()["demo"]["accepted"] == (first_refused + 1) * 100


def test_the_dedupe_window_forgets_old_keys_in_the_store(cortex):
    queue = cortex.state.queue
    bundle = cortex.bundle([{"type": "dau", "event_datetime": iso()}])
    assert cortex.post(bundle).status_code == 200
    ingest = queue.ingest
    with ingest.env.begin(write=True) as txn:
        for key, value in list(txn.cursor(db=ingest.db(b"dedupe"))):
            old = int.from_bytes(value, "big") - 8 * 86400
            txn.put(key, old.to_bytes(8, "big"), db=ingest.db(b"dedupe"))
    assert queue.prune_dedupe(7 * 86400) == 1
    assert cortex.post(bundle).status_code == 200
    assert queue.counters()["demo"] == {"accepted": 2, "duplicate": 0, "rejected": 0}


def test_ingest_errors_in_the_store_are_counted_listed_and_replayed(cortex):
    post_refused_in_strict_mode(cortex)
    assert len(store_rows(cortex.state.queue)["errors"]) == 16
    assert cortex.state.queue.counters()["demo"]["rejected"] == 16  # before they moved
    listed = cortex.cli("errors", "--org", "demo")
    assert listed.exit_code == 0 and listed.output.count("(request ") == 16, listed.output
    assert store_rows(cortex.state.queue)["errors"] == []  # listing them moved them
    replay_without_strict_mode(cortex)


def test_a_data_subjects_deletion_reaches_the_store(make_cortex):
    cortex = make_cortex(queue=LMDB, sinks={"sql": {"type": "sql"}})
    for person in (ALICE, BOB):
        person_bundles(cortex, person)
    held = store_rows(cortex.state.queue)
    assert any(TAGS["alice"][0].encode() in value for value in held["entries"])
    result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"],
                        "--device-tag", ALICE["device_tag"], "--facebook-tag", ALICE["facebook_tag"])
    assert result.exit_code == 0, result.output
    assert "queue ingest_errors: removed 1" in result.output
    held = store_rows(cortex.state.queue)
    assert not any(tag.encode() in value for tag in TAGS["alice"] for values in held.values() for value in values)
    assert any(TAGS["bob"][0].encode() in value for value in cortex.state.queue.main.reader.execute(
        "SELECT record FROM ingest_errors").fetchone())


def test_a_queue_keeps_the_store_it_was_made_with(make_cortex, tmp_path, caplog):
    sqlite_made = make_cortex(queue={"ingest": "sqlite", "shards": 2})
    bundle = device_bundle(sqlite_made, 1)
    assert sqlite_made.post(bundle).status_code == 200
    reopened = Cortex(sqlite_made.data_dir, {"queue": {"ingest": "lmdb"}})
    assert reopened.state.queue.store == "sqlite" and reopened.state.queue.count == 2
    assert "queue.ingest is 'lmdb', but the queue" in caplog.text and "uses 'sqlite', which it keeps" in caplog.text
    assert "run `cortex queue reshard` to move the queue to 'lmdb'" in caplog.text
    assert reopened.post(bundle).status_code == 200
    assert reopened.state.queue.counters()["demo"]["duplicate"] == 3  # its keys are where they were
    assert not (sqlite_made.data_dir / "queue.ingest.mdb").exists()

    lmdb_made = make_cortex(queue=LMDB)
    bundle = device_bundle(lmdb_made, 1)
    assert lmdb_made.post(bundle).status_code == 200
    lmdb_made.state.queue.close()
    lmdb_made.state.queue._users.close()  # this app is done with the queue
    again = Cortex(lmdb_made.data_dir, {"queue": {"ingest": "sqlite", "shards": 4}})
    assert again.state.queue.store == "lmdb" and again.post(bundle).status_code == 200
    assert again.state.queue.counters()["demo"] == {"accepted": 3, "duplicate": 3, "rejected": 0}
    result = again.cli("queue", "reshard", "--ingest", "lmdb", "--shards", "2")
    assert result.exit_code != 0 and "--shards is for SQLite ingest" in result.output


def test_a_bad_ingest_store_is_a_clear_error(make_cortex):
    with pytest.raises(ConfigError, match='queue.ingest must be "lmdb" or "sqlite"'):
        make_cortex(queue={"ingest": "rocksdb"})


def test_the_store_file_and_its_mark(cortex):
    assert ingest_path("/data/queue.db") == "/data/queue.ingest.mdb"
    assert cortex.post(device_bundle(cortex, 1, size=2)).status_code == 200
    cortex.state.queue.move()
    marks = dict(cortex.state.queue.main.reader.execute("SELECT shard, seq FROM shard_marks").fetchall())
    assert marks == {LMDB_MARK: 1}


def test_reshard_moves_a_queue_to_the_store_and_back_losing_and_doubling_nothing(make_cortex):
    from test_queue_reshard import orgs, post_all, shard_files

    cortex = make_cortex(queue={"ingest": "sqlite", "shards": 4})  # as a queue made before the store
    bundles = [device_bundle(cortex, device) for device in range(30)]
    post_all(cortex, bundles)
    post_all(cortex, bundles[:5])  # retries: duplicates, counted in the shards
    bad = [{"type": "economy", "event_datetime": iso(), "event_index": 0}]  # no spend_amount
    assert cortex.post(cortex.bundle(bad, device_tag="bad-1")).status_code == 400
    before = orgs(cortex)
    assert before["demo"] == {"accepted": 90, "duplicate": 15, "rejected": 1}
    cortex.state.queue.close()
    cortex.state.queue._users.close()  # this app is done with the queue

    # restarted with queue.ingest = "lmdb": it keeps its shards until told, then moves
    again = Cortex(cortex.data_dir, {"queue": LMDB})
    again.api_key = cortex.api_key
    queue = again.state.queue
    assert queue.store == "sqlite" and queue.count == 4
    result = again.cli("queue", "reshard")
    assert result.exit_code == 0, result.output
    assert "now has its LMDB ingest store (it had 4 ingest shard(s))" in result.output
    assert "91 dedupe keys carried over" in result.output
    assert queue.store == "lmdb" and queue.ingest.path == str(cortex.data_dir / "queue.ingest.g1.mdb")
    assert shard_files(again) == [] and orgs(again) == before
    post_all(again, bundles)  # every retry still a duplicate
    assert orgs(again)["demo"]["duplicate"] == 15 + 90
    post_all(again, [device_bundle(again, device) for device in range(100, 110)])
    assert again.cli("queue", "reshard").output.startswith("The queue has its LMDB ingest store already")

    # back to two SQLite shards, with entries and all-duplicate counts in the store
    post_all(again, bundles[:3])
    counted = orgs(again)
    result = again.cli("queue", "reshard", "--shards", "2")
    assert result.exit_code == 0, result.output
    assert "now has 2 ingest shard(s) (it had its LMDB ingest store)" in result.output
    assert queue.store == "sqlite" and queue.count == 2 and shard_files(again) == [
        "queue.shard0.g2.db", "queue.shard1.g2.db"]
    assert not list(cortex.data_dir.glob("queue.ingest*"))  # the store and its lock file are gone
    assert orgs(again) == counted
    post_all(again, bundles)

    # and to the store once more
    result = again.cli("queue", "reshard", "--ingest", "lmdb", "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert (report["store_before"], report["store_after"], report["before"], report["after"]) == (
        "sqlite", "lmdb", 2, 1)
    assert report["keys"] == 121 and report["removed_files"] == 2
    post_all(again, bundles)
    assert orgs(again)["demo"] == {"accepted": 120, "duplicate": 15 + 90 + 9 + 90 + 90, "rejected": 1}

    again.deliver()
    rows = again.sql("SELECT id FROM events")
    assert len(rows) == 120 and len({row[0] for row in rows}) == 120
    assert len(again.state.queue.ingest_errors()) == 1


def test_a_move_to_the_store_cut_short_leaves_a_working_queue(make_cortex, monkeypatch):
    from cortex.queue_reshard import reshard
    from test_queue_reshard import post_all, reshard_killed_before_switch

    cortex = make_cortex(queue={"ingest": "sqlite", "shards": 1})  # keys in queue.db itself
    queue = cortex.state.queue
    bundles = [device_bundle(cortex, device) for device in range(10)]
    post_all(cortex, bundles)

    # killed once the new store is written, before the queue switches to it
    reshard_killed_before_switch(monkeypatch, queue, ingest="lmdb")
    assert queue.store == "sqlite" and (cortex.data_dir / "queue.ingest.g1.mdb").exists()  # never used
    post_all(cortex, bundles)
    assert queue.counters()["demo"] == {"accepted": 30, "duplicate": 30, "rejected": 0}

    report = reshard(queue, ingest="lmdb")
    assert (report.store_after, report.keys) == ("lmdb", 30) and queue.store == "lmdb"
    assert queue.main.reader.execute("SELECT count(*) FROM dedupe").fetchone() == (0,)  # the store has them
    post_all(cortex, bundles)
    assert queue.counters()["demo"] == {"accepted": 30, "duplicate": 60, "rejected": 0}
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events") == [(30,)]


def test_a_process_killed_while_it_writes_does_not_block_the_others(tmp_path):
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "queue.ingest.mdb")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from cortex.queue_lmdb import LMDBIngest; store = LMDBIngest(sys.argv[1]); "
         "txn = store.env.begin(write=True); txn.put(b'half', b'written', db=store.db(b'meta')); "
         "print('holding', flush=True); time.sleep(60)", path],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        store = LMDBIngest(path)
        key = b"k".ljust(16, b".")
        results = []
        writer = threading.Thread(target=lambda: results.append(store.submit(
            Submission("demo", 1, [(key, {"id": "r1", "received_at": "t"})], [], key_group=b"grp1"))), daemon=True)
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "the next writer waits for a dead process's lock"
        assert results[0].accepted_count == 1
        with store.env.begin() as txn:  # the dead writer's transaction was rolled back
            assert txn.get(b"half", db=store.db(b"meta")) is None
        store.close()
    finally:
        holder.kill()
