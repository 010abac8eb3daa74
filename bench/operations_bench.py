"""What metrics and request logs cost a request, in microseconds of CPU.

    .venv/bin/python bench/operations_bench.py

Measures, in this process, the calls one ingest request makes (``record_request``,
``record_events``, ``record_clock_skew``) with in-process metrics and in multiprocess mode
(a child process with ``PROMETHEUS_MULTIPROC_DIR`` set), next to the baseline of the same
samples recorded through prometheus-client directly; then one request log line, plain and
JSON, written to a file.  Each figure is the best of several repeats (the least disturbed by
other processes).  Compare with the CPU time of a whole request (``bench/ingest_bench.py``,
column "CPU ms/req").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import timeit

REPEATS = 9
NUMBER = 20000


def best_us(function, number: int = NUMBER) -> float:
    """The best per-call time of ``function``, in microseconds."""
    return min(timeit.repeat(function, number=number, repeat=REPEATS)) / number * 1e6


def metrics_costs() -> dict[str, float]:
    """Per-request metrics cost in this process's mode (in-process or multiprocess)."""
    from cortex import metrics

    m = metrics.get_metrics()

    def per_request():
        metrics.record_request("/<org>/1/track", "POST", 200, 0.003)
        metrics.record_events("demo", 1, 0)
        metrics.record_clock_skew(0.5)

    requests_child = m.child(m.requests, "/<org>/1/track", "POST", "200")
    latency_child = m.child(m.latency, "/<org>/1/track")
    accepted_child = m.child(m.accepted, "demo")

    def direct():
        requests_child.inc()
        latency_child.observe(0.003)
        accepted_child.inc(1)
        m.clock_skew.observe(0.5)

    return {"cortex": best_us(per_request), "prometheus-client directly": best_us(direct),
            "flush (per flush)": best_us(metrics.flush, 2000)}


def log_costs() -> dict[str, float]:
    """One request log line, plain and JSON, to a file."""
    from cortex.logs import make_formatter

    logger = logging.getLogger("bench.request")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as directory:
        handler = logging.FileHandler(os.path.join(directory, "requests.log"))
        logger.addHandler(handler)
        fields = {"request_id": os.urandom(16).hex(), "method": "POST", "path": "/demo/1/track",
                  "endpoint": "/<org>/1/track", "status": 200, "duration_ms": 1.234, "remote_addr": "127.0.0.1",
                  "bytes_in": 412, "org": "demo", "accepted": 1, "duplicate": 0, "rejected": 0}
        costs = {}
        for name in ("plain", "json"):
            handler.setFormatter(make_formatter(name))
            costs[name] = best_us(lambda: logger.info("%s %s %d", "POST", "/demo/1/track", 200,
                                                      extra={"fields": dict(fields)}), 5000)
        handler.close()
    return costs


def main() -> None:
    """Print the table."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(metrics_costs()))
        return
    in_process = metrics_costs()
    with tempfile.TemporaryDirectory() as directory:
        child = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, check=True,
                               env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory})
    multiprocess = json.loads(child.stdout)
    logs = log_costs()
    print("Per-request cost, microseconds (best of %d)" % REPEATS)
    print(f"{'what':44} {'in-process':>10} {'multiprocess':>12}")
    for key in in_process:
        print(f"{'metrics: ' + key:44} {in_process[key]:10.2f} {multiprocess[key]:12.2f}")
    for mode, costs in (("in-process", in_process), ("multiprocess", multiprocess)):
        ratio = costs["cortex"] / costs["prometheus-client directly"]
        print(f"ratio cortex / prometheus-client directly ({mode}): {ratio:.2f}")
    for name, cost in logs.items():
        print(f"{'request log line, ' + name:44} {cost:10.2f}")


if __name__ == "__main__":
    main()
