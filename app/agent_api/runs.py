"""POST /api/agent/v1/runs: jobs the agent started on its own (a schedule fired)."""

from __future__ import annotations
