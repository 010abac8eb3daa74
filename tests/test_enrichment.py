"""Running enrichers: configured order, once per entry for all sinks, error policies, timeouts,
counts in ``cortex status``, dead letters and their replay."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import make_plugin
from cortex import Enricher, hookimpl
from cortex.config import ConfigError


class Flaky(Enricher):
    """Sets ``phylum``; raises on records whose kingdom is ``bad`` (after touching them)."""

    type_name = "flaky"
    fields = ("phylum",)
    broken = True
    enriched = 0

    def enrich(self, records):
        for record in records:
            record["phylum"] = "enriched"
        type(self).enriched += len(records)
        if self.broken and any(r.get("kingdom") == "bad" for r in records):
            raise ValueError("cannot enrich a bad kingdom")


class Slow(Enricher):
    """Sets ``class``; takes far too long on records whose kingdom is ``slow``."""

    type_name = "slow"
    fields = ("class",)
    release = threading.Event()

    def enrich(self, records):
        for record in records:
            record["class"] = "enriched"
        if any(r.get("kingdom") == "slow" for r in records):
            self.release.wait(10)


class Appender(Enricher):
    """Appends its name to ``species``: shows the order enrichers ran in."""

    type_name = "appender"

    def enrich(self, records):
        for record in records:
            record["species"] = (record.get("species") or "") + self.name + ";"


class Unopenable(Enricher):
    """Cannot open (its data file is missing)."""

    type_name = "unopenable"
    fields = ("genus",)

    def open(self):
        raise FileNotFoundError("no such file: /nowhere/data.bin")

    def enrich(self, records):
        for record in records:
            record["genus"] = "enriched"


def _register(register):
    for cls in (Flaky, Slow, Appender, Unopenable):
        register(cls)


plugin = make_plugin("test_enrichers", register_enrichers=hookimpl(_register))


@pytest.fixture(autouse=True)
def _reset():
    Flaky.broken = True
    Flaky.enriched = 0
    Slow.release.clear()
    yield
    Slow.release.set()


def event(kingdom: str, index: int, **fields) -> dict:
    return {"type": "event", "event_datetime": "2024-06-03T10:00:00.000Z", "event_index": index,
            "kingdom": kingdom, "phylum": "sent", **fields}


def rows(cortex, columns="kingdom, phylum, warnings"):
    return cortex.sql(f"SELECT {columns} FROM events ORDER BY event_index")


def status(cortex) -> dict:
    result = cortex.cli("status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_enrichers_run_in_the_order_the_configuration_lists(make_cortex, tmp_path, monkeypatch):
    config = tmp_path / "cortex.toml"
    config.write_text('[enrichers.zulu]\ntype = "appender"\n\n[enrichers.alpha]\ntype = "appender"\n\n'
                      '[enrichers.mike]\ntype = "appender"\n')
    monkeypatch.setenv("CORTEX_CONFIG", str(config))
    cortex = make_cortex(plugins=[plugin])
    assert list(cortex.state.config["enrichers"]) == ["zulu", "alpha", "mike"]
    assert cortex.post(cortex.bundle([event("shop", 1)])).status_code == 200
    cortex.deliver()
    assert cortex.sql("SELECT species FROM events") == [("zulu;alpha;mike;",)]


def test_enrichment_runs_once_for_all_sinks(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky"}},
                         sinks={"sql": {"type": "sql"}, "archive": {"type": "file"}})
    assert cortex.post(cortex.bundle([event("shop", i) for i in range(5)])).status_code == 200
    cortex.deliver()
    assert Flaky.enriched == 5
    assert [r[1] for r in rows(cortex)] == ["enriched"] * 5
    files = list((cortex.data_dir / "events" / "demo").glob("*.ndjson"))
    stored = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["phylum"] for r in stored] == ["enriched"] * 5
    # the request context never reaches a sink
    assert all("context" not in r for r in stored)
    sinks = status(cortex)["sinks"]
    assert sinks["sql"]["delivered"] == sinks["archive"]["delivered"] == 5


def test_a_sink_far_behind_still_gets_enriched_records(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky"}},
                         sinks={"sql": {"type": "sql"}, "archive": {"type": "file"}},
                         dispatcher={"batch_size": 2})
    for i in range(6):
        assert cortex.post(cortex.bundle([event("shop", i)])).status_code == 200
    cortex.deliver()
    files = list((cortex.data_dir / "events" / "demo").glob("*.ndjson"))
    stored = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted(r["event_index"] for r in stored) == list(range(6))
    assert {r["phylum"] for r in stored} == {"enriched"}
    assert [r[1] for r in rows(cortex)] == ["enriched"] * 6


def test_pass_through_keeps_the_failed_record_as_it_was(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky", "on_error": "pass_through"}})
    events = [event("shop", 1), event("bad", 2), event("shop", 3), event("shop", 4)]
    assert cortex.post(cortex.bundle(events)).status_code == 200
    cortex.deliver()
    stored = rows(cortex)
    assert [(k, p) for k, p, _ in stored] == [("shop", "enriched"), ("bad", "sent"), ("shop", "enriched"),
                                              ("shop", "enriched")]
    warnings = json.loads(stored[1][2])
    assert warnings == ["enricher flaky failed (ValueError: cannot enrich a bad kingdom); passed through"]
    assert stored[0][2] is None
    assert status(cortex)["enrichers"] == {"flaky": {"failures": 1, "passed_through": 1}}


def test_drop_field_removes_the_enrichers_fields(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky", "on_error": "drop_field"}})
    assert cortex.post(cortex.bundle([event("bad", 1), event("shop", 2)])).status_code == 200
    cortex.deliver()
    stored = rows(cortex)
    assert [(k, p) for k, p, _ in stored] == [("bad", None), ("shop", "enriched")]
    assert "dropped phylum" in json.loads(stored[0][2])[0]
    assert status(cortex)["enrichers"] == {"flaky": {"failures": 1, "fields_dropped": 1}}
    metrics = cortex.client.get("/metrics").get_data(as_text=True)
    counted = [line for line in metrics.splitlines()
               if line.startswith('cortex_enricher_errors_total{enricher="flaky",policy="drop_field"}')]
    assert counted and float(counted[0].split()[-1]) >= 1


def test_dead_letter_keeps_the_record_out_of_the_sinks_until_replayed(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky", "on_error": "dead_letter"}},
                         sinks={"sql": {"type": "sql"}, "archive": {"type": "file"}})
    assert cortex.post(cortex.bundle([event("shop", 1), event("bad", 2)])).status_code == 200
    cortex.deliver()
    assert [k for k, _, _ in rows(cortex)] == ["shop"]
    report = status(cortex)
    assert report["enrichers"] == {"flaky": {"failures": 1, "dead_lettered": 1}}
    assert report["sinks"]["sql"] == {**report["sinks"]["sql"], "pending": 0, "delivered": 1, "dead_lettered": 1}
    assert report["sinks"]["archive"]["dead_lettered"] == 1
    letter = cortex.state.queue.dead_letters("sql")[0]
    assert letter["error"] == "enricher flaky failed: ValueError: cannot enrich a bad kingdom"
    # the record as it came from the queue: not half-enriched, and with its request context
    assert letter["record"]["phylum"] == "sent" and "context" in letter["record"]

    # while the enricher still fails, replay leaves the dead letter where it is
    result = cortex.cli("replay", "--dead-letters", "--sink", "sql")
    assert result.exit_code == 1 and json.loads(result.output)["failed"] == 1
    assert [k for k, _, _ in rows(cortex)] == ["shop"]
    Flaky.broken = False
    result = cortex.cli("replay", "--dead-letters", "--sink", "sql")
    assert result.exit_code == 0, result.output
    assert [(k, p) for k, p, _ in rows(cortex)] == [("shop", "enriched"), ("bad", "enriched")]
    assert cortex.state.queue.dead_letters("sql") == []
    assert len(cortex.state.queue.dead_letters("archive")) == 1


def test_a_slow_enricher_times_out_and_its_policy_applies(make_cortex):
    from cortex.dispatcher import Dispatcher

    cortex = make_cortex(plugins=[plugin], enrichers={"slow": {"type": "slow", "timeout": 0.3}},
                         dispatcher={"batch_size": 1})
    assert cortex.post(cortex.bundle([event("slow", 1)])).status_code == 200
    assert cortex.post(cortex.bundle([event("shop", 2)])).status_code == 200
    dispatcher = Dispatcher(cortex.state)
    started = time.monotonic()
    dispatcher.drain()
    assert time.monotonic() - started < 5
    stored = rows(cortex, "kingdom, class, warnings")
    assert [(k, c) for k, c, _ in stored] == [("slow", None), ("shop", None)]
    assert json.loads(stored[0][2]) == ["enricher slow failed (took longer than its timeout of 0.3s); passed through"]
    # the next batch is not given to the enricher while the stuck call still runs
    assert json.loads(stored[1][2]) == ["enricher slow failed (still busy with an earlier batch that took "
                                        "longer than 0.3s); passed through"]
    counts = status(cortex)["enrichers"]["slow"]
    assert counts == {"failures": 2, "timeouts": 1, "passed_through": 2}
    # once the stuck call returns, the same enricher works again
    Slow.release.set()
    [stage] = dispatcher.enriched.enrichment.stages
    deadline = time.monotonic() + 10
    while stage.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cortex.post(cortex.bundle([event("shop", 3)])).status_code == 200
    dispatcher.drain()
    assert cortex.sql("SELECT class FROM events WHERE event_index = 3") == [("enriched",)]


def test_a_slow_enricher_with_dead_letter_policy(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"slow": {"type": "slow", "timeout": 0.3,
                                                               "on_error": "dead_letter"}})
    assert cortex.post(cortex.bundle([event("slow", 1), event("shop", 2)])).status_code == 200
    cortex.deliver()
    assert rows(cortex) == []
    letters = cortex.state.queue.dead_letters("sql")
    assert len(letters) == 2 and "took longer than its timeout" in letters[0]["error"]
    # a timeout costs the whole batch its enrichment (halving it would only wait longer);
    # once the enricher is fast again, replay enriches and delivers both
    Slow.release.set()
    assert cortex.cli("replay", "--dead-letters").exit_code == 0
    assert cortex.sql("SELECT kingdom, class FROM events ORDER BY event_index") == [
        ("slow", "enriched"), ("shop", "enriched")]


def test_a_slow_enricher_with_drop_field_policy(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"slow": {"type": "slow", "timeout": 0.3,
                                                               "on_error": "drop_field"}})
    assert cortex.post(cortex.bundle([event("slow", 1, **{"class": "sent"})])).status_code == 200
    cortex.deliver()
    [(kingdom, class_, warnings)] = rows(cortex, 'kingdom, "class", warnings')
    assert (kingdom, class_) == ("slow", None)
    assert json.loads(warnings) == ["enricher slow failed (took longer than its timeout of 0.3s); dropped class"]
    assert status(cortex)["enrichers"]["slow"] == {"failures": 1, "timeouts": 1, "fields_dropped": 1}


def test_an_enricher_that_cannot_open_gets_its_policy(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"broken": {"type": "unopenable", "on_error": "drop_field"},
                                                      "flaky": {"type": "flaky"}})
    assert cortex.post(cortex.bundle([event("shop", 1, genus="sent")])).status_code == 200
    cortex.deliver()
    stored = cortex.sql("SELECT genus, phylum, warnings FROM events")
    assert stored[0][:2] == (None, "enriched")
    assert "could not open: FileNotFoundError" in json.loads(stored[0][2])[0]
    assert status(cortex)["enrichers"]["broken"] == {"failures": 1, "fields_dropped": 1}


def test_unknown_error_policy_is_a_startup_error(make_cortex):
    with pytest.raises(ConfigError, match="on_error = 'retry' is not one of"):
        make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky", "on_error": "retry"}})
    with pytest.raises(ConfigError, match="timeout must be a number"):
        make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky", "timeout": "soon"}})


def test_rejected_events_are_not_enriched(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky"}})
    bad = {"type": "event", "event_datetime": "yesterday", "kingdom": "bad"}
    assert cortex.post(cortex.bundle([event("shop", 1), bad])).status_code == 200
    cortex.deliver()
    assert Flaky.enriched == 1
    assert len(cortex.sql("SELECT id FROM ingest_errors")) == 1


def test_the_status_table_shows_enricher_errors(make_cortex):
    cortex = make_cortex(plugins=[plugin], enrichers={"flaky": {"type": "flaky"}})
    assert cortex.post(cortex.bundle([event("bad", 1)])).status_code == 200
    cortex.deliver()
    output = cortex.cli("status").output
    assert "enricher errors:" in output and "flaky" in output


@pytest.mark.slow
def test_bundled_enrichers_under_gunicorn_behind_a_proxy(tmp_path):
    """The embedded dispatcher of a real server opens the enrichers after the fork, trusts
    X-Forwarded-For from one proxy, and reports enricher errors in ``cortex status``."""
    import requests

    from conftest import ServerProcess

    server = ServerProcess(tmp_path / "server", env={
        "CORTEX_SERVER__TRUST_PROXY_HOPS": "1",
        "CORTEX_ENRICHERS__COUNTRY__TYPE": "geoip",
        "CORTEX_ENRICHERS__LANGUAGE__TYPE": "language",
        "CORTEX_ENRICHERS__USD__TYPE": "currency",
    })
    try:
        body = {"api_key": server.api_key, "app_ver": "1.0", "device_tag": "d-1", "events": [
            {"type": "economy", "event_datetime": "2024-06-03T10:00:00Z", "spend_amount": 100,
             "spend_currency": "GBP"}]}
        response = requests.post(f"{server.url}/demo/1/track", data=json.dumps(body), timeout=10, headers={
            "Content-Type": "text/plain", "X-Forwarded-For": "81.2.69.142", "Accept-Language": "en-GB,en;q=0.9"})
        assert response.status_code == 200 and response.text == "OK"
        server.wait_for_delivery()
        [(country, language, usd)] = server.sql_rows("SELECT country, language, spend_amount_usd FROM economy")
        assert (country, language) == ("GB", "en")
        assert usd == pytest.approx(100 * 1.0842 / 0.85175, rel=1e-6)
        assert server.status()["enrichers"] == {}
    finally:
        server.stop()


@pytest.mark.postgres
def test_every_bundled_enricher_into_postgresql(make_cortex, postgres_url, pg_schema):
    """Enriched values fit the typed columns of PostgreSQL, which refuses overlong strings."""
    import sqlalchemy as sa

    key = "5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
    cortex = make_cortex(
        sinks={"sql": {"type": "sql", "url": postgres_url, "schema": pg_schema}},
        enrichers={"country": {"type": "geoip"}, "usd": {"type": "currency"}, "device": {"type": "device"},
                   "language": {"type": "language"},
                   "pseudo": {"type": "pseudonymise", "orgs": ["*"], "keys": {"k2026-rotate": key}}},
    )
    body = {"api_key": cortex.api_key, "app_ver": "1.0", "device_tag": "d" * 62, "user_tag": "u" * 62,
            "events": [{"type": "economy", "event_datetime": "2024-06-08T10:00:00Z", "spend_amount": 100,
                        "spend_currency": "GBP"}]}
    webview = ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UD1A.230803.041; wv) AppleWebKit/537.36 "
               "(KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.163 Mobile Safari/537.36")
    response = cortex.post(body, environ_base={"REMOTE_ADDR": "2001:4860:4860::8888"},
                           headers={"User-Agent": webview, "Accept-Language": "pt-BR,pt;q=0.9"})
    assert response.status_code == 200
    cortex.deliver()
    assert cortex.state.queue.dead_letters() == []
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.text(
                f"SELECT country, spend_amount_usd, usd_rate_date, browser, os, device_type, language, user_tag "
                f"FROM {pg_schema}.economy")).one()
    finally:
        engine.dispose()
    assert row[0] == "US" and row[1] == pytest.approx(100 * 1.0898 / 0.8512, rel=1e-6)
    assert str(row[2]) == "2024-06-07"
    assert row[3] == "Chrome Mobile We" and row[4:7] == ("Android", "android", "pt")
    assert row[7].startswith("k2026-rotate:") and len(row[7]) <= 62
