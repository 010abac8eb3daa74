"""The ingest lane: ``POST /<org>/1/track`` and ``POST /<org>/1/app_log`` served without
Flask's per-request machinery.

Every event of every SDK comes through these two endpoints, so their cost per request is
Cortex's.  Flask's request context, routing, hooks and response objects cost about as much
as validating a small bundle.  The lane is a WSGI middleware in front of the app: it answers
these POSTs with the same core as the Flask views (:func:`cortex.ingest.views.answer_bundle`)
and does itself what the app's hooks would do for them: the request id, the log line and
request metrics, the CORS and ``nosniff`` headers.  Everything else goes on to Flask, the
same paths' ``OPTIONS`` preflights, other methods and trailing slashes included.

A plugin that registers Flask request hooks of its own (in its ``startup`` hook) expects
them to run for every request: then the lane steps aside and Flask serves the ingest
endpoints too, with the same answers.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Callable, Iterable

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_content_length

from cortex.errors import ADVICE
from cortex.ingest.views import CORS_HEADERS, Answer, allowed_headers, answer_bundle, wsgi_text
from cortex.requestlog import REQUEST_ID_HEADER, RequestLog, RequestTrace, incoming_request_id

log = logging.getLogger("cortex")

#: the paths the lane answers (the Flask routes' rules, without a trailing slash)
ROUTE = re.compile(r"^/([^/]+)/1/(track|app_log)$")
#: Flask's per-request hook registries; hooks for the whole app or the ingest blueprint
#: other than Cortex's own make the lane step aside
HOOK_REGISTRIES = ("url_value_preprocessors", "before_request_funcs", "after_request_funcs",
                   "teardown_request_funcs")
HOOK_SCOPES = (None, "ingest")
#: the Flask rule of each endpoint: request metrics and log lines name the endpoint by it
RULES = {"track": "/<org>/1/track", "app_log": "/<org>/1/app_log"}
INTERNAL_ERROR = Answer(500, f"500 Internal Server Error: {ADVICE[500]}".encode())


@cache
def status_line(status: int) -> str:
    """The status line Flask would send (werkzeug's upper-case reason phrase)."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown').upper()}"


class IngestLane:
    """WSGI middleware answering the Data Cortex ingest POSTs before ``app`` sees them."""

    def __init__(self, app: Flask, state, request_log: RequestLog):
        self.app = app
        self.state = state
        self.request_log = request_log
        #: the WSGI callable behind the lane (Flask's own, or what wraps it already)
        self.next = app.wsgi_app
        self._own_hooks = request_hooks(app)
        #: whether the lane serves (decided at the first request, once plugins have started)
        self.serving: bool | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.serving is None:
            self.serving = self._decide()
        if self.serving and environ.get("REQUEST_METHOD") == "POST":
            match = ROUTE.match(environ.get("PATH_INFO") or "")
            if match is not None:
                return self.serve(environ, start_response, wsgi_text(match.group(1)), match.group(2))
        return self.next(environ, start_response)

    def serve(self, environ: dict, start_response: Callable, org: str, endpoint: str) -> list[bytes]:
        """Answer one ingest POST (``endpoint``: ``track`` or ``app_log``) to ``org``."""
        trace = RequestTrace(incoming_request_id(environ))
        trace.org = org
        path = wsgi_text(environ["PATH_INFO"])
        try:
            answer = answer_bundle(self.state, environ, org, endpoint, trace)
        except Exception:
            if self._propagates():
                raise
            log.exception("Exception on %s [POST]", path)
            answer = INTERNAL_ERROR
        status = answer.status
        start_response(status_line(status), [
            ("Content-Type", "text/plain; charset=utf-8" if status == 500 else "text/plain"),
            ("Content-Length", str(len(answer.body))),
            *CORS_HEADERS,
            ("Access-Control-Allow-Headers", allowed_headers(environ)),
            *answer.headers,
            ("X-Content-Type-Options", "nosniff"),
            (REQUEST_ID_HEADER, trace.request_id),
        ])
        self.request_log.finish(trace, "POST", path, RULES[endpoint], status, environ.get("REMOTE_ADDR"),
                                get_content_length(environ))
        return [answer.body]

    def _decide(self) -> bool:
        added = request_hooks(self.app) - self._own_hooks
        if added:
            names = ", ".join(sorted(getattr(hook, "__qualname__", repr(hook)) for hook in added))
            log.info("Flask request hooks were registered besides Cortex's (%s); the ingest endpoints "
                     "are served through Flask so that they run", names)
        return not added

    def _propagates(self) -> bool:
        # Flask's rule: exceptions reach the caller in testing and debug mode
        propagate = self.app.config.get("PROPAGATE_EXCEPTIONS")
        return bool(self.app.testing or self.app.debug) if propagate is None else propagate


def request_hooks(app: Flask) -> set:
    """The request hooks registered on ``app`` that would run for an ingest request."""
    return {
        hook
        for registry in HOOK_REGISTRIES
        for scope in HOOK_SCOPES
        for hook in getattr(app, registry).get(scope, ())
    }


def install(app: Flask, state) -> None:
    """Put the ingest lane in front of ``app`` (after :func:`cortex.operations.install_operations`)."""
    app.wsgi_app = IngestLane(app, state, state.extras["request_log"])
