"""The hooks a Cortex plugin can implement.

Plugins register *types* (sink types, enricher types); the configuration then creates named
instances of them.  Per-event work is a method on those types (``Sink.write``,
``Enricher.enrich``), never a hook, so that the core decides order, batching, retries and
isolation: pluggy stops at the first implementation that raises, which must never cost a
sink its events.

A plugin is a module (or package) exposing functions decorated with :data:`hookimpl`, listed
under the ``cortex`` entry-point group::

    [project.entry-points.cortex]
    my_sink = "my_package"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click
    import flask

    from cortex.enrichers import Enricher
    from cortex.openapi import ApiDocs
    from cortex.sinks import Sink

hookspec = pluggy.HookspecMarker("cortex")
hookimpl = pluggy.HookimplMarker("cortex")


@hookspec
def register_sinks(register: Callable[[type["Sink"]], None]) -> None:
    """Register sink types.

    Call ``register(SinkClass)`` once for each :class:`cortex.sinks.Sink` subclass the plugin
    provides.  The class's ``type_name`` is the name configuration uses
    (``[sinks.NAME] type = "TYPE_NAME"``); two plugins registering the same type name is a
    startup error.
    """


@hookspec
def register_enrichers(register: Callable[[type["Enricher"]], None]) -> None:
    """Register enricher types.

    Call ``register(EnricherClass)`` once for each :class:`cortex.enrichers.Enricher`
    subclass the plugin provides.  Configuration lists instances in the order they run
    (``[enrichers.NAME] type = "TYPE_NAME"``, first table first); ``on_error`` and
    ``timeout`` in the same table are the core's (see :mod:`cortex.enrichment`), the other
    keys are the enricher's options.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add commands to the ``cortex`` command-line tool.

    ``cli`` is the top-level click group; decorate new commands with ``@cli.command()``.
    """


@hookspec
def startup(app: "flask.Flask") -> None:
    """Called once per process after the Flask app is created and configured.

    Use it to register blueprints or read configuration.  Open no network connection here:
    under gunicorn, sinks and enrichers open their connections after the worker fork, in
    their own ``open()``.  Request hooks registered here (``app.before_request`` and the
    like) run for every request, the ingest POSTs included: these are then served through
    Flask instead of the faster ingest lane (:mod:`cortex.ingest.lane`).
    """


@hookspec
def register_api_docs(docs: "ApiDocs") -> None:
    """Describe the HTTP endpoints a plugin adds, for ``/openapi.json`` and ``/docs``.

    Call ``docs.component(name, schema)`` for request and answer schemas (marshmallow schemas
    or JSON Schema dicts) and ``docs.operation(Operation(...))`` for each endpoint and
    method; see :mod:`cortex.openapi`.
    """


@hookspec
def identifier_forms(config: dict, org: str, kind: str, value: str) -> "list[str] | set[str] | None":
    """Other values under which an identifier of a person may be stored.

    ``kind`` is ``user_tag``, ``device_tag`` or a social tag (see
    :data:`cortex.subjects.IDENTITY_FIELDS`), ``value`` the raw identifier, ``config`` the
    app's configuration.  A plugin that rewrites identifiers before they are stored (a
    pseudonymising enricher, say) returns every form it may have stored ``value`` under in
    ``org`` (with current and retired keys), so that data-subject exports, deletions and
    tombstones find them.  Return None or nothing when it stores none.
    """
