"""``restic snapshots --json``: one JSON array of snapshots (samples 30, 34).

``--no-lock``: listing must not wait for (or fail on) a backup's lock. The agent passes
the list on as restic printed it; the server replaces the host's list with it.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent.restic.errors import UnexpectedOutput


def snapshots_argv(binary: str = "restic") -> Tuple[str, ...]:
    return (binary, "--no-lock", "snapshots", "--json")


def parse_snapshots(stdout: str) -> List[Dict[str, Any]]:
    """The snapshot objects; raises :class:`UnexpectedOutput` for anything but a list of them."""
    try:
        snapshots = json.loads(stdout)
    except ValueError:
        raise UnexpectedOutput("restic snapshots printed something that is not JSON") from None
    if not isinstance(snapshots, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), str) for item in snapshots
    ):
        raise UnexpectedOutput("restic snapshots printed JSON that is not a snapshot list")
    return snapshots


def full_id(snapshot_id: Optional[str], snapshots: Sequence[Dict[str, Any]]) -> Optional[str]:
    """The 64-hex id for 0.14's 8-character ``snapshot_id``; ``None`` when not unique."""
    if not snapshot_id:
        return None
    matches = [item["id"] for item in snapshots if str(item.get("id", "")).startswith(snapshot_id)]
    return matches[0] if len(matches) == 1 else None
