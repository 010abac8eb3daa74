"""/-/health and /-/ready, as a load balancer sees them."""

from __future__ import annotations

import sqlite3
import time

import requests
import pytest

from conftest import iso


def test_health_is_always_cheap_and_ok(cortex):
    response = cortex.client.get("/-/health")
    assert (response.status_code, response.json) == (200, {"status": "ok"})


def test_ready_reports_every_check(cortex):
    response = cortex.client.get("/-/ready")
    assert response.status_code == 200
    body = response.json
    assert body["status"] == "ready"
    checks = body["checks"]
    assert {name for name, check in checks.items() if check.get("ok")} == {"queue", "disk", "control_db", "backpressure"}
    assert checks["sinks"]["sinks"]["sql"] == {"lag_seconds": 0.0, "pending_entries": 0, "state": "ok"}


def test_unready_while_the_queue_cannot_be_written(cortex):
    blocker = sqlite3.connect(cortex.state.queue.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        response = cortex.client.get("/-/ready")
        assert time.monotonic() - started < 10, "the check waits a bounded time for the lock"
        assert response.status_code == 503
        assert response.json["status"] == "unready"
        assert response.json["checks"]["queue"]["ok"] is False
        assert "locked" in response.json["checks"]["queue"]["error"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert cortex.client.get("/-/ready").status_code == 200


def test_unready_when_the_disk_is_low(make_cortex):
    cortex = make_cortex(health={"min_free_bytes": 10**18})
    response = cortex.client.get("/-/ready")
    assert response.status_code == 503
    assert response.json["checks"]["disk"]["ok"] is False
    assert response.json["checks"]["queue"]["ok"] is True


def test_a_lagging_sink_is_reported_and_fails_readiness_only_when_configured(make_cortex):
    reporting = make_cortex()
    strict = make_cortex(health={"max_sink_lag_seconds": 1})
    for cortex in (reporting, strict):
        assert cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}])).status_code == 200
    time.sleep(1.2)  # nothing dispatches in these apps: the sink falls behind

    relaxed = reporting.client.get("/-/ready")
    assert relaxed.status_code == 200
    assert relaxed.json["checks"]["sinks"]["sinks"]["sql"]["lag_seconds"] > 1
    assert relaxed.json["checks"]["sinks"]["sinks"]["sql"]["pending_entries"] == 1

    lagging = strict.client.get("/-/ready")
    assert lagging.status_code == 503
    assert lagging.json["checks"]["sinks"]["ok"] is False
    assert lagging.json["checks"]["sinks"]["sinks"]["sql"]["state"] == "lagging"

    strict.deliver()
    assert strict.client.get("/-/ready").status_code == 200


@pytest.mark.slow
def test_health_and_ready_under_gunicorn(cortex_server):
    assert requests.get(f"{cortex_server.url}/-/health", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{cortex_server.url}/-/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
