"""The ``kafka`` sink: records as JSON messages on Kafka topics, acknowledged by all replicas.

Configuration::

    [sinks.stream]
    type = "kafka"
    bootstrap_servers = "kafka-1:9092,kafka-2:9092"
    topic = "cortex-events"           # or a template with {org}: "cortex-{org}", a topic per org
    flush_timeout = 30.0              # seconds a batch may take to be acknowledged
    [sinks.stream.producer]           # any librdkafka producer setting; values may be secrets
    "security.protocol" = "SASL_SSL"
    "sasl.password" = { env = "KAFKA_PASSWORD" }

Each record is one message: the value is the record as JSON (without ``context``); the key
is ``org/app/device`` (the Data Cortex ``device_tag``, else the generic API's ``user_id``,
else the record's id), so one device's events land in one partition in queue order; the
headers hold ``org``, ``kind`` and ``type``.

The producer is idempotent with ``acks=all``: a retry inside the client never duplicates
or reorders.  :meth:`KafkaSink.write` returns only when the broker has acknowledged every
message of the batch, so the dispatcher's cursor moves only then; if some are not
acknowledged within ``flush_timeout`` the write fails and the dispatcher retries it (the
messages already acknowledged are remembered and not produced again).  Delivery is at
least once across restarts; consumers dedupe on the record's ``id`` if they must.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from decimal import Decimal
from typing import Any, ClassVar, Mapping

import orjson

from cortex.config import reveal
from cortex.options import refuse_unknown_options
from cortex.sinks import PermanentError, Sink, SinkContext

__all__ = ["KafkaSink", "KafkaDeliveryError", "message_key"]

_DUMPS_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
_OPTIONS = frozenset({"bootstrap_servers", "topic", "flush_timeout", "producer"})
_REMEMBERED_IDS = 200_000
#: producer settings Cortex's guarantees rest on; configuration may not loosen them
_REQUIRED_PRODUCER = {"enable.idempotence": True, "acks": "all"}


class KafkaDeliveryError(Exception):
    """Some messages of a batch were not acknowledged in time (broker down, say)."""


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def message_key(record: Mapping[str, Any]) -> bytes:
    """The partitioning key: one device (or user) of one app of one org."""
    who = record.get("device_tag") or record.get("user_id") or record.get("id")
    return f"{record.get('org', '')}/{record.get('app', '')}/{who}".encode()


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record as the JSON a message carries (without ``context``)."""
    return orjson.dumps(
        {k: v for k, v in record.items() if k != "context"}, default=_json_default, option=_DUMPS_OPTIONS
    )


class KafkaSink(Sink):
    """Produces each record as a JSON message, keyed by device, and waits for the acks."""

    type_name: ClassVar[str] = "kafka"
    description: ClassVar[str] = "JSON messages on Kafka topics (idempotent producer, acks=all, keyed by device)"
    idempotent: ClassVar[bool] = False

    def __init__(self, name: str, options: Mapping[str, Any], context: SinkContext):
        super().__init__(name, options, context)
        refuse_unknown_options(self.options, _OPTIONS, f"sink {name!r} (kafka): ")
        servers = reveal(self.options.get("bootstrap_servers"))
        if not isinstance(servers, str) or not servers.strip():
            raise ValueError(f'sink {name!r} (kafka): bootstrap_servers is required, e.g. "127.0.0.1:9092"')
        self.topic = self.options.get("topic", "cortex-events")
        if not isinstance(self.topic, str) or not self.topic:
            raise ValueError(f"sink {name!r} (kafka): topic must be a topic name or a template with {{org}}")
        self.flush_timeout = self.options.get("flush_timeout", 30.0)
        if isinstance(self.flush_timeout, bool) or not isinstance(self.flush_timeout, (int, float)) \
                or self.flush_timeout <= 0:
            raise ValueError(f"sink {name!r} (kafka): flush_timeout must be a positive number of seconds")
        extra = self.options.get("producer", {})
        if not isinstance(extra, Mapping):
            raise ValueError(f"sink {name!r} (kafka): producer must be a table of librdkafka settings")
        for key, value in _REQUIRED_PRODUCER.items():
            if key in extra and extra[key] != value:
                raise ValueError(f"sink {name!r} (kafka): producer {key} must stay {value!r}")
        timeout_ms = int(self.flush_timeout * 1000)
        self.producer_config: dict[str, Any] = {
            "bootstrap.servers": servers,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": timeout_ms,
            "socket.keepalive.enable": True,
            **{str(k): reveal(v) for k, v in extra.items()},
            **_REQUIRED_PRODUCER,
        }
        self._producer = None
        self._acknowledged: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def topic_for(self, record: Mapping[str, Any]) -> str:
        """The topic a record goes to (the template filled with its org)."""
        return self.topic.format(org=record.get("org", "")) if "{org}" in self.topic else self.topic

    # --- lifecycle ---

    def open(self) -> None:
        """Make the producer (it connects in the background; a broker that is down is no error)."""
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self.producer_config, logger=self.context.logger)

    def close(self) -> None:
        """Deliver what is still buffered (for at most 5 s) and drop the producer."""
        if self._producer is not None:
            # what is left unacknowledged belongs to a batch whose cursor did not move
            remaining = self._producer.flush(min(self.flush_timeout, 5.0))
            if remaining:
                self.context.logger.warning(
                    "sink %s: %d messages unacknowledged at close; the dispatcher re-sends their batch",
                    self.name, remaining,
                )
            self._producer = None

    def describe(self) -> dict[str, Any]:
        """Name, type, topic and the brokers' addresses (no credentials)."""
        return {
            "name": self.name,
            "type": self.type_name,
            "topic": self.topic,
            "bootstrap_servers": str(self.producer_config["bootstrap.servers"]),
        }

    # --- writing ---

    def write(self, records: list[dict[str, Any]]) -> None:
        """Produce every record not yet acknowledged and wait until the broker has them all."""
        from confluent_kafka import KafkaException

        if self._producer is None:
            self.open()
        with self._lock:
            pending = [r for r in records if str(r.get("id")) not in self._acknowledged]
        if not pending:
            return
        failures: list[Any] = []
        delivered: list[str] = []

        def report(error, message, record_id: str) -> None:
            if error is None:
                delivered.append(record_id)
            else:
                failures.append(error)

        producer = self._producer
        for record in pending:
            record_id = str(record.get("id"))
            headers = [("org", str(record.get("org", ""))), ("kind", str(record.get("kind", ""))),
                       ("type", str(record.get("type", "")))]
            while True:
                try:
                    producer.produce(
                        self.topic_for(record), value=encode_record(record), key=message_key(record),
                        headers=headers, on_delivery=lambda e, m, _id=record_id: report(e, m, _id),
                    )
                    break
                except BufferError:
                    # the client's buffer is full: let it send, then produce again
                    producer.poll(0.5)
                except KafkaException as error:
                    self._drop_if_fatal(error.args[0])
                    raise self._classify(error.args[0]) from None
        remaining = producer.flush(self.flush_timeout)
        with self._lock:
            for record_id in delivered:
                self._acknowledged[record_id] = None
            while len(self._acknowledged) > _REMEMBERED_IDS:
                self._acknowledged.popitem(last=False)
        if failures or remaining:
            first = failures[0] if failures else None
            if remaining:
                producer.purge(in_queue=True)
            for error in failures:
                self._drop_if_fatal(error)
            classified = [self._classify(error) for error in failures]
            if classified and not remaining and all(isinstance(e, PermanentError) for e in classified):
                # the dispatcher narrows the batch down; what was acknowledged is not re-sent
                raise classified[0]
            raise KafkaDeliveryError(
                f"{len(pending) - len(delivered)} of {len(pending)} messages not acknowledged "
                f"by {self.producer_config['bootstrap.servers']} within {self.flush_timeout}s"
                + (f" (first error: {first})" if first is not None else "")
            )

    def _drop_if_fatal(self, error) -> None:
        """After a fatal error (an idempotent producer whose broker lost its state, say) the
        producer cannot go on: drop it, so the next write starts a new one."""
        from confluent_kafka import KafkaError

        if (error.fatal() or error.code() == KafkaError._FATAL) and self._producer is not None:
            self.context.logger.warning("sink %s: Kafka producer failed for good (%s); starting a new one",
                                        self.name, error)
            try:
                self._producer.purge()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass
            self._producer = None

    @staticmethod
    def _classify(error) -> Exception:
        """A Kafka error as PermanentError (the data or topic is refused) or a temporary one."""
        from confluent_kafka import KafkaError

        permanent = {
            KafkaError.MSG_SIZE_TOO_LARGE,
            KafkaError.INVALID_MSG_SIZE,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.INVALID_RECORD,
        }
        if error.code() in permanent:
            return PermanentError(f"Kafka refused the message: {error}")
        return KafkaDeliveryError(f"Kafka: {error}")
