"""Ingest benchmark: Cortex under gunicorn against "the floor", bundles of 1, 10 and 100 events.

    .venv/bin/python bench/ingest_bench.py [--duration 10] [--sizes 1,10,100] [--connections 8] [--rounds 1]

For every bundle size, one after the other (never two servers at once), ``--rounds`` times:

1. **Cortex** on its defaults (SQLite queue, SQL sink on SQLite, embedded dispatcher) in a
   fresh temporary data directory: ``cortex init`` gives the API key, ``cortex serve`` runs
   it under gunicorn.  A probe request checks it answers 200, a warm-up load runs and is
   drained, then the measured load runs.  Afterwards the benchmark times how long the
   dispatcher needs to deliver the backlog to the SQL sink, confirms with
   ``cortex status --json`` that nothing is pending, and counts the rows in ``events.db``.
2. **The floor** (``bench/floor_app.py``): a Flask app that only parses the body with orjson
   and answers OK, under the same gunicorn settings, with the same probe, warm-up and load.

On a shared or virtual host the machine's speed drifts between cases by several per cent;
with ``--rounds N`` each size runs as N back-to-back pairs of Cortex and the floor, each pair
gives a ratio, and the targets are judged on the median ratio (the table shows the spread).

The load comes from ``wrk`` with ``bench/ingest.lua`` (every request a unique bundle, so
dedupe never kicks in), or, without ``wrk``, from ``bench/pyload.py`` in a separate process.
Results are printed as tables with PASS/FAIL against the targets; the exit status is 0
unless the benchmark itself broke (a server that does not start, a load generator that
fails).  See ``bench/README.md`` for how to read the output.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from pyload import iso, make_bundle  # noqa: E402  (bench/ is not a package)

from cortex.queue import read_snapshot, records_after  # noqa: E402
from cortex.queue_lmdb import LMDBIngest, ingest_path  # noqa: E402
from cortex.queue_shards import LMDB_MARK, shard_path  # noqa: E402

ORG = "demo"
HOST = "127.0.0.1"
LUA_SCRIPT = BENCH_DIR / "ingest.lua"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# targets (printed with PASS/FAIL; they do not change the exit status)
TARGET_EVENTS_RATIO_100 = 0.4   # Cortex events/s >= 0.4 x the floor at 100-event bundles
TARGET_REQUESTS_RATIO_1 = 0.7   # Cortex requests/s >= 0.7 x the floor at 1-event bundles

#: CPU used by other processes during a load (in % of one CPU) beyond which a case is flagged
NOISY_PERCENT = 15.0


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, the load generator failed)."""


# processes -------------------------------------------------------------------------------
class Managed:
    """A child process in a process group of its own, so stopping it stops its children too.

    Every instance is remembered in :attr:`running` until stopped; :meth:`stop_all` (called
    from ``finally``) stops whatever is left, on errors and Ctrl-C alike.
    """

    running: list["Managed"] = []

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=ROOT, start_new_session=True,
        )
        self.pid = self.proc.pid
        Managed.running.append(self)

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the group (gunicorn: graceful stop), SIGKILL whatever is left after ``grace``."""
        try:
            if self.alive():
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # workers a dead master left behind, if any
            _signal_group(self.pid, signal.SIGKILL)
            self.proc.wait(5)
            deadline = time.monotonic() + 5
            while _group_exists(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self._log.close()
            if self in Managed.running:
                Managed.running.remove(self)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    @classmethod
    def stop_all(cls) -> None:
        """Stop every process still running (newest first)."""
        for managed in reversed(list(cls.running)):
            try:
                managed.stop(grace=10.0)
            except Exception as error:  # keep stopping the others
                print(f"warning: could not stop {managed.name} (pid {managed.pid}): {error}", file=sys.stderr)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _raise_on_signal(signum, frame):
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so ``finally`` cleans up."""
    raise KeyboardInterrupt(f"signal {signum}")


def child_env() -> dict[str, str]:
    """The environment for the servers: no ``CORTEX_*`` variables, so Cortex runs on defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: ``CORTEX_*`` variables given with ``--cortex-env`` (experiments); only Cortex gets them
CORTEX_OVERRIDES: dict[str, str] = {}


def cortex_env() -> dict[str, str]:
    """The environment for Cortex's processes: :func:`child_env` plus ``--cortex-env``."""
    return {**child_env(), **CORTEX_OVERRIDES}


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers: the children of the master process."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{master_pid}/task"):
            with open(f"/proc/{master_pid}/task/{task}/children") as handle:
                children.extend(int(p) for p in handle.read().split())
        return sorted(set(children))
    except OSError:
        pass
    for entry in os.listdir("/proc"):  # no /proc/*/children: scan the parent pids
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == master_pid:
                        children.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(children)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (``VmRSS``), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _stat_cpu_seconds(path: str) -> float:
    """User + system CPU time in a ``/proc`` ``stat`` file (a process's or a thread's), in seconds."""
    try:
        with open(path) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used, in seconds."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def background_cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` has used outside its main thread: in a Cortex worker the embedded
    dispatcher's threads (sinks, housekeeping) and the metrics flusher; a gunicorn sync
    worker serves requests in its main thread."""
    main = _stat_cpu_seconds(f"/proc/{pid}/task/{pid}/stat")
    return max(0.0, cpu_seconds(pid) - main) if main else 0.0


def host_busy_seconds() -> float:
    """CPU seconds the whole host has been busy (all CPUs, ``/proc/stat``)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # guest time is already in user
    return busy / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children reaped so far (the load generator)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class Sampler:
    """Samples, while a load runs, the workers' RSS and (for Cortex) the queue backlog, and
    accounts for the CPU time used: by the workers, by the benchmark and its load generator,
    and by everything else on the host (interference from other processes).
    """

    def __init__(self, master_pid: int, queue_db: Path | None, interval: float = 0.5):
        self.master_pid = master_pid
        self.queue_db = queue_db
        self.interval = interval
        self.rss_sum = 0.0
        self.rss_max = 0.0
        self.workers = 0
        self.peak_backlog = 0
        self.others_percent = 0.0
        self.idle_percent = 0.0
        self.cpu_start: dict[int, float] = {}
        self.cpu_end: dict[int, float] = {}
        self.background_start: dict[int, float] = {}
        self.background_end: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self.cpu_start = {pid: cpu_seconds(pid) for pid in worker_pids(self.master_pid)}
        self.background_start = {pid: background_cpu_seconds(pid) for pid in self.cpu_start}
        self._master_start = cpu_seconds(self.master_pid)
        self._own_start = own_cpu_seconds()
        self._host_start = host_busy_seconds()
        self._wall_start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_end = {pid: cpu_seconds(pid) for pid in worker_pids(self.master_pid)}
        self.background_end = {pid: background_cpu_seconds(pid) for pid in self.cpu_end}
        wall = time.monotonic() - self._wall_start
        ours = (self.cpu_used + cpu_seconds(self.master_pid) - self._master_start
                + own_cpu_seconds() - self._own_start)
        host_busy = host_busy_seconds() - self._host_start
        others = host_busy - ours
        #: CPU used by processes outside the benchmark, in % of one CPU (interference)
        self.others_percent = max(0.0, others / wall * 100) if wall > 0 else 0.0
        #: the host's CPUs left idle, in % of all of them: time every runnable thread spent
        #: waiting (for a lock, say) instead of computing
        capacity = wall * (os.cpu_count() or 1)
        self.idle_percent = max(0.0, 100 - host_busy / capacity * 100) if capacity > 0 else 0.0

    @property
    def cpu_used(self) -> float:
        """CPU seconds the workers used between enter and exit."""
        return sum(self.cpu_end.get(pid, 0.0) - start for pid, start in self.cpu_start.items())

    @property
    def background_used(self) -> float:
        """CPU seconds the workers used outside their main threads between enter and exit."""
        return sum(self.background_end.get(pid, 0.0) - start for pid, start in self.background_start.items())

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                self._sample()
                return

    def _sample(self) -> None:
        values = [rss_mib(pid) for pid in worker_pids(self.master_pid)]
        if values:
            self.workers = max(self.workers, len(values))
            self.rss_sum = max(self.rss_sum, sum(values))
            self.rss_max = max(self.rss_max, max(values))
        if self.queue_db is not None:
            try:
                self.peak_backlog = max(self.peak_backlog, pending_in_queue(self.queue_db))
            except sqlite3.Error:
                pass


# Cortex's state, read from outside -------------------------------------------------------
@functools.lru_cache(maxsize=None)
def ingest_store(queue_db: str) -> LMDBIngest:
    """The LMDB ingest store of the queue at ``queue_db``, opened once by this process."""
    return LMDBIngest(ingest_path(queue_db))


def pending_in_queue(queue_db: Path, sink: str = "sql") -> int:
    """Records queued that ``sink`` has not stored yet, read straight from the queue database.

    The same query as ``cortex status`` (``SQLiteQueue.sink_status``), without the half
    second a CLI start costs, so drain times can be timed to ~50 ms.  ``cortex status
    --json`` confirms the end result.
    """
    conn = sqlite3.connect(f"file:{queue_db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        with read_snapshot(conn):
            pending = records_after(conn, row[0] if row else 0)
            sharded = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shards'").fetchone()
            count, generation, store = conn.execute(
                "SELECT count, generation, store FROM shards").fetchone() if sharded else (1, 0, "sqlite")
            marks = dict(conn.execute("SELECT shard, seq FROM shard_marks")) if sharded else {}
    finally:
        conn.close()
    if store == "lmdb":  # what the LMDB ingest store holds and is not moved yet
        return pending + ingest_store(str(queue_db)).backlog(marks.get(LMDB_MARK, 0))[1]
    # what the ingest shards hold and the dispatcher has not moved into the queue yet
    for index in range(count if count > 1 else 0):
        shard = sqlite3.connect(f"file:{shard_path(str(queue_db), index, generation)}?mode=ro", uri=True, timeout=10)
        try:
            with read_snapshot(shard):
                pending += records_after(shard, marks.get(index, 0))
        finally:
            shard.close()
    return pending


def cortex_cli(data_dir: Path, *args: str, timeout: float = 60) -> str:
    """Run ``cortex --data-dir DIR ARGS...``; its stdout, or :class:`BenchError`."""
    cortex = Path(sys.executable).parent / "cortex"
    result = subprocess.run(
        [str(cortex), "--data-dir", str(data_dir), *args], capture_output=True, text=True,
        env=cortex_env(), cwd=ROOT, timeout=timeout,
    )
    if result.returncode != 0:
        raise BenchError(f"cortex {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def cortex_status(data_dir: Path) -> dict:
    """``cortex status --json``, parsed."""
    return json.loads(cortex_cli(data_dir, "status", "--json"))


def accepted_events(status: dict) -> int:
    """Events Cortex accepted for the benchmark's org so far, from a status report."""
    return status["orgs"].get(ORG, {}).get("accepted", 0)


def sink_rows(events_db: Path) -> dict[str, int]:
    """Rows per event table of the SQL sink (its families, without ``ingest_errors``; not
    the rollups or bookkeeping tables).

    Empty when the database does not exist (the sink never opened).
    """
    if not events_db.exists():
        return {}
    from cortex_sql.tables import FAMILIES

    event_tables = {family.table for family in FAMILIES if family.kind != "rejected"}
    conn = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True, timeout=10)
    try:
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if name in event_tables
        ]
        return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables}
    finally:
        conn.close()


# servers ---------------------------------------------------------------------------------
@dataclass
class Server:
    """A running server under test."""

    kind: str                       # "cortex" or "floor"
    process: Managed
    port: int
    api_key: str
    data_dir: Path | None = None    # Cortex only

    @property
    def pid(self) -> int:
        """The gunicorn master's pid."""
        return self.process.pid

    @property
    def queue_db(self) -> Path | None:
        """Cortex's queue database (None for the floor)."""
        return self.data_dir / "queue.db" if self.data_dir else None


def parse_init_key(output: str) -> str | None:
    """The API key ``cortex init`` prints on the first non-empty line after "API key"."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "API key" in line:
            for candidate in lines[i + 1:]:
                if candidate.strip():
                    key = candidate.strip()
                    return key if re.fullmatch(r"[A-Za-z0-9_\-]{16,}", key) else None
    return None


def start_cortex(workdir: Path, label: str) -> Server:
    """Initialise a fresh data directory, start ``cortex serve`` on it and wait until ready."""
    data_dir = workdir / f"cortex-{label}"
    key = parse_init_key(cortex_cli(data_dir, "init"))
    if key is None:
        key = cortex_cli(data_dir, "keys", "create", ORG, "default").strip().splitlines()[0]
    port = free_port()
    cortex = Path(sys.executable).parent / "cortex"
    process = Managed(
        f"cortex serve ({label})",
        [cortex, "--data-dir", data_dir, "serve", "--bind", f"{HOST}:{port}"],
        workdir / f"cortex-{label}.log", cortex_env(),
    )
    server = Server("cortex", process, port, key, data_dir)
    wait_ready(server)
    return server


def start_floor(workdir: Path, label: str) -> Server:
    """Start ``bench/floor_app.py`` under gunicorn and wait until ready."""
    port = free_port()
    process = Managed(
        f"floor ({label})", [sys.executable, BENCH_DIR / "floor_app.py", "--bind", f"{HOST}:{port}"],
        workdir / f"floor-{label}.log", child_env(),
    )
    server = Server("floor", process, port, "floor-has-no-keys")
    wait_ready(server)
    return server


def post_bundle(server: Server, body: bytes, timeout: float = 10.0) -> int:
    """POST one bundle; the HTTP status (0 when the server cannot be reached)."""
    url = f"http://{HOST}:{server.port}/{ORG}/1/track?current_time={iso_now()}"
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def iso_now() -> str:
    """Now, as the ``current_time`` query value."""
    return iso(datetime.now(timezone.utc))


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    """Wait until every worker is up and a probe bundle (1 event) is answered 200."""
    from cortex.config import DEFAULTS

    expected_workers = DEFAULTS["server"]["workers"]
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        if not server.process.alive():
            raise BenchError(f"{server.process.name} exited:\n{server.process.log_tail()}")
        if len(worker_pids(server.pid)) >= expected_workers:
            status = post_bundle(server, make_bundle(server.api_key, "bench-probe", 1, 1))
            if status == 200:
                return
        time.sleep(0.2)
    raise BenchError(
        f"{server.process.name} not ready within {timeout:.0f}s (last probe answer: {status}):\n"
        f"{server.process.log_tail()}"
    )


# load ------------------------------------------------------------------------------------
@dataclass
class Load:
    """What one load run measured."""

    requests: int
    ok: int
    bad: int
    statuses: dict
    errors: dict
    duration: float
    p50_ms: float
    p99_ms: float
    generator: str

    @property
    def socket_errors(self) -> int:
        """Connect, read, write and timeout errors (answers other than 200 are in ``bad``)."""
        return sum(v for k, v in self.errors.items() if k != "status")


def run_load(server: Server, size: int, run_id: str, duration: int, args) -> Load:
    """Run the load generator against ``server`` for ``duration`` seconds."""
    if args.generator == "wrk":
        argv = [
            args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--timeout", "30s",
            "-s", LUA_SCRIPT, f"http://{HOST}:{server.port}", "--", server.api_key, str(size), run_id, ORG,
        ]
    else:
        argv = [
            sys.executable, BENCH_DIR / "pyload.py", "--port", str(server.port), "--org", ORG,
            "--api-key", server.api_key, "--size", str(size), "--run-id", run_id,
            "--duration", str(duration), "--connections", str(args.connections),
        ]
    log_path = args.workdir / f"load-{run_id}.log"
    generator = Managed(f"{args.generator} ({run_id})", argv, log_path, child_env())
    try:
        generator.proc.wait(duration + 120)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the load generator did not finish:\n{generator.log_tail()}") from None
    finally:
        generator.stop()
    output = log_path.read_text(errors="replace")
    match = re.search(r"^WRK_JSON (\{.*\})\s*$", output, re.MULTILINE)
    if generator.proc.returncode != 0 or match is None:
        raise BenchError(f"the load generator failed ({generator.proc.returncode}):\n{output[-3000:]}")
    data = json.loads(match.group(1))
    return Load(
        requests=data["requests"], ok=data["ok"], bad=data["bad"], statuses=data["statuses"],
        errors=data["errors"], duration=data["duration_us"] / 1e6,
        p50_ms=data["latency_us"]["p50"] / 1000, p99_ms=data["latency_us"]["p99"] / 1000,
        generator=args.generator,
    )


# profiling -------------------------------------------------------------------------------
def start_profilers(server: Server, label: str, args) -> list[Managed]:
    """``py-spy record`` on every worker for the measured load (raw, collapsed stacks)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("   warning: --profile needs py-spy (.venv/bin/pip install py-spy); not profiling", flush=True)
        return []
    args.profile.mkdir(parents=True, exist_ok=True)
    profilers = []
    for pid in worker_pids(server.pid):
        output = args.profile / f"{label}-worker{pid}.txt"
        profilers.append(Managed(
            f"py-spy ({pid})",
            [py_spy, "record", "--pid", str(pid), "--duration", str(args.duration), "--rate", "200",
             "--format", "raw", "--threads", "--nonblocking", "--output", output],
            args.workdir / f"py-spy-{label}-{pid}.log", child_env(),
        ))
    print(f"   profiling workers {worker_pids(server.pid)} into {args.profile}/", flush=True)
    return profilers


def finish_profilers(profilers: list[Managed]) -> None:
    """Let py-spy write its output (it stops by itself after the load duration)."""
    for profiler in profilers:
        try:
            profiler.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        profiler.stop(grace=5)


# one case --------------------------------------------------------------------------------
@dataclass
class Case:
    """One server at one bundle size: the measured load and, for Cortex, the delivery."""

    server: str
    size: int
    round: int = 1
    requests: int = 0
    ok: int = 0
    non_200: int = 0
    socket_errors: int = 0
    statuses: dict = field(default_factory=dict)
    duration: float = 0.0
    requests_per_s: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    workers: int = 0
    rss_sum_mib: float = 0.0
    rss_max_mib: float = 0.0
    cpu_ms_per_request: float = 0.0
    background_ms_per_request: float = 0.0  # of it, outside the workers' main threads
    others_cpu_percent: float = 0.0      # CPU of processes outside the benchmark (% of one CPU)
    idle_percent: float = 0.0            # the host's CPUs left idle during the load (% of all)
    # Cortex only
    accepted: int | None = None          # events accepted during the measured load
    peak_backlog: int | None = None      # most records waiting for the sql sink during the load
    drain_s: float | None = None         # load end -> nothing pending for the sql sink
    drained: bool | None = None
    delivery_rate: float | None = None   # accepted / (load duration + drain time)
    rows: int | None = None              # rows in the SQL sink at the end (all phases)
    rows_by_table: dict | None = None
    answered_events: int | None = None   # events answered 200 (probe + warm-up + measured)
    accepted_total: int | None = None    # Cortex's accepted counter at the end (all phases)
    pending_after: int | None = None     # cortex status --json: pending for sql at the end
    duplicates: int | None = None        # events Cortex counted as duplicates (should be 0)
    rejected: int | None = None          # events Cortex rejected as invalid (should be 0)

    @property
    def all_200(self) -> bool:
        """Every measured request was answered 200, without socket errors."""
        return self.non_200 == 0 and self.socket_errors == 0 and self.ok > 0

    @property
    def all_fresh(self) -> bool:
        """No event was taken for a duplicate or rejected (the bundles are unique and valid)."""
        return not self.duplicates and not self.rejected

    @property
    def rows_land(self) -> bool:
        """Every accepted event is a row, and at least every event answered 200."""
        return (
            self.rows is not None and self.rows == self.accepted_total
            and self.rows >= (self.answered_events or 0) and self.pending_after == 0
        )


def wait_drained(queue_db: Path, timeout: float, poll: float = 0.05) -> tuple[bool, float]:
    """Wait until nothing is pending for the sql sink: (drained, seconds waited)."""
    started = time.monotonic()
    while True:
        try:
            if pending_in_queue(queue_db) == 0:
                return True, time.monotonic() - started
        except sqlite3.Error:
            pass
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started
        time.sleep(poll)


def run_case(kind: str, size: int, args, round_number: int = 1) -> Case:
    """Start one server, probe, warm up, measure, check (Cortex), stop it."""
    label = f"{kind}-{size}" + (f"-r{round_number}" if args.rounds > 1 else "")
    print(f"\n== {kind}, {size} event(s) per bundle"
          + (f", round {round_number} of {args.rounds}" if args.rounds > 1 else ""), flush=True)
    start = start_cortex if kind == "cortex" else start_floor
    server = start(args.workdir, label.removeprefix(f"{kind}-"))
    case = Case(kind, size, round_number)
    try:
        answered = 1  # the probe
        if args.warmup > 0:
            warm = run_load(server, size, f"{label}-warm", args.warmup, args)
            answered += warm.ok * size
            print(f"   warm-up: {warm.requests} requests, {warm.ok} answered 200", flush=True)
        accepted_before = 0
        if kind == "cortex":
            drained, waited = wait_drained(server.queue_db, args.drain_timeout)
            if not drained:
                print(f"   warning: the warm-up backlog did not drain in {waited:.0f}s", flush=True)
            accepted_before = accepted_events(cortex_status(server.data_dir))

        profilers = start_profilers(server, label, args) if kind == "cortex" and args.profile else []
        with Sampler(server.pid, server.queue_db) as sampler:
            load = run_load(server, size, f"{label}-run", args.duration, args)
        finish_profilers(profilers)
        load_end = time.monotonic()
        answered += load.ok * size
        case.requests, case.ok, case.non_200 = load.requests, load.ok, load.bad
        case.socket_errors, case.statuses, case.duration = load.socket_errors, load.statuses, load.duration
        case.requests_per_s = load.requests / load.duration if load.duration else 0.0
        case.events_per_s = load.ok * size / load.duration if load.duration else 0.0
        case.p50_ms, case.p99_ms = load.p50_ms, load.p99_ms
        case.workers, case.rss_sum_mib, case.rss_max_mib = sampler.workers, sampler.rss_sum, sampler.rss_max
        case.cpu_ms_per_request = sampler.cpu_used * 1000 / load.requests if load.requests else 0.0
        case.background_ms_per_request = sampler.background_used * 1000 / load.requests if load.requests else 0.0
        case.others_cpu_percent = sampler.others_percent
        case.idle_percent = sampler.idle_percent
        print(f"   load: {load.requests} requests in {load.duration:.1f}s, {load.ok} answered 200", flush=True)
        if case.others_cpu_percent > NOISY_PERCENT:
            print(f"   warning: other processes used {case.others_cpu_percent:.0f}% of a CPU during the load; "
                  "the numbers of this case are disturbed", flush=True)

        if kind == "cortex":
            drained, waited = wait_drained(server.queue_db, args.drain_timeout)
            case.drained = drained
            case.drain_s = time.monotonic() - load_end
            case.peak_backlog = sampler.peak_backlog
            status = cortex_status(server.data_dir)
            case.pending_after = status["sinks"]["sql"]["pending"]
            case.accepted_total = accepted_events(status)
            counts = status["orgs"].get(ORG, {})
            case.duplicates, case.rejected = counts.get("duplicate", 0), counts.get("rejected", 0)
            case.accepted = case.accepted_total - accepted_before
            case.delivery_rate = case.accepted / (load.duration + case.drain_s)
            case.answered_events = answered
            case.rows_by_table = sink_rows(server.data_dir / "events.db")
            case.rows = sum(case.rows_by_table.values())
            print(f"   drain: {case.drain_s:.2f}s; rows {case.rows} (accepted {case.accepted_total}, "
                  f"answered 200: {answered})", flush=True)
    finally:
        server.process.stop()
    return case


# report ----------------------------------------------------------------------------------
def pair_ratios(cases: list[Case]) -> dict[int, list[tuple[int, float, float]]]:
    """size -> (round, events/s ratio, requests/s ratio) of each round in which both Cortex
    and the floor ran at that size."""
    by_key = {(c.server, c.size, c.round): c for c in cases}
    ratios: dict[int, list[tuple[int, float, float]]] = {}
    for (server, size, number), cortex in sorted(by_key.items(), key=lambda item: (item[0][1], item[0][2])):
        floor = by_key.get(("floor", size, number))
        if server == "cortex" and floor and floor.events_per_s and floor.requests_per_s:
            ratios.setdefault(size, []).append(
                (number, cortex.events_per_s / floor.events_per_s, cortex.requests_per_s / floor.requests_per_s))
    return ratios


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(cases: list[Case], args) -> dict:
    """Print the tables; return the targets as {name: (passed, detail)}."""
    from cortex.config import DEFAULTS

    server = DEFAULTS["server"]
    generator = "wrk + bench/ingest.lua" if args.generator == "wrk" else (
        "Python fallback (bench/pyload.py" + ("; wrk not found" if args.wrk_missing else "")
        + "): the numbers are bounded by the generator")
    if CORTEX_OVERRIDES:
        print("\nCortex configuration overrides: " + ", ".join(f"{k}={v}" for k, v in CORTEX_OVERRIDES.items()))
    print(f"\nLoad: {generator}; {args.connections} connections, {args.duration}s per case after "
          f"{args.warmup}s warm-up.  gunicorn: {server['workers']} workers x {server['threads']} "
          f"thread(s), {server['worker_class']} workers.  Host: {os.cpu_count()} CPUs.\n")

    rounds = args.rounds > 1
    print("Throughput and latency")
    _table(
        ["server", *(["round"] if rounds else []), "events/bundle", "req/s", "events/s", "p50 ms", "p99 ms", "non-200",
         "RSS sum MiB", "RSS max MiB", "CPU ms/req", "bg ms/req", "idle %", "others %"],
        [[c.server, *([str(c.round)] if rounds else []), str(c.size), f"{c.requests_per_s:,.0f}", f"{c.events_per_s:,.0f}", f"{c.p50_ms:.1f}",
          f"{c.p99_ms:.1f}", str(c.non_200 + c.socket_errors), f"{c.rss_sum_mib:.1f}",
          f"{c.rss_max_mib:.1f}", f"{c.cpu_ms_per_request:.2f}", f"{c.background_ms_per_request:.2f}",
          f"{c.idle_percent:.0f}",
          f"{c.others_cpu_percent:.0f}" + ("!" if c.others_cpu_percent > NOISY_PERCENT else "")] for c in cases],
    )

    ratios = pair_ratios(cases)
    ratio_rows = []
    for size, pairs in ratios.items():
        if rounds:
            ratio_rows += [[str(size), str(number), f"{ev:.2f}", f"{rq:.2f}"] for number, ev, rq in pairs]
            events, requests = [ev for _, ev, _ in pairs], [rq for _, _, rq in pairs]
            ratio_rows.append([str(size), "median", f"{median(events):.2f} ({min(events):.2f}-{max(events):.2f})",
                               f"{median(requests):.2f} ({min(requests):.2f}-{max(requests):.2f})"])
        else:
            ratio_rows += [[str(size), f"{ev:.2f}", f"{rq:.2f}"] for _, ev, rq in pairs]
    if ratio_rows:
        print("\nCortex / floor" + (" (per round, and the median with the range)" if rounds else ""))
        _table(["events/bundle", *(["round"] if rounds else []), "events/s ratio", "req/s ratio"], ratio_rows)

    cortex_cases = [c for c in cases if c.server == "cortex"]
    if cortex_cases:
        print("\nCortex correctness and delivery (dispatcher -> SQL sink on SQLite)")
        _table(
            [*(["round"] if rounds else []), "events/bundle", "all 200", "dup/rej", "accepted", "peak backlog", "drain s", "delivery ev/s",
             "rows", "answered 200", "accepted total", "pending", "rows land"],
            [[*([str(c.round)] if rounds else []), str(c.size), "yes" if c.all_200 else f"NO ({c.non_200} non-200 {c.statuses}, {c.socket_errors} socket errors)",
              f"{c.duplicates}/{c.rejected}", str(c.accepted), str(c.peak_backlog), f"{c.drain_s:.2f}" + ("" if c.drained else " (timeout)"),
              f"{c.delivery_rate:,.0f}", str(c.rows), str(c.answered_events), str(c.accepted_total),
              str(c.pending_after), "yes" if c.rows_land else "NO"] for c in cortex_cases],
        )

    targets: dict[str, tuple[bool, str]] = {}
    judged = "median " if rounds else ""
    if 100 in ratios:
        ev = median([ev for _, ev, _ in ratios[100]])
        targets["100-event bundles: Cortex events/s >= 0.4 x floor"] = (ev >= TARGET_EVENTS_RATIO_100,
                                                                        f"{judged}{ev:.2f} x")
    if 1 in ratios:
        rq = median([rq for _, _, rq in ratios[1]])
        targets["1-event bundles: Cortex req/s >= 0.7 x floor"] = (rq >= TARGET_REQUESTS_RATIO_1, f"{judged}{rq:.2f} x")
    for c in cortex_cases:
        suffix = f" (round {c.round})" if rounds else ""
        targets[f"{c.size}-event bundles{suffix}: every request answered 200, no duplicate or rejected event"] = (
            c.all_200 and c.all_fresh, f"{c.ok}/{c.requests}"
            + (f", socket errors {c.socket_errors}" if c.socket_errors else "")
            + (f", {c.duplicates} duplicates, {c.rejected} rejected" if not c.all_fresh else ""))
        keeps_up = bool(c.drained) and c.drain_s is not None and c.drain_s <= args.max_drain and c.rows_land
        targets[f"{c.size}-event bundles{suffix}: dispatcher keeps up (drain <= {args.max_drain:g}s, all rows land)"] = (
            keeps_up, f"drain {c.drain_s:.2f}s, rows {c.rows}/{c.accepted_total} accepted")
    if targets:
        print("\nTargets")
        width = max(len(name) for name in targets)
        for name, (passed, detail) in targets.items():
            print(f"  {_verdict(passed)}  {name.ljust(width)}  {detail}")
    return targets


# main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Cortex ingest benchmark against a minimal Flask floor.")
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per case (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up load per case (default 3; 0: none)")
    parser.add_argument("--sizes", default="1,10,100", help="bundle sizes, comma-separated (default 1,10,100)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; the servers need the CPUs)")
    parser.add_argument("--servers", default="cortex,floor", help="which servers to run (default cortex,floor)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pairs of Cortex and floor runs per size; the targets take the median ratio (default 1)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator (default: wrk when installed, else the Python fallback)")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="longest wait for the dispatcher (s)")
    parser.add_argument("--max-drain", type=float, default=2.0, help="drain time that still counts as keeping up (s)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy record the Cortex workers during the measured load into DIR")
    parser.add_argument("--cortex-env", action="append", default=[], metavar="CORTEX_X__Y=VALUE",
                        help="run Cortex with this configuration variable (repeatable; for experiments, "
                             "e.g. CORTEX_QUEUE__DURABILITY=fsync; [server] settings are refused because "
                             "the floor must run with the same ones)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if any(s not in ("cortex", "floor") for s in args.servers):
        parser.error("--servers takes cortex and/or floor")
    if any(not 1 <= s <= 100 for s in args.sizes):
        parser.error("bundle sizes must be between 1 and 100 (the Data Cortex limit)")
    if args.duration < 1 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be at least 1")
    for item in args.cortex_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("CORTEX_"):
            parser.error(f"--cortex-env takes CORTEX_NAME=VALUE, not {item!r}")
        if name.startswith("CORTEX_SERVER__") or name in ("CORTEX_CONFIG", "CORTEX_DATA_DIR"):
            parser.error(f"--cortex-env {name} would make Cortex differ from the floor or the benchmark's setup")
        CORTEX_OVERRIDES[name] = value
    args.threads = max(1, min(args.threads, args.connections))
    args.wrk = shutil.which("wrk")
    args.wrk_missing = args.wrk is None
    if args.generator == "auto":
        args.generator = "wrk" if args.wrk else "python"
    elif args.generator == "wrk" and not args.wrk:
        parser.error("wrk is not installed (apt-get install -y wrk), use --generator python")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every case, print the report; 0 unless the benchmark itself broke."""
    args = parse_args(argv)
    # Ctrl-C, kill and a closed terminal all end in the same cleanup (also when the shell
    # started the benchmark in the background with SIGINT ignored)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    args.workdir = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    if args.generator == "python" and args.wrk_missing:
        print("note: wrk not found; using the Python load generator in a separate process "
              "(bench/pyload.py), which limits the request rate", flush=True)
    print(f"work directory: {args.workdir}", flush=True)
    cases: list[Case] = []
    failed = False
    try:
        for size in args.sizes:
            for number in range(1, args.rounds + 1):
                for kind in args.servers:
                    cases.append(run_case(kind, size, args, number))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        failed = True
    except BenchError as error:
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
        failed = True
    except Exception:
        traceback.print_exc()
        print("\nbenchmark failed (see the traceback above)", file=sys.stderr)
        failed = True
    finally:
        Managed.stop_all()
    if cases:
        targets = report(cases, args)
        if args.json:
            args.json.write_text(json.dumps({
                "cases": [asdict(c) for c in cases],
                "targets": {name: {"passed": p, "detail": d} for name, (p, d) in targets.items()},
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            }, indent=2))
    if args.keep or failed:
        print(f"\nlogs and databases kept in {args.workdir}")
    else:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
