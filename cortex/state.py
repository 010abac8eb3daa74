"""What one Cortex app holds: configuration, plugins, stores.  Kept in ``app.extensions``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from cortex.control import ControlStore
from cortex.enrichers import Enricher
from cortex.ingest.keys import AppDirectory, KeyCache
from cortex.plugins import Registry
from cortex.queue import SQLiteQueue
from cortex.ratelimit import RateLimits
from cortex.sinks import Sink, SinkContext


@dataclass
class CortexState:
    """The per-app state: everything request handlers, the dispatcher and the CLI share."""

    config: dict[str, Any]
    plugins: pluggy.PluginManager
    registry: Registry
    control: ControlStore
    queue: SQLiteQueue
    keys: KeyCache
    extras: dict[str, Any] = field(default_factory=dict)
    #: per-key and per-address request limits of the ingest endpoints
    rate_limits: RateLimits | None = None
    #: the apps of each org by name (the generic API's business_id)
    apps: AppDirectory | None = None

    @property
    def data_dir(self) -> Path:
        """The data directory (absolute)."""
        return Path(self.config["data_dir"])

    def sink_context(self, kind: str, name: str) -> SinkContext:
        """The context handed to a sink or enricher instance."""
        return SinkContext(
            data_dir=self.data_dir,
            logger=logging.getLogger(f"cortex.{kind}.{name}"),
            durability=self.config["queue"]["durability"],
        )

    def make_sinks(self) -> list[Sink]:
        """New, unopened instances of every configured sink."""
        return [
            self.registry.sinks[table["type"]](
                name, {k: v for k, v in table.items() if k != "type"}, self.sink_context("sink", name)
            )
            for name, table in self.config["sinks"].items()
        ]

    def make_enrichers(self) -> list[Enricher]:
        """New, unopened instances of every configured enricher, in configured order (the
        order of the ``[enrichers.NAME]`` tables in the configuration)."""
        from cortex.enrichment import enricher_options

        return [
            self.registry.enrichers[table["type"]](
                name, enricher_options(table), self.sink_context("enricher", name)
            )
            for name, table in self.config["enrichers"].items()
        ]
