"""The official OpenAPI document (package data) as the simulator's source of truth for request
shapes and required permissions: every JSON body is validated against its operation's schema
(400 / 21405 with the validator's words, as KSeF does), and `x-required-permissions` decides 403s.
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from typing import Any

from aiohttp import web
from jsonschema.exceptions import best_match
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from .errors import KsefException

API_PREFIX = "/v2"


@functools.cache
def document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(files("ksefd").joinpath("data/spec/openapi.json").read_text("utf-8"))
    return data


@functools.cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = DRAFT4.create_resource(document())
    registry: Registry[Any] = Registry().with_resource("urn:ksef-openapi", resource)
    return registry


@functools.cache
def validator(schema_name: str) -> OAS30Validator:
    schema = {"$ref": f"urn:ksef-openapi#/components/schemas/{schema_name}"}
    return OAS30Validator(schema, registry=_registry())


def operation(request: web.Request) -> dict[str, Any]:
    """The spec's operation object for the matched route (e.g. `/sessions/online/{referenceNumber}`)."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    path = canonical[len(API_PREFIX):] if canonical.startswith(API_PREFIX) else canonical
    op: dict[str, Any] = document()["paths"].get(path, {}).get(request.method.lower(), {})
    return op


def request_schema_name(op: dict[str, Any]) -> str | None:
    content = op.get("requestBody", {}).get("content", {})
    for media in ("application/json", "application/*+json", "text/json"):
        ref = content.get(media, {}).get("schema", {}).get("$ref")
        if ref:
            return str(ref).rsplit("/", 1)[-1]
    return None


def _inline_request_schema(op: dict[str, Any]) -> str | None:
    """Every request body of openapi.json is an inline `{required, allOf: [$ref]}`, not a bare $ref: its JSON
    text with the component references made absolute (cache key of `_inline_validator`)."""
    content = op.get("requestBody", {}).get("content", {})
    for media in ("application/json", "application/*+json", "text/json"):
        schema = content.get(media, {}).get("schema")
        if schema:
            return json.dumps(schema).replace('"#/components/', '"urn:ksef-openapi#/components/')
    return None


@functools.cache
def _inline_validator(schema_json: str) -> OAS30Validator:
    return OAS30Validator(json.loads(schema_json), registry=_registry())


def validate(schema_name: str, body: Any) -> None:
    """Raise 21405 with the validator's message when `body` breaks the named schema."""
    _report(list(validator(schema_name).iter_errors(body)))


def _report(errors: list[Any]) -> None:
    if errors:
        worst = best_match(errors)
        where = "/".join(str(p) for p in worst.absolute_path) or "(body)"
        raise KsefException(21405, [f"{where}: {worst.message}"])


async def json_body(request: web.Request) -> dict[str, Any]:
    """Read and validate the JSON request body against the operation's requestBody schema."""
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KsefException(21405, [f"Treść żądania nie jest poprawnym JSON: {exc}"]) from exc
    op = operation(request)
    name = request_schema_name(op)
    inline = None if name is not None else _inline_request_schema(op)
    if name is not None or inline is not None:
        if body is None:
            raise KsefException(21405, ["Brak treści żądania."])
        if name is not None:
            validate(name, body)
        else:
            _report(list(_inline_validator(str(inline)).iter_errors(body)))
    if not isinstance(body, dict):
        raise KsefException(21405, ["Treść żądania musi być obiektem JSON."])
    return body


def required_permissions(request: web.Request) -> list[str]:
    perms = operation(request).get("x-required-permissions") or []
    return [str(p) for p in perms]
