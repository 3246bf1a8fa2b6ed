"""The dashboard's rules on rows in memory: the oracle its SQL is checked against.

``app/web/dashboard/fleet.py`` sorts, filters and counts in SQL, one page at a time. These
pure functions say the same rules plainly on a list of ``FleetRow``; test_dashboard.py pins
their meaning on small fleets, and test_fleet_paging.py checks that every SQL page, sort
order and tile equals what they give on a mixed fleet.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

from app.web.dashboard import fleet
from app.web.dashboard.fleet import FleetQuery, FleetRow, FleetSummary

_HOST_STATUS_ORDER = {status: rank for rank, status in enumerate(fleet.HOST_STATUSES)}


def _os_key(row: FleetRow) -> Optional[tuple[str, str]]:
    if not row.host.os and not row.host.arch:
        return None
    return ((row.host.os or "").lower(), (row.host.arch or "").lower())


# A key returning None sorts last either way.
SORT_KEYS: dict[str, Callable[[FleetRow], Any]] = {
    "host": lambda row: row.host.hostname.lower(),
    "status": lambda row: _HOST_STATUS_ORDER.get(row.status),
    "os": _os_key,
    "last_backup": lambda row: row.host.last_backup_at,
    "backup_status": lambda row: fleet.BACKUP_STATUS_ORDER.get(row.host.last_backup_status),
    "size": lambda row: row.host.repo_size_bytes,
    "snapshots": lambda row: row.host.snapshot_count or 0,
}


def sort_rows(rows: Iterable[FleetRow], column: str, direction: str) -> list[FleetRow]:
    """Sorted by one column, hostname breaking ties; rows without a value always come last."""
    key = SORT_KEYS.get(column, SORT_KEYS[fleet.DEFAULT_SORT])
    by_name = sorted(rows, key=lambda row: (row.host.hostname.lower(), row.host.id))
    present = [row for row in by_name if key(row) is not None]
    missing = [row for row in by_name if key(row) is None]
    # Sorting is stable, also with reverse=True: ties stay in hostname order either way.
    present.sort(key=key, reverse=direction == "desc")
    return present + missing


def matches(row: FleetRow, query: FleetQuery) -> bool:
    host = row.host
    if query.q and query.q.lower() not in host.hostname.lower():
        return False
    if query.status == "failing":
        if not row.failing:
            return False
    elif query.status and row.status != query.status:
        return False
    if query.repo_status and host.repo_status != query.repo_status:
        return False
    return not (query.tag and query.tag not in (host.tags or []))


def filter_rows(rows: Iterable[FleetRow], query: FleetQuery) -> list[FleetRow]:
    return [row for row in rows if matches(row, query)]


def apply(rows: Iterable[FleetRow], query: FleetQuery) -> list[FleetRow]:
    """The rows the table shows, in order."""
    return sort_rows(filter_rows(rows, query), query.sort, query.dir)


def all_tags(rows: Iterable[FleetRow]) -> list[str]:
    return sorted({tag for row in rows for tag in (row.host.tags or []) if isinstance(tag, str)})


def summarize(rows: Iterable[FleetRow], job_counts: Mapping[str, int]) -> FleetSummary:
    """Tile numbers for the whole fleet; ``job_counts`` maps job status to count (24 h)."""
    rows = list(rows)
    sizes = [row.host.repo_size_bytes for row in rows if row.host.repo_size_bytes is not None]
    by_status = {status: 0 for status in fleet.HOST_STATUSES}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    return FleetSummary(
        hosts=len(rows),
        online=by_status["online"],
        offline=by_status["offline"],
        never_seen=by_status["never_seen"],
        failing=sum(1 for row in rows if row.failing),
        total_size_bytes=sum(sizes),
        measured_hosts=len(sizes),
        **fleet.job_tiles(job_counts),
    )
