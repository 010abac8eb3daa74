"""Nothing answered 200 is lost or stored twice, whatever process is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
import requests

from conftest import ServerProcess, iso

pytestmark = pytest.mark.slow


def bundle(key: str, device: str, size: int) -> bytes:
    events = [{"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "load"} for i in range(size)]
    return orjson.dumps({"api_key": key, "device_tag": device, "app_ver": "1", "events": events})


def count_rows(server, device_prefix: str) -> tuple[int, int]:
    rows = server.sql_rows(f"SELECT count(*), count(DISTINCT id) FROM events WHERE device_tag LIKE '{device_prefix}%'")
    return rows[0]


@pytest.mark.parametrize("ingest", ["sqlite", "lmdb"])
def test_gunicorn_worker_killed_under_load_loses_nothing_answered_200(tmp_path, ingest):
    server = ServerProcess(tmp_path / "server", workers=2, env={"CORTEX_QUEUE__INGEST": ingest})
    answered: list[str] = []
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        nonlocal failed
        session = requests.Session()
        sent = 0
        while not stop.is_set() and sent < 2000:
            device = f"dev-{number}-{sent}"
            sent += 1
            try:
                response = session.post(f"{server.url}/demo/1/track?current_time={iso()}",
                                        data=bundle(server.api_key, device, 10), timeout=10)
            except requests.RequestException:
                with lock:
                    failed += 1
                session = requests.Session()
                continue
            with lock:
                if response.status_code == 200:
                    answered.append(device)
                else:
                    failed += 1

    try:
        with ThreadPoolExecutor(4) as pool:
            for number in range(4):
                pool.submit(client, number)
            kills = 0
            for _ in range(3):
                time.sleep(1.0)
                pids = server.worker_pids()
                assert pids, "gunicorn has no workers"
                os.kill(pids[kills % len(pids)], signal.SIGKILL)
                kills += 1
            time.sleep(1.0)
            stop.set()
        server.wait_for_delivery(timeout=120)
        assert (server.data_dir / "queue.ingest.mdb").exists() == (ingest == "lmdb")
        stored = {row[0]: row[1] for row in server.sql_rows(
            "SELECT device_tag, count(*) FROM events WHERE kingdom = 'load' GROUP BY device_tag")}
        missing = [device for device in answered if stored.get(device) != 10]
        assert len(answered) > 100, f"the load barely ran: {len(answered)} answered, {failed} failed"
        assert missing == [], f"{len(missing)} bundles answered 200 are not (fully) stored"
        total, distinct = server.sql_rows("SELECT count(*), count(DISTINCT id) FROM events")[0]
        assert total == distinct
        # a bundle whose connection died may or may not have been stored, but never partly
        assert all(count == 10 for count in stored.values())
    finally:
        stop.set()
        server.stop()


def test_dispatcher_killed_mid_batch_loses_and_duplicates_nothing(make_cortex):
    cortex = make_cortex(
        dispatcher={"embedded": False, "batch_size": 500},
        sinks={"sql": {"type": "sql"}, "archive": {"type": "file"}},
    )
    total = 0
    for device in range(200):
        events = [{"type": "event", "event_datetime": iso(), "event_index": i} for i in range(100)]
        assert cortex.post(cortex.bundle(events, device_tag=f"d{device}")).status_code == 200
        total += 100
    env = {**os.environ, "CORTEX_DATA_DIR": str(cortex.data_dir), "CORTEX_DISPATCHER__EMBEDDED": "false",
           "CORTEX_DISPATCHER__BATCH_SIZE": "500", "CORTEX_LOGGING__LEVEL": "WARNING",
           "CORTEX_SINKS__ARCHIVE__TYPE": "file"}
    def delivered() -> int:
        try:
            return cortex.sql("SELECT count(*) FROM events")[0][0]
        except Exception:  # the sink has not created its tables yet
            return 0

    progress = [0]
    for _ in range(3):
        worker = subprocess.Popen([sys.executable, "-m", "cortex", "worker"], env=env)
        try:
            # kill it as soon as it has delivered something more: mid-way through its work
            deadline = time.monotonic() + 30
            while delivered() == progress[-1] and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        progress.append(delivered())
    assert all(0 < delivered < total for delivered in progress[1:]), progress
    subprocess.run([sys.executable, "-m", "cortex", "worker", "--once"], env=env, check=True, timeout=300)
    assert cortex.sql("SELECT count(*), count(DISTINCT id) FROM events") == [(total, total)]
    lines = []
    for path in sorted((cortex.data_dir / "events").rglob("*.ndjson")):
        lines.extend(orjson.loads(line)["id"] for line in path.read_bytes().splitlines())
    assert len(lines) == total and len(set(lines)) == total, "the file sink is exactly-once in effect too"
