"""/api/v1 repository maintenance, bandwidth and admin credential of a host."""

from __future__ import annotations
