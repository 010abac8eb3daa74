"""The browser tracking snippet, served at a stable URL: ``GET /sdk/cortex.js``.

Pages load it from the Cortex they send to (``<script src=".../sdk/cortex.js"
data-api-key="KEY" async>``), so the snippet and the API it speaks always match.  The
source is ``cortex/static/cortex.js``; it is read once per process.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from flask import Blueprint, Response, request

blueprint = Blueprint("snippet", __name__)

SNIPPET_PATH = "/sdk/cortex.js"
_SOURCE = resources.files("cortex").joinpath("static/cortex.js").read_bytes()
_ETAG = hashlib.sha256(_SOURCE).hexdigest()[:32]


@blueprint.get(SNIPPET_PATH)
def snippet() -> Response:
    """The snippet's JavaScript, cacheable for an hour and revalidated by ETag."""
    headers = {
        "ETag": f'"{_ETAG}"',
        "Cache-Control": "public, max-age=3600",
        "Access-Control-Allow-Origin": "*",
        "X-Content-Type-Options": "nosniff",
    }
    if request.if_none_match.contains(_ETAG):
        return Response(status=304, headers=headers)
    return Response(_SOURCE, headers=headers, content_type="application/javascript; charset=utf-8")
