"""Explicit JSON validation for /api/v1 (no FlaskForm here).

Two layers: :func:`check_request` runs before every /api/v1 view and holds the rules that
are the same everywhere — strict JSON types as the OpenAPI document declares them (``"12"``
is not an integer), 64-bit integers, no NUL characters or lone surrogates, no NaN, bounded
nesting, declared string lengths, integer query parameters within their bounds — so no
input reaches a service or the database in a shape it cannot store (a 422, never a 500),
and no message repeats more than a few dozen characters of what was sent. The services
then check meaning (ranges, names that must exist) with messages for people.
"""

from __future__ import annotations

import re
from typing import Any

from flask import request

from app.services.errors import ServiceError, UnsupportedMediaType, ValidationFailed
from app.services.validate import (
    INT64_MAX,
    INT64_MIN,
    MAX_JSON_DEPTH,
    echo,
    json_problem,
    unstorable,
)

_JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def json_body() -> dict:
    """The request's JSON object, or a precise 400/415 error."""
    if not request.is_json:
        raise UnsupportedMediaType("Send a JSON body with 'Content-Type: application/json'.")
    body = _parsed_json()
    if not isinstance(body, dict):
        raise ServiceError("The body must be a JSON object.", code="invalid_json")
    return body


def _parsed_json() -> Any:
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise ServiceError(
            f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).",
            code="invalid_json",
        ) from None


def string_field(body: dict, name: str, *, required: bool = True, max_length: int = 255) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationFailed(f"'{name}' is required.", fields={name: ["required"]})
        return ""
    if not isinstance(value, str):
        raise ValidationFailed(f"'{name}' must be a string.", fields={name: ["not a string"]})
    if len(value) > max_length:
        raise ValidationFailed(
            f"'{name}' must be at most {max_length} characters.", fields={name: ["too long"]}
        )
    return value


# --- the boundary every /api/v1 request passes -----------------------------------------------


def _refuse(where: str, message: str):
    """422 naming the field as the services do: ``includes``, not ``includes[3]``."""
    field = echo(re.sub(r"\[\d+\]", "", where)) or "body"
    raise ValidationFailed(message, fields={field: [message]})


def _label(where: str) -> str:
    return f"'{echo(where)}'" if where else "The body"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}[type(value)]


def _is(value: Any, json_type: str) -> bool:
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[json_type])


class _Checker:
    """Types, string lengths and list sizes, against a JSON Schema subset."""

    def __init__(self, schemas: dict):
        self.schemas = schemas

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def matches(self, value: Any, schema: dict, where: str, depth: int) -> bool:
        try:
            self.check(value, schema, where, depth)
        except ValidationFailed:
            return False
        return True

    def check(self, value: Any, schema: dict, where: str, depth: int = 0) -> None:
        """The declared types and bounds; :func:`_check_plain` has walked the whole body once."""
        schema = self.resolve(schema)
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if alternatives:
            if not any(self.matches(value, option, where, depth) for option in alternatives):
                for option in alternatives:  # the first alternative's words explain best
                    self.check(value, option, where, depth)
            return
        wanted = schema.get("type")
        if wanted is not None:
            types = [wanted] if isinstance(wanted, str) else list(wanted)
            if not any(_is(value, json_type) for json_type in types):
                described = " or ".join("null" if t == "null" else f"a JSON {t}" for t in types)
                _refuse(where, f"{_label(where)} must be {described}, not {_type_name(value)}.")
        if isinstance(value, str) and len(value) > _far_beyond(schema.get("maxLength")):
            _refuse(where, f"{_label(where)} must be at most {schema['maxLength']} characters.")
        if isinstance(value, list) and len(value) > _far_beyond(schema.get("maxItems")):
            _refuse(where, f"{_label(where)} must hold at most {schema['maxItems']} items.")
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            for key, item in value.items():
                if key in properties:
                    self.check(item, properties[key], _join(where, key), depth + 1)
        elif isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                self.check(item, schema["items"], f"{where}[{index}]", depth + 1)


def _far_beyond(bound: int | None) -> float:
    """Past a declared length by far: refused here, unread, so no service quotes a 1 MB
    value back; a near miss is left to the service, which explains it in its own words."""
    return float("inf") if bound is None else max(2 * bound, 1024)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_plain(body: Any) -> None:
    """What no field may hold, declared or not: NUL, lone surrogates, integers past 64 bits,
    NaN and Infinity, deep nests."""
    found = json_problem(body)
    if found:
        where, reason = found
        _refuse(where, f"{_label(where)} {reason}.")


def _check_parameter(name: str, raw: str, schema: dict) -> None:
    reason = unstorable(name) or unstorable(raw)
    if reason:
        _refuse(name, f"{_label(name)} {reason}.")
    if schema.get("type") != "integer" or raw.strip() == "":
        return
    query_integer(name, raw, schema.get("minimum", INT64_MIN), schema.get("maximum", INT64_MAX))


def query_integer(name: str, raw: str, low: int, high: int) -> int:
    """A whole number from a query parameter or header, within ``low``..``high``."""
    text = raw.strip()
    if not text or len(text) > 20 or not re.fullmatch(r"-?[0-9]+", text):
        _refuse(name, f"{_label(name)} must be a whole number from {low} to {high}.")
    if not low <= int(text) <= high:
        _refuse(name, f"{_label(name)} must be a whole number from {low} to {high}.")
    return int(text)


def check_request(operation, schemas: dict) -> None:
    """Refuse what no /api/v1 view can use; ``operation`` is the route's OpenAPI entry."""
    declared = {name: schema for name, schema, _ in getattr(operation, "query", ())}
    for name, raw in request.args.items(multi=True):
        _check_parameter(name, raw, declared.get(name, {}))
    for name, schema, _ in getattr(operation, "headers", ()):
        if name in request.headers:
            _check_parameter(name, request.headers[name], schema)
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE") or request.content_length == 0:
        return  # no body (a chunked body has no Content-Length and is checked all the same)
    if not request.is_json:
        return  # the view answers 415 when it wants JSON
    body = _parsed_json()
    if not isinstance(body, dict):
        return  # not a JSON object: the view answers 400 invalid_json
    _check_plain(body)  # NUL, surrogates, 64-bit, depth: everywhere, declared or not
    body_schema = getattr(operation, "body", None)
    if body_schema:
        _Checker(schemas).check(body, {"$ref": f"#/components/schemas/{body_schema}"}, "")
