"""Schedules: CRUD rules, the host's schedule version, the schedule.set push and its ack."""

from __future__ import annotations

from typing import Optional

from app.models import Host


def apply_ack(host: Host, data: dict) -> Optional[tuple[str, str]]:
    """A ``schedule.applied`` event: the agent runs this version of the host's schedules."""
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return ("invalid_event", "schedule.applied needs a non-negative integer version.")
    host.agent_schedule_version = version
    return None
