"""Schedules: CRUD rules, the host's schedule version, the schedule.set push and its ack.

A schedule is slim (cron + which source groups); the agent runs it on its own clock, so
every change bumps the host's ``schedule_version`` and queues the complete set
(``schedule.set``, docs/protocol.md "Schedules on the agent").
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Iterable, Optional

from croniter import croniter
from croniter.croniter import CroniterBadDateError
from sqlalchemy import func, select, update

from app.extensions import db
from app.models import Command, Host, Job, Schedule, SourceGroup
from app.secretbox import SecretBox
from app.services import audit, commands, validate
from app.services.audit import Actor
from app.services.errors import EventRejected, NotFound, ValidationFailed

MAX_NAME = 64
MAX_CRON = 128
MISSED_POLICIES = ("run_once", "skip")
NEXT_RUNS = 3  # next fire times shown per schedule
COMMAND_TYPE = "schedule.set"
CRON_HELP = (
    "Five fields: minute hour day-of-month month day-of-week, in the agent's local time, "
    "e.g. 30 2 * * * (every day at 02:30) or */15 * * * * (every 15 minutes)."
)
CRON_PRESETS = (
    ("30 2 * * *", "every day at 02:30"),
    ("0 * * * *", "every hour"),
    ("*/15 * * * *", "every 15 minutes"),
    ("0 3 * * 0", "at 03:00 on Sunday"),
    ("0 4 1 * *", "at 04:00 on day 1 of the month"),
)


# --- reading -------------------------------------------------------------------------------


def schedules_of(host: Host) -> list[Schedule]:
    return list(
        db.session.scalars(
            select(Schedule).where(Schedule.host_id == host.id).order_by(Schedule.name)
        )
    )


def get_schedule_or_404(host: Host, schedule_id: int) -> Schedule:
    schedule = db.session.get(Schedule, schedule_id)
    if schedule is None or schedule.host_id != host.id:
        raise NotFound(f"{host.hostname} has no schedule with id {schedule_id}.")
    return schedule


def last_runs(schedule_ids: Iterable[int]) -> dict[int, Job]:
    """Each schedule's newest job, in one query."""
    ids = list(schedule_ids)
    if not ids:
        return {}
    newest = (
        select(func.max(Job.id)).where(Job.schedule_id.in_(ids)).group_by(Job.schedule_id)
    ).scalar_subquery()
    return {
        job.schedule_id: job for job in db.session.scalars(select(Job).where(Job.id.in_(newest)))
    }


def in_sync(host: Host) -> bool:
    return host.agent_schedule_version == host.schedule_version


# --- validation ----------------------------------------------------------------------------


def _refuse(field: str, message: str):
    raise ValidationFailed(message, fields={field: [message]})


def validate_cron(value) -> str:
    """A five-field cron expression croniter accepts and that fires at some point."""
    if not isinstance(value, str) or not value.strip():
        _refuse("cron", "Give a cron expression, e.g. 30 2 * * * for every day at 02:30.")
    cron = " ".join(value.split())
    if len(cron) > MAX_CRON:
        _refuse("cron", f"A cron expression has at most {MAX_CRON} characters.")
    # Five fields only: a sixth (seconds) would fire more often than once a minute.
    if len(cron.split(" ")) != 5:
        _refuse(
            "cron",
            "Use exactly five fields: minute hour day-of-month month day-of-week "
            "(schedules fire at most once a minute).",
        )
    if not croniter.is_valid(cron):
        _refuse("cron", f"{cron!r} is not a valid cron expression.")
    try:
        croniter(cron, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except (CroniterBadDateError, ValueError, KeyError):
        _refuse("cron", f"{cron!r} never fires (no such date).")
    return cron


def _name(host: Host, value, current: Optional[Schedule]) -> str:
    if not isinstance(value, str) or not value.strip():
        _refuse("name", "Give the schedule a name, e.g. nightly.")
    name = value.strip()
    if len(name) > MAX_NAME:
        _refuse("name", f"A name has at most {MAX_NAME} characters.")
    clash = db.session.scalar(
        select(Schedule.id).where(Schedule.host_id == host.id, Schedule.name == name)
    )
    if clash is not None and (current is None or clash != current.id):
        _refuse("name", f"{host.hostname} already has a schedule named {name!r}.")
    return name


def _groups(host: Host, value) -> list[SourceGroup]:
    """Source groups of this host, by id or by name; at least one."""
    if not isinstance(value, list) or not value:
        _refuse("source_groups", "Pick at least one source group.")
    host_groups = list(
        db.session.scalars(select(SourceGroup).where(SourceGroup.host_id == host.id))
    )
    by_id = {group.id: group for group in host_groups}
    by_name = {group.name: group for group in host_groups}
    chosen: list[SourceGroup] = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            group = by_id.get(item)
        elif isinstance(item, str):
            group = by_name.get(item)
            if group is None and item.isdigit():
                group = by_id.get(int(item))  # form checkboxes send ids as text
        else:
            group = None
        if group is None:
            _refuse("source_groups", f"{host.hostname} has no source group {item!r}.")
        if group not in chosen:
            chosen.append(group)
    return chosen


def _enabled(value) -> bool:
    if not isinstance(value, bool):
        _refuse("enabled", "Enabled (enabled) must be true or false.")
    return value


def _missed_policy(value) -> str:
    if value not in MISSED_POLICIES:
        _refuse("missed_policy", "Missed runs (missed_policy) must be run_once or skip.")
    return value


def checked_values(host: Host, data: dict, current: Optional[Schedule], *, partial: bool) -> dict:
    """The fields of ``data`` (all of them unless ``partial``), every problem at once."""
    errors = validate.FieldErrors()
    checks = {
        "name": lambda value: _name(host, value, current),
        "cron": validate_cron,
        "enabled": _enabled,
        "missed_policy": _missed_policy,
        "source_groups": lambda value: _groups(host, value),
    }
    defaults = {"enabled": True, "missed_policy": "run_once"}
    values = {}
    for field, check in checks.items():
        if field in data:
            values[field] = errors.check(check, data[field])
        elif not partial:
            values[field] = errors.check(check, defaults.get(field))
    errors.raise_any()
    return values


# --- changes -------------------------------------------------------------------------------


def create(box: SecretBox, host: Host, data: dict, *, now: datetime) -> Schedule:
    """A new schedule from ``data`` (name, cron, source_groups; enabled, missed_policy)."""
    values = checked_values(host, data, None, partial=False)
    groups = values.pop("source_groups")
    schedule = Schedule(host_id=host.id, created_at=now, updated_at=now, **values)
    schedule.source_groups = groups
    db.session.add(schedule)
    db.session.flush()
    bump_version(box, host, now=now)
    return schedule


def update_schedule(
    box: SecretBox, host: Host, schedule: Schedule, data: dict, *, now: datetime
) -> Schedule:
    """Change the fields present in ``data``; everything is validated before anything moves."""
    values = checked_values(host, data, schedule, partial=True)
    groups = values.pop("source_groups", None)
    for field, value in values.items():
        setattr(schedule, field, value)
    if groups is not None:
        schedule.source_groups = groups
    schedule.updated_at = now
    db.session.flush()
    bump_version(box, host, now=now)
    return schedule


def delete(box: SecretBox, host: Host, schedule: Schedule, *, now: datetime) -> None:
    db.session.delete(schedule)
    db.session.flush()
    bump_version(box, host, now=now)


# --- the push to the agent -----------------------------------------------------------------


def bump_version(box: SecretBox, host: Host, *, now: datetime) -> Command:
    """Every change to what the agent runs: a new version, and the complete set queued."""
    # One UPDATE, so two concurrent changes get two versions (the row lock serialises them).
    db.session.execute(
        update(Host)
        .where(Host.id == host.id)
        .values(schedule_version=Host.schedule_version + 1, schedule_changed_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.refresh(host, attribute_names=["schedule_version", "schedule_changed_at"])
    return push(box, host, now=now)


def push(box: SecretBox, host: Host, *, now: datetime) -> Command:
    """Queue the current set; older sets still waiting are superseded (a slow agent gets
    only the newest)."""
    db.session.execute(
        update(Command)
        .where(
            Command.host_id == host.id,
            Command.type == COMMAND_TYPE,
            Command.state.in_(("queued", "leased")),
        )
        .values(state="acked", result="superseded", acked_at=now, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    payload, secret = schedule_set(box, host)
    return commands.enqueue(
        box, host, COMMAND_TYPE, payload=payload, secret_payload=secret, now=now
    )


def schedule_set(box: SecretBox, host: Host) -> tuple[dict, Optional[dict]]:
    """The ``schedule.set`` payload and its sealed part (the groups again, with hooks)."""
    groups = list(
        db.session.scalars(
            select(SourceGroup).where(SourceGroup.host_id == host.id).order_by(SourceGroup.name)
        )
    )
    plain_groups = [
        {
            "id": group.id,
            "name": group.name,
            "paths": list(group.includes or []),
            "excludes": list(group.excludes or []),
            "retry_max": group.retry_max,
            "retry_backoff_seconds": group.retry_backoff_seconds,
        }
        for group in groups
    ]
    default_pre = _open(box, host.sealed_pre_hook, "hosts", "pre_hook", host.id)
    default_post = _open(box, host.sealed_post_hook, "hosts", "post_hook", host.id)
    hooked_groups = [
        {
            **plain,
            "pre_hook": _open(box, group.sealed_pre_hook, "source_groups", "pre_hook", group.id)
            or default_pre,
            "post_hook": _open(box, group.sealed_post_hook, "source_groups", "post_hook", group.id)
            or default_post,
        }
        for plain, group in zip(plain_groups, groups)
    ]
    payload = {
        "version": host.schedule_version,
        "limits": {"upload_kib": host.limit_upload_kib, "download_kib": host.limit_download_kib},
        "hooks_allowed_by_server": True,
        "groups": plain_groups,
        "schedules": [
            {
                "id": schedule.id,
                "name": schedule.name,
                "cron": schedule.cron,
                "enabled": schedule.enabled,
                "missed_policy": schedule.missed_policy,
                "groups": [group.id for group in schedule.source_groups],
            }
            for schedule in schedules_of(host)
        ],
    }
    # Lists are replaced, not merged, on delivery: the sealed part carries the whole list.
    return payload, ({"groups": hooked_groups} if groups else None)


def _open(
    box: SecretBox, sealed: Optional[bytes], table: str, column: str, row_id
) -> Optional[str]:
    if not sealed:
        return None
    return box.open(sealed, table=table, column=column, row_id=row_id) or None


def ensure_pushed(box: SecretBox, host: Host, *, now: datetime) -> Optional[Command]:
    """On hello: an agent behind the server's version gets the set again, unless one waits."""
    if host.schedule_version == 0 or in_sync(host):
        return None
    waiting = db.session.scalar(
        select(Command.id).where(
            Command.host_id == host.id,
            Command.type == COMMAND_TYPE,
            Command.state.in_(("queued", "leased")),
        )
    )
    return None if waiting else push(box, host, now=now)


def apply_ack(host: Host, data: dict) -> None:
    """A ``schedule.applied`` event: the agent runs this version of the host's schedules."""
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise EventRejected(
            "invalid_event", "schedule.applied needs a non-negative integer version."
        )
    if version > host.schedule_version:
        return  # a version the server never sent (a restored database): not in sync
    host.agent_schedule_version = version


# --- cron in words and next run times (pure) -----------------------------------------------

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_DAY_NAMES = {name[:3].lower(): index for index, name in enumerate(_DAYS)}


def _number(field: str, low: int, high: int) -> Optional[int]:
    return int(field) if field.isdigit() and low <= int(field) <= high else None


def _numbers(field: str, low: int, high: int) -> Optional[list[int]]:
    values = [_number(part, low, high) for part in field.split(",")]
    return None if any(value is None for value in values) else values


def _day(part: str) -> Optional[int]:
    if part.lower() in _DAY_NAMES:
        return _DAY_NAMES[part.lower()]
    value = _number(part, 0, 7)
    return None if value is None else value % 7


def _days(field: str) -> Optional[str]:
    if field.lower() in ("1-5", "mon-fri"):
        return "on weekdays"
    if field.lower() in ("0,6", "6,0", "sat,sun", "sun,sat"):
        return "on weekends"
    days = [_day(part) for part in field.split(",")]
    if any(day is None for day in days):
        return None
    names = [_DAYS[day] for day in days]
    return "on " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(cron: str) -> str:
    """Common cron shapes in words ("every day at 02:30"); anything else as written."""
    fields = cron.split()
    if len(fields) != 5:
        return cron
    minute, hour, day, month, weekday = fields
    if month != "*":
        return cron
    if (hour, day, weekday) == ("*", "*", "*"):
        if minute == "*":
            return "every minute"
        if minute.startswith("*/") and _number(minute[2:], 1, 59):
            step = int(minute[2:])
            return "every minute" if step == 1 else f"every {step} minutes"
        if _number(minute, 0, 59) is not None:
            return "every hour" if minute == "0" else f"every hour at minute {int(minute)}"
        return cron
    if day == "*" and weekday == "*" and hour.startswith("*/") and _number(hour[2:], 1, 23):
        at = _number(minute, 0, 59)
        step = int(hour[2:])
        if at is None:
            return cron
        every = "every hour" if step == 1 else f"every {step} hours"
        return every if at == 0 else f"{every} at minute {at}"
    minutes = _number(minute, 0, 59)
    hours = _numbers(hour, 0, 23)
    if minutes is None or hours is None:
        return cron
    times = _and([f"{value:02d}:{minutes:02d}" for value in hours])
    if day == "*" and weekday == "*":
        return f"every day at {times}"
    if day == "*":
        days = _days(weekday)
        return f"at {times} {days}" if days else cron
    if weekday == "*":
        days_of_month = _numbers(day, 1, 31)
        if days_of_month is None:
            return cron
        listed = _and([str(value) for value in days_of_month])
        return f"at {times} on day {listed} of every month"
    return cron


def next_runs(cron: str, count: int = 3, *, after: datetime) -> list[datetime]:
    """The next ``count`` times the expression fires after ``after``, evaluated in UTC."""
    iterator = croniter(cron, after.astimezone(timezone.utc))
    return [iterator.get_next(datetime).astimezone(timezone.utc) for _ in range(count)]


@lru_cache(maxsize=1024)
def _next_run_cached(cron: str, minute: datetime) -> Optional[datetime]:
    try:
        return next_runs(cron, 1, after=minute)[0]
    except (CroniterBadDateError, ValueError, KeyError):
        return None


def next_run(cron: str, *, after: datetime) -> Optional[datetime]:
    """The next fire time, cached per minute (the dashboard asks for thousands of hosts)."""
    return _next_run_cached(cron, after.replace(second=0, microsecond=0))


def single_enabled_schedules() -> dict[int, str]:
    """Host id -> cron, for hosts covered by exactly one enabled schedule (one query)."""
    crons: dict[int, list[str]] = {}
    for host_id, cron in db.session.execute(
        select(Schedule.host_id, Schedule.cron).where(Schedule.enabled.is_(True))
    ):
        crons.setdefault(host_id, []).append(cron)
    return {host_id: found[0] for host_id, found in crons.items() if len(found) == 1}


def audit_payload(schedule: Schedule) -> dict:
    """What a schedule's audit rows say about it."""
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "enabled": schedule.enabled,
        "missed_policy": schedule.missed_policy,
        "source_groups": [group.name for group in schedule.source_groups],
    }


def record_change(
    host: Host,
    schedule: Optional[Schedule],
    action: str,
    *,
    actor: Actor,
    client_address: Optional[str],
    payload: Optional[dict] = None,
    target_id: Optional[int] = None,
) -> None:
    """Audit a change of the host's schedules (``schedule`` None once deleted: give
    ``payload`` and ``target_id``); the caller commits and wakes the agent's poll, so the
    new set goes out at once."""
    payload = dict(payload or audit_payload(schedule))
    payload.update(host_id=host.id, schedule_version=host.schedule_version)
    audit.record(
        actor,
        action,
        target_type="schedule",
        target_id=target_id if schedule is None else schedule.id,
        payload=payload,
        client_address=client_address,
    )
