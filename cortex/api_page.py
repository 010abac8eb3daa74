"""The ``/docs`` page: an OpenAPI document turned into plain data for one HTML template.

The page is rendered on the server from the same document ``/openapi.json`` serves, with no
script and nothing loaded from elsewhere, so it works offline and behind strict proxies.
Jinja escapes every value; nothing in it comes from a request.
"""

from __future__ import annotations

from typing import Any

REF_PREFIX = "#/components/schemas/"
METHOD_ORDER = ("get", "post", "put", "patch", "delete", "options")


def text_parts(text: str) -> list[tuple[bool, str]]:
    """A description as ``(is_code, text)`` parts: what sits between backticks is code."""
    return [(i % 2 == 1, part) for i, part in enumerate(text.split("`")) if part]


def type_parts(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """A schema's type as ``(kind, text)`` parts: ``("text", ...)`` or ``("ref", component)``."""
    if not schema:
        return [("text", "any JSON value")]
    if "$ref" in schema:
        return [("ref", schema["$ref"].removeprefix(REF_PREFIX))]
    for combinator, joiner in (("oneOf", " or "), ("anyOf", " or ")):
        if combinator in schema and "type" not in schema:
            parts: list[tuple[str, str]] = []
            for i, option in enumerate(schema[combinator]):
                if i:
                    parts.append(("text", joiner))
                parts.extend(type_parts(option))
            return parts
    kind = schema.get("type", "any JSON value")
    if kind == "array":
        return [("text", "array of ")] + type_parts(schema.get("items", {}))
    text = kind
    if schema.get("format"):
        text += f" ({schema['format']})"
    if schema.get("enum"):
        text += ": " + " | ".join(repr(v) if isinstance(v, str) else str(v) for v in schema["enum"])
    return [("text", text)]


def limits_text(schema: dict[str, Any]) -> str:
    """The size limits of a schema, in words."""
    notes = []
    for key, words in (("maxLength", "at most {} characters"), ("minItems", "at least {} items"),
                       ("maxItems", "at most {} items"), ("pattern", "matches {}")):
        if key in schema:
            notes.append(words.format(schema[key]))
    return "; ".join(notes)


def schema_rows(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per property of an object schema."""
    required = set(schema.get("required", ()))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        rows.append({"name": name, "type": type_parts(prop), "required": name in required,
                     "limits": limits_text(prop), "description": prop.get("description", "")})
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("description"):
        rows.append({"name": "(other fields)", "type": type_parts({k: v for k, v in extra.items() if k != "description"}),
                     "required": False, "limits": "", "description": extra["description"]})
    return rows


def page_context(spec: dict[str, Any]) -> dict[str, Any]:
    """What the ``api_docs.html`` template shows, from an OpenAPI document."""
    tags: dict[str, list[dict]] = {}
    for path, item in spec.get("paths", {}).items():
        for method in METHOD_ORDER:
            operation = item.get(method)
            if operation is None:
                continue
            body = operation.get("requestBody")
            tags.setdefault((operation.get("tags") or ["Other"])[0], []).append({
                "id": operation.get("operationId", f"{method}-{path}"),
                "method": method.upper(),
                "path": path,
                "summary": operation.get("summary", ""),
                "description": operation.get("description", ""),
                "security": [name for requirement in operation.get("security", []) for name in requirement],
                "parameters": [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                                "type": type_parts(p.get("schema", {})), "limits": limits_text(p.get("schema", {})),
                                "description": p.get("description", "")} for p in operation.get("parameters", [])],
                "body": None if body is None else {
                    "description": body.get("description", ""),
                    "content": [(ct, type_parts(media.get("schema", {}))) for ct, media in body["content"].items()],
                },
                "responses": [{"status": status, "description": answer.get("description", ""),
                               "content_types": list(answer.get("content", {})),
                               "headers": list(answer.get("headers", {}))}
                              for status, answer in operation.get("responses", {}).items()],
            })
    components = spec.get("components", {})
    schemas = [{"name": name, "description": schema.get("description", ""), "rows": schema_rows(schema),
                "type": type_parts({k: v for k, v in schema.items() if k != "description"}) if "properties" not in schema else None}
               for name, schema in components.get("schemas", {}).items()]
    security = [{"name": name, "type": scheme.get("type"), "header": scheme.get("name", ""),
                 "description": scheme.get("description", "")}
                for name, scheme in components.get("securitySchemes", {}).items()]
    info = spec.get("info", {})
    return {"info": info, "description": [text_parts(p) for p in info.get("description", "").split("\n\n")],
            "tags": tags, "text_parts": text_parts,
            "schemas": schemas, "security_schemes": security, "openapi_version": spec.get("openapi")}
