"""The dashboard's fleet view: filter, sort and summarise hosts.

Everything but the two loaders at the bottom is a pure function of rows and a query, so the
rules are tested without HTTP. The whole fleet is loaded in one query (2,000 hosts are a
few hundred kilobytes) because the summary tiles count every host whatever the filter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Optional

from sqlalchemy import func, select

from app.extensions import db
from app.models import Host, Job
from app.services import schedules

HOST_STATUSES = ("online", "offline", "never_seen")
STATUS_FILTERS = (*HOST_STATUSES, "failing")
REPO_STATUSES = ("ready", "unknown", "initializing", "missing", "error", "init_failed")
FAILED_BACKUP_STATUSES = frozenset({"failed", "lost"})
FAILED_REPO_STATUSES = frozenset({"error", "init_failed"})
_HOST_STATUS_ORDER = {status: rank for rank, status in enumerate(HOST_STATUSES)}
# Ascending puts the worst first: that is what someone sorting by result looks for.
_BACKUP_STATUS_ORDER = {"failed": 0, "lost": 1, "warning": 2, "cancelled": 3, "succeeded": 4}
MAX_QUERY_LENGTH = 100


@dataclass(frozen=True)
class FleetRow:
    host: Host
    status: str  # online | offline | never_seen
    next_run: Optional[datetime] = None  # only when exactly one enabled schedule covers it
    active_backup_job_id: Optional[int] = None  # a backup queued or running right now

    @property
    def failing(self) -> bool:
        return is_failing(self.host)


def is_failing(host: Host) -> bool:
    """The last backup failed or was lost, or the repository cannot be used."""
    return (
        host.last_backup_status in FAILED_BACKUP_STATUSES
        or host.repo_status in FAILED_REPO_STATUSES
    )


# --- sorting -----------------------------------------------------------------------------

SortKey = Callable[[FleetRow], Any]


def _os_key(row: FleetRow) -> Optional[tuple[str, str]]:
    if not row.host.os and not row.host.arch:
        return None
    return ((row.host.os or "").lower(), (row.host.arch or "").lower())


# column -> (key, direction of the first click). A key returning None sorts last either way.
SORT_COLUMNS: dict[str, tuple[SortKey, str]] = {
    "host": (lambda row: row.host.hostname.lower(), "asc"),
    "status": (lambda row: _HOST_STATUS_ORDER.get(row.status), "asc"),
    "os": (_os_key, "asc"),
    "last_backup": (lambda row: row.host.last_backup_at, "desc"),
    "backup_status": (lambda row: _BACKUP_STATUS_ORDER.get(row.host.last_backup_status), "asc"),
    "size": (lambda row: row.host.repo_size_bytes, "desc"),
    "snapshots": (lambda row: row.host.snapshot_count or 0, "desc"),
}
DEFAULT_SORT = "host"


def sort_rows(rows: Iterable[FleetRow], column: str, direction: str) -> list[FleetRow]:
    """Sorted by one column, hostname breaking ties; rows without a value always come last."""
    key, _ = SORT_COLUMNS.get(column, SORT_COLUMNS[DEFAULT_SORT])
    by_name = sorted(rows, key=lambda row: (row.host.hostname.lower(), row.host.id))
    present = [row for row in by_name if key(row) is not None]
    missing = [row for row in by_name if key(row) is None]
    # Sorting is stable, also with reverse=True: ties stay in hostname order either way.
    present.sort(key=key, reverse=direction == "desc")
    return present + missing


# --- filtering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetQuery:
    """The dashboard's state, all of it in the query string so a bookmark brings it back."""

    q: str = ""
    status: str = ""
    repo_status: str = ""
    tag: str = ""
    sort: str = DEFAULT_SORT
    dir: str = "asc"

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> FleetQuery:
        """Unknown values are dropped rather than refused: an old bookmark still opens."""
        sort = args.get("sort", "")
        sort = sort if sort in SORT_COLUMNS else DEFAULT_SORT
        direction = args.get("dir", "")
        if direction not in ("asc", "desc"):
            direction = SORT_COLUMNS[sort][1]
        status = args.get("status", "")
        repo_status = args.get("repo_status", "")
        return cls(
            q=args.get("q", "").strip()[:MAX_QUERY_LENGTH],
            status=status if status in STATUS_FILTERS else "",
            repo_status=repo_status if repo_status in REPO_STATUSES else "",
            tag=args.get("tag", "").strip()[:64],
            sort=sort,
            dir=direction,
        )

    @property
    def is_filtered(self) -> bool:
        return bool(self.q or self.status or self.repo_status or self.tag)

    def args(self, **changes: str) -> dict[str, str]:
        """Query-string arguments for this state with ``changes``, defaults left out."""
        state = replace(self, **changes)
        values = {
            "q": state.q,
            "status": state.status,
            "repo_status": state.repo_status,
            "tag": state.tag,
        }
        if state.sort != DEFAULT_SORT or state.dir != SORT_COLUMNS[DEFAULT_SORT][1]:
            values["sort"] = state.sort
            values["dir"] = state.dir
        return {name: value for name, value in values.items() if value}

    def sort_args(self, column: str) -> dict[str, str]:
        """Clicking a header: the active column flips, another starts in its natural order."""
        if column == self.sort:
            direction = "desc" if self.dir == "asc" else "asc"
        else:
            direction = SORT_COLUMNS[column][1]
        return self.args(sort=column, dir=direction)

    def cleared_args(self) -> dict[str, str]:
        """Same sort order, no filters."""
        return self.args(q="", status="", repo_status="", tag="")


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


# --- summary -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSummary:
    hosts: int
    online: int
    offline: int
    never_seen: int
    failing: int
    total_size_bytes: int
    measured_hosts: int  # hosts whose repository size is known
    jobs: int
    jobs_succeeded: int
    jobs_warning: int
    jobs_failed: int
    jobs_active: int


def summarize(rows: Iterable[FleetRow], job_counts: Mapping[str, int]) -> FleetSummary:
    """Tile numbers for the whole fleet; ``job_counts`` maps job status to count (24 h)."""
    rows = list(rows)
    sizes = [row.host.repo_size_bytes for row in rows if row.host.repo_size_bytes is not None]
    by_status = {status: 0 for status in HOST_STATUSES}
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
        jobs=sum(job_counts.values()),
        jobs_succeeded=job_counts.get("succeeded", 0),
        jobs_warning=job_counts.get("warning", 0),
        jobs_failed=job_counts.get("failed", 0) + job_counts.get("lost", 0),
        jobs_active=job_counts.get("queued", 0) + job_counts.get("running", 0),
    )


# --- loading (the only three queries the dashboard makes) ----------------------------------


def _active_backup_job_id():
    """The newest queued or running backup of the row's host: a correlated subquery, so each
    host is an index seek on (host_id, status) rather than a scan of every job ever run."""
    return (
        select(func.max(Job.id))
        .where(
            Job.host_id == Host.id,
            Job.status.in_(("queued", "running")),
            Job.kind == "backup",
        )
        .correlate(Host)
        .scalar_subquery()
    )


def load_rows(now: datetime, offline_after_seconds: int) -> list[FleetRow]:
    rows = db.session.execute(select(Host, _active_backup_job_id()).order_by(Host.hostname))
    crons = schedules.single_enabled_schedules()
    return [
        FleetRow(
            host,
            host.status(now, offline_after_seconds),
            schedules.next_run(crons[host.id], after=now) if host.id in crons else None,
            active_job_id,
        )
        for host, active_job_id in rows
    ]


def job_counts_since(since: datetime) -> dict[str, int]:
    """Jobs created since ``since``, counted per status in one aggregate."""
    query = (
        select(Job.status, func.count(Job.id)).where(Job.created_at >= since).group_by(Job.status)
    )
    return {status: count for status, count in db.session.execute(query)}
