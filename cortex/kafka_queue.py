"""Kafka as the queue, for several ingest nodes and ``cortex worker`` processes.

With ``[queue] backend = "kafka"``:

* an ingest node looks the request's dedupe keys up (Redis, shared by every node; see
  :mod:`cortex.dedupe`), produces the new events as one message (the queue entry: shared
  fields once, then each record's own) keyed by ``org/app/device`` and waits for the broker's
  acknowledgement (idempotent producer, ``acks=all``) before it answers ``200``; then it
  remembers the keys.  A broker that does not acknowledge within ``ack_timeout`` makes the
  request a ``503`` with ``Retry-After``, and the SDK sends it again.
* the dispatcher of every ``cortex worker`` runs one consumer per sink, all the workers'
  consumers of one sink forming the consumer group ``{group}.{sink}``: each sink has its own
  committed offsets (its cursor), so a failing sink holds up nobody else, and the partitions
  are shared out between the workers.  A batch is enriched and written to the sink, and only
  then are its offsets committed: a worker killed in between leaves the batch to be consumed
  again (at least once; the SQL sink's writes are idempotent on the record's id).

What stays local to a node, in its own SQLite database in ``data_dir``: the ingest error log
and the per-org counters of the ingest node that took the request, and the dead letters of
the worker whose sink refused them (``cortex status``, ``errors`` and ``replay`` on that node).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Iterable

import orjson

from cortex.dispatcher import SinkRunner
from cortex.pid import current_pid
from cortex.queue import (
    ADD_TO_COUNTERS, COUNTS, Entry, QueueUnavailable, SQLiteQueue, Submission, expand, write_transaction,
)

log = logging.getLogger("cortex.queue.kafka")

__all__ = ["KafkaQueue", "KafkaSinkRunner"]


def _serve_callbacks(queue_ref: "weakref.ref[KafkaQueue]", producer) -> None:
    """Serve a producer's delivery reports while its queue uses it (and exists at all)."""
    while True:
        queue = queue_ref()
        if queue is None or queue._producer is not producer:
            return
        del queue  # hold no reference while waiting, so an unused queue can go
        producer.poll(0.1)


def _entry_key(submission: Submission) -> bytes:
    """One device's requests land in one partition, so its events stay in order."""
    shared = submission.shared or {}
    device = shared.get("device_tag") or shared.get("user_id") or ""
    if not device:
        for _, record in submission.accepted[:1] + submission.rejected[:1]:
            device = record.get("device_tag") or record.get("user_id") or ""
    return f"{submission.org}/{submission.app_id}/{device}".encode()


class KafkaQueue:
    """The queue backend on Kafka; the local SQLite queue keeps what is per node."""

    def __init__(self, config: dict):
        from cortex.config import ConfigError, reveal

        self.config = config
        settings = config["queue"]["kafka"]
        servers = reveal(settings["bootstrap_servers"])
        if not servers:
            raise ConfigError('queue.backend is "kafka" but queue.kafka.bootstrap_servers is empty; '
                              'set it, e.g. bootstrap_servers = "kafka-1:9092,kafka-2:9092"')
        self.bootstrap = str(servers)
        self.topic = settings["topic"]
        self.partitions = int(settings["partitions"])
        self.group = settings["group"]
        self.ack_timeout = float(settings["ack_timeout"])
        self.producer_settings = {str(k): reveal(v) for k, v in settings["producer"].items()}
        self.consumer_settings = {str(k): reveal(v) for k, v in settings["consumer"].items()}
        self.local = SQLiteQueue(config["queue"]["path"], config["queue"]["durability"])
        for module, what in (("confluent_kafka", 'queue.backend = "kafka"'),
                             ("redis", 'queue.dedupe.backend = "redis"')):
            if module == "redis" and config["queue"]["dedupe"]["backend"] != "redis":
                continue
            try:
                __import__(module)
            except ImportError:
                raise ConfigError(f"{what} needs the {module} package: pip install 'cortex[kafka]'") from None
        self._pid: int | None = None
        self._producer = None
        self._poller: threading.Thread | None = None
        self._dedupe = None
        self._topic_ready = False
        self._lock = threading.Lock()

    # --- set-up, per process (connections only after a fork) ---

    def create_schema(self) -> None:
        """The local database's tables (the topic is made on first use, after the fork)."""
        self.local.create_schema()

    def _check_fork(self) -> None:
        if self._pid != current_pid():
            self._pid = current_pid()
            self._producer = None
            self._poller = None
            self._dedupe = None
            self._topic_ready = False

    @property
    def dedupe(self):
        """This process's dedupe store (``[queue.dedupe]``)."""
        from cortex.dedupe import make_dedupe

        self._check_fork()
        if self._dedupe is None:
            self._dedupe = make_dedupe(self.config, self.local)
        return self._dedupe

    def ensure_topic(self) -> None:
        """Create the queue topic with ``partitions`` partitions unless it exists."""
        if self._topic_ready:
            return
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self._common_settings()})
        future = admin.create_topics([NewTopic(self.topic, self.partitions, 1)], request_timeout=self.ack_timeout)
        try:
            future[self.topic].result(self.ack_timeout)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        self._topic_ready = True

    def _common_settings(self) -> dict[str, Any]:
        """Security settings (``security.*``, ``sasl.*``, ``ssl.*``) shared by every client."""
        return {k: v for k, v in self.producer_settings.items() if k.split(".")[0] in ("security", "sasl", "ssl")}

    def producer(self):
        """This process's producer (idempotent, acks=all) and the thread that serves its callbacks."""
        self._check_fork()
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer({
                    "bootstrap.servers": self.bootstrap,
                    "linger.ms": 2,
                    "message.timeout.ms": int(self.ack_timeout * 1000),
                    # after a broker outage, ingest comes back within a second of the broker
                    "reconnect.backoff.max.ms": 1000,
                    **self.producer_settings,
                    "enable.idempotence": True,
                    "acks": "all",
                }, logger=log)
                producer = self._producer
                self._poller = threading.Thread(target=_serve_callbacks, args=(weakref.ref(self), producer),
                                                name="cortex-kafka-queue-poll", daemon=True)
                self._poller.start()
            return self._producer

    # --- ingest ---

    def submit(self, submission: Submission) -> Submission:
        """Produce a request's new records and wait for the broker's acknowledgement.

        Records whose dedupe key is remembered are counted as duplicates and not produced.
        Raises :class:`QueueUnavailable` when the broker (or Redis) does not answer in time.
        """
        keyed = submission.accepted + submission.rejected
        try:
            seen = self.dedupe.seen([key for key, _ in keyed])
        except Exception as error:  # noqa: BLE001 - the dedupe store is down: retry later
            raise QueueUnavailable(f"the dedupe store cannot be reached: {error}") from None
        records = [record for key, record in submission.accepted if key not in seen]
        rejected = [record for key, record in submission.rejected if key not in seen]
        submission.accepted_count = len(records)
        submission.rejected_count = len(rejected)
        submission.duplicate_count = len(keyed) - len(records) - len(rejected)
        if records or rejected:
            value = orjson.dumps({"org": submission.org, "app_id": submission.app_id,
                                  "shared": submission.shared, "records": records, "rejected": rejected})
            self._produce_and_wait(_entry_key(submission), value)
            fresh = [key for key, _ in keyed if key not in seen]
            try:
                self.dedupe.remember(fresh)
            except Exception:  # noqa: BLE001 - the events are safe in Kafka; a retry is a duplicate at worst
                log.exception("could not remember %d dedupe keys; a retried request may be produced twice", len(fresh))
        self._record_locally(submission, rejected)
        return submission

    def _produce_and_wait(self, key: bytes, value: bytes) -> None:
        from confluent_kafka import KafkaException

        done = threading.Event()
        outcome: list[Any] = []

        def report(error, message) -> None:
            outcome.append(error)
            done.set()

        try:
            self.ensure_topic()
            producer = self.producer()
            producer.produce(self.topic, value=value, key=key, on_delivery=report)
        except (KafkaException, BufferError, TimeoutError) as error:
            raise QueueUnavailable(f"Kafka cannot take events now: {type(error).__name__} {error}") from None
        if not done.wait(self.ack_timeout + 1.0):
            raise QueueUnavailable(f"Kafka did not acknowledge within {self.ack_timeout}s")
        error = outcome[0]
        if error is not None:
            if error.fatal():
                with self._lock:
                    self._producer = None  # start a new idempotent producer next time
            raise QueueUnavailable(f"Kafka did not take the events: {error}")

    def _record_locally(self, submission: Submission, rejected: list[dict]) -> None:
        """This node's ingest error log and counters (best effort: the events are in Kafka)."""
        rows = [(submission.org, submission.app_id, r["id"], r["received_at"], orjson.dumps(r)) for r in rejected]
        counts = [(submission.org, name, getattr(submission, f"{name}_count"))
                  for name in COUNTS if getattr(submission, f"{name}_count")]
        if not rows and not counts:
            return
        try:
            conn = self.local.writer
            with self.local.write_lock(), write_transaction(conn):
                if rows:
                    conn.executemany("INSERT INTO ingest_errors (org, app_id, record_id, received_at, record) "
                                     "VALUES (?,?,?,?,?)", rows)
                conn.executemany(ADD_TO_COUNTERS, counts)
        except Exception:  # noqa: BLE001
            log.exception("could not record the ingest log and counters locally")

    # --- dispatch ---

    @property
    def sink_runner_class(self):
        """The dispatcher runs :class:`KafkaSinkRunner` per sink with this backend."""
        return KafkaSinkRunner

    def consumer(self, sink: str):
        """A new consumer of the queue topic in the sink's group, offsets committed by hand."""
        from confluent_kafka import Consumer

        self.ensure_topic()
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"{self.group}.{sink}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            **self._common_settings(),
            **self.consumer_settings,
        })
        consumer.subscribe([self.topic])
        return consumer

    def lag(self, sink: str) -> int:
        """Messages of the queue topic the sink's group has not committed (-1: unknown)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{self.group}.{sink}",
                             "enable.auto.commit": False, **self._common_settings()})
        try:
            metadata = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                return 0
            partitions = [TopicPartition(self.topic, p) for p in metadata.partitions]
            committed = consumer.committed(partitions, timeout=5)
            lag = 0
            for position in committed:
                low, high = consumer.get_watermark_offsets(position, timeout=5)
                start = position.offset if position.offset >= 0 else low
                lag += max(0, high - start)
            return lag
        except Exception:  # noqa: BLE001 - status must not fail because Kafka is away
            return -1
        finally:
            consumer.close()

    # the SQLite queue's dispatch interface, for the dispatcher's housekeeping and tools
    def dead_letter(self, sink: str, records: Iterable[dict], error: str) -> int:
        """Keep records a sink refused for good, in this node's database."""
        return self.local.dead_letter(sink, records, error)

    def dead_letters(self, sink: str | None = None, include_replayed: bool = False, limit: int = 10**9) -> list[dict]:
        """This node's dead letters."""
        return self.local.dead_letters(sink, include_replayed, limit)

    def mark_dead_letters_replayed(self, ids: list[int]) -> None:
        """See :meth:`SQLiteQueue.mark_dead_letters_replayed`."""
        self.local.mark_dead_letters_replayed(ids)

    def ingest_errors(self, org: str | None = None, include_replayed: bool = False, limit: int = 1000) -> list[dict]:
        """This node's ingest error log."""
        return self.local.ingest_errors(org, include_replayed, limit)

    def mark_errors_replayed(self, ids: list[int]) -> None:
        """See :meth:`SQLiteQueue.mark_errors_replayed`."""
        self.local.mark_errors_replayed(ids)

    def counters(self) -> dict[str, dict[str, int]]:
        """This node's per-org counters."""
        return self.local.counters()

    def fold_counts(self) -> int:
        """The counters are written as requests are answered; nothing to fold."""
        return 0

    def prune(self, sinks: list[str], batch: int = 5000) -> int:
        """Kafka's retention removes consumed messages; nothing to do."""
        return 0

    def prune_dedupe(self, window_seconds: float, batch: int = 20000) -> int:
        """Expired dedupe keys go (Redis expires its own)."""
        return self.dedupe.prune()

    def checkpoint(self) -> None:
        """Checkpoint the local database."""
        self.local.checkpoint()

    def depth(self) -> dict[str, int]:
        """Kafka holds the queue; the local database holds none of it."""
        return {"entries": 0, "records": 0}

    def sink_status(self, sinks: list[str]) -> dict[str, dict[str, int]]:
        """Per sink: messages not yet committed by its group (``pending``) and local dead letters."""
        status = {}
        for sink in sinks:
            dead = len(self.local.dead_letters(sink))
            status[sink] = {"cursor": -1, "delivered": -1, "pending": self.lag(sink), "dead_lettered": dead}
        return status

    def iter_all(self):
        """Nothing is queued locally."""
        return iter(())

    def __getattr__(self, name: str) -> Any:
        # what per-node stores built on the queue database use (``reader``, ``write_lock``,
        # ``path`` ...) is the local SQLite queue's
        if name.startswith("__") or name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)

    def close(self) -> None:
        """Flush the producer and close local connections."""
        producer, self._producer = self._producer, None
        if producer is not None and self._pid == current_pid():
            producer.flush(self.ack_timeout)
        self.local.close()


class _Seq:
    """Sequence numbers for records read from Kafka: increasing across batches and restarts.

    Sinks rely on ``seq`` growing in delivery order; offsets only grow per partition, so the
    number is microseconds since the epoch when the batch was read (one per batch).
    """

    def __init__(self):
        self.last = 0

    def next_base(self, count: int) -> int:
        base = max(time.time_ns() // 1000, self.last + 1)
        self.last = base + count
        return base


class KafkaSinkRunner(SinkRunner):
    """Delivers the Kafka queue to one sink: consume a batch, write it, then commit offsets."""

    def __init__(self, state, sink, enrichers, stop, enriched=None):
        super().__init__(state, sink, enrichers, stop, enriched)
        self.consumer = None
        self.seq = _Seq()
        self.idle = False

    def open(self) -> None:
        """Open the sink and enrichers, then join the sink's consumer group."""
        super().open()
        while self.consumer is None and not self.stop.is_set():
            try:
                self.consumer = self.queue.consumer(self.sink.name)
            except Exception:  # noqa: BLE001 - the broker is away: wait for it
                log.exception("sink %s: cannot reach Kafka; retrying", self.sink.name)
                self.stop.wait(self.retry_initial)

    def close(self) -> None:
        """Leave the group (uncommitted messages go to another worker) and close the sink."""
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the consumer of sink %s failed", self.sink.name)
            self.consumer = None
        super().close()

    def step(self) -> int:
        """Deliver one batch from the assigned partitions; returns how many records it held."""
        if self.consumer is None:
            self.open()
            if self.consumer is None:
                return 0
        self.run_erasures()
        self.run_retention()
        messages = self.consumer.consume(num_messages=max(1, self.batch_size // 10), timeout=self.poll_interval)
        entries = []
        for message in messages:
            if message.error():
                log.warning("sink %s: Kafka: %s", self.sink.name, message.error())
                continue
            value = orjson.loads(message.value())
            # the message's place in the topic: the same for every sink's consumer, so the
            # enrichment shared between sinks is done once per message
            position = (message.partition() << 40) | message.offset()
            entries.append(Entry(position, value["org"], value["app_id"], expand(value)))
        if not entries:
            self.idle = not messages
            return 0
        self.idle = False
        kept = self.records_to_deliver(entries)
        # offsets grow only per partition; sinks want seq to grow from batch to batch
        seq = self.seq.next_base(1)
        for record in kept:
            record["seq"] = seq
        if kept:
            self.deliver(kept)
        try:
            self.consumer.commit(asynchronous=False)
        except Exception as error:  # noqa: BLE001 - e.g. the partitions moved to another worker
            # the batch is delivered; whoever owns the partitions now delivers it again
            log.warning("sink %s: committing offsets failed (%s); the batch may be delivered again",
                        self.sink.name, error)
        return sum(len(entry.records) for entry in entries)

    def caught_up(self) -> bool:
        """True when the last poll found nothing and the group has committed everything."""
        return self.idle and self.queue.lag(self.sink.name) == 0

