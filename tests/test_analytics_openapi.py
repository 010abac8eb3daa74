"""The OpenAPI document describes every endpoint of the query API, with its arguments."""

from __future__ import annotations

from cortex.openapi import build_openapi


def test_every_analytics_route_is_documented(cortex):
    paths = build_openapi(cortex.app)["paths"]
    routes = {rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
              for rule in cortex.app.url_map.iter_rules() if rule.endpoint.startswith("analytics_api.")}
    assert routes <= set(paths)
    events = paths["/api/v1/analytics/events"]["get"]
    names = {p["name"] for p in events["parameters"]}
    assert {"business_id", "start_date", "end_date", "event_type", "bucket", "os", "country", "use"} <= names
    assert set(events["responses"]) == {"200", "400", "401", "403", "404", "503"}
    funnel = {p["name"]: p for p in paths["/api/v1/analytics/funnel"]["get"]["parameters"]}
    assert funnel["steps"]["required"] is True
