"""Plugins: discovery through entry points, /-/plugins, registration rules."""

from __future__ import annotations

import re

import pytest

from conftest import make_plugin
from cortex import Enricher, Sink, hookimpl
from cortex.app import create_app
from cortex.config import ConfigError


class UpperEnricher(Enricher):
    type_name = "upper"
    description = "upper-cases kingdom"

    def enrich(self, records):
        for record in records:
            if "kingdom" in record:
                record["kingdom"] = record["kingdom"].upper()


class ListSink(Sink):
    type_name = "list"
    received: list = []

    def write(self, records):
        self.received.extend(records)


def _sinks(register):
    register(ListSink)


def _enrichers(register):
    register(UpperEnricher)


third_party = make_plugin(
    "third_party", register_sinks=hookimpl(_sinks), register_enrichers=hookimpl(_enrichers)
)


def test_plugins_endpoint_lists_bundled_plugins_and_their_types(cortex):
    response = cortex.client.get("/-/plugins")
    assert response.status_code == 200
    plugins = {p["name"]: p for p in response.json}
    assert plugins["sql"]["sinks"] == ["sql"] and plugins["sql"]["module"] == "cortex_sql"
    assert plugins["file"]["sinks"] == ["file"]
    assert plugins["sql"]["version"]


def test_a_third_party_plugin_registers_sink_and_enricher_types(make_cortex):
    ListSink.received = []
    cortex = make_cortex(plugins=[third_party], sinks={"mine": {"type": "list"}},
                         enrichers={"up": {"type": "upper"}})
    names = {p["name"]: p for p in cortex.client.get("/-/plugins").json}
    assert names["third_party"]["sinks"] == ["list"] and names["third_party"]["enrichers"] == ["upper"]
    event = {"type": "event", "event_datetime": "2024-01-01T00:00:00Z", "kingdom": "shop"}
    assert cortex.post(cortex.bundle([event])).status_code == 200
    cortex.deliver()
    assert [r["kingdom"] for r in ListSink.received] == ["SHOP"]


def test_two_plugins_claiming_one_type_name_is_an_error(tmp_path):
    class Clash(Sink):
        type_name = "sql"

    clash = make_plugin("clash", register_sinks=hookimpl(lambda register: register(Clash)))
    with pytest.raises(ConfigError, match="registered by both"):
        create_app(overrides={"data_dir": str(tmp_path)}, plugins=[clash])


def test_registering_something_that_is_not_a_sink_is_an_error(tmp_path):
    bad = make_plugin("bad", register_sinks=hookimpl(lambda register: register(object)))
    with pytest.raises(ConfigError, match="not a Sink"):
        create_app(overrides={"data_dir": str(tmp_path)}, plugins=[bad])


@pytest.mark.parametrize("type_name, module, extra", [
    ("currency", "currency_converter", "cortex[currency]"),
    ("device", "ua_parser", "cortex[device]"),
    ("geoip", "iptocc", "cortex[geoip]"),
])
def test_a_bundled_enricher_without_its_library_names_the_extra(tmp_path, monkeypatch, type_name, module, extra):
    """A plain ``pip install cortex`` starts; configuring an enricher whose library is
    missing is a startup error that says which extra to install."""
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = {module, "maxminddb"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    create_app(overrides={"data_dir": str(tmp_path / "plain")})  # nothing configured: starts
    with pytest.raises(ConfigError, match=rf"pip install '{re.escape(extra)}'"):
        create_app(overrides={"data_dir": str(tmp_path / "configured"), "enrichers": {"e": {"type": type_name}}})
