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
import re
import time
from random import getrandbits

from flask import Flask, Response, g, request

from cortex import metrics
from cortex.logs import line_handler, write_line

log = logging.getLogger("cortex.request")

#: an incoming X-Request-Id is kept only when it looks like an id (no spaces, no markup)
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_HEADER = "X-Request-Id"
#: paths polled by load balancers and Prometheus: logged at DEBUG, not INFO
QUIET_PATHS = frozenset({"/-/health", "/-/ready", "/metrics"})


def new_request_id() -> str:
    """A fresh random request id (32 hex digits).

    From the ``random`` module's generator, which Python seeds again in the child of every
    fork: ids need to be unique, not secret, and ``os.urandom`` is a system call per request.
    """
    return f"{getrandbits(128):032x}"


def incoming_request_id(environ: dict) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is sane, else a new one."""
    incoming = environ.get("HTTP_X_REQUEST_ID")
    return incoming if incoming and SANE_REQUEST_ID.match(incoming) else new_request_id()


class RequestTrace:
    """What one request's log line says besides its method, path and status: its id, when it
    started, and what the endpoint noted (org, event counts, why it refused, the secret to
    keep out of the line)."""

    __slots__ = ("request_id", "started", "org", "events", "reason", "secret")

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.started = time.perf_counter()
        self.org: str | None = None
        self.events: tuple[int, int, int] | None = None
        self.reason: str | None = None
        self.secret: str | None = None

    def note_events(self, org: str, accepted: int, duplicate: int, rejected: int) -> None:
        """Remember what became of the request's events."""
        self.org = org
        self.events = (accepted, duplicate, rejected)


class RequestLog:
    """Writes requests' log lines and request metrics (one per app: its settings)."""

    def __init__(self, record_metrics: bool, log_requests: bool = True):
        self.record_metrics = record_metrics
        self.log_requests = log_requests

    def finish(self, trace: RequestTrace, method: str, path: str, endpoint: str, status: int,
               remote_addr: str | None, bytes_in: int | None) -> None:
        """Count the answered request in the metrics and write its log line."""
        seconds = time.perf_counter() - trace.started
        if self.record_metrics:
            metrics.record_request(endpoint, method, status, seconds)
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if self.log_requests and log.isEnabledFor(level):
            fields = {
                "request_id": trace.request_id,
                "method": method,
                "path": path,
                "endpoint": endpoint,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "remote_addr": remote_addr,
                "bytes_in": bytes_in,
            }
            if trace.org:
                fields["org"] = trace.org
            if trace.events:
                fields["accepted"], fields["duplicate"], fields["rejected"] = trace.events
            reason = trace.reason
            if reason:
                if trace.secret:
                    reason = reason.replace(trace.secret, "[api key]")
                fields["reason"] = reason
            message = f"{method} {path} {status}"
            handler = line_handler(log, level)
            if handler is not None and write_line(
                handler, handler.formatter.line(time.time(), logging.getLevelName(level), log.name, message, fields)
            ):
                return
            # the record made here, not by log.log(): finding the caller's frame would cost a
            # fifth of the line, and every request line has the same one (this function)
            record = log.makeRecord(log.name, level, __file__, FINISH_LINE, "%s %s %d", (method, path, status),
                                    None, "finish", {"fields": fields})
            log.handle(record)


#: the line request log records name as where they were made (``%(lineno)d``)
FINISH_LINE = RequestLog.finish.__code__.co_firstlineno


def current_trace() -> RequestTrace:
    """The trace of the Flask request being served."""
    return g.cortex_trace


def install(app: Flask, record_metrics: bool, log_requests: bool = True) -> RequestLog:
    """Register the before/after hooks on ``app`` (``log_requests``: write the log lines);
    returns the :class:`RequestLog` they write with."""
    request_log = RequestLog(record_metrics, log_requests)

    def start_request() -> None:
        g.cortex_trace = RequestTrace(incoming_request_id(request.environ))

    # first of all before_request functions: one that answers early (a rate limiter's 429)
    # must not leave the request without its id and its timing
    app.before_request_funcs.setdefault(None, []).insert(0, start_request)

    @app.after_request
    def finish_request(response: Response) -> Response:
        # the objects behind Flask's proxies, once: each proxy access costs a lookup
        context, current = g._get_current_object(), request._get_current_object()
        trace = getattr(context, "cortex_trace", None)
        if trace is None:  # an error before any before_request function ran
            start_request()
            trace = context.cortex_trace
        if trace.org is None:
            trace.org = (current.view_args or {}).get("org")
        response.headers[REQUEST_ID_HEADER] = trace.request_id
        rule = current.url_rule
        request_log.finish(trace, current.method, current.path, rule.rule if rule is not None else "unmatched",
                           response.status_code, current.remote_addr, current.content_length)
        return response

    return request_log
