"""``restic diff --json a b``: one ``change`` line per path, then ``statistics`` (samples 50, 52).

Directories end in ``/``; the modifier is ``+``, ``-``, ``M``, ``T`` (``U`` only with
``--metadata``, which the agent does not pass) or a combination of them.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

from agent.restic.messages import json_object

DIFF_STAT_KEYS = ("files", "dirs", "others", "data_blobs", "tree_blobs", "bytes")


def diff_argv(binary: str, snapshot_a: str, snapshot_b: str) -> Tuple[str, ...]:
    return (binary, "--no-lock", "diff", "--json", snapshot_a, snapshot_b)


def read_diff_line(line: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``("change", {"path", "modifier"})``, ``("statistics", stats)`` or ``None``."""
    message = json_object(line)
    if message is None:
        return None
    kind = message.get("message_type")
    if kind == "change" and isinstance(message.get("path"), str):
        return "change", {"path": message["path"], "modifier": str(message.get("modifier") or "")}
    if kind == "statistics":
        return "statistics", statistics(message)
    return None


def statistics(message: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``job.finished`` stats of a ``statistics`` line; absent counts are 0."""
    changed = message.get("changed_files")
    return {
        "source_snapshot": message.get("source_snapshot"),
        "target_snapshot": message.get("target_snapshot"),
        "changed_files": changed if isinstance(changed, int) else 0,
        "added": diff_stat(message.get("added")),
        "removed": diff_stat(message.get("removed")),
    }


def diff_stat(value: Any) -> Dict[str, int]:
    value = value if isinstance(value, dict) else {}
    return {key: value[key] if isinstance(value.get(key), int) else 0 for key in DIFF_STAT_KEYS}


def is_directory(path: str) -> bool:
    return path.endswith("/") and path != "/"


def sides(modifier: str) -> Tuple[bool, bool]:
    """Is the path in snapshot a, in snapshot b? (``+``: b only, ``-``: a only, else both)."""
    if "+" in modifier:
        return False, True
    if "-" in modifier:
        return True, False
    return True, True
