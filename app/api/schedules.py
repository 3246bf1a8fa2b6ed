"""/api/v1 schedules of a host."""

from __future__ import annotations
