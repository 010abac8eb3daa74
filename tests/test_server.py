"""Cortex under gunicorn, over real sockets: chunked bodies, CORS, the embedded dispatcher."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest
import requests

from conftest import ServerProcess, free_port, iso

pytestmark = pytest.mark.slow


def test_chunked_body_without_content_length(cortex_server):
    body = orjson.dumps({"api_key": cortex_server.api_key, "device_tag": "chunky", "events": [
        {"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "chunked"} for i in range(50)]})

    def pieces():
        for start in range(0, len(body), 100):
            yield body[start:start + 100]

    # a generator body makes requests send Transfer-Encoding: chunked and no Content-Length
    response = requests.post(f"{cortex_server.url}/demo/1/track?current_time={iso()}", data=pieces(),
                             headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert (response.status_code, response.text, response.headers["Content-Type"]) == (200, "OK", "text/plain")
    cortex_server.wait_for_delivery()
    assert cortex_server.sql_rows("SELECT count(*) FROM events WHERE device_tag = 'chunky'") == [(50,)]


def test_preflight_and_cors_over_http(cortex_server):
    response = requests.options(f"{cortex_server.url}/demo/1/track", timeout=5, headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    forbidden = requests.post(f"{cortex_server.url}/demo/1/track", data=b'{"api_key": "x", "events": [{}]}',
                              headers={"Origin": "https://shop.example"}, timeout=5)
    assert forbidden.status_code == 403 and forbidden.headers["Access-Control-Allow-Origin"] == "*"


def test_embedded_dispatcher_fails_over_when_its_worker_dies(cortex_server):
    def send(device):
        body = orjson.dumps({"api_key": cortex_server.api_key, "device_tag": device,
                             "events": [{"type": "dau", "event_datetime": iso()}]})
        assert requests.post(f"{cortex_server.url}/demo/1/track", data=body, timeout=10).status_code == 200

    send("before")
    cortex_server.wait_for_delivery()
    holder = int((cortex_server.data_dir / "dispatcher.lock").read_text())
    assert holder in cortex_server.worker_pids()
    os.kill(holder, 9)
    send("after")
    cortex_server.wait_for_delivery(timeout=60)
    assert sorted(cortex_server.sql_rows("SELECT device_tag FROM events")) == [("after",), ("before",)]
    assert int((cortex_server.data_dir / "dispatcher.lock").read_text()) != holder


def test_serve_on_a_fresh_directory_initialises_and_prints_key_and_curl(tmp_path):
    port = free_port()
    env = {**os.environ, "CORTEX_DATA_DIR": str(tmp_path / "fresh")}
    process = subprocess.Popen([sys.executable, "-m", "cortex", "serve", "--bind", f"127.0.0.1:{port}"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("curl" in line for line in lines):
            lines.append(process.stdout.readline())
        output = "".join(lines)
        key = lines[[i for i, line in enumerate(lines) if "API key" in line][0] + 2].strip()
        assert f"127.0.0.1:{port}/demo/1/track" in output
        body = orjson.dumps({"api_key": key, "device_tag": "d", "events": [{"type": "install", "event_datetime": iso()}]})
        for _ in range(100):
            try:
                response = requests.post(f"http://127.0.0.1:{port}/demo/1/track", data=body, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert response.status_code == 200
    finally:
        os.killpg(process.pid, 15)
        process.wait(20)


def test_fsync_durability_mode_serves_and_delivers(tmp_path):
    server = ServerProcess(tmp_path / "s", env={"CORTEX_QUEUE__DURABILITY": "fsync", "CORTEX_SERVER__WORKER_CLASS": "gthread",
                                                "CORTEX_SERVER__THREADS": "4"})
    try:
        body = orjson.dumps({"api_key": server.api_key, "device_tag": "fs", "events": [
            {"type": "event", "event_datetime": iso(), "event_index": i} for i in range(20)]})
        assert requests.post(f"{server.url}/demo/1/track", data=body, timeout=10).status_code == 200
        server.wait_for_delivery()
        assert server.sql_rows("SELECT count(*) FROM events") == [(20,)]
    finally:
        server.stop()


def test_only_one_dispatcher_per_data_directory(cortex_server):
    lock = cortex_server.data_dir / "dispatcher.lock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip().isdigit()):
        time.sleep(0.1)
    assert int(lock.read_text()) in cortex_server.worker_pids(), "a gunicorn worker is the dispatcher"
    result = subprocess.run([sys.executable, "-m", "cortex", "worker", "--no-wait"], env=cortex_server.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "another dispatcher" in result.stderr and "works on this data directory" in result.stderr
