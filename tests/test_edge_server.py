"""The hardened edge over real sockets: gunicorn alone, and gunicorn behind nginx as the README
sets it up.  Slow clients, oversized and compressed bodies; the service keeps serving."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests

from conftest import ServerProcess, free_port, iso, need_service

pytestmark = pytest.mark.slow


def bundle_bytes(server, device: str = "edge", events: int = 1) -> bytes:
    return orjson.dumps({"api_key": server.api_key, "device_tag": device, "events": [
        {"type": "event", "event_datetime": iso(), "event_index": i} for i in range(events)]})


def post_good(url: str, server, timeout: float = 10) -> requests.Response:
    """A valid bundle, which must be accepted."""
    response = requests.post(f"{url}/demo/1/track", data=bundle_bytes(server, f"good-{time.monotonic_ns()}"),
                             timeout=timeout)
    assert (response.status_code, response.text) == (200, "OK")
    return response


def read_status_line(sock: socket.socket, timeout: float = 10) -> str:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
    return data.split(b"\r\n", 1)[0].decode()


def test_declared_oversize_body_is_refused_before_it_is_sent(cortex_server):
    # the client announces 50 MB and sends none of it: the answer comes anyway
    with socket.create_connection(("127.0.0.1", cortex_server.port)) as sock:
        sock.sendall(b"POST /demo/1/track HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 52428800\r\n\r\n")
        assert read_status_line(sock).startswith("HTTP/1.1 413")
    post_good(cortex_server.url, cortex_server)


def test_oversize_chunked_body_is_413(cortex_server):
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB of whitespace, no Content-Length

    response = requests.post(f"{cortex_server.url}/demo/1/track", data=chunks(), timeout=30)
    assert response.status_code == 413 and "larger than the limit" in response.text
    post_good(cortex_server.url, cortex_server)


def test_gzip_body_and_compression_bomb_over_http(cortex_server):
    deadline = time.monotonic() + 30
    while len(cortex_server.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # both workers up before counting them
    workers = set(cortex_server.worker_pids())
    body = gzip.compress(bundle_bytes(cortex_server, "gzipped", events=100))
    response = requests.post(f"{cortex_server.url}/demo/1/track", data=body, timeout=10,
                             headers={"Content-Encoding": "gzip"})
    assert (response.status_code, response.text) == (200, "OK")
    bomb = gzip.compress(b"[" + b" " * (200 << 20) + b"]", compresslevel=9)
    for _ in range(3):
        response = requests.post(f"{cortex_server.url}/demo/1/track", data=bomb, timeout=30,
                                 headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413
    assert workers <= set(cortex_server.worker_pids()), "no worker died or ran out of memory"
    post_good(cortex_server.url, cortex_server)
    cortex_server.wait_for_delivery()
    assert cortex_server.sql_rows("SELECT count(*) FROM events WHERE device_tag = 'gzipped'") == [(100,)]


class SlowClients:
    """Slowloris-style clients: each opens a connection and trickles a request, a byte a
    second, that never ends (half of them in the headers, half in the body)."""

    def __init__(self, port: int, count: int):
        self.port = port
        self.count = count
        self.stop = threading.Event()
        self.closed_after: list[float] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def __enter__(self) -> "SlowClients":
        for thread in self.threads:
            thread.start()
            time.sleep(0.02)
        time.sleep(0.5)  # every slow connection is open and has started its request
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)

    def _run(self, number: int) -> None:
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                if number % 2:
                    sock.sendall(b"POST /demo/1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
                    trickle = b" "
                else:
                    sock.sendall(b"POST /demo/1/track HTTP/1.1\r\nHost: x\r\n")
                    trickle = b"X"
                while not self.stop.is_set():
                    sock.sendall(trickle)
                    sock.settimeout(1.0)
                    try:
                        if sock.recv(4096) == b"":
                            break  # the server closed it
                    except socket.timeout:
                        pass
        except OSError:
            pass  # reset by the server
        self.closed_after.append(time.monotonic() - start)


def test_a_slow_client_holds_a_sync_worker_at_most_the_timeout(tmp_path):
    """Without a proxy, each slow client can hold a sync worker until ``server.timeout``,
    when gunicorn replaces the worker; then everyone else is served again."""
    timeout = 4
    server = ServerProcess(tmp_path / "direct", env={"CORTEX_SERVER__TIMEOUT": str(timeout)})
    try:
        post_good(server.url, server)
        with SlowClients(server.port, count=2) as slow:  # as many as there are workers
            started = time.monotonic()
            post_good(server.url, server, timeout=60)
            waited = time.monotonic() - started
            deadline = time.monotonic() + 10
            while len(slow.closed_after) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        assert waited < timeout + 15, f"a good request waited {waited:.1f}s"
        assert len(slow.closed_after) == 2 and max(slow.closed_after) < timeout + 10, slow.closed_after
        post_good(server.url, server)
    finally:
        server.stop()


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
{site}
    }}
}}
"""


def nginx_site_directives() -> str:
    """The directives inside ``server {}`` of ``config/nginx-cortex.conf``, TLS lines left
    out, with the upstream port of the test server substituted later."""
    text = (Path(__file__).resolve().parent.parent / "config" / "nginx-cortex.conf").read_text()
    body = text[text.index("server {") + len("server {"):text.rindex("}")]
    return "\n".join(line for line in body.splitlines()
                     if not line.strip().startswith(("listen", "ssl_", "server_name")))


@pytest.fixture
def nginx_in_front(tmp_path, cortex_server):
    """nginx, configured as ``config/nginx-cortex.conf`` says, in front of a real Cortex."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        need_service("nginx is not installed (apt-get install nginx-light)")
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    site = nginx_site_directives().replace("127.0.0.1:8000", f"127.0.0.1:{cortex_server.port}")
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port, site=site,
                                      user="user root;" if os.geteuid() == 0 else ""))
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(directory)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(directory / 'error.log').read_text()}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def test_behind_nginx_slow_clients_do_not_hold_workers(nginx_in_front, cortex_server):
    """The documented setup: nginx reads every request whole before gunicorn sees it, so
    many slow clients cost gunicorn nothing and everyone else is served at once."""
    url, port = nginx_in_front
    post_good(url, cortex_server)
    with SlowClients(port, count=40):
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            post_good(url, cortex_server, timeout=10)
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)
    assert max(latencies) < 2.0, latencies
    oversize = requests.post(f"{url}/demo/1/track", data=b" " * (2 << 20), timeout=10)
    assert oversize.status_code == 413, "nginx refuses what Cortex would refuse"
    cortex_server.wait_for_delivery()
    assert cortex_server.sql_rows("SELECT count(*) FROM events WHERE device_tag LIKE 'good-%'") == [(11,)]


@pytest.mark.parametrize("request_bytes", [
    b"POST /demo/1/track?current_time=" + b"x" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /demo/1/track HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n",
    b"POST /demo/1/track HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
], ids=["request-line", "header-size", "header-count"])
def test_oversized_request_heads_are_refused_by_gunicorn(cortex_server, request_bytes):
    with socket.create_connection(("127.0.0.1", cortex_server.port)) as sock:
        sock.sendall(request_bytes)
        assert read_status_line(sock).split()[1] in ("400", "414", "431")
    post_good(cortex_server.url, cortex_server)
