"""Looking a host up and asking whether its agent is there."""

from __future__ import annotations

from datetime import datetime

from app.extensions import db
from app.models import Host
from app.services.errors import Conflict, NotFound


def get_host(host_id: int) -> Host:
    """The host with this id; :class:`NotFound` (404) when there is none."""
    host = db.session.get(Host, host_id)
    if host is None:
        raise NotFound(f"No host with id {host_id}.")
    return host


def require_online(host: Host, what: str, *, now: datetime, offline_after_seconds: int) -> None:
    """409 ``host_offline`` unless the host's agent polled recently."""
    status = host.status(now, offline_after_seconds)
    if status != "online":
        raise Conflict(
            f"{host.hostname} is {status.replace('_', ' ')}: its agent has not polled the "
            f"server recently, so {what} could not start. Check the agent on the host.",
            code="host_offline",
        )
