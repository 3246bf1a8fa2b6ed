"""``status.json``: what the run loop last knew, for ``restic-manager-agent status``."""

import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.journal import isoformat, utc_now
from agent.paths import atomic_write_json, read_json


class StatusFile:
    """Written atomically on every change, so another process can read it at any time."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._data: Dict[str, Any] = {
            "pid": os.getpid(),
            "state": "starting",
            "since": isoformat(utc_now()),
            "last_poll_ok_at": None,
            "last_error": None,
            "last_error_at": None,
            "running": [],
        }

    def update(self, **changes: Any) -> None:
        with self._lock:
            if "state" in changes and changes["state"] != self._data.get("state"):
                self._data["since"] = isoformat(utc_now())
            if changes.get("last_error"):
                self._data["last_error_at"] = isoformat(utc_now())
            self._data.update(changes)
            self._data["updated_at"] = isoformat(utc_now())
            atomic_write_json(self.path, self._data)

    def connected(self, running: List[Dict[str, Any]]) -> None:
        self.update(state="connected", last_poll_ok_at=isoformat(utc_now()), running=running)

    def failed(
        self, state: str, error: str, running: Optional[List[Dict[str, Any]]] = None
    ) -> None:
        changes: Dict[str, Any] = {"state": state, "last_error": error}
        if running is not None:
            changes["running"] = running
        self.update(**changes)


def read_status(path: Path) -> Optional[Dict[str, Any]]:
    try:
        value = read_json(path, default=None)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
