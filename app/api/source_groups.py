"""/api/v1 source groups of a host."""

from __future__ import annotations
