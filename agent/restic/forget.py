"""``restic forget --json``: one JSON array of groups (samples 90, 91, 43).

Each group is ``{tags, host, paths, keep, remove, reasons}``; ``keep`` and ``remove`` are
``null`` when empty. restic prints nothing at all when no group matched (sample 92).
"""

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from agent.restic.errors import UnexpectedOutput

# Policy key → flag, in the order the agent writes them.
KEEP_FLAGS = (
    ("keep_last", "--keep-last"),
    ("keep_hourly", "--keep-hourly"),
    ("keep_daily", "--keep-daily"),
    ("keep_weekly", "--keep-weekly"),
    ("keep_monthly", "--keep-monthly"),
    ("keep_yearly", "--keep-yearly"),
    ("keep_within", "--keep-within"),
)


def forget_argv(
    binary: str = "restic",
    policy: Optional[Mapping[str, Any]] = None,
    tags: Sequence[str] = (),
    group_by: Optional[str] = None,
    dry_run: bool = False,
) -> Tuple[str, ...]:
    argv: List[str] = [binary, "forget", "--json"]
    for key, flag in KEEP_FLAGS:
        value = (policy or {}).get(key)
        if value is not None:
            argv += [flag, str(value)]
    for tag in tags:
        argv += ["--tag", tag]
    if group_by is not None:
        argv += ["--group-by", group_by]
    if dry_run:
        argv.append("--dry-run")
    return tuple(argv)


def parse_forget(stdout: str) -> List[Dict[str, Any]]:
    """The groups restic printed (``[]`` for empty output); raises :class:`UnexpectedOutput`."""
    if not stdout.strip():
        return []
    try:
        groups = json.loads(stdout)
    except ValueError:
        raise UnexpectedOutput("restic forget printed something that is not JSON") from None
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise UnexpectedOutput("restic forget printed JSON that is not a list of groups")
    return groups


def counts(groups: Sequence[Mapping[str, Any]]) -> Tuple[int, int]:
    """``(kept, removed)`` over every group."""
    kept = sum(len(group.get("keep") or []) for group in groups)
    removed = sum(len(group.get("remove") or []) for group in groups)
    return kept, removed


def group_lines(groups: Sequence[Mapping[str, Any]], dry_run: bool) -> List[str]:
    """One readable line per group: what it keeps and which snapshots go."""
    verb = "would remove" if dry_run else "removed"
    lines = []
    for group in groups:
        keep, remove = group.get("keep") or [], group.get("remove") or []
        where = ", ".join(
            part
            for part in (
                f"host {group['host']}" if group.get("host") else "",
                "paths " + " ".join(group["paths"]) if group.get("paths") else "",
                "tags " + ",".join(group["tags"]) if group.get("tags") else "",
            )
            if part
        )
        line = f"{where or 'all snapshots'}: kept {len(keep)}, {verb} {len(remove)}"
        if remove:
            line += " (" + ", ".join(_short(snapshot) for snapshot in remove) + ")"
        lines.append(line)
    return lines


def _short(snapshot: Mapping[str, Any]) -> str:
    return str(snapshot.get("short_id") or str(snapshot.get("id", ""))[:8])
