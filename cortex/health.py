"""``/-/health`` and ``/-/ready``: what a load balancer or an orchestrator asks.

``/-/health`` answers 200 as long as the process serves requests (liveness; no I/O).
``/-/ready`` answers 200 only when a bundle sent now would be accepted: the queue can be
written, the data directory's disk is not past its limit, the control database (API keys)
answers, and ingest is not refusing for backpressure.  Sinks are reported with their lag;
a sink behind by more than ``health.max_sink_lag_seconds`` makes the node unready only when
that key is set, because the queue exists precisely to ride out a sink's outage.
Both answer JSON, 200 or 503.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify

blueprint = Blueprint("health", __name__)


@blueprint.get("/-/health")
def health():
    """Liveness: 200 while the process answers."""
    return jsonify({"status": "ok"})


@blueprint.get("/-/ready")
def ready():
    """Readiness: 200 when ingest can durably accept now, else 503; every check in the body."""
    state = current_app.extensions["cortex"]
    checks = readiness(state)
    ok = all(check["ok"] for check in checks.values() if "ok" in check)
    body = {"status": "ready" if ok else "unready", "checks": checks}
    return jsonify(body), 200 if ok else 503


def _failure(error: BaseException) -> str:
    # the first line only: driver messages can go on with SQL and parameters
    text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def readiness(state) -> dict[str, dict[str, Any]]:
    """Each readiness check's result, by name (``ok`` false when it fails)."""
    settings = state.config["health"]
    checks: dict[str, dict[str, Any]] = {}
    try:
        state.queue.probe_writable()
        checks["queue"] = {"ok": True}
    except Exception as error:  # noqa: BLE001 - any failure means "not writable"
        checks["queue"] = {"ok": False, "error": _failure(error)}

    usage = shutil.disk_usage(state.config["data_dir"])
    disk_ok = usage.free >= settings["min_free_bytes"]
    checks["disk"] = {"ok": disk_ok, "free_bytes": usage.free, "min_free_bytes": settings["min_free_bytes"]}

    try:
        with state.control.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        checks["control_db"] = {"ok": True}
    except Exception as error:  # noqa: BLE001
        checks["control_db"] = {"ok": False, "error": _failure(error)}

    backpressure = state.extras.get("backpressure")
    refusal = backpressure.refusal() if backpressure is not None else None
    checks["backpressure"] = {"ok": refusal is None, **({"reason": refusal} if refusal else {})}

    max_lag = settings["max_sink_lag_seconds"]
    now = time.time()
    sinks: dict[str, Any] = {}
    sinks_ok = True
    try:
        for name in state.config["sinks"]:
            lag_state = state.queue.sink_lag(name)
            oldest = lag_state["oldest_pending_at"]
            lag = round(max(0.0, now - oldest), 3) if oldest else 0.0
            lagging = bool(max_lag) and lag > max_lag
            sinks_ok = sinks_ok and not lagging
            sinks[name] = {"lag_seconds": lag, "pending_entries": lag_state["pending_entries"],
                           "state": "lagging" if lagging else "ok"}
        checks["sinks"] = {"sinks": sinks}
        if max_lag:
            checks["sinks"]["ok"] = sinks_ok
            checks["sinks"]["max_lag_seconds"] = max_lag
    except Exception as error:  # noqa: BLE001 - the queue check above already says why
        checks["sinks"] = {"error": _failure(error)}
    return checks
