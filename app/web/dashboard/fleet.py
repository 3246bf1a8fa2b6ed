"""The dashboard's fleet view: filter, sort and summarise hosts.

The pure functions (``sort_rows``, ``filter_rows``, ``summarize``) state the rules on rows in
memory; the loaders at the bottom do the same in SQL, one page at a time, so the dashboard
never loads the whole fleet (5,000 hosts were 5 MB of HTML): the page is found by keyset
(``Page``), the tiles are one aggregate, the tag list is unpacked by the database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping, Optional

from sqlalchemy import String, and_, case, false, func, or_, select

from app.extensions import db
from app.models import Host, Job, Schedule
from app.services import hosts, schedules

HOST_STATUSES = ("online", "offline", "never_seen")
STATUS_FILTERS = (*HOST_STATUSES, "failing")
REPO_STATUSES = ("ready", "unknown", "initializing", "missing", "error", "init_failed")
FAILED_BACKUP_STATUSES = frozenset({"failed", "lost"})
FAILED_REPO_STATUSES = frozenset({"error", "init_failed"})
_HOST_STATUS_ORDER = {status: rank for rank, status in enumerate(HOST_STATUSES)}
# Ascending puts the worst first: that is what someone sorting by result looks for.
_BACKUP_STATUS_ORDER = {"failed": 0, "lost": 1, "warning": 2, "cancelled": 3, "succeeded": 4}
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
    per_page: int = DEFAULT_PER_PAGE

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
        if state.sort != DEFAULT_SORT or state.dir != SORT_COLUMNS[DEFAULT_SORT][1]:
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


def _job_tiles(job_counts: Mapping[str, int]) -> dict[str, int]:
    """The summary's job numbers from a count per job status."""
    return {
        "jobs": sum(job_counts.values()),
        "jobs_succeeded": job_counts.get("succeeded", 0),
        "jobs_warning": job_counts.get("warning", 0),
        "jobs_failed": job_counts.get("failed", 0) + job_counts.get("lost", 0),
        "jobs_active": job_counts.get("queued", 0) + job_counts.get("running", 0),
    }


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
        **_job_tiles(job_counts),
    )


# --- loading: the same rules in SQL, one page at a time -------------------------------------
#
# Paged by keyset (hosts.keyset_page, shared with GET /api/v1/hosts): the cursor is the last
# (or first) row's sort key, opaque in the URL (``after=`` / ``before=``). A key is a list of
# (expression, descending): a flag that puts missing values last in both directions, the
# column, then lower(hostname) and id as the tie-breakers sort_rows uses.


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
                for status, value in _BACKUP_STATUS_ORDER.items()
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
    """The filters of ``matches`` as WHERE clauses."""
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
    """``summarize`` over the whole fleet as one aggregate (no host row is loaded)."""
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
        **_job_tiles(job_counts),
    )


def job_counts_since(since: datetime) -> dict[str, int]:
    """Jobs created since ``since``, counted per status in one aggregate."""
    query = (
        select(Job.status, func.count(Job.id)).where(Job.created_at >= since).group_by(Job.status)
    )
    return {status: count for status, count in db.session.execute(query)}
