"""Error answers for everything the views do not answer themselves: 404, 405, 500, ...

Flask's defaults are HTML pages.  Cortex never answers HTML built from a request: its error
bodies are ``text/plain`` (the ingest endpoints' convention, which SDKs log as they are),
or JSON under ``/api/`` where clients parse answers.  Messages are fixed texts that quote
nothing from the request, and every answer says ``X-Content-Type-Options: nosniff`` so no
browser guesses another type.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

#: what a client should do, by status, added to the standard reason
ADVICE = {
    404: "no such endpoint; the endpoints are listed at /docs and /openapi.json",
    405: "this endpoint does not take this method; see the Allow header",
    500: "Cortex failed on this request; the server log has the details. Retry later",
}

JSON_PREFIXES = ("/api/",)


def error_response(error: HTTPException) -> Response:
    """The plain-text (or, under ``/api/``, JSON) answer for an HTTP error."""
    status = error.code or 500
    message = f"{status} {error.name}: {ADVICE.get(status) or error.description}"
    if request.path.startswith(JSON_PREFIXES):
        response = jsonify({"error": message, "status": status})
    else:
        response = Response(message.encode("utf-8"), content_type="text/plain; charset=utf-8")
    response.status_code = status
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every HTTP error (500 included) as plain text or JSON, never as HTML."""
    app.register_error_handler(HTTPException, error_response)
