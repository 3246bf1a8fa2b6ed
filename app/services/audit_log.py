"""Reading the audit log: filters, keyset pages and the rows an export streams.

The writer is :func:`app.services.audit.record`; this module only reads. Pages are newest
first by id and continue "before id" (an opaque cursor), so rows written while someone
pages never shift what the next page shows.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Optional

from sqlalchemy import String, Text, cast, func, or_, select

from app.extensions import db
from app.models import AuditLog, Job, SourceGroup
from app.services.validate import INT64_MAX, FieldErrors, fail, unstorable

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_TEXT = 255  # the longest filter value anyone needs (actor labels are at most 255)
_CURSOR_PREFIX = "b"
_ACTION = re.compile(r"^[a-z0-9_.]{1,64}\*?$")


@dataclass(frozen=True)
class AuditFilters:
    """What the viewer asked for; empty fields filter nothing."""

    actor: str = ""
    action: str = ""
    target_type: str = ""
    target_id: str = ""
    host_id: Optional[int] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None
    q: str = ""


# --- reading the filters from text (both doors) ---------------------------------------------


def parse_filters(args) -> AuditFilters:
    """Filters from query-string values (a mapping of str to str); 422 naming each bad one."""
    errors = FieldErrors()
    values = {}
    for name in ("actor", "action", "target_type", "target_id", "q"):
        values[name] = _text(errors, name, args.get(name, ""))
    if values["action"] and not _ACTION.match(values["action"]):
        errors.add(
            "action", "'action' is an action name such as job.started, or a prefix (job. or job*)."
        )
    host_id = None
    raw_host = (args.get("host_id") or "").strip()
    if raw_host:
        if re.fullmatch(r"[0-9]{1,10}", raw_host) and 0 < int(raw_host) <= 2**31 - 1:
            host_id = int(raw_host)
        else:
            errors.add("host_id", "'host_id' must be a host id (a whole number from 1).")
    since = _moment(errors, "since", args.get("since", ""), end_of_day=False)
    until = _moment(errors, "until", args.get("until", ""), end_of_day=True)
    if since and until and until < since:
        errors.add("until", "'until' must not be before 'since'.")
    errors.raise_any()
    return AuditFilters(host_id=host_id, since=since, until=until, **values)


def _text(errors: FieldErrors, name: str, raw) -> str:
    value = (raw or "").strip()
    reason = unstorable(value)
    if reason:
        errors.add(name, f"'{name}' {reason}.")
        return ""
    if len(value) > MAX_TEXT:
        errors.add(name, f"'{name}' must be at most {MAX_TEXT} characters.")
        return ""
    return value


def _moment(errors: FieldErrors, name: str, raw, *, end_of_day: bool) -> Optional[datetime]:
    """ISO-8601 in UTC unless it names an offset; a date alone is the whole day."""
    text = (raw or "").strip()
    if not text:
        return None
    problem = f"'{name}' must be an ISO-8601 date or time, e.g. 2026-12-03 or 2026-12-03T14:00Z."
    if len(text) > 40 or unstorable(text):
        errors.add(name, problem)
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(), timezone.utc)
            # until a date: up to the day's last instant (inclusive bounds everywhere)
            return moment + timedelta(days=1, microseconds=-1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        errors.add(name, problem)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        errors.add(name, problem)
        return None


def encode_cursor(before_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{before_id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str, name: str = "cursor") -> Optional[int]:
    """The id a cursor continues before; 422 naming ``name`` when it is not one of ours."""
    text = (raw or "").strip()
    if not text:
        return None
    problem = f"'{name}' is not a cursor from a previous page (use next_cursor as it is)."
    if len(text) > 40 or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        fail(name, problem)
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        fail(name, problem)
    number = decoded.removeprefix(_CURSOR_PREFIX)
    if (
        not decoded.startswith(_CURSOR_PREFIX)
        or not re.fullmatch(r"[0-9]{1,19}", number)
        or not 0 < int(number) <= INT64_MAX
    ):
        fail(name, problem)
    return int(number)


def parse_limit(raw, name: str = "limit") -> int:
    text = (raw or "").strip()
    if not text:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_LIMIT:
        fail(name, f"'{name}' must be a whole number from 1 to {MAX_LIMIT}.")
    return int(text)


# --- the query -------------------------------------------------------------------------------


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix_or_exact(column, value: str, *, dot_is_prefix: bool):
    if value.endswith("*"):
        return func.lower(column).like(_escaped(value[:-1].lower()) + "%", escape="\\")
    if dot_is_prefix and value.endswith("."):
        return column.like(_escaped(value) + "%", escape="\\")
    return func.lower(column) == value.lower() if not dot_is_prefix else column == value


def _about_host(host_id: int):
    """The host itself, rows whose payload names it (host_id), and its jobs and source groups
    (job.started and host.restore name the host by hostname only). Each branch can use an
    index: (target_type, target_id), or the jobs/source_groups host index."""
    key = str(host_id)
    jobs = select(cast(Job.id, String)).where(Job.host_id == host_id)
    groups = select(cast(SourceGroup.id, String)).where(SourceGroup.host_id == host_id)
    return or_(
        (AuditLog.target_type == "host") & (AuditLog.target_id == key),
        (AuditLog.target_type == "job") & AuditLog.target_id.in_(jobs.scalar_subquery()),
        (AuditLog.target_type == "source_group") & AuditLog.target_id.in_(groups.scalar_subquery()),
        # A number in JSON reads back as text the same way on SQLite and PostgreSQL.
        cast(AuditLog.payload["host_id"].as_string(), String) == key,
    )


def _mentions(text: str):
    """``text`` anywhere in the actor, action, target id or payload, in any case (ASCII)."""
    pattern = "%" + _escaped(text.lower()) + "%"
    payload = func.lower(cast(AuditLog.payload, Text))
    # The payload is stored as JSON text with non-ASCII characters escaped (\u00e9).
    in_json = "%" + _escaped(json.dumps(text.lower())[1:-1]) + "%"
    return or_(
        func.lower(AuditLog.actor_label).like(pattern, escape="\\"),
        func.lower(AuditLog.action).like(pattern, escape="\\"),
        func.lower(AuditLog.target_id).like(pattern, escape="\\"),
        payload.like(pattern, escape="\\"),
        payload.like(in_json, escape="\\"),
    )


def filtered(statement, filters: AuditFilters):
    """``statement`` (over AuditLog) narrowed by ``filters``."""
    if filters.actor:
        statement = statement.where(
            _prefix_or_exact(AuditLog.actor_label, filters.actor, dot_is_prefix=False)
        )
    if filters.action:
        statement = statement.where(
            _prefix_or_exact(AuditLog.action, filters.action, dot_is_prefix=True)
        )
    if filters.target_type:
        statement = statement.where(AuditLog.target_type == filters.target_type)
    if filters.target_id:
        statement = statement.where(AuditLog.target_id == filters.target_id)
    if filters.host_id is not None:
        statement = statement.where(_about_host(filters.host_id))
    if filters.since is not None:
        statement = statement.where(AuditLog.at >= filters.since)
    if filters.until is not None:
        statement = statement.where(AuditLog.at <= filters.until)
    if filters.q:
        statement = statement.where(_mentions(filters.q))
    return statement


def search(
    filters: AuditFilters, *, before_id: Optional[int] = None, limit: int = DEFAULT_LIMIT
) -> list[AuditLog]:
    """Up to ``limit`` matching rows with an id below ``before_id``, newest first."""
    statement = filtered(select(AuditLog), filters)
    if before_id is not None:
        statement = statement.where(AuditLog.id < before_id)
    return list(db.session.scalars(statement.order_by(AuditLog.id.desc()).limit(limit)))


def page(
    filters: AuditFilters, *, before_id: Optional[int] = None, limit: int = DEFAULT_LIMIT
) -> tuple[list[AuditLog], Optional[str]]:
    """One page and the cursor of the next (None on the last)."""
    rows = search(filters, before_id=before_id, limit=limit + 1)
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].id)
    return rows, None


def newest_id() -> int:
    """The id an export starts below (plus one): rows written during it are left out."""
    return (db.session.scalar(select(func.max(AuditLog.id))) or 0) + 1


def known_actions() -> list[str]:
    """Every action the log holds (the filter's choices), sorted."""
    return list(db.session.scalars(select(AuditLog.action).distinct().order_by(AuditLog.action)))


def known_target_types() -> list[str]:
    return list(
        db.session.scalars(
            select(AuditLog.target_type)
            .where(AuditLog.target_type.is_not(None))
            .distinct()
            .order_by(AuditLog.target_type)
        )
    )
