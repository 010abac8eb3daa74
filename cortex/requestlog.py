"""One structured log line per request, a request id, and the request metrics.

Every answer carries ``X-Request-Id``: the client's own when it sent a sane one, else a new
random id.  The same id is in the request's log line and on the ingest error log rows of
the events it refused, so a refused event can be traced back to its request and client.

The log line has the method, path (never the query string), endpoint, status, duration,
client address, org, event counts and, for a refusal, the reason.  API keys never appear:
the reason is scrubbed of the request's key, and bodies and headers are not logged.
"""

from __future__ import annotations

import logging
import os
import re
import time

from flask import Flask, Response, g, request

from cortex import metrics

log = logging.getLogger("cortex.request")

#: an incoming X-Request-Id is kept only when it looks like an id (no spaces, no markup)
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_HEADER = "X-Request-Id"
#: paths polled by load balancers and Prometheus: logged at DEBUG, not INFO
QUIET_PATHS = frozenset({"/-/health", "/-/ready", "/metrics"})


def new_request_id() -> str:
    """A fresh random request id (32 hex digits)."""
    return os.urandom(16).hex()


def note_refusal(reason: str) -> None:
    """Remember why this request was refused, for its log line."""
    g.cortex_reason = reason


def note_events(org: str, accepted: int, duplicate: int, rejected: int) -> None:
    """Remember what became of this request's events, for its log line."""
    g.cortex_org = org
    g.cortex_events = (accepted, duplicate, rejected)


def note_secret(secret: str) -> None:
    """A value (the request's API key) that must never reach the log."""
    g.cortex_secret = secret


def request_id() -> str:
    """This request's id."""
    return g.cortex_request_id


def install(app: Flask, record_metrics: bool, log_requests: bool = True) -> None:
    """Register the before/after hooks on ``app`` (``log_requests``: write the log lines)."""

    def start_request() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        g.cortex_request_id = incoming if incoming and SANE_REQUEST_ID.match(incoming) else new_request_id()
        g.cortex_started = time.perf_counter()

    # first of all before_request functions: one that answers early (a rate limiter's 429)
    # must not leave the request without its id and its timing
    app.before_request_funcs.setdefault(None, []).insert(0, start_request)

    @app.after_request
    def finish_request(response: Response) -> Response:
        # the objects behind Flask's proxies, once: each proxy access costs a lookup
        context, current = g._get_current_object(), request._get_current_object()
        started = getattr(context, "cortex_started", None)
        if started is None:  # an error before any before_request function ran
            start_request()
            started = context.cortex_started
        rid = context.cortex_request_id
        response.headers[REQUEST_ID_HEADER] = rid
        seconds = time.perf_counter() - started
        rule = current.url_rule
        endpoint = rule.rule if rule is not None else "unmatched"
        status = response.status_code
        if record_metrics:
            metrics.record_request(endpoint, current.method, status, seconds)
        path = current.path
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if log_requests and log.isEnabledFor(level):
            log.log(level, "%s %s %d", current.method, path, status,
                    extra={"fields": _fields(context, current, rid, endpoint, status, seconds)})
        return response


def _fields(context, current, rid: str, endpoint: str, status: int, seconds: float) -> dict:
    """The log line's fields (``context``: the request's ``g``; ``current``: the request)."""
    fields = {
        "request_id": rid,
        "method": current.method,
        "path": current.path,
        "endpoint": endpoint,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "remote_addr": current.remote_addr,
        "bytes_in": current.content_length,
    }
    values = context.__dict__
    org = values.get("cortex_org") or (current.view_args or {}).get("org")
    if org:
        fields["org"] = org
    events = values.get("cortex_events")
    if events:
        fields["accepted"], fields["duplicate"], fields["rejected"] = events
    reason = values.get("cortex_reason")
    if reason:
        secret = values.get("cortex_secret")
        if secret:
            reason = reason.replace(secret, "[api key]")
        fields["reason"] = reason
    return fields
