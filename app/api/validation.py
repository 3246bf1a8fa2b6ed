"""Explicit JSON body validation for /api/v1 (no FlaskForm here)."""

from __future__ import annotations

from flask import request

from app.services.errors import ServiceError, UnsupportedMediaType, ValidationFailed


def json_body() -> dict:
    """The request's JSON object, or a precise 400/415 error."""
    if not request.is_json:
        raise UnsupportedMediaType("Send a JSON body with 'Content-Type: application/json'.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ServiceError("The body must be a JSON object.", code="invalid_json")
    return body


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
