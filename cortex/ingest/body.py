"""Reading request bodies: JSON whatever the Content-Type, chunked or not, size-capped."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Request


class BodyError(Exception):
    """The body cannot be read or decoded; ``status`` is the HTTP answer to give."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, at most ``max_bytes`` (413 beyond), with or without Content-Length.

    Browser SDKs send ``text/plain`` on purpose and some clients send
    ``Transfer-Encoding: chunked`` without a length, so neither header decides anything.
    """
    environ = request.environ
    stream = environ["wsgi.input"]
    length = request.content_length
    if length is not None:
        if length > max_bytes:
            raise BodyError(413, f"the body is {length} bytes; the limit is {max_bytes}")
        return stream.read(length)
    if not environ.get("wsgi.input_terminated"):
        # no length, and a server that does not end the stream (gunicorn does): there is
        # no body that could be read safely
        return b""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BodyError(413, f"the body is larger than the limit of {max_bytes} bytes")
    return data


def parse_json(data: bytes) -> Any:
    """Decode a JSON body; a clear 400 when it is not JSON."""
    if not data.strip():
        raise BodyError(400, "the body is empty; send the bundle as a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BodyError(400, f"the body is not valid JSON ({error}); send the bundle as a JSON object") from None
