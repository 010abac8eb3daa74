"""The OpenAPI document, the /docs page, and a schemathesis run against every documented operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import Cortex
from cortex.openapi import build_openapi

ADMIN_TOKEN = "org-admin-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Cortex:
    """One Cortex for the whole schemathesis run."""
    return Cortex(tmp_path_factory.mktemp("openapi") / "data",
                  {"privacy": {"admin_tokens": {"demo": ADMIN_TOKEN}}})


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_wsgi("/openapi.json", api.app)


def documented_operations() -> list:
    """(method, path, mode) of every operation the document lists: valid requests for all,
    invalid ones for operations that take a body (an invalid path is not a request)."""
    cases = []
    for path, item in build_openapi()["paths"].items():
        for method, operation in item.items():
            cases.append(pytest.param(method, path, GenerationMode.POSITIVE, id=f"{method} {path} valid"))
            if operation.get("requestBody"):
                cases.append(pytest.param(method, path, GenerationMode.NEGATIVE, id=f"{method} {path} invalid"))
    return cases


@pytest.mark.parametrize("method, path, mode", documented_operations())
def test_every_documented_operation_conforms(api, api_schema, method, path, mode):
    """Generated requests, valid and invalid, most of them authorised so that they reach
    validation and the queue: no 5xx, and every answer's status, content type, headers and
    body as documented."""
    operation = api_schema[path][method.upper()]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        if path.startswith("/api/v1/privacy/"):
            # an org admin of the test org, so that exports and deletions really run
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
            if isinstance(case.body, dict):
                case.body["org"] = api.org
        elif path.startswith("/api/v1/interactions"):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {api.api_key}"}
            (case.query or {}).pop("api_key", None)
            events = case.body if isinstance(case.body, list) else [case.body]
            for event in events:
                if isinstance(event, dict) and "business_id" in event:
                    event["business_id"] = "default"  # the key's own app; others are rejected
        elif isinstance(case.body, dict):
            case.body["api_key"] = api.api_key
            case.path_parameters["org"] = api.org
        case.call_and_validate(checks=CHECKS)

    check()


def test_the_document_is_the_marshmallow_schemas(api):
    """Every event type's component lists exactly its schema's fields, limits and required ones."""
    from cortex.ingest.fields import Text
    from cortex.ingest.schemas import EVENT_FIELDS

    spec = api.client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    components = spec["components"]["schemas"]
    for event_type, fields in EVENT_FIELDS.items():
        name = next(n for n, c in components.items() if c.get("properties", {}).get("type", {}).get("enum") == [event_type])
        component = components[name]
        assert set(component["properties"]) == set(fields)
        assert set(component.get("required", [])) == {k for k, f in fields.items() if f.required}
        for key, field in fields.items():
            if type(field) is Text and key != "type":
                assert component["properties"][key]["maxLength"] == field.max_length
    events = components["TrackBundle"]["properties"]["events"]
    assert events["maxItems"] == 100 and len(events["items"]["oneOf"]) == len(EVENT_FIELDS)
    paths = spec["paths"]
    assert {"/{org}/1/track", "/{org}/1/app_log", "/openapi.json", "/docs", "/-/plugins",
            "/api/v1/privacy/export", "/api/v1/privacy/delete"} <= set(paths)


def test_the_docs_page_is_self_contained(api):
    response = api.client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.data.decode()
    for operation in ("POST</span> /{org}/1/track", "POST</span> /{org}/1/app_log", "GET</span> /openapi.json"):
        assert operation in html
    assert "EconomyEvent" in html and "spend_currency" in html
    assert "<script" not in html and "http://" not in html.replace('href="https://apispec', "")
    assert "https://" not in html
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
