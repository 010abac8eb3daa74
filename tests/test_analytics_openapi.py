"""The query API's OpenAPI paths cover every endpoint, with the request schemas' arguments."""

from __future__ import annotations

import pytest

apispec = pytest.importorskip("apispec", reason="apispec is in the test extra")


def test_every_api_route_is_documented(cortex):
    from apispec.ext.marshmallow import MarshmallowPlugin

    from cortex.analytics.openapi_paths import register_paths

    spec = apispec.APISpec("Cortex", "1", "3.0.3", plugins=[MarshmallowPlugin()])
    register_paths(spec)
    document = spec.to_dict()
    documented = set(document["paths"])
    routes = {rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
              for rule in cortex.app.url_map.iter_rules()
              if rule.rule.startswith("/api/v1/") and rule.endpoint.startswith("analytics_api.")}
    assert routes == documented
    events = document["paths"]["/api/v1/analytics/events"]["get"]
    names = {p["name"] for p in events["parameters"]}
    assert {"business_id", "start_date", "end_date", "event_type", "bucket", "os", "country"} <= names
    assert set(events["responses"]) == {"200", "400", "401", "403", "404"}
    funnel = {p["name"]: p for p in document["paths"]["/api/v1/analytics/funnel"]["get"]["parameters"]}
    assert funnel["steps"]["required"] is True
