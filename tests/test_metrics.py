"""Prometheus metrics at /metrics: in-process, and under gunicorn in multiprocess mode."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest
import requests
from flask import Response
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerProcess, free_port, iso, make_plugin, need_service
from cortex import PermanentError, Sink, hookimpl
from cortex.metrics import FLUSH_INTERVAL, record_enricher_error


def samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted label pairs): value}`` of an exposition."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(cortex, **headers) -> dict:
    response = cortex.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


def check_with_promtool(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        need_service("promtool is not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


class FlakySink(Sink):
    """Fails its first write, then refuses records of the kingdom "poison" for good."""

    type_name = "flaky"
    failures_left = 1
    stored: list = []

    def write(self, records):
        if FlakySink.failures_left:
            FlakySink.failures_left -= 1
            raise ConnectionError("the database is down")
        if any(r.get("kingdom") == "poison" for r in records):
            raise PermanentError("value out of range")
        FlakySink.stored.extend(records)


def _teapot_route(app):
    @app.get("/-/test-limited")
    def limited():
        return Response("never reached: the hook below answers first", status=200)

    # as a rate limiter does: answer 429 from a before_request hook, before any view runs
    @app.before_request
    def limit():
        from flask import request

        if request.path == "/-/test-limited":
            return Response("slow down", status=429, headers={"Retry-After": "1"})


test_plugin = make_plugin(
    "metrics_test_plugin",
    register_sinks=hookimpl(lambda register: register(FlakySink)),
    startup=hookimpl(_teapot_route),
)


def test_ingest_and_delivery_are_counted(make_cortex):
    cortex = make_cortex(plugins=[test_plugin], sinks={"flaky": {"type": "flaky"}},
                         dispatcher={"retry_initial": 0.01})
    FlakySink.failures_left = 1
    before = scrape(cortex)
    now = iso()
    good = [{"type": "event", "event_datetime": now, "event_index": i, "kingdom": "k"} for i in range(3)]
    assert cortex.post(cortex.bundle(good)).status_code == 200
    assert cortex.post(cortex.bundle(good)).status_code == 200  # a retry: 3 duplicates
    mixed = [{"type": "event", "event_datetime": now, "event_index": 10, "kingdom": "poison"},
             {"type": "nonsense", "event_datetime": now},
             {"type": "economy", "event_datetime": now, "spend_amount": "lots"},
             "not an object"]
    assert cortex.post(cortex.bundle(mixed)).status_code == 200
    assert cortex.post(cortex.bundle(good, device_tag="x" * 100, os=["bad"])).status_code == 400
    assert cortex.post(b"not json").status_code == 400
    limited = cortex.client.get("/-/test-limited")
    assert limited.status_code == 429 and limited.headers["X-Request-Id"]
    # clients four minutes behind and one hour ahead
    from datetime import datetime, timedelta, timezone
    behind = iso(datetime.now(timezone.utc) - timedelta(minutes=4))
    ahead = iso(datetime.now(timezone.utc) + timedelta(hours=1))
    assert cortex.post(cortex.bundle([{"type": "dau", "event_datetime": behind}]), current_time=behind).status_code == 200
    assert cortex.post(cortex.bundle([{"type": "dau", "event_datetime": ahead}]), current_time=ahead).status_code == 200

    queued = scrape(cortex)
    assert value(queued, "cortex_queue_records") == 3 + 4 + 3 + 2
    assert value(queued, "cortex_queue_entries") == 5  # one per request that stored something
    assert value(queued, "cortex_queue_oldest_age_seconds") > 0
    assert value(queued, "cortex_sink_lag_seconds", sink="flaky") > 0
    assert value(queued, "cortex_sink_pending_entries", sink="flaky") == 5

    cortex.deliver()
    after = scrape(cortex)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("cortex_events_accepted_total", org="demo") == 3 + 1 + 2
    assert delta("cortex_events_duplicate_total", org="demo") == 3
    assert delta("cortex_events_rejected_total", org="demo", reason="unknown_type") == 1
    assert delta("cortex_events_rejected_total", org="demo", reason="invalid_field") == 1
    assert delta("cortex_events_rejected_total", org="demo", reason="not_an_object") == 1
    assert delta("cortex_events_rejected_total", org="demo", reason="invalid_bundle") == 3
    track = "/<org>/1/track"
    assert delta("cortex_http_requests_total", endpoint=track, method="POST", status="200") == 5
    assert delta("cortex_http_requests_total", endpoint=track, method="POST", status="400") == 2
    assert delta("cortex_http_request_duration_seconds_count", endpoint=track) == 7
    assert delta("cortex_http_rate_limited_total", endpoint="/-/test-limited") == 1
    assert delta("cortex_client_clock_skew_seconds_count") == 6  # every bundle past the key check
    assert delta("cortex_client_clock_skew_seconds_bucket", le="60.0") == 4
    assert delta("cortex_client_clock_skew_seconds_bucket", le="300.0") == 5
    # 3 + 2 events and 3 rejected (the refused bundle's) delivered, the poison one dead-lettered
    assert delta("cortex_sink_delivered_records_total", sink="flaky") == 3 + 3 + 2 + 3
    assert delta("cortex_sink_dead_lettered_records_total", sink="flaky") == 1
    assert delta("cortex_sink_write_failures_total", sink="flaky") >= 1
    # every successful write is observed once: its records add up to those delivered
    writes = delta("cortex_sink_batch_records_count", sink="flaky")
    assert writes >= 2  # the refused record's batch was split until it stood alone
    assert delta("cortex_sink_batch_records_sum", sink="flaky") == 3 + 3 + 2 + 3
    assert delta("cortex_sink_write_seconds_count", sink="flaky") == writes
    assert delta("cortex_sink_write_seconds_bucket", sink="flaky", le="+Inf") == writes
    assert 0 < delta("cortex_sink_write_seconds_sum", sink="flaky") < 10
    assert delta("cortex_sink_batch_records_bucket", sink="flaky", le="+Inf") == writes
    assert delta("cortex_sink_batch_records_bucket", sink="flaky", le="10.0") == writes  # small batches
    assert value(after, "cortex_queue_records") == 0
    assert value(after, "cortex_sink_lag_seconds", sink="flaky") == 0


def test_exposition_passes_promtool(make_cortex):
    cortex = make_cortex()
    cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}, {"type": "bogus"}]))
    cortex.post(b"{}")
    cortex.deliver()
    record_enricher_error("geoip", "skip", 2)
    text = cortex.client.get("/metrics").get_data(as_text=True)
    assert 'cortex_enricher_errors_total{enricher="geoip",policy="skip"}' in text
    check_with_promtool(text)


def test_token_protects_metrics(make_cortex, monkeypatch):
    monkeypatch.setenv("TEST_METRICS_TOKEN", "s3cret-token")
    cortex = make_cortex(metrics={"token": {"env": "TEST_METRICS_TOKEN"}})
    assert cortex.client.get("/metrics").status_code == 401
    assert cortex.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert cortex.client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_metrics_can_be_turned_off(make_cortex):
    cortex = make_cortex(metrics={"enabled": False})
    assert cortex.client.get("/metrics").status_code == 404
    assert cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}])).status_code == 200


# --- under gunicorn ---------------------------------------------------------------------------


def _post(server, device: str) -> None:
    body = orjson.dumps({"api_key": server.api_key, "device_tag": device,
                         "events": [{"type": "dau", "event_datetime": iso()}]})
    response = requests.post(f"{server.url}/demo/1/track?current_time={iso()}", data=body, timeout=10)
    assert response.status_code == 200


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_multiprocess_totals_survive_a_killed_worker(tmp_path):
    data_dir = tmp_path / "server"
    stale = data_dir / "metrics" / f"counter_{_dead_pid()}.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    server = ServerProcess(data_dir)
    try:
        assert not stale.exists(), "the master cleans the values of dead processes at start"
        for i in range(20):
            _post(server, f"device-{i}")
        # whichever worker answers the scrape, it adds up both workers' counts (each worker
        # adds its recent counts to its files within FLUSH_INTERVAL)
        time.sleep(FLUSH_INTERVAL + 0.5)
        for _ in range(4):
            text = requests.get(f"{server.url}/metrics", timeout=10).text
            scraped = samples(text)
            assert value(scraped, "cortex_events_accepted_total", org="demo") == 20
            assert value(scraped, "cortex_http_requests_total", endpoint="/<org>/1/track",
                         method="POST", status="200") == 20
        check_with_promtool(text)
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim in server.worker_pids() or len(server.worker_pids()) < 2:
            assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
            time.sleep(0.2)
        _post(server, "after")
        server.wait_for_delivery()
        time.sleep(FLUSH_INTERVAL + 0.5)
        scraped = samples(requests.get(f"{server.url}/metrics", timeout=10).text)
        assert value(scraped, "cortex_events_accepted_total", org="demo") == 21
        assert value(scraped, "cortex_sink_delivered_records_total", sink="sql") == 21
        assert value(scraped, "cortex_sink_batch_records_sum", sink="sql") == 21
    finally:
        server.stop()


@pytest.mark.slow
def test_metrics_on_a_separate_address(tmp_path):
    port = free_port()
    server = ServerProcess(tmp_path / "server", env={"CORTEX_METRICS__BIND": f"127.0.0.1:{port}"})
    try:
        _post(server, "one")
        assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 404
        time.sleep(FLUSH_INTERVAL + 0.5)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        scraped = samples(text)
        assert value(scraped, "cortex_events_accepted_total", org="demo") == 1
        assert "cortex_queue_records" in text and "cortex_sink_lag_seconds" in text
    finally:
        server.stop()


def test_alert_rules_are_valid_and_use_only_exposed_metrics(make_cortex):
    import re
    from pathlib import Path

    rules = Path(__file__).resolve().parent.parent / "config" / "prometheus-alerts.yml"
    promtool = shutil.which("promtool")
    if promtool is None:
        need_service("promtool is not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    text = make_cortex().client.get("/metrics").get_data(as_text=True)
    exposed = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = kind_line
        exposed.add(name)
        if kind == "histogram":
            exposed.update({f"{name}_bucket", f"{name}_count", f"{name}_sum"})
    used = set(re.findall(r"\bcortex_[a-z_]+", rules.read_text()))
    assert used and used <= exposed, f"not exposed: {sorted(used - exposed)}"


def test_slow_sink_writes_alert_fires_for_the_slow_sink_only(tmp_path):
    import json
    import re
    from pathlib import Path

    promtool = shutil.which("promtool")
    if promtool is None:
        need_service("promtool is not installed (Debian package prometheus)")
    rules = Path(__file__).resolve().parent.parent / "config" / "prometheus-alerts.yml"
    rule = rules.read_text().split("alert: CortexSlowSinkWrites", 1)[1].split("- alert:", 1)[0]
    description = re.search(r'description: "(.*)"', rule).group(1)

    def series(sink: str, bound: str, per_minute: int) -> dict:
        return {"series": f'cortex_sink_write_seconds_bucket{{instance="a", sink="{sink}", le="{bound}"}}',
                "values": f"0+{per_minute}x40"}

    alert = "CortexSlowSinkWrites"
    # a minute of "slow": 10 writes, 9 of them between 10 and 30 s; of "fast": 100 under 10 ms
    spec = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [series("slow", "10.0", 1), series("slow", "30.0", 10), series("slow", "+Inf", 10),
                         series("fast", "0.01", 100), series("fast", "10.0", 100), series("fast", "+Inf", 100)],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": alert, "exp_alerts": []},  # slow, but not for 15 minutes yet
            {"eval_time": "30m", "alertname": alert, "exp_alerts": [{
                "exp_labels": {"severity": "warning", "instance": "a", "sink": "slow"},
                "exp_annotations": {"summary": "1% of sink slow's writes take more than 29.78s",
                                    "description": description}}]},
        ],
    }]}
    test_file = tmp_path / "alert-test.yml"
    test_file.write_text(json.dumps(spec))  # JSON is YAML
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
