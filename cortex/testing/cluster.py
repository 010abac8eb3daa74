"""A several-node Cortex on loopback, as processes: ingest nodes and ``cortex worker``s.

Used by the multi-node test and the scale-out benchmark.  Every node shares one TOML
configuration (Kafka queue, Redis dedupe, control database and SQL sink on PostgreSQL) and
has a data directory of its own, as separate machines would::

    cluster = Cluster(tmp_path, config)       # config: the shared TOML tables, as a dict
    key = cluster.init()                      # the first org's API key
    node = cluster.ingest_node(workers=2)     # cortex serve on a free port
    worker = cluster.worker()                 # cortex worker
    node.kill(); node.start()                 # SIGKILL, then start again (same port)

Every process runs in a process group of its own; :meth:`Cluster.stop` ends them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["Cluster", "IngestNode", "WorkerNode", "to_toml"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def to_toml(config: dict, prefix: str = "") -> str:
    """A nested dict as TOML text (tables of tables as ``[a.b]`` sections)."""
    lines, tables = [], {}
    for key, value in config.items():
        if isinstance(value, dict) and _is_table(value):
            tables[key] = value
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    text = ""
    if prefix and (lines or not tables):
        text += f"[{prefix}]\n"
    if lines:
        text += "\n".join(lines) + "\n"
    if text:
        text += "\n"
    for key, value in tables.items():
        text += to_toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
    return text


def _is_table(value: dict) -> bool:
    # secret references stay inline ({ env = "X" }); every other dict becomes a section
    return set(value) not in ({"env"}, {"file"})


class _Process:
    """One Cortex process in a process group of its own, restartable."""

    def __init__(self, cluster: "Cluster", name: str):
        self.cluster = cluster
        self.name = name
        self.data_dir = cluster.root / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_Process":
        """Start (or start again) the process."""
        self.starts += 1
        log = open(self.data_dir / f"{self.name}.{self.starts}.log", "w")
        env = {**self.cluster.env, "CORTEX_DATA_DIR": str(self.data_dir)}
        self.process = subprocess.Popen(
            self.argv(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.data_dir
        )
        log.close()
        return self

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and all of its children at once."""
        self._signal(signal.SIGKILL)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if not self.alive():
            self._signal(signal.SIGKILL)  # children of a killed master may linger
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGKILL:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def log_text(self) -> str:
        """Every log this process wrote, start after start."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.data_dir.glob(f"{self.name}.*.log")))


class IngestNode(_Process):
    """``cortex serve`` on a fixed loopback port (kept across restarts)."""

    def __init__(self, cluster: "Cluster", name: str, workers: int):
        super().__init__(cluster, name)
        self.workers = workers
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cortex", "serve", "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(self.workers)]

    def wait_ready(self, timeout: float = 60.0) -> "IngestNode":
        """Block until the node answers HTTP."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/-/plugins", timeout=2).read()
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer within {timeout}s")


class WorkerNode(_Process):
    """``cortex worker``: the dispatcher, consuming the Kafka queue."""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cortex", "worker"]


class Cluster:
    """The shared configuration and every process started from it."""

    def __init__(self, root: Path, config: dict, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "cortex.toml"
        self.config_path.write_text(to_toml(config))
        base = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
        self.env = {**base, "CORTEX_CONFIG": str(self.config_path), **(env or {})}
        self.processes: list[_Process] = []

    def init(self) -> str:
        """Run ``cortex init`` (once, on a node directory of its own); returns the API key."""
        data_dir = self.root / "init"
        data_dir.mkdir(exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "cortex", "init"],
                                env={**self.env, "CORTEX_DATA_DIR": str(data_dir)},
                                capture_output=True, text=True, timeout=120, check=True)
        lines = result.stdout.splitlines()
        marker = next(i for i, line in enumerate(lines) if "API key" in line)
        return lines[marker + 2].strip()

    def ingest_node(self, workers: int = 2) -> IngestNode:
        """Start an ingest node and wait until it answers."""
        node = IngestNode(self, f"ingest{len(self.processes)}", workers)
        self.processes.append(node)
        node.start()
        return node.wait_ready()

    def worker(self) -> WorkerNode:
        """Start a ``cortex worker``."""
        node = WorkerNode(self, f"worker{len(self.processes)}")
        self.processes.append(node)
        return node.start()

    def stop(self) -> None:
        """Stop every process."""
        for process in self.processes:
            process.stop()
