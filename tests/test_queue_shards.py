"""Ingest shards (``[queue] shards``): requests commit to several files by device, the
dispatcher moves their entries into the queue, and everything that reads it sees them all."""

from __future__ import annotations

import sqlite3
import threading

import orjson
import pytest

from conftest import iso
from cortex.config import ConfigError
from cortex.queue import SQLiteQueue, Submission
from cortex.queue_shards import ShardedQueue, shard_of, shard_path
from test_privacy import ALICE, BOB, TAGS, person_bundles, traces

SHARDS = 4


def device_bundle(cortex, device: int, size: int = 3, **fields) -> dict:
    now = iso()
    events = [{"type": "event", "event_datetime": now, "event_index": i, "kingdom": f"k{i}"} for i in range(size)]
    return cortex.bundle(events, device_tag=f"device-{device}", **fields)


def entries_per_shard(cortex) -> list[int]:
    return [shard.depth()["entries"] for shard in cortex.state.queue.shards]


def shard_dump(path: str) -> dict[str, list[str]]:
    """Every row of every table of one queue file, as text."""
    conn = sqlite3.connect(path)
    try:
        dump = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            dump[name] = [repr([bytes(v).decode("utf-8", "replace") if isinstance(v, bytes) else v for v in row])
                          for row in conn.execute(f'SELECT * FROM "{name}"')]
        return dump
    finally:
        conn.close()


def test_devices_spread_over_the_shards_and_every_event_lands_once(make_cortex):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})
    assert cortex.state.queue.count == SHARDS
    bundles = [device_bundle(cortex, device) for device in range(40)]
    for bundle in bundles:
        assert cortex.post(bundle).status_code == 200
        assert cortex.post(bundle).status_code == 200  # a retry: a duplicate, in the same shard
    spread = entries_per_shard(cortex)
    assert sum(spread) == 40 and sum(1 for n in spread if n) >= 3, spread
    for index in range(SHARDS):
        assert (cortex.data_dir / f"queue.shard{index}.db").exists()
    status = orjson.loads(cortex.cli("status", "--json").output)
    assert status["orgs"]["demo"]["accepted"] == 120 and status["orgs"]["demo"]["duplicate"] == 120
    assert cortex.state.queue.depth() == {"entries": 40, "records": 120}

    cortex.deliver()
    rows = cortex.sql("SELECT id, seq FROM events")
    assert len(rows) == 120 and len({row[0] for row in rows}) == 120
    # the queue numbered the moved entries: one seq per entry
    assert len({row[1] for row in rows}) == 40
    assert entries_per_shard(cortex) == [0] * SHARDS  # moved and deleted from the shards
    status = orjson.loads(cortex.cli("status", "--json").output)
    sink = status["sinks"]["sql"]
    assert sink["delivered"] == 120 and sink["pending"] == 0
    assert cortex.state.queue.cursor("sql") == cortex.state.queue.head()
    while cortex.state.queue.prune(["sql"]):
        pass
    assert cortex.state.queue.depth() == {"entries": 0, "records": 0}
    # a retry after delivery and pruning is still a duplicate
    assert cortex.post(bundles[7]).status_code == 200
    assert cortex.state.queue.depth()["records"] == 0


def test_more_shards_than_sqlite_attaches_at_once_all_move(make_cortex):
    # SQLite attaches at most 10 databases to a connection; the move reads each shard
    # through one, so the shards past the ones it keeps attached come and go
    many = 20
    cortex = make_cortex(queue={"shards": many, "ingest": "sqlite"})
    for device in range(200):
        assert cortex.post(device_bundle(cortex, device, size=1)).status_code == 200
    assert sum(1 for n in entries_per_shard(cortex) if n) == many
    for _ in range(3):  # every move attaches the same way again
        cortex.state.queue.move()
    entries = cortex.state.queue.read(0, 10**6)
    assert [e.seq for e in entries] == list(range(1, 201))
    assert entries_per_shard(cortex) == [0] * many
    attached = [row[1] for row in cortex.state.queue.reader.execute("PRAGMA database_list")]
    assert len(attached) <= 10 and "shard_other" not in attached
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events")[0][0] == 200


def test_a_device_keeps_its_shard_and_its_order(make_cortex):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})
    queue = cortex.state.queue
    for round_ in range(5):
        events = [{"type": "event", "event_datetime": iso(), "event_index": round_, "kingdom": "k"}]
        assert cortex.post(cortex.bundle(events, device_tag="steady")).status_code == 200
    spread = entries_per_shard(cortex)
    assert sorted(spread) == [0] * (SHARDS - 1) + [5]
    entries = list(queue.iter_all())
    assert [entry.records[0]["event_index"] for entry in entries] == list(range(5))
    assert [entry.seq for entry in entries] == sorted(entry.seq for entry in entries)


def test_moves_keep_seqs_growing_and_survive_a_crash_between_their_two_steps(make_cortex, monkeypatch):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})
    queue = cortex.state.queue
    for device in range(20):
        assert cortex.post(device_bundle(cortex, device, size=1)).status_code == 200
    first = queue.read(0, 10**6)
    assert len(first) == 20 and [e.seq for e in first] == list(range(1, 21))
    # a move that dies after the queue has the entries, before the shard lets them go
    for device in range(20, 30):
        assert cortex.post(device_bundle(cortex, device, size=1)).status_code == 200

    def crash(*args):
        raise RuntimeError("killed")

    monkeypatch.setattr(ShardedQueue, "_forget_moved", staticmethod(crash))
    with pytest.raises(RuntimeError):
        queue.move()
    monkeypatch.undo()
    assert queue.depth()["entries"] == 30  # nothing counted twice meanwhile
    queue.move()
    entries = queue.read(0, 10**6)
    assert [e.seq for e in entries] == list(range(1, 31))
    assert len({e.records[0]["id"] for e in entries}) == 30
    assert entries_per_shard(cortex) == [0] * SHARDS
    # the shards number their next entries after the ones they let go
    assert cortex.post(device_bundle(cortex, 99, size=1)).status_code == 200
    assert len(queue.read(30, 10)) == 1


def submit_while_moving(path: str, submissions) -> ShardedQueue:
    """Submit ``submissions`` to the queue at ``path`` while two other instances of it (as
    other processes would) keep moving what the requests commit; returns the submitting one."""
    stop = threading.Event()
    errors = []

    def keep_moving():
        other = ShardedQueue(path)  # connections of its own; the layout the queue was made with
        try:
            while not stop.is_set():
                other.move()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    movers = [threading.Thread(target=keep_moving) for _ in range(2)]
    for mover in movers:
        mover.start()
    writer = ShardedQueue(path)
    try:
        for submission in submissions:
            writer.submit(submission)
    finally:
        stop.set()
        for mover in movers:
            mover.join()
    assert errors == []
    return writer


def test_processes_moving_at_once_move_each_entry_once(make_cortex):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})

    def submission(n: int) -> Submission:
        key = f"key-{n}".encode().ljust(16, b".")
        return Submission("demo", 1, [(key, {"id": f"r{n}", "received_at": "t"})], [], key_group=n.to_bytes(4, "big"))

    writer = submit_while_moving(cortex.state.config["queue"]["path"], map(submission, range(300)))
    entries = list(writer.iter_all())
    assert sorted(e.records[0]["id"] for e in entries) == sorted(f"r{n}" for n in range(300))
    assert [e.seq for e in entries] == list(range(1, 301))
    assert writer.counters() == {"demo": {"accepted": 300, "duplicate": 0, "rejected": 0}}


def test_the_number_of_shards_is_kept_in_the_queue(make_cortex, tmp_path, caplog):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})
    bundles = [device_bundle(cortex, device) for device in range(12)]
    for bundle in bundles:
        assert cortex.post(bundle).status_code == 200
    path = cortex.state.config["queue"]["path"]
    # the same queue opened with another setting keeps its shards: retries stay duplicates
    reopened = ShardedQueue(path, shards=2)
    reopened.create_schema()
    assert reopened.count == SHARDS
    # and says so, with what to do
    warning = next(r.getMessage() for r in caplog.records if r.name == "cortex.queue")
    assert f"queue.shards is 2, but the queue {path} has {SHARDS}" in warning
    assert "Stop Cortex and run `cortex queue reshard` to give the queue 2" in warning
    assert f"set queue.shards = {SHARDS} to match" in warning
    assert reopened.depth()["records"] == 36
    # a queue made before shards existed is one shard, whatever the setting
    legacy_path = str(tmp_path / "legacy" / "queue.db")
    legacy = SQLiteQueue(legacy_path)
    legacy.create_schema()
    upgraded = ShardedQueue(legacy_path, shards=8)
    caplog.clear()
    upgraded.create_schema()
    assert "queue.db has 1" in caplog.text
    assert upgraded.count == 1 and not (tmp_path / "legacy" / "queue.shard1.db").exists()
    assert ShardedQueue(legacy_path, shards=8).count == 1


def test_routing_and_file_names():
    assert shard_path("/d/queue.db", 0) == "/d/queue.shard0.db"
    assert shard_path("/d/queue.db", 3) == "/d/queue.shard3.db"
    assert shard_path("/d/q", 2) == "/d/q.shard2.db"
    assert shard_of(b"\x00\x00\x00\x07", 4) == 3
    assert shard_of(b"", 4) == 0
    assert shard_of(b"\xff\xff\xff\xff", 1) == 0


@pytest.mark.parametrize("value", [0, 2.5, "4", True, 65])
def test_a_bad_number_of_shards_is_a_clear_error(make_cortex, value):
    with pytest.raises(ConfigError, match="queue.shards must be a whole number from 1 to 64"):
        make_cortex(queue={"shards": value, "ingest": "sqlite"})


def test_ingest_errors_of_every_shard_are_listed_replayed_and_expired(make_cortex):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})
    for device in range(16):
        events = [{"type": "economy", "event_datetime": iso(), "event_index": 0}]  # no spend_amount
        assert cortex.post(cortex.bundle(events, device_tag=f"bad-{device}")).status_code == 400
    spread = entries_per_shard(cortex)
    assert sum(1 for n in spread if n) >= 3, spread
    errors = cortex.state.queue.ingest_errors()
    assert len(errors) == 16 and len({row["id"] for row in errors}) == 16
    assert len(orjson.loads(cortex.cli("status", "--json").output)["orgs"]) == 1
    listed = cortex.cli("errors", "--org", "demo")
    assert listed.exit_code == 0 and listed.output.count("(request ") == 16, listed.output
    # marking some of them replayed reaches the shard each lives in
    cortex.state.queue.mark_errors_replayed([row["id"] for row in errors[:5]])
    assert len(cortex.state.queue.ingest_errors()) == 11
    assert len(cortex.state.queue.ingest_errors(include_replayed=True)) == 16
    # retention reaches every shard's log
    from cortex.retention import expire_queue_logs

    assert entries_per_shard(cortex) == [0] * SHARDS  # listing them moved them into the queue
    with cortex.state.queue.write_lock():
        cortex.state.queue.reader.execute("UPDATE ingest_errors SET received_at = '2000-01-01T00:00:00.000Z'")
    assert expire_queue_logs(cortex.state)["ingest_errors"] == 16
    assert cortex.state.queue.ingest_errors(include_replayed=True) == []


def post_refused_in_strict_mode(cortex, devices: int = 8) -> None:
    """Post a bundle of a valid dau and an invalid economy event from each of ``devices``
    devices while the app is strict: each is refused whole (16 ingest errors for 8)."""
    cortex.state.control.set_app_strict("demo", "default", True)
    cortex.state.keys.clear()
    for device in range(devices):
        events = [{"type": "dau", "event_datetime": iso()}, {"type": "economy", "event_datetime": iso()}]
        assert cortex.post(cortex.bundle(events, device_tag=f"strict-{device}")).status_code == 400


def replay_without_strict_mode(cortex) -> None:
    """Turn strict mode off and replay the errors of :func:`post_refused_in_strict_mode`:
    the 8 dau events are accepted and delivered, the 8 economy events stay invalid."""
    cortex.state.control.set_app_strict("demo", "default", False)
    result = cortex.cli("replay", "--errors")
    assert result.exit_code == 0, result.output
    assert '"accepted": 8' in result.output and '"still_invalid": 8' in result.output
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events") == [(8,)]


def test_replay_of_errors_in_every_shard(make_cortex):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"})
    post_refused_in_strict_mode(cortex)
    replay_without_strict_mode(cortex)
    assert '"accepted": 0' in cortex.cli("replay", "--errors").output


def test_privacy_delete_and_export_reach_every_shard(make_cortex, tmp_path):
    cortex = make_cortex(queue={"shards": SHARDS, "ingest": "sqlite"}, sinks={"sql": {"type": "sql"}})
    people = [ALICE, BOB] + [{"user_tag": f"u-{n}", "device_tag": f"d-{n}", "facebook_tag": f"f-{n}"}
                              for n in range(6)]
    for person in people:
        person_bundles(cortex, person)
    paths = [shard_path(cortex.state.queue.path, index) for index in range(SHARDS)]
    assert sum(1 for path in paths if shard_dump(path)["entries"]) >= 3
    holding = [path for path in paths if traces(shard_dump(path), TAGS["alice"])]
    paths.append(cortex.state.queue.path)
    assert len(holding) == 1 and traces(shard_dump(holding[0]), TAGS["alice"]) == {"entries": 2, "ingest_errors": 1}

    output = tmp_path / "alice.jsonl"
    result = cortex.cli("privacy", "export", "--org", "demo", "--user-tag", ALICE["user_tag"], "--output", str(output))
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    # the queued records (7 track events, a log line, the rejected event) once each
    assert len(records) == 9 and {r["kind"] for r in records} == {"track", "app_log", "rejected"}

    cortex.deliver()
    result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"],
                        "--device-tag", ALICE["device_tag"], "--facebook-tag", ALICE["facebook_tag"])
    assert result.exit_code == 0, result.output
    assert "queue ingest_errors: removed 1" in result.output
    assert [traces(shard_dump(path), TAGS["alice"]) for path in paths] == [{}] * (SHARDS + 1)
    assert sum(traces(shard_dump(path), TAGS["bob"]).get("ingest_errors", 0) for path in paths) == 1
