"""Wiring of the operational features into an app: request ids and logs, metrics,
``/metrics``, health checks and backpressure."""

from __future__ import annotations

import hmac

from flask import Flask, Response, abort, request

from cortex import requestlog, scrape
from cortex.backpressure import Backpressure
from cortex.config import reveal
from cortex.health import blueprint as health_blueprint


def install_operations(app: Flask, state) -> None:
    """Register the hooks, endpoints and per-app helpers on ``app``."""
    config = state.config
    enabled = config["metrics"]["enabled"]
    state.extras["backpressure"] = Backpressure(state.queue, config)
    state.extras["metrics_enabled"] = enabled
    state.extras["request_log"] = requestlog.install(
        app, record_metrics=enabled, log_requests=config["logging"]["requests"])
    app.register_blueprint(health_blueprint)
    if enabled and not config["metrics"]["bind"]:
        _register_metrics_endpoint(app, state)


def queue_collector(state) -> scrape.QueueCollector:
    """The scrape-time gauges of ``state``'s queue and sinks."""
    return scrape.QueueCollector(state.queue, list(state.config["sinks"]), state.config["data_dir"],
                                  state.extras.get("backpressure"))


def _register_metrics_endpoint(app: Flask, state) -> None:
    token = reveal(state.config["metrics"]["token"]) or None
    collector = queue_collector(state)

    @app.get("/metrics")
    def metrics_view() -> Response:
        """Prometheus metrics (text exposition); with ``metrics.token`` set, only for
        ``Authorization: Bearer <token>``."""
        if token is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                abort(Response("metrics need Authorization: Bearer <metrics.token>\n", status=401,
                               headers={"WWW-Authenticate": 'Bearer realm="cortex metrics"'},
                               content_type="text/plain"))
        body, content_type = scrape.render(collector)
        return Response(body, content_type=content_type)
