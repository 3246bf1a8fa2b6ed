"""Form fields, query strings and path segments that no page can store: refused up front.

A NUL character makes PostgreSQL refuse the statement (a 500 after the work was done) and
SQLite store it (a schedule named ``"s\\x00"``); a lone surrogate cannot be encoded at all.
No form has a use for either, so one hook refuses them for every request, before CSRF
checks and views run, with the field named (422; JSON under /api/, the error page
elsewhere). JSON bodies are checked by their own doors (app/api/validation.py,
app/agent_api/parse.py).

Register ``bp`` in the factory after any hook that lowers the body limit for a route: this
hook reads form bodies.
"""

from __future__ import annotations

from flask import Blueprint, request

from app.services.errors import ValidationFailed
from app.services.validate import echo, unstorable

bp = Blueprint("input", __name__)

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Form fields whose service refuses NUL and surrogates itself, so the form shows the message
# under the field together with every other problem (the hooks of a source group or host).
_CHECKED_BY_THEIR_SERVICE = frozenset({"pre_hook", "post_hook"})


@bp.before_app_request
def refuse_unstorable_input() -> None:
    for name, value in _fields():
        reason = unstorable(name) or unstorable(value)
        if reason:
            field = echo(name)
            message = f"'{field}' {reason}."
            raise ValidationFailed(message, fields={field: [message]})


def _fields():
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str):
            yield name, value
    yield from request.args.items(multi=True)
    if request.method in ("POST", "PUT", "PATCH") and request.mimetype in _FORM_TYPES:
        for name, value in request.form.items(multi=True):
            if name not in _CHECKED_BY_THEIR_SERVICE:
                yield name, value
