"""Backpressure: 503 with Retry-After while the queue is too deep or the disk too full."""

from __future__ import annotations

import time

from conftest import iso


def _bundle(cortex, device: str) -> dict:
    return cortex.bundle([{"type": "dau", "event_datetime": iso()}], device_tag=device)


def _status(scraped_text: str, reason: str) -> str:
    return next(line for line in scraped_text.splitlines()
                if line.startswith(f'cortex_ingest_backpressure{{reason="{reason}"}}'))


def test_a_full_queue_refuses_and_recovers_by_itself(make_cortex):
    cortex = make_cortex(queue={"max_depth": 3, "pressure_check_interval": 0, "retry_after": 7})
    for i in range(3):
        assert cortex.post(_bundle(cortex, f"d{i}")).status_code == 200

    refused = cortex.post(_bundle(cortex, "late"))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "7"
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # browsers must see the answer
    assert "retry later" in refused.get_data(as_text=True)
    assert len(cortex.records()) == 3, "nothing of the refused bundle was kept"
    assert _status(cortex.client.get("/metrics").get_data(as_text=True), "queue_depth").endswith(" 1.0")
    ready = cortex.client.get("/-/ready")
    assert ready.status_code == 503 and "queue_depth" in ready.json["checks"]["backpressure"]["reason"]

    cortex.deliver()  # the dispatcher drains and prunes the queue
    assert cortex.post(_bundle(cortex, "late")).status_code == 200
    assert cortex.client.get("/-/ready").status_code == 200
    assert _status(cortex.client.get("/metrics").get_data(as_text=True), "queue_depth").endswith(" 0.0")


def test_a_full_disk_refuses(make_cortex):
    # any filesystem in use is fuller than one millionth
    cortex = make_cortex(queue={"max_disk_fill": 0.000001})
    refused = cortex.post(_bundle(cortex, "d"))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert cortex.records() == []
    assert _status(cortex.client.get("/metrics").get_data(as_text=True), "disk").endswith(" 1.0")


def test_the_measurement_is_reused_for_the_check_interval(make_cortex):
    """Requests do not count the queue: within the interval they reuse the last measurement."""
    cortex = make_cortex(queue={"max_depth": 1, "pressure_check_interval": 0.5})
    assert cortex.post(_bundle(cortex, "a")).status_code == 200  # measured: empty
    assert cortex.post(_bundle(cortex, "b")).status_code == 200  # same measurement
    time.sleep(0.6)
    assert cortex.post(_bundle(cortex, "c")).status_code == 503  # measured again: 2 queued
