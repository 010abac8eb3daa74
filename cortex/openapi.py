"""The OpenAPI 3 description of Cortex's public HTTP API, built with apispec from the
marshmallow schemas, served at ``/openapi.json`` and, as a page, at ``/docs``.

Each API describes itself in the module that holds its views, with a function that takes
an :class:`ApiDocs` and declares components (marshmallow schemas or JSON Schema dicts) and
:class:`Operation` objects.  Cortex's own APIs are listed in one place, :data:`CORE_APIS`;
a plugin that adds endpoints implements the ``register_api_docs`` hook instead.  To
document a new endpoint::

    # cortex/interactions/api_docs.py
    from cortex.openapi import ApiDocs, ApiResponse, Operation, RequestBody

    def describe_api(docs: ApiDocs) -> None:
        docs.component("Interaction", InteractionSchema)        # a marshmallow schema
        docs.operation(Operation(
            "post", "/api/v1/interactions", "postInteraction", "Record one interaction",
            tag="Interactions API", security=docs.API_KEY_SECURITY,
            request_body=RequestBody("Interaction"),
            responses={200: ApiResponse("every event's fate", "application/json", "InteractionResult"),
                       400: ApiResponse("the body is not valid", schema="Error")},
        ))

    # and add "cortex.interactions.api_docs" to CORE_APIS below.

Everything an operation lists is checked by the schemathesis run in the test suite: a
status, content type or body the endpoint can answer but the description does not list
fails it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
import orjson
from flask import Blueprint, Flask, Response, current_app, render_template

import cortex
from cortex.api_page import page_context
from cortex.ingest.fields import Integer, Number, TagList, Text, Timestamp

OPENAPI_VERSION = "3.0.3"

#: the modules whose ``describe_api(docs)`` describes Cortex's own endpoints
CORE_APIS: tuple[str, ...] = (
    "cortex.ingest.api_docs",
    "cortex.ingest.interactions_api_docs",
    "cortex.privacy_api_docs",
    "cortex.operations_api_docs",
    "cortex.analytics.api_docs",
    "cortex.openapi",
)


@dataclass(frozen=True)
class RequestBody:
    """An operation's request body: a schema (component name, marshmallow schema or JSON
    Schema dict) per content type."""

    schema: Any
    content_types: tuple[str, ...] = ("application/json",)
    description: str = ""
    required: bool = True
    #: extra content types with their own schema, e.g. ``{"text/plain": {"type": "string"}}``
    other_content: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiResponse:
    """One documented answer: what it means, its content type, body schema and headers."""

    description: str
    content_type: str | None = "text/plain"
    schema: Any = None
    #: header name -> description (documented as strings)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One documented endpoint and method."""

    method: str
    path: str
    operation_id: str
    summary: str
    description: str = ""
    tag: str = ""
    #: OpenAPI parameter objects (path, query and header parameters)
    parameters: tuple[Mapping[str, Any], ...] = ()
    request_body: RequestBody | None = None
    responses: Mapping[int, ApiResponse] = field(default_factory=dict)
    #: names of the security schemes that each authorise the call (any one is enough)
    security: tuple[str, ...] = ()


class ApiDocs:
    """Collects components and operations, and renders them into an OpenAPI document."""

    #: any one of these authorises an API-key endpoint (``Authorization: Bearer`` or ``X-API-Key``)
    API_KEY_SECURITY = ("ApiKeyBearer", "ApiKeyHeader")

    def __init__(self, title: str = "Cortex", version: str = cortex.__version__):
        self.marshmallow = MarshmallowPlugin(schema_name_resolver=lambda schema: None)
        self.spec = APISpec(
            title=title,
            version=version,
            openapi_version=OPENAPI_VERSION,
            plugins=[self.marshmallow],
            info={"description": API_DESCRIPTION},
        )
        _map_cortex_fields(self.marshmallow)
        self.spec.components.security_scheme(
            "ApiKeyBearer", {"type": "http", "scheme": "bearer", "description": "an app's API key as a bearer token"})
        self.spec.components.security_scheme(
            "ApiKeyHeader", {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an app's API key"})
        self._tags: set[str] = set()

    def component(self, name: str, schema: Any, description: str = "") -> dict:
        """Add a schema component (a marshmallow schema or a JSON Schema dict); returns its
        JSON Schema, which the caller may still adjust."""
        if isinstance(schema, Mapping):
            self.spec.components.schema(name, component=dict(schema))
        else:
            self.spec.components.schema(name, schema=schema)
        resolved = self.spec.components.schemas[name]
        if description:
            resolved["description"] = description
        return resolved

    def security_scheme(self, name: str, scheme: Mapping[str, Any]) -> None:
        """Add a security scheme (an OpenAPI security scheme object) operations can name."""
        self.spec.components.security_scheme(name, dict(scheme))

    def schema_of(self, name: str) -> dict:
        """The JSON Schema of a component added before."""
        return self.spec.components.schemas[name]

    def operation(self, operation: Operation) -> None:
        """Add one documented operation."""
        body: dict[str, Any] = {
            "operationId": operation.operation_id,
            "summary": operation.summary,
            "responses": {str(status): self._response(answer) for status, answer in sorted(operation.responses.items())},
        }
        if operation.description:
            body["description"] = operation.description
        if operation.tag:
            body["tags"] = [operation.tag]
            self._tags.add(operation.tag)
        if operation.parameters:
            body["parameters"] = [dict(p) for p in operation.parameters]
        if operation.request_body is not None:
            request = operation.request_body
            content = {ct: {"schema": _schema_ref(request.schema)} for ct in request.content_types}
            content.update({ct: {"schema": _schema_ref(s)} for ct, s in request.other_content.items()})
            body["requestBody"] = {"required": request.required, "content": content}
            if request.description:
                body["requestBody"]["description"] = request.description
        if operation.security:
            body["security"] = [{name: []} for name in operation.security]
        self.spec.path(path=operation.path, operations={operation.method.lower(): body})

    @staticmethod
    def _response(answer: ApiResponse) -> dict:
        result: dict[str, Any] = {"description": answer.description}
        if answer.content_type:
            result["content"] = {answer.content_type: {"schema": _schema_ref(answer.schema or {"type": "string"})}}
        if answer.headers:
            result["headers"] = {
                name: {"description": text, "schema": {"type": "string"}} for name, text in answer.headers.items()
            }
        return result

    def to_dict(self) -> dict:
        """The OpenAPI document."""
        return self.spec.to_dict()


def _schema_ref(schema: Any) -> Any:
    """A component name becomes a ``$ref``; schemas and dicts are passed to apispec as they are."""
    if isinstance(schema, str):
        return {"$ref": f"#/components/schemas/{schema}"}
    return schema


def _map_cortex_fields(plugin: MarshmallowPlugin) -> None:
    """Teach apispec Cortex's own marshmallow fields."""
    plugin.map_to_openapi_type(Text, "string", None)
    plugin.map_to_openapi_type(Number, "number", None)
    plugin.map_to_openapi_type(Integer, "integer", None)
    plugin.map_to_openapi_type(Timestamp, "string", "date-time")
    plugin.map_to_openapi_type(TagList, "array", None)

    def cortex_field_details(converter, field, **kwargs) -> dict:
        if isinstance(field, TagList):
            return {"items": {"type": "string", "maxLength": field.item.max_length}, "maxItems": field.max_items,
                    "description": f"a list of at most {field.max_items} strings; longer items are cut "
                                   f"to {field.item.max_length} characters, with a warning"}
        if isinstance(field, Text):
            extra = ", or false for the empty string" if field.false_means_empty else ""
            return {"description": f"longer values are cut, with a warning{extra}"}
        if isinstance(field, Integer):
            return {"minimum": -(2**63) + 1, "maximum": 2**63 - 1, "description": "a numeric string is read as the number"}
        if isinstance(field, Number):
            return {"minimum": -(2**63) + 1, "maximum": 2**63 - 1, "description": "a numeric string is read as the number"}
        if isinstance(field, Timestamp):
            return {"description": "without an offset, the time is taken as UTC"}
        return {}

    plugin.converter.add_attribute_function(cortex_field_details)


def load_describers(modules: tuple[str, ...] = CORE_APIS) -> list[Callable[[ApiDocs], None]]:
    """The ``describe_api`` functions of the given modules."""
    return [importlib.import_module(name).describe_api for name in modules]


def build_openapi(app: Flask | None = None) -> dict:
    """The OpenAPI document of Cortex's core APIs and, given an app, of its plugins' endpoints."""
    docs = ApiDocs()
    for describe in load_describers():
        describe(docs)
    if app is not None:
        state = app.extensions.get("cortex")
        if state is not None:
            hook = getattr(state.plugins.hook, "register_api_docs", None)
            if hook is not None:
                hook(docs=docs)
    return docs.to_dict()


API_DESCRIPTION = """\
Cortex accepts interaction events from apps, games and web sites, queues them durably and
delivers them to sinks. Every error answer is plain text (JSON under /api/) and says what
happened and what to do; no answer repeats the request unescaped.

Field values are coerced losslessly, each change recorded as a warning with the event:
numbers sent as strings are read as numbers, numbers sent for text fields become their
decimal text, control characters are removed from text, and text longer than its field's
limit is cut to it.

Request bodies, on every endpoint: at most `ingest.max_body_bytes` as sent (413 beyond,
before the body is read); `Content-Encoding: gzip` or `deflate` is accepted and decoded to at
most `ingest.max_decoded_bytes` and at most `ingest.max_compression_ratio` times the sent
size beyond `ingest.max_body_bytes` (413 beyond); JSON must be UTF-8, with finite numbers,
nested at most `ingest.max_json_depth` deep and with strings of at most
`ingest.max_string_chars` characters (400 otherwise); an unknown Content-Encoding is 415."""

blueprint = Blueprint("openapi", __name__)


def current_document() -> dict:
    """The app's OpenAPI document, built on first use and kept for the process."""
    state = current_app.extensions["cortex"]
    document = state.extras.get("openapi")
    if document is None:
        document = state.extras["openapi"] = build_openapi(current_app)
    return document


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    state = current_app.extensions["cortex"]
    body = state.extras.get("openapi_json")
    if body is None:
        body = state.extras["openapi_json"] = orjson.dumps(current_document())
    return Response(body, content_type="application/json", headers={"Access-Control-Allow-Origin": "*"})


@blueprint.get("/docs")
def docs_page() -> Response:
    """The API reference as one self-contained HTML page, rendered from the OpenAPI document."""
    html = render_template("api_docs.html", **page_context(current_document()))
    return Response(html, content_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})


def describe_api(docs: ApiDocs) -> None:
    """The description endpoints themselves and ``/-/plugins``."""
    docs.component("Error", {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "what went wrong and what to do"},
                       "status": {"type": "integer", "description": "the HTTP status, repeated"}},
        "required": ["error"],
    }, description="The JSON error answer of the /api/ endpoints.")
    docs.operation(Operation(
        "get", "/openapi.json", "getOpenApi", "This OpenAPI document", tag="About Cortex",
        responses={200: ApiResponse("the OpenAPI 3 document", "application/json", {"type": "object"})},
    ))
    docs.operation(Operation(
        "get", "/docs", "getDocs", "The API reference as an HTML page", tag="About Cortex",
        responses={200: ApiResponse("a self-contained HTML page rendered from /openapi.json", "text/html")},
    ))
    docs.operation(Operation(
        "get", "/-/plugins", "getPlugins", "The loaded plugins and the sink and enricher types each registered",
        tag="About Cortex",
        responses={200: ApiResponse("one object per plugin", "application/json", {
            "type": "array",
            "items": {"type": "object", "required": ["name", "hooks", "sinks", "enrichers"], "properties": {
                "name": {"type": "string"},
                "module": {"type": "string", "nullable": True},
                "version": {"type": "string", "nullable": True},
                "hooks": {"type": "array", "items": {"type": "string"}},
                "sinks": {"type": "array", "items": {"type": "string"}},
                "enrichers": {"type": "array", "items": {"type": "string"}},
            }},
        })},
    ))


def serve_api_docs(app: Flask) -> None:
    """Serve ``/openapi.json`` and ``/docs``."""
    app.register_blueprint(blueprint)
