"""The official OpenAPI document (package data) as the simulator's source of truth for request
shapes and required permissions: every JSON body, and every path, query and header parameter, is
validated against its operation's schema (400 / 21405 with the validator's words, as KSeF does), and
`x-required-permissions` decides 403s.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from aiohttp import web
from jsonschema.exceptions import best_match
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from .clock import parse_iso
from .errors import KsefException

API_PREFIX = "/v2"
_LOCAL_REF = '"#/components/'
_ABSOLUTE_REF = '"urn:ksef-openapi#/components/'


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


def _spec_path(request: web.Request) -> str:
    """The spec's path of the matched route (e.g. `/sessions/online/{referenceNumber}`)."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    return canonical[len(API_PREFIX):] if canonical.startswith(API_PREFIX) else canonical


def operation(request: web.Request) -> dict[str, Any]:
    """The spec's operation object for the matched route."""
    op: dict[str, Any] = document()["paths"].get(_spec_path(request), {}).get(request.method.lower(), {})
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
            return json.dumps(schema).replace(_LOCAL_REF, _ABSOLUTE_REF)
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
    op = operation(request)
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # API 2.9.0 (PROTOCOL.md §15): 21001 "Nieczytelna treść." on the operations that document it,
        # 21405 on the others (testdata, limits), whose 400 lists no other code for a broken body.
        code = 21001 if documents_code(op, 21001) else 21405
        raise KsefException(code, [f"Treść żądania nie jest poprawnym JSON w UTF-8: {exc}"]) from exc
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


def documents_code(op: dict[str, Any], code: int) -> bool:
    """Whether the operation's 400 answer lists `code` (its description is a table of exception codes)."""
    description = str(op.get("responses", {}).get("400", {}).get("description", ""))
    return re.search(rf"(?m)^\|\s*{code}\s*\|", description) is not None


# parameters ----------------------------------------------------------------------------------------
def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref` and single `allOf` wrappers to the schema that carries the type (e.g. SessionType)."""
    while True:
        if "$ref" in schema:
            node: Any = document()
            for part in str(schema["$ref"]).removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        elif "type" not in schema and len(schema.get("allOf", [])) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


@dataclass(frozen=True)
class _Parameter:
    """One parameter of an operation, prepared once: where it travels, its resolved type, its validator."""

    name: str
    where: str                   # path | query | header
    required: bool
    kind: str | None             # integer | boolean | string | array ...
    item_kind: str | None        # the items' type of an array
    date_time: bool
    validator: OAS30Validator


@functools.cache
def _parameters(method: str, path: str) -> tuple[_Parameter, ...]:
    op = document()["paths"].get(path, {}).get(method.lower(), {})
    found = []
    for param in op.get("parameters", []):
        schema = param.get("schema", {})
        resolved = _resolved(schema)
        items = _resolved(resolved.get("items", {})) if resolved.get("type") == "array" else {}
        found.append(_Parameter(param["name"], param["in"], bool(param.get("required")), resolved.get("type"),
                                items.get("type"), resolved.get("format") == "date-time",
                                _inline_validator(json.dumps(schema).replace(_LOCAL_REF, _ABSOLUTE_REF))))
    return tuple(found)


def _scalar(param: _Parameter, kind: str | None, raw: str) -> Any:
    """A query/path/header text as the JSON value its schema describes (ASP.NET model binding)."""
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d{1,10}", raw.strip()):
            raise KsefException(21405, [f"{param.name}: wartość {raw!r} nie jest liczbą całkowitą."])
        return int(raw)
    if kind == "boolean":
        if raw.strip().lower() not in ("true", "false"):
            raise KsefException(21405, [f"{param.name}: wartość {raw!r} nie jest wartością logiczną (true/false)."])
        return raw.strip().lower() == "true"
    if param.date_time:
        try:
            parse_iso(raw)
        except ValueError:
            raise KsefException(21405, [f"{param.name}: wartość {raw!r} nie jest datą ISO-8601 (np. "
                                        "2026-01-31T12:00:00+01:00)."]) from None
    return raw


def _raw_values(request: web.Request, param: _Parameter) -> list[str]:
    if param.where == "path":
        return [request.match_info[param.name]] if param.name in request.match_info else []
    if param.where == "query":
        return request.query.getall(param.name, [])
    if param.where == "header":
        return request.headers.getall(param.name, [])
    return []


def check_parameters(request: web.Request) -> None:
    """400 / 21405 naming the parameter when a path, query or header parameter breaks the operation's
    schema in openapi.json: out-of-range pageSize, unknown enum values, a reference number that is not 36
    characters, a malformed KSeF number, a missing required parameter. Unknown parameters are ignored."""
    for param in _parameters(request.method, _spec_path(request)):
        raw = _raw_values(request, param)
        if not raw:
            if param.required:
                raise KsefException(21405, [f"{param.name}: parametr jest wymagany."])
            continue
        if param.kind == "array":
            value: Any = [_scalar(param, param.item_kind, item) for item in raw]
        else:
            value = _scalar(param, param.kind, raw[-1])
        if not param.validator.is_valid(value):
            errors = list(param.validator.iter_errors(value))
            raise KsefException(21405, [f"{param.name}: {best_match(errors).message}"])


# documented error texts ---------------------------------------------------------------------------------
def _fill(template: str, values: tuple[object, ...]) -> str:
    remaining = iter(values)
    return re.sub(r"\{[^}]*\}", lambda match: str(next(remaining, match.group())), template)


def documented_details(request: web.Request, code: int, *values: object) -> list[str] | None:
    """The `Details` column of the operation's 400 table in openapi.json for `code`, its `{placeholders}`
    filled with `values` in order (the same code is worded differently per operation, e.g. 21173 "nie została
    odnaleziona" on send and close, "znaleziona" on reads); None when the operation documents no text."""
    table = operation(request).get("responses", {}).get("400", {}).get("description", "")
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] == str(code) and cells[2] and not cells[2].startswith("{"):
            return [_fill(cells[2], values)]
    return None


def required_permissions(request: web.Request) -> list[str]:
    perms = operation(request).get("x-required-permissions") or []
    return [str(p) for p in perms]
