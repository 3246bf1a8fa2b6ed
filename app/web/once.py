"""Forms whose answer shows a secret once (a new token): reloading it must not create another.

Each page load carries a random ``request_id`` (:func:`request_id_field`); the session
remembers which one created what, for the last few, under a key per kind of thing.
"""

from __future__ import annotations

import secrets

from flask import session
from wtforms import HiddenField

KEPT = 10


def request_id_field() -> HiddenField:
    return HiddenField(default=lambda: secrets.token_urlsafe(16))


def created_before(kind: str, request_id: str) -> int | None:
    """What this page load already created (its id), if it did."""
    if not request_id:
        return None
    return (session.get(kind) or {}).get(request_id)


def remember_created(kind: str, request_id: str, created_id: int) -> None:
    if not request_id:
        return
    created = dict(session.get(kind) or {})
    created[request_id] = created_id
    session[kind] = dict(list(created.items())[-KEPT:])
