"""The ``kafka`` sink against a real Kafka-compatible broker started by the test suite."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
import pytest

from cortex.dispatcher import Dispatcher
from cortex.sinks import SinkContext
from cortex.testing import SinkConformance, make_record, sample_records
from cortex.testing.records import next_seq

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed (pip install 'cortex[kafka]')")

from conftest import iso  # noqa: E402
from cortex_kafka import register_sinks  # noqa: E402
from cortex_kafka.sink import KafkaSink, message_key  # noqa: E402


def make_kafka_sink(bootstrap: str, tmp_path, **options) -> KafkaSink:
    """A kafka sink (not opened)."""
    settings = {"bootstrap_servers": bootstrap, "flush_timeout": 10.0, **options}
    return KafkaSink("stream", settings, SinkContext(data_dir=tmp_path))


def decoded(messages) -> list[dict]:
    """The records the messages carry."""
    return [orjson.loads(message.value()) for message in messages]


class TestKafkaSinkConformance(SinkConformance):
    """The shared sink conformance suite, run on the kafka sink against a real broker."""

    @pytest.fixture(autouse=True)
    def _broker(self, kafka_broker):
        self.broker = kafka_broker

    def make_sink(self, tmp_path):
        """A kafka sink producing to a topic of its own (same tmp_path, same topic)."""
        return make_kafka_sink(self.broker.bootstrap, tmp_path, topic=f"conformance-{tmp_path.name}")

    def stored_records(self, sink):
        """Everything on the sink's topic."""
        return decoded(self.broker.read_topic(sink.topic))


def test_registers_through_the_hook():
    """register_sinks registers KafkaSink, type name ``kafka``."""
    registered = []
    register_sinks(registered.append)
    assert registered == [KafkaSink]
    assert KafkaSink.type_name == "kafka"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers is required"),
        ({"topic": ""}, "topic must be a topic name"),
        ({"flush_timeout": 0}, "flush_timeout must be a positive number"),
        ({"producer": {"acks": "1"}}, "producer acks must stay 'all'"),
        ({"producer": {"enable.idempotence": False}}, "producer enable.idempotence must stay True"),
        ({"partitions": 3}, "unknown option(s) partitions"),
    ],
)
def test_invalid_options_are_refused(tmp_path, options, message):
    """Bad options fail when the sink is made, naming the sink and the option."""
    with pytest.raises(ValueError) as error:
        KafkaSink("stream", {"bootstrap_servers": "127.0.0.1:9", **options}, SinkContext(data_dir=tmp_path))
    assert message in str(error.value) and "stream" in str(error.value)


def test_producer_guarantees_and_secrets(tmp_path):
    """The producer is idempotent with acks=all; extra settings pass through, secrets revealed only there."""
    from cortex.config import Secret

    sink = make_kafka_sink("127.0.0.1:9", tmp_path, producer={"sasl.password": Secret("pw", "$X"), "linger.ms": 20})
    assert sink.producer_config["enable.idempotence"] is True
    assert sink.producer_config["acks"] == "all"
    assert sink.producer_config["linger.ms"] == 20
    assert sink.producer_config["sasl.password"] == "pw"
    assert "pw" not in orjson.dumps(sink.describe()).decode()


def test_keys_headers_and_per_device_order(kafka_broker, tmp_path):
    """One device's records share a key and a partition and keep queue order; headers name the org."""
    topic = "ordering"
    kafka_broker.create_topic(topic, partitions=4)
    sink = make_kafka_sink(kafka_broker.bootstrap, tmp_path, topic=topic)
    written = []
    sink.open()
    try:
        for _ in range(10):
            seq = next_seq()
            batch = [make_record("track", "event", seq=seq, event_index=i, device_tag=f"dev-{i % 6}")
                     for i in range(12)]
            sink.write(batch)
            written += batch
    finally:
        sink.close()
    messages = kafka_broker.read_topic(topic)
    assert sorted(r["id"] for r in decoded(messages)) == sorted(r["id"] for r in written)
    partitions, order = defaultdict(set), defaultdict(list)
    for message in messages:
        record = orjson.loads(message.value())
        assert message.key() == message_key(record)
        assert dict(message.headers())["org"] == record["org"].encode()
        partitions[message.key()].add(message.partition())
        order[message.key()].append((message.offset(), record["seq"], record["event_index"]))
    assert all(len(p) == 1 for p in partitions.values()), "a device's records spread over partitions"
    assert len({next(iter(p)) for p in partitions.values()}) > 1, "every device hashed to one partition"
    for key, sent in order.items():
        by_offset = [(seq, index) for _, seq, index in sorted(sent)]
        assert by_offset == sorted(by_offset), f"{key!r}: records out of order"


def test_topic_per_org(kafka_broker, tmp_path):
    """A topic template with {org} sends each org's records to its own topic."""
    sink = make_kafka_sink(kafka_broker.bootstrap, tmp_path, topic="perorg-{org}")
    acme, globex = sample_records(org="acme"), sample_records(org="globex")
    sink.open()
    try:
        sink.write(acme + globex)
    finally:
        sink.close()
    assert sorted(r["id"] for r in decoded(kafka_broker.read_topic("perorg-acme"))) == sorted(r["id"] for r in acme)
    assert sorted(r["id"] for r in decoded(kafka_broker.read_topic("perorg-globex"))) == sorted(
        r["id"] for r in globex)


def test_unreachable_broker_fails_the_write(make_kafka_broker, tmp_path):
    """With no broker, write raises (so the cursor stays) instead of returning."""
    broker = make_kafka_broker()
    sink = make_kafka_sink(broker.bootstrap, tmp_path, flush_timeout=1.5)
    sink.open()
    try:
        with pytest.raises(Exception, match="not acknowledged"):
            sink.write(sample_records())
    finally:
        sink.close()


def _post(cortex, bundles: int, tag: str) -> None:
    for bundle in range(bundles):
        # each event an index of its own: bundles of one device can be posted within the same
        # millisecond, and would then be retries of each other
        events = [{"type": "event", "event_datetime": iso(), "event_index": bundle * 5 + i, "kingdom": tag}
                  for i in range(5)]
        response = cortex.post(cortex.bundle(events, device_tag=f"{tag}-{bundle % 3}"))
        assert response.status_code == 200, response.data


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_broker_down_then_back_loses_nothing(make_kafka_broker, make_cortex):
    """Broker down: the cursor does not move and nothing is dead-lettered; back: everything arrives."""
    broker = make_kafka_broker()
    cortex = make_cortex(
        sinks={"stream": {"type": "kafka", "bootstrap_servers": broker.bootstrap, "topic": "events",
                          "flush_timeout": 1.5}},
        dispatcher={"retry_initial": 0.1, "retry_max": 0.5, "batch_size": 20, "embedded": False},
    )
    queue = cortex.state.queue
    broker.start()
    _post(cortex, 4, "before")
    dispatcher = Dispatcher(cortex.state)
    dispatcher.start()
    try:
        _wait(lambda: all(runner.caught_up() for runner in dispatcher.runners), 30, "the first events were not delivered")
        first = {r["id"] for r in decoded(broker.read_topic("events", at_least=20))}
        assert len(first) == 20
        broker.stop()
        cursor = queue.cursor("stream")
        _post(cortex, 8, "during")
        time.sleep(4)  # several flush timeouts and retries while the broker is gone
        assert queue.cursor("stream") == cursor, "the cursor moved while the broker was down"
        assert queue.dead_letters() == []
        broker.start()  # a new, empty broker on the same address
        _wait(lambda: all(runner.caught_up() for runner in dispatcher.runners), 60, "the events queued while down did not arrive")
        _post(cortex, 2, "after")
        _wait(lambda: all(runner.caught_up() for runner in dispatcher.runners), 30, "events after recovery did not arrive")
    finally:
        dispatcher.shutdown()
        dispatcher.join(20)
    ids_by_tag = defaultdict(set)
    for record in decoded(broker.read_topic("events", at_least=50)):
        ids_by_tag[record["kingdom"]].add(record["id"])
    # the restarted broker kept no topics: what it holds is what was queued while it was down, and after
    assert len(ids_by_tag["during"]) == 40 and len(ids_by_tag["after"]) == 10
    assert queue.dead_letters() == []
