"""The one helper that writes the audit log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from app.extensions import db
from app.models import AuditLog

REDACTED = "[redacted]"
_SECRET_KEY_PATTERN = re.compile(
    r"pass(word|phrase)?|secret|token|credential|private|api[_-]?key|authorization|cookie",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Actor:
    """Who did it: a signed-in user, an agent, or the server itself."""

    type: str
    id: Optional[int]
    label: str

    @classmethod
    def for_user(cls, user) -> Actor:
        return cls("user", user.id, user.username)

    @classmethod
    def for_agent(cls, host) -> Actor:
        return cls("agent", host.id, host.hostname)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls("system", None, label)


def redact(value: Any) -> Any:
    """Copy of ``value`` with every secret-looking field replaced, at any depth."""
    if isinstance(value, dict):
        return {
            key: REDACTED if _SECRET_KEY_PATTERN.search(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def record(
    actor: Actor,
    action: str,
    *,
    target_type: Optional[str] = None,
    target_id: Any = None,
    payload: Optional[dict] = None,
    client_address: Optional[str] = None,
) -> AuditLog:
    """Add one audit row to the current transaction (the caller commits)."""
    entry = AuditLog(
        actor_type=actor.type,
        actor_id=actor.id,
        actor_label=actor.label,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        payload=redact(payload or {}),
        client_address=client_address,
    )
    db.session.add(entry)
    db.session.flush()
    return entry
