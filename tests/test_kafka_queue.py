"""Kafka as the queue: ingest produces (acknowledged before the 200), workers consume per sink."""

from __future__ import annotations

import time
import uuid

import pytest

from conftest import iso
from cortex.dispatcher import Dispatcher

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed (pip install 'cortex[kafka]')")


def kafka_queue_settings(bootstrap: str, redis_url: str | None = None, **kafka) -> dict:
    """Overrides for a Cortex on a fresh Kafka topic, dedupe in Redis under a fresh prefix."""
    name = uuid.uuid4().hex[:10]
    settings = {
        "backend": "kafka",
        "kafka": {"bootstrap_servers": bootstrap, "topic": f"queue-{name}", "group": f"g-{name}",
                  "partitions": 4, "ack_timeout": 5.0, **kafka},
    }
    if redis_url:
        settings["dedupe"] = {"backend": "redis", "url": redis_url, "prefix": f"test:{name}:"}
    return {"queue": settings, "dispatcher": {"embedded": False, "poll_interval": 0.2}}


def post(cortex, bundle_number: int, events: int = 5, device: str | None = None):
    body = cortex.bundle(
        [{"type": "event", "event_datetime": "2024-06-01T12:00:00.000Z", "event_index": bundle_number * 100 + i,
          "kingdom": f"b{bundle_number}"} for i in range(events)],
        device_tag=device or f"device-{bundle_number % 4}",
    )
    return cortex.post(body)


def wait_for_rows(cortex, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = cortex.sql("SELECT count(*) FROM events")[0][0]
        except Exception:  # noqa: BLE001 - the table is made when the sink opens
            rows = 0
        if rows >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rows} of {count} rows arrived")
        time.sleep(0.2)


def test_events_travel_through_kafka_to_the_sql_sink(kafka_broker, redis_url, make_cortex):
    """Accepted events reach the SQL sink through Kafka; a retried bundle is a duplicate."""
    cortex = make_cortex(**kafka_queue_settings(kafka_broker.bootstrap, redis_url))
    for number in range(10):
        assert post(cortex, number).status_code == 200
    assert post(cortex, 3).status_code == 200  # an SDK's retry
    counters = cortex.state.queue.counters()["demo"]
    assert counters == {"accepted": 50, "duplicate": 5, "rejected": 0}
    dispatcher = Dispatcher(cortex.state)
    dispatcher.start()
    try:
        wait_for_rows(cortex, 50)
        time.sleep(1.0)
    finally:
        dispatcher.shutdown()
        dispatcher.join(20)
    rows = cortex.sql("SELECT kingdom, count(*), count(DISTINCT id) FROM events GROUP BY kingdom ORDER BY kingdom")
    assert rows == [(f"b{n}", 5, 5) for n in range(10)]
    assert cortex.state.queue.sink_status(["sql"])["sql"]["pending"] == 0


def test_dedupe_holds_across_nodes(kafka_broker, redis_url, make_cortex):
    """A bundle accepted by one node and retried against another is recognised there."""
    settings = kafka_queue_settings(kafka_broker.bootstrap, redis_url)
    first, second = make_cortex(**settings), make_cortex(**settings)
    body = first.bundle([{"type": "dau", "event_datetime": iso(), "event_index": 1}])
    assert first.post(body).status_code == 200
    assert second.post({**body, "api_key": second.api_key}).status_code == 200
    assert first.state.queue.counters()["demo"]["accepted"] == 1
    assert second.state.queue.counters()["demo"] == {"accepted": 0, "duplicate": 1, "rejected": 0}


def test_broker_down_answers_503_and_keeps_no_dedupe_key(make_kafka_broker, redis_url, make_cortex):
    """No acknowledgement, no 200: the SDK retries, and once the broker is back it is accepted."""
    broker = make_kafka_broker()
    cortex = make_cortex(**kafka_queue_settings(broker.bootstrap, redis_url, ack_timeout=1.0))
    response = post(cortex, 1)
    assert response.status_code == 503 and response.headers.get("Retry-After")
    broker.start()
    deadline = time.monotonic() + 30
    while (response := post(cortex, 1)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)  # as an SDK retries, while the producer reconnects
    assert response.status_code == 200, response.data
    assert cortex.state.queue.counters()["demo"] == {"accepted": 5, "duplicate": 0, "rejected": 0}


def test_one_failing_sink_does_not_hold_up_another(kafka_broker, make_cortex, tmp_path):
    """Each sink is its own consumer group: the file sink gets everything while http fails."""
    settings = kafka_queue_settings(kafka_broker.bootstrap)
    settings["sinks"] = {"archive": {"type": "file", "fsync": False},
                         "down": {"type": "http", "url": "http://127.0.0.1:9/none", "max_attempts": 1,
                                  "timeout": 0.5}}
    cortex = make_cortex(**settings)
    for number in range(6):
        assert post(cortex, number).status_code == 200
    dispatcher = Dispatcher(cortex.state)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            lines = sum(len(p.read_bytes().splitlines()) for p in (cortex.data_dir / "events").rglob("*.ndjson"))
            if lines >= 30 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        dispatcher.shutdown()
        dispatcher.join(20)
    assert lines == 30
    assert cortex.state.queue.sink_status(["archive"])["archive"]["pending"] == 0
    assert cortex.state.queue.sink_status(["down"])["down"]["pending"] > 0


def test_redis_unreachable_answers_503(kafka_broker, make_cortex):
    """Without the dedupe store a request cannot be accepted safely: 503 with Retry-After."""
    from conftest import free_port

    settings = kafka_queue_settings(kafka_broker.bootstrap, f"redis://127.0.0.1:{free_port()}/0")
    cortex = make_cortex(**settings)
    response = post(cortex, 1)
    assert response.status_code == 503 and response.headers.get("Retry-After")


def test_drain_delivers_everything_consumed(kafka_broker, redis_url, make_cortex):
    """The dispatcher's drain (cortex worker --once) returns once the sink's group has it all."""
    cortex = make_cortex(**kafka_queue_settings(kafka_broker.bootstrap, redis_url))
    for number in range(4):
        assert post(cortex, number).status_code == 200
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events") == [(20,)]
    assert cortex.state.queue.sink_status(["sql"])["sql"]["pending"] == 0


def _counting_plugin():
    from conftest import make_plugin

    from cortex import Enricher, hookimpl

    class Marker(Enricher):
        type_name = "marker"
        fields = ("phylum",)
        seen = 0

        def enrich(self, records):
            for record in records:
                record["phylum"] = "marked"
            type(self).seen += len(records)

    return Marker, make_plugin("kafka_marker", register_enrichers=hookimpl(lambda register: register(Marker)))


def test_enrichment_runs_once_per_message_for_all_sinks(kafka_broker, redis_url, make_cortex):
    """With the Kafka queue each message is enriched once, and every sink gets the result."""
    import json

    marker, plugin = _counting_plugin()
    settings = kafka_queue_settings(kafka_broker.bootstrap, redis_url)
    cortex = make_cortex(plugins=[plugin], enrichers={"mark": {"type": "marker"}},
                         sinks={"sql": {"type": "sql"}, "archive": {"type": "file", "fsync": False}}, **settings)
    for number in range(3):
        assert post(cortex, number).status_code == 200
    cortex.deliver()
    assert marker.seen == 15
    assert cortex.sql("SELECT phylum, count(*) FROM events GROUP BY phylum") == [("marked", 15)]
    lines = [json.loads(line) for path in (cortex.data_dir / "events").rglob("*.ndjson")
             for line in path.read_text().splitlines()]
    assert len(lines) == 15 and {r["phylum"] for r in lines} == {"marked"}
    assert all("context" not in r for r in lines)
