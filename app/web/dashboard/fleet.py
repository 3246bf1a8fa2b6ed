"""The dashboard's fleet view: filter, sort and summarise hosts.

All in SQL, one page at a time, so the dashboard never loads the whole fleet (5,000 hosts
were 5 MB of HTML): the page is found by keyset (``Page``), the tiles are one aggregate,
the tag list is unpacked by the database. tests/fleet_oracle.py states the same rules on
rows in memory, and the tests hold the two together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional

from sqlalchemy import String, and_, case, false, func, or_, select

from app.extensions import db
from app.models import Host, Job, Schedule
from app.services import hosts, schedules

HOST_STATUSES = ("online", "offline", "never_seen")
STATUS_FILTERS = (*HOST_STATUSES, "failing")
REPO_STATUSES = ("ready", "unknown", "initializing", "missing", "error", "init_failed")
FAILED_BACKUP_STATUSES = frozenset({"failed", "lost"})
FAILED_REPO_STATUSES = frozenset({"error", "init_failed"})
# Ascending puts the worst first: that is what someone sorting by result looks for.
BACKUP_STATUS_ORDER = {"failed": 0, "lost": 1, "warning": 2, "cancelled": 3, "succeeded": 4}
MAX_QUERY_LENGTH = 100
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200


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

# column -> direction of the first click; the SQL of each is ``sql_key``.
SORT_COLUMNS: dict[str, str] = {
    "host": "asc",
    "status": "asc",
    "os": "asc",
    "last_backup": "desc",
    "backup_status": "asc",
    "size": "desc",
    "snapshots": "desc",
}
DEFAULT_SORT = "host"


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
    per_page: int = DEFAULT_PER_PAGE

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> FleetQuery:
        """Unknown values are dropped rather than refused: an old bookmark still opens."""
        sort = args.get("sort", "")
        sort = sort if sort in SORT_COLUMNS else DEFAULT_SORT
        direction = args.get("dir", "")
        if direction not in ("asc", "desc"):
            direction = SORT_COLUMNS[sort]
        status = args.get("status", "")
        repo_status = args.get("repo_status", "")
        per_page = args.get("per_page", "")
        per_page = int(per_page) if per_page.isdigit() and len(per_page) < 6 else 0
        return cls(
            q=args.get("q", "").strip()[:MAX_QUERY_LENGTH],
            status=status if status in STATUS_FILTERS else "",
            repo_status=repo_status if repo_status in REPO_STATUSES else "",
            tag=args.get("tag", "").strip()[:64],
            sort=sort,
            dir=direction,
            per_page=min(per_page, MAX_PER_PAGE) if per_page else DEFAULT_PER_PAGE,
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
        if state.sort != DEFAULT_SORT or state.dir != SORT_COLUMNS[DEFAULT_SORT]:
            values["sort"] = state.sort
            values["dir"] = state.dir
        if int(state.per_page) != DEFAULT_PER_PAGE:
            values["per_page"] = str(state.per_page)
        return {name: value for name, value in values.items() if value}

    def sort_args(self, column: str) -> dict[str, str]:
        """Clicking a header: the active column flips, another starts in its natural order."""
        if column == self.sort:
            direction = "desc" if self.dir == "asc" else "asc"
        else:
            direction = SORT_COLUMNS[column]
        return self.args(sort=column, dir=direction)

    def cleared_args(self) -> dict[str, str]:
        """Same sort order, no filters."""
        return self.args(q="", status="", repo_status="", tag="")


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


def job_tiles(job_counts: Mapping[str, int]) -> dict[str, int]:
    """The summary's job numbers from a count per job status."""
    return {
        "jobs": sum(job_counts.values()),
        "jobs_succeeded": job_counts.get("succeeded", 0),
        "jobs_warning": job_counts.get("warning", 0),
        "jobs_failed": job_counts.get("failed", 0) + job_counts.get("lost", 0),
        "jobs_active": job_counts.get("queued", 0) + job_counts.get("running", 0),
    }


# --- loading: the same rules in SQL, one page at a time -------------------------------------
#
# Paged by keyset (hosts.keyset_page, shared with GET /api/v1/hosts): the cursor is the last
# (or first) row's sort key, opaque in the URL (``after=`` / ``before=``). A key is a list of
# (expression, descending): a flag that puts missing values last in both directions, the
# column, then lower(hostname) and id as the tie-breakers.


def _status_rank(cutoff: datetime):
    """online 0, offline 1, never seen 2 (Host.status in SQL, for one ``now``)."""
    return case((Host.last_seen_at.is_(None), 2), (Host.last_seen_at >= cutoff, 0), else_=1)


def _missing(expression) -> Any:
    return case((expression.is_(None), 1), else_=0)


def sql_key(column: str, direction: str, cutoff: datetime) -> hosts.SortKey:
    descending = direction == "desc"
    name = func.lower(Host.hostname, type_=String)
    if column == "host":
        return [(name, descending), (Host.id, False)]
    if column == "status":
        keys = [(_status_rank(cutoff), descending)]
    elif column == "os":
        os, arch = func.coalesce(Host.os, ""), func.coalesce(Host.arch, "")
        keys = [
            (case((and_(os == "", arch == ""), 1), else_=0), False),
            (func.lower(os, type_=String), descending),
            (func.lower(arch, type_=String), descending),
        ]
    elif column == "backup_status":
        rank = case(
            *(
                (Host.last_backup_status == status, value)
                for status, value in BACKUP_STATUS_ORDER.items()
            ),
            else_=None,
        )
        keys = [(_missing(rank), False), (rank, descending)]
    else:
        value = {
            "last_backup": Host.last_backup_at,
            "size": Host.repo_size_bytes,
            "snapshots": func.coalesce(Host.snapshot_count, 0),
        }[column]
        keys = [(_missing(value), False), (value, descending)]
    return [*keys, (name, False), (Host.id, False)]


def conditions(query: FleetQuery, cutoff: datetime) -> list:
    """The dashboard's filters as WHERE clauses."""
    where = []
    if query.q:
        pattern = query.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(func.lower(Host.hostname).like(f"%{pattern}%", escape="\\"))
    if query.status == "failing":
        where.append(_failing())
    elif query.status:
        rank = {status: value for value, status in enumerate(HOST_STATUSES)}[query.status]
        where.append(_status_rank(cutoff) == rank)
    if query.repo_status:
        where.append(Host.repo_status == query.repo_status)
    if query.tag:
        where.append(hosts.has_tag(query.tag))
    return where


def _failing():
    return or_(
        Host.last_backup_status.in_(FAILED_BACKUP_STATUSES),
        Host.repo_status.in_(FAILED_REPO_STATUSES),
    )


# --- one page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    rows: list[FleetRow]
    start: int  # 1-based position of the first row among the matches (0: no rows)
    matches: int  # rows the filters let through
    next_cursor: Optional[str]  # after= of the next page
    prev_cursor: Optional[str]  # before= of the previous page

    @property
    def end(self) -> int:
        return self.start + len(self.rows) - 1 if self.rows else 0


def load_page(
    query: FleetQuery,
    now: datetime,
    offline_after_seconds: int,
    *,
    after: str = "",
    before: str = "",
) -> Page:
    """The rows of one page: filter, order and limit in SQL (one query for the rows, one
    count, and the schedules of the page's hosts)."""
    cutoff = now - timedelta(seconds=offline_after_seconds)
    key = sql_key(query.sort, query.dir, cutoff)
    where = conditions(query, cutoff)
    order = f"{query.sort} {query.dir}"  # a cursor of another order opens the first page
    limit = query.per_page
    backwards = False
    values = hosts.decode_cursor(after, order, key) if after else None
    if values is None and before:
        values = hosts.decode_cursor(before, order, key)
        backwards = values is not None
    # Narrow first: ids and sort keys only, sorted and cut in the database; then the page's
    # rows (and their running backups) by id.
    statement = select(Host.id, *(e for e, _ in key)).where(*where)
    keys, more = hosts.keyset_page(statement, key, values, limit, backwards)
    if backwards:
        keys.reverse()
        if len(keys) < limit:  # the start was reached (rows removed): the first page
            return load_page(query, now, offline_after_seconds)
    first_key = list(keys[0][1:]) if keys else None
    last_key = list(keys[-1][1:]) if keys else None
    by_id = {
        host.id: (host, active_job_id)
        for host, active_job_id in db.session.execute(
            select(Host, _active_backup_job_id()).where(Host.id.in_([k[0] for k in keys]))
        )
    }
    found = [by_id[k[0]] for k in keys if k[0] in by_id]
    before_first = (
        hosts.beyond(key, first_key, backwards=True) if first_key is not None else false()
    )
    matches, earlier = db.session.execute(
        select(func.count(), func.coalesce(func.sum(case((before_first, 1), else_=0)), 0))
        .select_from(Host)
        .where(*where)
    ).one()
    has_next = (more if not backwards else True) and bool(found)
    has_prev = bool(found) and earlier > 0

    def cursor(values):
        return hosts.encode_cursor(order, values)

    crons = _single_enabled_schedules([row[0].id for row in found])
    rows = [
        FleetRow(
            host,
            host.status(now, offline_after_seconds),
            schedules.next_run(crons[host.id], after=now) if host.id in crons else None,
            active_job_id,
        )
        for host, active_job_id in found
    ]
    return Page(
        rows=rows,
        start=earlier + 1 if rows else 0,
        matches=matches,
        next_cursor=cursor(last_key) if has_next and earlier + len(rows) < matches else None,
        prev_cursor=cursor(first_key) if has_prev else None,
    )


def _single_enabled_schedules(host_ids: list[int]) -> dict[int, str]:
    """Host id -> cron for the page's hosts covered by exactly one enabled schedule."""
    if not host_ids:
        return {}
    crons: dict[int, list[str]] = {}
    for host_id, cron in db.session.execute(
        select(Schedule.host_id, Schedule.cron).where(
            Schedule.enabled.is_(True), Schedule.host_id.in_(host_ids)
        )
    ):
        crons.setdefault(host_id, []).append(cron)
    return {host_id: found[0] for host_id, found in crons.items() if len(found) == 1}


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


def load_summary(
    now: datetime, offline_after_seconds: int, job_counts: Mapping[str, int]
) -> FleetSummary:
    """The tiles over the whole fleet as one aggregate (no host row is loaded)."""
    rank = _status_rank(now - timedelta(seconds=offline_after_seconds))

    def count_of(condition):
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    hosts_, online, offline, never, failing, size, measured = db.session.execute(
        select(
            func.count(),
            count_of(rank == 0),
            count_of(rank == 1),
            count_of(rank == 2),
            count_of(_failing()),
            func.coalesce(func.sum(Host.repo_size_bytes), 0),
            func.count(Host.repo_size_bytes),
        ).select_from(Host)
    ).one()
    return FleetSummary(
        hosts=hosts_,
        online=online,
        offline=offline,
        never_seen=never,
        failing=failing,
        total_size_bytes=int(size),
        measured_hosts=measured,
        **job_tiles(job_counts),
    )


def job_counts_since(since: datetime) -> dict[str, int]:
    """Jobs created since ``since``, counted per status in one aggregate."""
    query = (
        select(Job.status, func.count(Job.id)).where(Job.created_at >= since).group_by(Job.status)
    )
    return {status: count for status, count in db.session.execute(query)}
