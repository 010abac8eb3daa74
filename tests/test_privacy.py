"""Data-subject requests: export and delete a person everywhere, tombstones, the API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from conftest import iso
from cortex.analytics.auth import INVALID_TOKEN

ALICE = {"user_tag": "alice-u-7f3a9c", "device_tag": "alice-dev-91c2e0", "facebook_tag": "alice-fb-55d1"}
BOB = {"user_tag": "bob-u-0b41d7", "device_tag": "bob-dev-c3a8f2", "facebook_tag": "bob-fb-a90e"}
TAGS = {"alice": list(ALICE.values()), "bob": list(BOB.values())}

TWO_SINKS = {"sql": {"type": "sql"}, "archive": {"type": "file"}}


def person_bundles(cortex, person: dict) -> None:
    """Post a realistic set of bundles for one person: every track family, a log line and an
    invalid event (which goes to the ingest error log)."""
    now = iso()
    events = [
        {"type": "install", "event_datetime": now, "event_index": 0, "kingdom": "onboarding"},
        {"type": "dau", "event_datetime": now, "event_index": 1},
        {"type": "event", "event_datetime": now, "event_index": 2, "kingdom": "level", "phylum": "3"},
        {"type": "economy", "event_datetime": now, "event_index": 3, "spend_amount": "199",
         "spend_currency": "USD", "spend_type": "iap"},
        {"type": "link", "event_datetime": now, "event_index": 4, "facebook_tag": person["facebook_tag"]},
        {"type": "message_send", "event_datetime": now, "event_index": 5, "network": "facebook",
         "from_tag": person["facebook_tag"], "to_list": ["friend-1", "friend-2"]},
        {"type": "experiment", "event_datetime": now, "experiment_name": "colour", "variant_name": "blue"},
        {"type": "economy", "event_datetime": now, "event_index": 7},  # invalid: no spend_amount
    ]
    bundle = cortex.bundle(events, device_tag=person["device_tag"], user_tag=person["user_tag"])
    assert cortex.post(bundle).status_code == 200
    log = cortex.bundle([{"event_datetime": now, "log_line": "level 3 started", "log_level": "info"}],
                        device_tag=person["device_tag"], user_tag=person["user_tag"])
    assert cortex.post(log, endpoint="app_log").status_code == 200


def sql_dump(engine: sa.Engine, schema: str | None = None) -> dict[str, list[str]]:
    """Every row of every table of the database (or schema), as JSON text, by table."""
    metadata = sa.MetaData()
    metadata.reflect(engine, schema=schema)
    dump = {}
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            dump[table.name] = [json.dumps(dict(row), default=str) for row in connection.execute(sa.select(table)).mappings()]
    return dump


def traces(dump: dict[str, list[str]], tags: list[str]) -> dict[str, int]:
    """table -> rows mentioning any of ``tags``."""
    found = {}
    for table, rows in dump.items():
        count = sum(1 for row in rows if any(tag in row for tag in tags))
        if count:
            found[table] = count
    return found


def files_with(root: Path, tags: list[str]) -> list[str]:
    """Files under ``root`` whose raw bytes hold any of ``tags``."""
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*")
        if path.is_file() and any(tag.encode() in path.read_bytes() for tag in tags)
    )


def queue_dump(cortex) -> dict[str, list[str]]:
    """Every row of every table of the queue database, as text."""
    engine = sa.create_engine(f"sqlite:///{cortex.state.config['queue']['path']}")
    try:
        dump = {}
        with engine.connect() as connection:
            for (name,) in connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'"):
                rows = connection.exec_driver_sql(f'SELECT * FROM "{name}"').fetchall()
                dump[name] = [repr([bytes(v).decode("utf-8", "replace") if isinstance(v, bytes) else v for v in row])
                              for row in rows]
        return dump
    finally:
        engine.dispose()


def test_delete_leaves_nothing_of_the_person_in_sql_and_file_sinks(make_cortex):
    cortex = make_cortex(sinks=TWO_SINKS)
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    sql_engine = sa.create_engine(f"sqlite:///{cortex.data_dir / 'events.db'}")
    before = sql_dump(sql_engine)
    assert traces(before, TAGS["alice"]) == traces(before, TAGS["bob"])
    assert set(traces(before, TAGS["alice"])) == {
        "events", "economy", "links", "messages", "experiments", "app_logs", "ingest_errors",
        "rollup_device_days", "rollup_devices"}
    assert files_with(cortex.data_dir / "events", TAGS["alice"])
    assert traces(queue_dump(cortex), TAGS["alice"]) == {"ingest_errors": 1}
    bob_lines_before = sorted(
        line for path in (cortex.data_dir / "events").rglob("*.ndjson")
        for line in path.read_text().splitlines() if BOB["user_tag"] in line
    )

    result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"],
                        "--device-tag", ALICE["device_tag"], "--facebook-tag", ALICE["facebook_tag"])
    assert result.exit_code == 0, result.output
    # 7 valid track events + 1 log line + 1 rejected event, in each sink
    assert "sink sql: removed 9" in result.output
    assert "sink archive: removed 9" in result.output
    assert "queue ingest_errors: removed 1" in result.output
    assert "tombstone recorded" in result.output

    after = sql_dump(sql_engine)
    assert traces(after, TAGS["alice"]) == {}
    assert traces(after, TAGS["bob"]) == traces(before, TAGS["bob"])
    sql_engine.dispose()
    # raw bytes: the sink's SQLite files (freed pages zeroed, WAL emptied) and every NDJSON file
    assert files_with(cortex.data_dir / "events", TAGS["alice"]) == []
    for name in ("events.db", "events.db-wal"):
        path = cortex.data_dir / name
        if path.exists():
            assert not any(tag.encode() in path.read_bytes() for tag in TAGS["alice"]), name
    bob_lines_after = sorted(
        line for path in (cortex.data_dir / "events").rglob("*.ndjson")
        for line in path.read_text().splitlines() if BOB["user_tag"] in line
    )
    assert bob_lines_after == bob_lines_before
    queue_after = queue_dump(cortex)
    assert traces(queue_after, TAGS["alice"]) == {}
    assert traces(queue_after, TAGS["bob"]) == {"ingest_errors": 1}


def test_later_bundles_of_a_tombstoned_person_are_dropped_and_counted(make_cortex):
    cortex = make_cortex(sinks=TWO_SINKS)
    person_bundles(cortex, ALICE)
    cortex.deliver()
    assert cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"]).exit_code == 0
    # queued before delivery and arriving later: both dropped
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    dump = sql_dump(sa.create_engine(f"sqlite:///{cortex.data_dir / 'events.db'}"))
    assert traces(dump, [ALICE["user_tag"]]) == {}
    assert sum(traces(dump, [BOB["user_tag"]]).values()) == 9
    assert files_with(cortex.data_dir / "events", [ALICE["user_tag"]]) == []
    status = json.loads(cortex.cli("privacy", "status", "--json").output)
    assert status["dropped"] == {"demo": {"sql": 9, "archive": 9}}
    assert status["tombstones"] == {"demo": 1}
    # the queue's ingest error log forgets the dropped invalid event too
    assert traces(queue_dump(cortex), [ALICE["user_tag"]]) == {}

    # a forgotten tombstone lets the person's events in again
    assert cortex.cli("privacy", "forget-tombstone", "--org", "demo", "--user-tag", ALICE["user_tag"]).exit_code == 0
    person_bundles(cortex, {**ALICE, "device_tag": "alice-new-device"})
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events WHERE user_tag = :t", t=ALICE["user_tag"]) == [(3,)]


@pytest.mark.parametrize("choice", ["no-tombstone", "drop-off"])
def test_later_bundles_are_kept_when_the_operator_says_so(make_cortex, choice):
    overrides = {"privacy": {"drop_tombstoned": False}} if choice == "drop-off" else {}
    cortex = make_cortex(**overrides)
    person_bundles(cortex, ALICE)
    cortex.deliver()
    args = ["privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"]]
    if choice == "no-tombstone":
        args.append("--no-tombstone")
    result = cortex.cli(*args)
    assert result.exit_code == 0, result.output
    assert cortex.sql("SELECT count(*) FROM events WHERE user_tag = :t", t=ALICE["user_tag"]) == [(0,)]
    person_bundles(cortex, ALICE)
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events WHERE user_tag = :t", t=ALICE["user_tag"]) == [(3,)]


def test_delete_on_postgresql_leaves_nothing(make_cortex, postgres_url, pg_schema):
    cortex = make_cortex(sinks={"pg": {"type": "sql", "url": postgres_url, "schema": pg_schema},
                                "archive": {"type": "file"}})
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    engine = sa.create_engine(postgres_url)
    try:
        before = sql_dump(engine, pg_schema)
        # 9 rows of events, and the device in the rollups' daily active set and devices
        assert sum(traces(before, TAGS["alice"]).values()) == 11
        result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"],
                            "--device-tag", ALICE["device_tag"], "--json")
        assert result.exit_code == 0, result.output
        outcome = json.loads(result.output)
        assert outcome["sinks"]["pg"] == {"status": "done", "removed": 9, "error": None}
        after = sql_dump(engine, pg_schema)
        assert traces(after, TAGS["alice"]) == {}
        assert traces(after, TAGS["bob"]) == traces(before, TAGS["bob"])
    finally:
        engine.dispose()
    assert files_with(cortex.data_dir / "events", TAGS["alice"]) == []


def test_export_writes_every_record_of_the_person_once(make_cortex, tmp_path):
    cortex = make_cortex(sinks=TWO_SINKS)
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    person_bundles(cortex, {**ALICE, "device_tag": "alice-tablet"})  # still queued: exported too
    output = tmp_path / "alice.jsonl"
    result = cortex.cli("privacy", "export", "--org", "demo", "--user-tag", ALICE["user_tag"], "--output", str(output))
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert len(records) == 18 and len({r["id"] for r in records}) == 18
    assert all(ALICE["user_tag"] in orjson.dumps(r).decode() for r in records)
    assert not any(BOB["user_tag"] in orjson.dumps(r).decode() for r in records)
    assert {r["kind"] for r in records} == {"track", "app_log", "rejected"}
    assert "exported 18 records" in result.output
    # by device tag, to standard output
    result = cortex.cli("privacy", "export", "--org", "demo", "--device-tag", "alice-tablet")
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 9


def test_cli_errors_say_what_to_do(cortex):
    result = cortex.cli("privacy", "delete", "--org", "demo")
    assert result.exit_code == 2 and "give at least one user tag" in result.output
    result = cortex.cli("privacy", "export", "--org", "nope", "--user-tag", "x")
    assert result.exit_code == 1 and "there is no org 'nope'" in result.output


def test_sinks_that_cannot_delete_are_reported(make_cortex):
    from cortex.hookspecs import hookimpl
    from cortex.sinks import Sink

    from conftest import make_plugin

    class ListSink(Sink):
        type_name = "memory-list"

        def write(self, records):
            pass

    plugin = make_plugin("listsink", register_sinks=hookimpl(lambda register: register(ListSink)))
    cortex = make_cortex(plugins=[plugin], sinks={"sql": {"type": "sql"}, "mem": {"type": "memory-list"}})
    person_bundles(cortex, ALICE)
    cortex.deliver()
    result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"])
    assert result.exit_code == 1
    assert "sink sql: removed 9" in result.output
    assert "sink mem: cannot delete" in result.output


def test_api_for_org_admins(make_cortex, monkeypatch):
    monkeypatch.setenv("DEMO_ADMIN_TOKEN", "s3cret-admin-token")
    cortex = make_cortex(sinks=TWO_SINKS, privacy={"admin_tokens": {"demo": {"env": "DEMO_ADMIN_TOKEN"}}})
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    body = {"org": "demo", "user_tag": ALICE["user_tag"]}
    client = cortex.client
    assert client.post("/api/v1/privacy/export", json=body).status_code == 401
    wrong = client.post("/api/v1/privacy/export", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json["error"] == INVALID_TOKEN
    other_org = client.post("/api/v1/privacy/export", json={**body, "org": "other"},
                            headers={"Authorization": "Bearer s3cret-admin-token"})
    assert other_org.status_code == 403 and other_org.json == wrong.json
    auth = {"Authorization": "Bearer s3cret-admin-token"}
    assert client.post("/api/v1/privacy/export", json={"org": "demo"}, headers=auth).status_code == 400
    exported = client.post("/api/v1/privacy/export", json=body, headers=auth)
    assert exported.status_code == 200 and exported.content_type == "application/x-ndjson"
    assert len(exported.data.splitlines()) == 9
    deleted = client.post("/api/v1/privacy/delete", json={**body, "device_tag": [ALICE["device_tag"]]}, headers=auth)
    assert deleted.status_code == 200, deleted.json
    assert {name: s["removed"] for name, s in deleted.json["sinks"].items()} == {"sql": 9, "archive": 9}
    assert deleted.json["tombstone"] is True
    again = client.post("/api/v1/privacy/export", json=body, headers=auth)
    assert again.data == b""
    assert files_with(cortex.data_dir / "events", TAGS["alice"]) == []


def test_delete_against_a_running_server_is_done_by_its_dispatcher(tmp_path):
    """The file sink is held open (and locked) by the server's dispatcher: the deletion is
    handed to it through the queue database, and the CLI waits for the result."""
    import requests

    from conftest import ServerProcess

    server = ServerProcess(tmp_path / "server", env={"CORTEX_SINKS__ARCHIVE__TYPE": "file"})
    try:
        for person in (ALICE, BOB):
            bundle = {"api_key": server.api_key, "app_ver": "1.0", **person,
                      "events": [{"type": "install", "event_datetime": iso(), "event_index": 0},
                                 {"type": "dau", "event_datetime": iso(), "event_index": 1}]}
            answer = requests.post(f"{server.url}/demo/1/track?current_time={iso()}", data=json.dumps(bundle), timeout=10)
            assert answer.status_code == 200
        server.wait_for_delivery()
        result = subprocess.run(
            [sys.executable, "-m", "cortex", "privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"],
             "--json"], env=server.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        outcome = json.loads(result.stdout)
        assert {name: s["removed"] for name, s in outcome["sinks"].items()} == {"sql": 2, "archive": 2}
        assert files_with(server.data_dir / "events", TAGS["alice"]) == []
        assert server.sql_rows(f"SELECT count(*) FROM events WHERE user_tag = '{ALICE['user_tag']}'") == [(0,)]
        assert server.sql_rows(f"SELECT count(*) FROM events WHERE user_tag = '{BOB['user_tag']}'") == [(2,)]
        # the dispatcher keeps writing to the rewritten file afterwards
        bundle = {"api_key": server.api_key, **BOB,
                  "events": [{"type": "event", "event_datetime": iso(), "event_index": 2}]}
        assert requests.post(f"{server.url}/demo/1/track?current_time={iso()}",
                             data=json.dumps(bundle), timeout=10).status_code == 200
        server.wait_for_delivery()
        lines = [orjson.loads(line) for path in (server.data_dir / "events").rglob("*.ndjson")
                 for line in path.read_bytes().splitlines()]
        assert sorted(r["type"] for r in lines) == ["dau", "event", "install"]
    finally:
        server.stop()


def test_pseudonymised_identifiers_are_found_under_every_key(make_cortex):
    """An enricher stores HMAC digests of the tags instead of the tags, with a key that was
    rotated in between; through the identifier_forms hook, a request by the raw tag finds
    the rows stored under both keys, and the tombstone catches later events."""
    import hashlib
    import hmac

    from cortex.enrichers import Enricher
    from cortex.hookspecs import hookimpl

    from conftest import make_plugin

    keys = {"k1": b"first-key-of-the-org-0123456789ab", "k2": b"second-key-of-the-org-0123456789"}

    def pseudonym(key_id: str, org: str, value: str) -> str:
        return key_id + ":" + hmac.new(keys[key_id] + org.encode(), value.encode(), hashlib.sha256).hexdigest()[:40]

    class Pseudonymise(Enricher):
        type_name = "test-pseudonymise"

        def enrich(self, records):
            for record in records:
                for name in ("user_tag", "device_tag", "facebook_tag", "from_tag"):
                    if record.get(name):
                        record[name] = pseudonym(self.options["current"], record["org"], str(record[name]))

    def identifier_forms(config, org, kind, value):
        if any(t["type"] == "test-pseudonymise" for t in config["enrichers"].values()):
            return [pseudonym(key_id, org, value) for key_id in keys]
        return None

    plugin = make_plugin("pseudo", register_enrichers=hookimpl(lambda register: register(Pseudonymise)),
                         identifier_forms=hookimpl(identifier_forms))
    cortex = make_cortex(plugins=[plugin], sinks=TWO_SINKS,
                         enrichers={"pseudo": {"type": "test-pseudonymise", "current": "k1"}})
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    cortex.state.config["enrichers"]["pseudo"]["current"] = "k2"  # the key is rotated
    person_bundles(cortex, {**ALICE, "device_tag": "alice-second-device"})
    cortex.deliver()
    rotated = pseudonym("k2", "demo", ALICE["user_tag"])
    assert cortex.sql("SELECT count(*) FROM events WHERE user_tag = :t", t=rotated) == [(3,)]
    assert cortex.sql("SELECT count(*) FROM events WHERE user_tag = :t", t=ALICE["user_tag"]) == [(0,)]

    exported = cortex.cli("privacy", "export", "--org", "demo", "--user-tag", ALICE["user_tag"])
    # 8 valid records under each key; the rejected events keep the tags as sent
    assert len([line for line in exported.stdout.splitlines() if line.startswith("{")]) == 18

    result = cortex.cli("privacy", "delete", "--org", "demo", "--user-tag", ALICE["user_tag"], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sinks"]["sql"]["removed"] == 18
    alice_forms = [ALICE["user_tag"], *(pseudonym(k, "demo", ALICE["user_tag"]) for k in keys)]
    dump = sql_dump(sa.create_engine(f"sqlite:///{cortex.data_dir / 'events.db'}"))
    assert traces(dump, alice_forms) == {}
    assert sum(traces(dump, [pseudonym("k1", "demo", BOB["user_tag"])]).values()) == 8
    assert files_with(cortex.data_dir / "events", alice_forms) == []

    person_bundles(cortex, ALICE)
    cortex.deliver()
    assert traces(sql_dump(sa.create_engine(f"sqlite:///{cortex.data_dir / 'events.db'}")), alice_forms) == {}


def test_file_sink_rewrite_is_atomic_and_leftovers_are_cleaned(tmp_path):
    """A crash during a rewrite leaves the old file whole and a .rewrite file, which the
    sink removes when it opens; the exactly-once tail still skips a re-sent batch."""
    from cortex.sinks import SinkContext
    from cortex.subjects import Subject
    from cortex.testing import make_record
    from cortex_file import FileSink

    sink = FileSink("archive", {}, SinkContext(data_dir=tmp_path))
    sink.open()
    records = [make_record(seq=1, user_tag="alice"), make_record(seq=2, user_tag="bob"),
               make_record(seq=3, user_tag="alice")]
    sink.write(records)
    [day_file] = (tmp_path / "events" / records[0]["org"]).glob("*.ndjson")
    leftover = day_file.with_name(day_file.name + ".rewrite")
    leftover.write_bytes(b'{"half": ')
    assert sink.delete_subject(Subject(records[0]["org"], {"user_tag": ("alice",)})) == 2
    assert [orjson.loads(line)["user_tag"] for line in day_file.read_bytes().splitlines()] == ["bob"]
    sink.write(records)  # a batch re-sent after a crash: nothing comes back
    assert len(day_file.read_bytes().splitlines()) == 1
    sink.close()
    leftover.write_bytes(b'{"half": ')
    reopened = FileSink("archive", {}, SinkContext(data_dir=tmp_path))
    reopened.open()
    try:
        assert not leftover.exists()
        reopened.write([make_record(seq=4, user_tag="carol")])
        assert [orjson.loads(line)["user_tag"] for line in day_file.read_bytes().splitlines()] == ["bob", "carol"]
    finally:
        reopened.close()


def test_api_for_org_admins_with_account_tokens(make_cortex):
    """An account that is an admin of the org may export and delete; an analyst of the org
    and an admin of another org may not."""
    from analytics_data import make_user

    cortex = make_cortex(sinks=TWO_SINKS)
    cortex.state.control.create_org("other")
    person_bundles(cortex, ALICE)
    person_bundles(cortex, BOB)
    cortex.deliver()
    admin = make_user(cortex, "admin@demo.example", "demo", "admin")
    analyst = make_user(cortex, "analyst@demo.example", "demo", "analyst")
    outsider = make_user(cortex, "admin@other.example", "other", "admin")
    body = {"org": "demo", "user_tag": ALICE["user_tag"]}

    def post(path, token, payload=body):
        return cortex.client.post(path, json=payload, headers={"Authorization": f"Bearer {token}"})

    refused = post("/api/v1/privacy/export", analyst)
    assert refused.status_code == 403 and refused.json["error"] == "this needs the admin role in demo; you are analyst"
    assert post("/api/v1/privacy/delete", analyst).status_code == 403
    # an admin of another org learns nothing about this one: the 404 of an org that does not exist
    for path in ("/api/v1/privacy/export", "/api/v1/privacy/delete"):
        assert post(path, outsider).status_code == 404
        assert post(path, outsider).json == post(path, outsider, {**body, "org": "nowhere"}).json == {"error": "no such org"}
    exported = post("/api/v1/privacy/export", admin)
    assert exported.status_code == 200 and len(exported.data.splitlines()) == 9
    deleted = post("/api/v1/privacy/delete", admin, {**body, "device_tag": [ALICE["device_tag"]]})
    assert deleted.status_code == 200, deleted.json
    assert post("/api/v1/privacy/export", admin).data == b""
    # Bob is untouched
    bob = post("/api/v1/privacy/export", admin, {"org": "demo", "user_tag": BOB["user_tag"]})
    assert len(bob.data.splitlines()) == 9
