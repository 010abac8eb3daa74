"""``cortex queue reshard``: another number of ingest shards for an existing queue, with
every queued event, dedupe key and count kept."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import orjson
import pytest

from conftest import Cortex, iso
from cortex.queue import PLAIN_KEYS, SQLiteQueue
from cortex.queue_reshard import ReshardError, reshard
from cortex.queue_shards import ShardedQueue, shard_path
from test_queue_shards import device_bundle, entries_per_shard


def orgs(cortex) -> dict:
    return orjson.loads(cortex.cli("status", "--json").output)["orgs"]


def shard_files(cortex) -> list[str]:
    return sorted(p.name for p in cortex.data_dir.glob("queue.shard*.db"))


def post_all(cortex, bundles) -> None:
    for bundle in bundles:
        assert cortex.post(bundle).status_code == 200


def test_an_upgraded_queue_gets_shards_and_changes_them_again_losing_and_doubling_nothing(make_cortex):
    cortex = make_cortex(queue={"shards": 1, "ingest": "sqlite"})  # as a queue made before shards existed
    queue = cortex.state.queue
    assert queue.count == 1 and shard_files(cortex) == []
    first = [device_bundle(cortex, device) for device in range(30)]
    post_all(cortex, first)
    post_all(cortex, first[:5])  # retries: all-duplicate requests, counted in the queue
    bad = cortex.bundle([{"type": "economy", "event_datetime": iso(), "event_index": 0}], device_tag="bad")
    assert cortex.post(bad).status_code == 400
    before = orgs(cortex)
    assert before["demo"] == {"accepted": 90, "duplicate": 15, "rejected": 1}
    assert len(cortex.state.queue.ingest_errors()) == 1

    result = cortex.cli("queue", "reshard", "--shards", "4")
    assert result.exit_code == 0, result.output
    assert "now has 4 ingest shard(s) (it had 1)" in result.output and "91 dedupe keys carried over" in result.output
    assert queue.count == 4 and orjson.loads(cortex.cli("status", "--json").output)["queue"]["shards"] == 4
    assert "(4 ingest shards)" in cortex.cli("status").output
    assert shard_files(cortex) == [f"queue.shard{i}.g1.db" for i in range(4)]
    assert orgs(cortex) == before
    # still queued, in queue.db (the rejected event too, for the sinks' error tables)
    assert queue.depth() == {"entries": 31, "records": 91}
    # every device's keys went to its new shard: retries of any of them are duplicates
    post_all(cortex, first)
    assert cortex.post(bad).status_code == 400  # logged once already
    assert queue.depth()["records"] == 91 and orgs(cortex)["demo"]["duplicate"] == 106
    # new devices spread over the new shards
    second = [device_bundle(cortex, device) for device in range(100, 140)]
    post_all(cortex, second)
    assert sum(entries_per_shard(cortex)) == 40 and sum(1 for n in entries_per_shard(cortex) if n) >= 3
    before = orgs(cortex)

    # fewer shards, with entries not moved yet and all-duplicate counts in the shards
    post_all(cortex, second[:10])
    before["demo"]["duplicate"] += 30
    result = cortex.cli("queue", "reshard", "--shards", "2", "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report == {"before": 4, "after": 2, "store_before": "sqlite", "store_after": "sqlite", "moved_entries": 40,
                      "keys": 211, "removed_files": 4}
    assert shard_files(cortex) == ["queue.shard0.g2.db", "queue.shard1.g2.db"]
    assert orgs(cortex) == before
    # the queue's connection had the old files attached for its moves: now the new ones
    post_all(cortex, [device_bundle(cortex, device) for device in range(300, 304)])
    before["demo"]["accepted"] += 12
    queue.move()
    attached = dict(row[1:] for row in queue.reader.execute("PRAGMA database_list"))
    assert attached["shard0"].endswith("queue.shard0.g2.db") and "shard2" not in attached
    post_all(cortex, first + second)
    assert queue.depth() == {"entries": 75, "records": 223}
    before["demo"]["duplicate"] += 210
    assert orgs(cortex) == before

    # and back to one: requests commit to queue.db, which now holds the keys
    post_all(cortex, [device_bundle(cortex, device) for device in range(200, 210)])
    result = cortex.cli("queue", "reshard", "--shards", "1")
    assert result.exit_code == 0, result.output
    assert queue.count == 1 and shard_files(cortex) == []
    post_all(cortex, first + second)
    assert queue.depth() == {"entries": 85, "records": 253}
    assert cortex.cli("queue", "reshard", "--shards", "1").output.startswith("The queue has 1 ingest shard(s) already")

    # the dispatcher delivers every event once, in the order of the queue's seqs
    cortex.deliver()
    rows = cortex.sql("SELECT id, seq FROM events")
    assert len(rows) == 252 and len({row[0] for row in rows}) == 252
    assert len({row[1] for row in rows}) == 84 and max(row[1] for row in rows) == 85
    assert len(cortex.state.queue.ingest_errors()) == 1
    sink = orjson.loads(cortex.cli("status", "--json").output)["sinks"]["sql"]
    assert sink["delivered"] == 253 and sink["pending"] == 0  # with the rejected event
    assert cortex.sql("SELECT count(*) FROM ingest_errors") == [(1,)]


def test_the_default_is_the_queue_shards_setting(make_cortex, caplog):
    cortex = make_cortex(queue={"shards": 1, "ingest": "sqlite"})
    bundles = [device_bundle(cortex, device) for device in range(8)]
    post_all(cortex, bundles)
    path = cortex.state.config["queue"]["path"]
    cortex.state.queue.close()
    cortex.state.queue._users.close()  # this app is done with the queue

    # restarted with another setting: it keeps its one shard and says what to do
    again = Cortex(cortex.data_dir, {"queue": {"shards": 3, "ingest": "sqlite"}})
    again.api_key = cortex.api_key
    assert again.state.queue.count == 1
    assert "Stop Cortex and run `cortex queue reshard` to give the queue 3" in caplog.text
    result = again.cli("queue", "reshard")
    assert result.exit_code == 0, result.output
    assert again.state.queue.count == 3 and ShardedQueue(path).count == 3
    post_all(again, bundles)
    assert again.state.queue.depth()["records"] == 24  # retries, across the app's restart


def test_a_queue_in_use_by_another_process_is_not_resharded(make_cortex):
    cortex = make_cortex(queue={"shards": 2, "ingest": "sqlite"})
    post_all(cortex, [device_bundle(cortex, device) for device in range(6)])
    path = cortex.state.config["queue"]["path"]
    user = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from cortex.queue_shards import ShardedQueue; q = ShardedQueue(sys.argv[1]); "
         "q.create_schema(); print('using', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert user.stdout.readline().strip() == "using"
        result = cortex.cli("queue", "reshard", "--shards", "4")
        assert result.exit_code == 1
        assert f"the queue {path} is in use by another process" in result.output
        assert "stop them, then run this again" in result.output
        assert cortex.state.queue.count == 2 and not any("g1" in name for name in shard_files(cortex))
        # requests go on meanwhile, into the shards they had
        assert cortex.post(device_bundle(cortex, 50)).status_code == 200
    finally:
        user.communicate("", timeout=10)
    result = cortex.cli("queue", "reshard", "--shards", "4")
    assert result.exit_code == 0, result.output
    assert cortex.state.queue.depth()["records"] == 21


def test_a_process_that_starts_during_a_reshard_waits_for_it(make_cortex, monkeypatch, caplog):
    import cortex.queue_reshard as module

    cortex = make_cortex(queue={"shards": 2, "ingest": "sqlite"})
    post_all(cortex, [device_bundle(cortex, device) for device in range(6)])
    path = cortex.state.config["queue"]["path"]
    seen = []
    starting = threading.Thread(target=lambda: seen.append(ShardedQueue(path).count))
    write_new_shards = module._write_new_shards

    def while_writing(*args):
        starting.start()
        time.sleep(0.3)
        assert seen == []  # it waits for the reshard
        return write_new_shards(*args)

    monkeypatch.setattr(module, "_write_new_shards", while_writing)
    reshard(cortex.state.queue, 3)
    starting.join(10)
    assert seen == [3]  # and then uses the new layout
    assert f"the queue {path} is being resharded (cortex queue reshard); waiting for it" in caplog.text


def test_a_queue_with_plain_keys_cannot_be_resharded(tmp_path):
    path = str(tmp_path / "queue.db")
    legacy = SQLiteQueue(path)
    legacy.create_schema()
    conn = legacy.reader
    conn.execute(f"PRAGMA user_version = {PLAIN_KEYS}")
    conn.execute("INSERT INTO dedupe (key, seen) VALUES (?, 0)", (b"k" * 16,))
    queue = ShardedQueue(path, shards=4)
    queue.create_schema()
    with pytest.raises(ReshardError, match="stores its dedupe keys without their device"):
        reshard(queue, 4)
    assert queue.count == 1 and not (tmp_path / "queue.shard0.g1.db").exists()
    with pytest.raises(ReshardError, match="whole number from 1 to 64"):
        reshard(queue, 65)


def reshard_killed_before_switch(monkeypatch, queue, *args, **kwargs) -> None:
    """Run :func:`reshard` as if the process died once the new shards or store are written,
    before the queue switches to them."""
    import cortex.queue_reshard as module

    def killed(*_):
        raise RuntimeError("killed")

    monkeypatch.setattr(module, "_switch", killed)
    with pytest.raises(RuntimeError):
        reshard(queue, *args, **kwargs)
    monkeypatch.undo()


def test_a_reshard_cut_short_at_any_step_leaves_a_working_queue(make_cortex, monkeypatch):
    import cortex.queue_reshard as module

    cortex = make_cortex(queue={"shards": 2, "ingest": "sqlite"})
    queue = cortex.state.queue
    bundles = [device_bundle(cortex, device) for device in range(20)]
    post_all(cortex, bundles)

    # killed once the new shards are written, before the queue switches to them
    reshard_killed_before_switch(monkeypatch, queue, 3)
    assert queue.count == 2 and queue.generation == 0
    assert (cortex.data_dir / "queue.shard0.g1.db").exists()  # written, never used
    post_all(cortex, bundles)
    assert queue.depth()["records"] == 60  # every retry still a duplicate

    # again, and killed after the switch, before the old files are gone
    real_remove = module._remove_queue_file
    monkeypatch.setattr(module, "_remove_queue_file", lambda path: 0 if ".g" not in path else real_remove(path))
    report = reshard(queue, 3)
    monkeypatch.undo()
    assert (report.before, report.after) == (2, 3) and queue.count == 3 and queue.generation == 1
    assert (cortex.data_dir / "queue.shard0.db").exists()  # left behind, no longer read
    post_all(cortex, bundles)
    assert queue.depth()["records"] == 60
    # the next reshard (even to the same number) removes what the last one left
    assert reshard(queue, 3).removed_files == 2
    assert shard_files(cortex) == [f"queue.shard{i}.g1.db" for i in range(3)]
    assert not list(cortex.data_dir.glob("queue.shard0.db*"))  # with its WAL, shared memory and lock
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events") == [(60,)]


def test_shard_file_names_of_a_generation():
    assert shard_path("/d/queue.db", 2, 0) == "/d/queue.shard2.db"
    assert shard_path("/d/queue.db", 2, 5) == "/d/queue.shard2.g5.db"


def test_a_queue_sharded_by_the_version_before_generations_reads_as_generation_zero(tmp_path):
    path = str(tmp_path / "queue.db")
    SQLiteQueue(path).create_schema()
    conn = SQLiteQueue(path).reader
    conn.executescript("CREATE TABLE shards (id INTEGER PRIMARY KEY CHECK (id = 1), count INTEGER NOT NULL);"
                       "INSERT INTO shards VALUES (1, 2);")
    queue = ShardedQueue(path, shards=2)
    assert queue.count == 2 and queue.generation == 0
    assert [shard.path for shard in queue.shards] == [shard_path(path, 0), shard_path(path, 1)]
    queue.create_schema()  # adds the column
    assert conn.execute("SELECT count, generation FROM shards").fetchone() == (2, 0)
    assert reshard(queue, 3).after == 3 and ShardedQueue(path).generation == 1
