"""The floor: the least an ingest endpoint can do under Cortex's gunicorn settings.

One POST route that reads the body, parses it with orjson and answers ``200 text/plain OK``.
Whatever Cortex does beyond that (authentication, validation, dedupe, the durable queue,
the embedded dispatcher) shows up as the distance between Cortex and this app when both run
under the same gunicorn settings and the same load.

Run it the way ``ingest_bench.py`` does::

    .venv/bin/python bench/floor_app.py --bind 127.0.0.1:9001

The gunicorn settings (workers, threads, worker class, timeouts, keep-alive) are those of
``cortex.config.DEFAULTS["server"]``, turned into gunicorn options by the same
``cortex.server.gunicorn_options`` that ``cortex serve`` uses, minus Cortex's own hooks.
"""

from __future__ import annotations

import argparse

import orjson
from flask import Flask, Response, request

app = Flask("floor")


@app.post("/<org>/1/track")
def track(org: str) -> Response:
    """Parse the bundle and say OK, as Cortex does on success."""
    orjson.loads(request.get_data())
    return Response(b"OK", status=200, content_type="text/plain")


def floor_options(bind: str) -> dict:
    """gunicorn options equal to Cortex's defaults, without the dispatcher hooks."""
    from cortex.config import DEFAULTS
    from cortex.server import gunicorn_options

    options = gunicorn_options({"server": DEFAULTS["server"]}, bind)
    options.pop("post_worker_init", None)
    options.pop("worker_exit", None)
    return options


def main() -> None:
    """Command line: ``floor_app.py --bind HOST:PORT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="127.0.0.1:9001", help="address to listen on")
    args = parser.parse_args()
    from cortex.server import CortexServer

    # the same gunicorn application class Cortex runs under, with the floor's app
    CortexServer(lambda: app, floor_options(args.bind)).run()


if __name__ == "__main__":
    main()
