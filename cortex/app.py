"""The app factory."""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Iterable, Mapping

import sqlalchemy.exc
from flask import Flask, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

import cortex.accounts  # noqa: F401 - defines the account tables of the control database
from cortex.analytics.setup import install as install_analytics
from cortex.config import load_config
from cortex.control import ControlStore
from cortex.enrichment import check_enrichers
from cortex.errors import register_error_handlers
from cortex.ingest.interactions_views import blueprint as interactions_blueprint
from cortex.ingest.keys import AppDirectory, KeyCache
from cortex.ingest.lane import install as install_ingest_lane
from cortex.ingest.views import add_cors_headers, blueprint as ingest_blueprint
from cortex.logs import configure_logging
from cortex.operations import install_operations
from cortex.openapi import serve_api_docs
from cortex.privacy_api import blueprint as privacy_blueprint
from cortex.plugins import check_configured_types, collect_types, describe_plugins, make_plugin_manager
from cortex.queue import SQLiteQueue, make_queue
from cortex.ratelimit import RateLimits
from cortex.snippet import blueprint as snippet_blueprint
from cortex.state import CortexState


def create_app(
    config_path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    plugins: Iterable[Any] = (),
) -> Flask:
    """Create a Cortex Flask app.

    ``config_path`` names a TOML file (default: ``$CORTEX_CONFIG``); ``overrides`` is a
    nested dict applied last; ``plugins`` are extra plugin objects registered besides the
    installed ones (handy in tests).  Raises :class:`cortex.config.ConfigError` when the
    configuration is unusable, e.g. a sink type no installed plugin provides.
    """
    config = load_config(config_path, overrides)
    configure_logging(config["logging"])

    manager = make_plugin_manager(plugins)
    registry = collect_types(manager)
    check_configured_types(config, registry)

    os.makedirs(config["data_dir"], exist_ok=True)
    control = ControlStore(config["control_db"])
    queue = make_queue(config)
    _create_schemas(control, queue)
    state = CortexState(
        config=config,
        plugins=manager,
        registry=registry,
        control=control,
        queue=queue,
        keys=KeyCache(control, ttl=config["ingest"]["key_cache_seconds"]),
        rate_limits=RateLimits(config["rate_limits"]),
        apps=AppDirectory(control, ttl=config["ingest"]["key_cache_seconds"]),
    )

    check_enrichers(state)

    app = Flask("cortex")
    app.config["MAX_CONTENT_LENGTH"] = None  # the ingest views enforce their own cap
    app.extensions["cortex"] = state
    app.register_blueprint(ingest_blueprint)
    install_analytics(app, state)
    app.register_blueprint(interactions_blueprint)
    app.register_blueprint(snippet_blueprint)
    app.register_blueprint(privacy_blueprint)
    app.after_request(add_cors_headers)
    _register_introspection(app, state)
    register_error_handlers(app)
    serve_api_docs(app)
    install_operations(app, state)
    install_ingest_lane(app, state)
    hops = config["server"]["trust_proxy_hops"]
    if hops:  # outermost: the lane and Flask both see the client's address
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    manager.hook.startup(app=app)
    return app


def _create_schemas(control: ControlStore, queue: SQLiteQueue) -> None:
    # several gunicorn workers start at once; creating tables is idempotent but may race
    for attempt in range(5):
        try:
            control.create_schema()
            queue.create_schema()
            return
        except (sqlalchemy.exc.OperationalError, sqlite3.OperationalError):
            if attempt == 4:
                raise
            import time

            time.sleep(0.2 * (attempt + 1))


def _register_introspection(app: Flask, state: CortexState) -> None:
    @app.get("/-/plugins")
    def plugins_view():
        """The loaded plugins and the sink and enricher types each registered."""
        return jsonify(describe_plugins(state.plugins, state.registry))

