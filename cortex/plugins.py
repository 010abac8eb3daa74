"""The plugin manager: one per app, loading every plugin of the ``cortex`` entry-point group.

Bundled plugins (``plugins/cortex_sql``, ``plugins/cortex_file``, ...) are found the same way
as third-party ones, through their distribution's entry points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from cortex import hookspecs
from cortex.config import ConfigError
from cortex.enrichers import Enricher
from cortex.sinks import Sink

ENTRY_POINT_GROUP = "cortex"

#: the distribution to install for each bundled or well-known type, for error messages
KNOWN_TYPE_PACKAGES = {
    "sql": "cortex",
    "file": "cortex",
    "http": "cortex[http]",
    "kafka": "cortex[kafka]",
    "geoip": "cortex[geoip]",
    "currency": "cortex[currency]",
    "device": "cortex[device]",
}


@dataclass
class Registry:
    """The types plugins registered, by type name, with the plugin that registered each."""

    sinks: dict[str, type[Sink]] = field(default_factory=dict)
    enrichers: dict[str, type[Enricher]] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, cls: type, base: type, plugin: str) -> None:
        """Record one registered type; a clash or a wrong base class is a startup error."""
        table = getattr(self, kind)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(f"plugin {plugin} registered {cls!r}, which is not a {base.__name__}")
        name = cls.type_name
        if not name:
            raise ConfigError(f"plugin {plugin} registered {cls.__name__} without a type_name")
        if name in table and table[name] is not cls:
            other = self.owners[(kind, name)]
            raise ConfigError(f"{kind[:-1]} type {name!r} is registered by both {other} and {plugin}")
        table[name] = cls
        self.owners[(kind, name)] = plugin


def make_plugin_manager(extra_plugins: Iterable[Any] = (), load_entry_points: bool = True):
    """A new plugin manager with the hook specs, the installed plugins and ``extra_plugins``."""
    manager = pluggy.PluginManager("cortex")
    manager.add_hookspecs(hookspecs)
    if load_entry_points:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        manager.register(plugin)
    return manager


def plugin_name(manager: pluggy.PluginManager, plugin: Any) -> str:
    """The name a plugin is known by (its entry-point name or module name)."""
    return manager.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))


def collect_types(manager: pluggy.PluginManager) -> Registry:
    """Ask every plugin for its sink and enricher types.

    Each plugin's hook implementation is called on its own, so one plugin's error names
    that plugin instead of hiding the others.
    """
    registry = Registry()
    for hook_name, kind, base in (
        ("register_sinks", "sinks", Sink),
        ("register_enrichers", "enrichers", Enricher),
    ):
        hook = getattr(manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            name = plugin_name(manager, impl.plugin)
            impl.function(register=lambda cls, _n=name, _k=kind, _b=base: registry.add(_k, cls, _b, _n))
    return registry


def describe_plugins(manager: pluggy.PluginManager, registry: Registry) -> list[dict[str, Any]]:
    """For ``/-/plugins`` and ``cortex plugins``: each plugin, its version and its types."""
    dists = {}
    for plugin, dist in manager.list_plugin_distinfo():
        dists[id(plugin)] = dist
    described = []
    for plugin in manager.get_plugins():
        name = plugin_name(manager, plugin)
        dist = dists.get(id(plugin))
        entry = {
            "name": name,
            "module": getattr(plugin, "__name__", None),
            "version": dist.version if dist else None,
            "hooks": sorted(h.name for h in manager.get_hookcallers(plugin) or []),
            "sinks": sorted(t for (k, t), o in registry.owners.items() if k == "sinks" and o == name),
            "enrichers": sorted(
                t for (k, t), o in registry.owners.items() if k == "enrichers" and o == name
            ),
        }
        described.append(entry)
    return sorted(described, key=lambda p: p["name"])


def missing_type_error(kind: str, instance: str, type_name: str, registry: Registry) -> ConfigError:
    """The startup error for a configured type no plugin registered, naming what to install."""
    known = ", ".join(sorted(getattr(registry, kind))) or "none"
    package = KNOWN_TYPE_PACKAGES.get(type_name)
    advice = (
        f"install it with: pip install '{package}'"
        if package
        else "install the plugin package that provides it"
    )
    return ConfigError(
        f'[{kind}.{instance}] has type = "{type_name}", but no installed plugin registers a '
        f"{kind[:-1]} of that type (registered: {known}); {advice}, or fix the type name."
    )


def check_configured_types(config: dict, registry: Registry) -> None:
    """Fail at startup when configuration names a sink or enricher type nobody registered."""
    for kind in ("sinks", "enrichers"):
        for instance, table in config[kind].items():
            if table["type"] not in getattr(registry, kind):
                raise missing_type_error(kind, instance, table["type"], registry)
