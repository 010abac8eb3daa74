"""Several nodes on loopback: two ingest nodes and two workers on Kafka, the SQL sink on
PostgreSQL; one ingest node and one worker are killed with SIGKILL mid-run and restarted.
Every event answered 200 must be in PostgreSQL exactly once at the end."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest
import requests
import sqlalchemy as sa

from conftest import iso
from cortex.testing.cluster import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BUNDLES = 240
EVENTS_PER_BUNDLE = 5
DEVICES = 12


def cluster_config(bootstrap: str, redis_url: str, postgres_url: str, schema: str) -> dict:
    """The configuration every node shares."""
    name = uuid.uuid4().hex[:10]
    return {
        "control_db": f"{postgres_url}?options=-csearch_path%3D{schema}",
        "logging": {"level": "WARNING"},
        "queue": {
            "backend": "kafka",
            "kafka": {"bootstrap_servers": bootstrap, "topic": f"multinode-{name}", "group": f"multinode-{name}",
                      "partitions": 4, "ack_timeout": 10.0},
            "dedupe": {"backend": "redis", "url": redis_url, "prefix": f"multinode:{name}:"},
        },
        "dispatcher": {"embedded": False, "retry_initial": 0.2, "retry_max": 2.0},
        "sinks": {"sql": {"type": "sql", "url": postgres_url, "schema": schema}},
    }


class Loader:
    """Posts bundles across the ingest nodes as an SDK would: a bundle not answered 200 is
    sent again (same events), to the next node, until it is."""

    def __init__(self, nodes, api_key: str):
        self.nodes = nodes
        self.api_key = api_key
        self.accepted: set[str] = set()
        self.answers: dict[int, int] = {}
        self.accepted_by_node: dict[str, int] = {}
        self.retries = 0
        self.sent = 0
        self.lock = threading.Lock()

    def bundle(self, number: int) -> bytes:
        # event_index unique per device: bundles of one device sent within the same
        # millisecond would otherwise be retries of each other
        events = [{"type": "event", "event_datetime": iso(), "event_index": number * EVENTS_PER_BUNDLE + index,
                   "kingdom": f"b{number}-e{index}"} for index in range(EVENTS_PER_BUNDLE)]
        return orjson.dumps({"api_key": self.api_key, "app_ver": "1.0", "device_tag": f"dev-{number % DEVICES}",
                             "os": "android", "events": events})

    def send(self, number: int) -> None:
        body = self.bundle(number)
        attempt = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            node = self.nodes[(number + attempt) % len(self.nodes)]
            attempt += 1
            try:
                response = requests.post(f"{node.url}/demo/1/track?current_time={iso()}", data=body,
                                         headers={"Content-Type": "text/plain"}, timeout=15)
                status = response.status_code
            except requests.RequestException:
                status = 0
            with self.lock:
                self.sent += 1
                self.answers[status] = self.answers.get(status, 0) + 1
            if status == 200:
                with self.lock:
                    self.accepted_by_node[node.name] = self.accepted_by_node.get(node.name, 0) + 1
                    self.accepted.update(f"b{number}-e{i}" for i in range(EVENTS_PER_BUNDLE))
                return
            with self.lock:
                self.retries += 1
            time.sleep(0.2)
        raise AssertionError(f"bundle {number} was never answered 200")

    def run(self, numbers, progress: threading.Event | None = None, at: int = 0) -> None:
        for count, number in enumerate(numbers):
            self.send(number)
            if progress is not None and count == at:
                progress.set()


def rows_by_kingdom(postgres_url: str, schema: str) -> dict[str, int]:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            try:
                rows = conn.execute(sa.text(f'SELECT kingdom, count(*) FROM "{schema}".events GROUP BY kingdom'))
            except sa.exc.ProgrammingError:
                return {}
            return {kingdom: count for kingdom, count in rows}
    finally:
        engine.dispose()


def test_two_ingest_nodes_two_workers_survive_sigkill(tmp_path, kafka_broker, redis_url, postgres_url, pg_schema):
    """Load on two ingest nodes; SIGKILL one ingest node and one worker mid-run; restart them;
    every event answered 200 ends up in PostgreSQL exactly once."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{pg_schema}"'))
    engine.dispose()
    cluster = Cluster(tmp_path / "cluster", cluster_config(kafka_broker.bootstrap, redis_url, postgres_url, pg_schema))
    try:
        api_key = cluster.init()
        nodes = [cluster.ingest_node(workers=2), cluster.ingest_node(workers=2)]
        workers = [cluster.worker(), cluster.worker()]
        loader = Loader(nodes, api_key)
        halfway = threading.Event()
        threads = [
            threading.Thread(target=loader.run, args=(range(start, BUNDLES, 3),),
                             kwargs={"progress": halfway if start == 0 else None, "at": BUNDLES // 9})
            for start in range(3)
        ]
        for thread in threads:
            thread.start()
        assert halfway.wait(120), "the load did not get going"
        nodes[0].kill()
        workers[0].kill()
        time.sleep(2.0)
        workers[0].start()
        nodes[0].start().wait_ready()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads), "the load did not finish"
        assert len(loader.accepted) == BUNDLES * EVENTS_PER_BUNDLE
        assert all(loader.accepted_by_node.get(node.name, 0) > BUNDLES // 5 for node in nodes), \
            f"the load was not spread across the nodes: {loader.accepted_by_node}"

        deadline = time.monotonic() + 180
        while True:
            stored = rows_by_kingdom(postgres_url, pg_schema)
            if loader.accepted <= set(stored) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        missing = loader.accepted - set(stored)
        assert not missing, f"{len(missing)} events answered 200 are not in PostgreSQL, e.g. {sorted(missing)[:5]}"
        twice = {kingdom: count for kingdom, count in stored.items() if count != 1}
        assert not twice, f"events stored more than once: {dict(list(twice.items())[:5])}"
        assert set(stored) == loader.accepted, "PostgreSQL holds events nobody sent"
        assert all(process.alive() for process in nodes + workers), "a restarted process died"
    finally:
        cluster.stop()
