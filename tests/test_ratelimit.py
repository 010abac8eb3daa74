"""Rate limits per API key and per client address, on both ingest APIs, in memory and Redis."""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from conftest import ServerProcess, iso
from cortex.app import create_app
from cortex.config import ConfigError
from cortex.ratelimit import per_worker_warning

REDIS_URI = "redis://127.0.0.1:6379"


def dc_bundle(cortex, index: int) -> dict:
    return cortex.bundle([{"type": "event", "event_datetime": iso(), "event_index": index, "kingdom": "k"}])


def generic(cortex, event_id: str, remote_addr: str = "127.0.0.1"):
    return cortex.client.post("/api/v1/interactions", data=orjson.dumps({"event_type": "click", "event_id": event_id}),
                              headers={"X-API-Key": cortex.api_key}, environ_base={"REMOTE_ADDR": remote_addr})


def test_data_cortex_bundles_over_the_key_limit_get_429_and_are_not_queued(make_cortex):
    cortex = make_cortex(rate_limits={"per_key": "3/hour", "per_ip": ""})
    answers = [cortex.post(dc_bundle(cortex, i)) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert answers[0].data == b"OK" and "RateLimit-Limit" not in answers[0].headers  # wire contract unchanged
    refused = answers[3]
    assert refused.headers["Content-Type"] == "text/plain"
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # the browser SDK can see the 429
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) == int(refused.headers["Retry-After"])
    cortex.deliver()
    assert cortex.sql("SELECT count(*) FROM events") == [(3,)]


def test_generic_answers_carry_ratelimit_headers_and_429_is_json(make_cortex):
    cortex = make_cortex(rate_limits={"per_key": "2/hour", "per_ip": "100/hour"})
    first, second, third = (generic(cortex, f"e{i}") for i in range(3))
    assert first.status_code == 200
    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
    assert second.headers["RateLimit-Remaining"] == "0"
    assert third.status_code == 429
    assert third.json["status"] == 429 and "rate limit" in third.json["error"]
    assert int(third.headers["Retry-After"]) > 0
    # a retry after the limit lets up is safe: the event_id makes it idempotent
    cortex.state.rate_limits.reset()
    again = generic(cortex, "e1")
    assert again.json["events"][0]["status"] == "duplicate"


def test_the_address_limit_counts_each_client_address_separately(make_cortex):
    cortex = make_cortex(rate_limits={"per_key": "", "per_ip": "2/hour"})
    statuses = {addr: [generic(cortex, f"{addr}-{i}", addr).status_code for i in range(3)]
                for addr in ("192.0.2.1", "192.0.2.2")}
    assert statuses == {"192.0.2.1": [200, 200, 429], "192.0.2.2": [200, 200, 429]}


def test_an_app_can_have_its_own_limits(make_cortex):
    cortex = make_cortex(rate_limits={"per_key": "100/hour", "per_ip": ""})
    result = cortex.cli("apps", "set-limits", "demo", "default", "--per-key", "1/hour")
    assert result.exit_code == 0, result.output
    assert "per key 1/hour" in result.output
    cortex.state.keys.clear()
    assert [generic(cortex, f"x{i}").status_code for i in range(2)] == [200, 429]
    # another app of the org keeps the default
    cortex.state.control.create_app("demo", "web")
    key, _ = cortex.state.control.create_key("demo", "web")
    for i in range(3):
        response = cortex.client.post("/api/v1/interactions", data=b'{"event_type": "click"}', headers={"X-API-Key": key})
        assert response.status_code == 200
    # "none" lifts the app's limit; "default" brings the server's back
    cortex.cli("apps", "set-limits", "demo", "default", "--per-key", "none")
    cortex.state.keys.clear()
    assert generic(cortex, "x9").status_code == 200
    assert cortex.cli("apps", "set-limits", "demo", "default", "--per-key", "lots").exit_code != 0
    listed = orjson.loads(cortex.cli("apps", "list", "--json").output)
    assert {a["name"]: a["rate_limit_per_key"] for a in listed} == {"default": "", "web": None}


def test_a_control_database_of_an_older_cortex_gets_the_new_columns(tmp_path):
    import sqlalchemy as sa

    db = tmp_path / "control.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE apps (id INTEGER PRIMARY KEY, org_id INTEGER NOT NULL, "
                             "name VARCHAR(64) NOT NULL, strict BOOLEAN, created_at DATETIME NOT NULL)"))
    engine.dispose()
    create_app(overrides={"data_dir": str(tmp_path), "control_db": f"sqlite:///{db}"})
    columns = {c["name"] for c in sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_columns("apps")}
    assert {"rate_limit_per_key", "rate_limit_per_ip"} <= columns


def test_unreadable_limits_and_storage_are_startup_errors(tmp_path):
    with pytest.raises(ConfigError, match="rate_limits.per_key"):
        create_app(overrides={"data_dir": str(tmp_path), "rate_limits": {"per_key": "fast"}})
    with pytest.raises(ConfigError, match="rate_limits.storage_uri"):
        create_app(overrides={"data_dir": str(tmp_path), "rate_limits": {"storage_uri": "carrier-pigeon://x"}})


def test_a_limit_storage_that_is_down_lets_requests_through(make_cortex):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    cortex = make_cortex(rate_limits={"storage_uri": f"redis://127.0.0.1:{port}", "per_key": "1/hour"})
    assert [cortex.post(dc_bundle(cortex, i)).status_code for i in range(3)] == [200, 200, 200]


def test_memory_storage_with_several_workers_is_warned_about():
    settings = {"enabled": True, "storage_uri": "memory://"}
    assert "per worker" in per_worker_warning(settings, 4)
    assert per_worker_warning(settings, 1) is None
    assert per_worker_warning({**settings, "storage_uri": REDIS_URI}, 4) is None


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _hammer(server: ServerProcess, count: int) -> list[int]:
    import requests

    def send(i: int) -> int:
        body = {"api_key": server.api_key, "device_tag": "d", "events": [
            {"type": "event", "event_datetime": iso(), "event_index": i}]}
        # a new connection per request, several at once: both sync workers must serve
        return requests.post(f"{server.url}/demo/1/track", data=orjson.dumps(body), timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, range(count)))


@pytest.mark.slow
def test_two_gunicorn_workers_share_one_limit_in_redis(tmp_path):
    if not redis_available():
        from conftest import need_service

        need_service("Redis at 127.0.0.1:6379 is not reachable")
    prefix = f"cortex-test-{uuid.uuid4().hex[:8]}"
    limited = {"CORTEX_RATE_LIMITS__PER_KEY": "10/hour", "CORTEX_RATE_LIMITS__PER_IP": "",
               "CORTEX_RATE_LIMITS__KEY_PREFIX": prefix}
    (tmp_path / "memory").mkdir()
    (tmp_path / "redis").mkdir()
    memory = ServerProcess(tmp_path / "memory" / "data", workers=2, env=limited)
    try:
        time.sleep(0.5)
        log = (memory.data_dir / "server.log").read_text()
        assert "rate limits are counted per worker" in log
        per_worker = _hammer(memory, 60)
    finally:
        memory.stop()
    # each worker counts alone: more than the limit gets through
    assert per_worker.count(200) > 10 and set(per_worker) == {200, 429}

    server = ServerProcess(tmp_path / "redis" / "data", workers=2,
                           env={**limited, "CORTEX_RATE_LIMITS__STORAGE_URI": REDIS_URI})
    try:
        assert "counted per worker" not in (server.data_dir / "server.log").read_text()
        shared = _hammer(server, 60)
        assert shared.count(200) == 10 and shared.count(429) == 50
        server.wait_for_delivery()
        assert server.sql_rows("SELECT count(*) FROM events") == [(10,)]
    finally:
        server.stop()


def test_the_memory_storage_expires_counters_without_starting_threads():
    import threading

    from cortex.ratelimit_storage import SweepingMemoryStorage
    from limits import parse
    from limits.strategies import FixedWindowRateLimiter

    storage = SweepingMemoryStorage("cortex-memory://")
    limiter = FixedWindowRateLimiter(storage)
    item = parse("2/second")
    threads = threading.active_count()
    assert [limiter.hit(item, "ip", str(i % 50)) for i in range(150)].count(False) == 50
    assert threading.active_count() <= threads
    time.sleep(1.1)
    assert limiter.hit(item, "ip", "0")  # a new window for a client that comes back
    storage._next_sweep = 0  # the sweep is due: counters of quiet clients are dropped
    limiter.hit(item, "ip", "0")
    assert len(storage.storage) == 1


def test_the_memory_storage_count_is_its_incr():
    from cortex.ratelimit_storage import SweepingMemoryStorage

    storage = SweepingMemoryStorage("cortex-memory://")
    assert [storage.count("a", 1) for _ in range(3)] == [1, 2, 3]
    assert storage.incr("a", 1) == 4 and storage.get("a") == 4  # one counter, either way
    assert storage.count("b", 60) == 1
    assert storage.get_expiry("b") == pytest.approx(time.time() + 60, abs=1)
    time.sleep(1.1)
    assert storage.count("a", 1) == 1  # the window ended: a new one starts
    assert storage.get("b") == 1
    storage.clear("b")
    assert storage.count("b", 60) == 1


def test_a_client_is_let_through_again_when_its_window_ends(make_cortex):
    cortex = make_cortex(rate_limits={"per_key": "", "per_ip": "2/second"})
    answers = [cortex.post(dc_bundle(cortex, i)).status_code for i in range(3)]
    time.sleep(1.1)
    answers += [cortex.post(dc_bundle(cortex, i)).status_code for i in range(3, 6)]
    assert answers == [200, 200, 429, 200, 200, 429]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_every_strategy_limits_with_the_memory_storage(make_cortex, strategy):
    cortex = make_cortex(rate_limits={"per_key": "3/hour", "per_ip": "", "strategy": strategy})
    assert [cortex.post(dc_bundle(cortex, i)).status_code for i in range(5)] == [200, 200, 200, 429, 429]


@pytest.mark.postgres
def test_a_postgresql_control_database_of_an_older_cortex_gets_the_new_columns(postgres_url, tmp_path):
    import sqlalchemy as sa

    name = f"cortex_control_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE orgs (id SERIAL PRIMARY KEY, slug VARCHAR(64) NOT NULL UNIQUE, "
                                 "name VARCHAR(200) NOT NULL, created_at TIMESTAMPTZ NOT NULL)"))
            conn.execute(sa.text("CREATE TABLE apps (id SERIAL PRIMARY KEY, org_id INTEGER NOT NULL REFERENCES orgs(id), "
                                 "name VARCHAR(64) NOT NULL, strict BOOLEAN, created_at TIMESTAMPTZ NOT NULL)"))
            conn.execute(sa.text("INSERT INTO orgs (slug, name, created_at) VALUES ('demo', 'demo', now())"))
            conn.execute(sa.text("INSERT INTO apps (org_id, name, created_at) VALUES (1, 'default', now())"))
        engine.dispose()
        app = create_app(overrides={"data_dir": str(tmp_path), "control_db": url, "logging": {"level": "WARNING"}})
        control = app.extensions["cortex"].control
        control.set_app_rate_limits("demo", "default", per_key="7/minute")
        assert [(a["name"], a["rate_limit_per_key"]) for a in control.list_apps()] == [("default", "7/minute")]
        control.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
