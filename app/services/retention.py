"""restic's forget policy in pure Python, to preview a retention policy before it is saved.

Follows restic's ``ApplyPolicy`` (internal/restic/snapshot_policy.go): within one group the
snapshots are walked newest first; every keep-N rule keeps the newest snapshot of each of
its time buckets (hour, day, ISO week, month, year; "last" makes every snapshot its own
bucket) until N snapshots were kept by it; keep-within keeps every snapshot younger than
the duration counted back from the group's newest snapshot. A snapshot is kept when any
rule keeps it. Groups are restic's default ``--group-by host,paths``.

restic buckets a snapshot by the clock of the host that took it (the UTC offset in its
timestamp); the server keeps that offset (``Snapshot.time_offset_minutes``) and buckets by
it too, so a snapshot taken near midnight lands in the same day as in restic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

from app.services.errors import ValidationFailed

KEEP_COUNTS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
RULES = (*KEEP_COUNTS, "keep_within")
RULE_LABELS = {
    "keep_last": "Keep last",
    "keep_hourly": "Keep hourly",
    "keep_daily": "Keep daily",
    "keep_weekly": "Keep weekly",
    "keep_monthly": "Keep monthly",
    "keep_yearly": "Keep yearly",
    "keep_within": "Keep within",
}
MAX_KEEP = 100_000
MAX_DURATION_LENGTH = 32  # keep_within: restic parses each number as a 64-bit integer
# Each number of keep_within: restic turns the hours into a Go Duration, which wraps past
# 2,562,047 hours; 100,000 of any unit is already "keep everything".
MAX_DURATION_NUMBER = 100_000
DURATION_PATTERN = r"^(?:[0-9]+y)?(?:[0-9]+m)?(?:[0-9]+d)?(?:[0-9]+h)?$"
_DURATION = re.compile(DURATION_PATTERN)
EMPTY_POLICY_REASON = "no retention policy: every snapshot is kept"
_DURATION_PART = re.compile(r"([0-9]+)([ymdh])")
_BEGINNING = datetime.min.replace(tzinfo=timezone.utc)

_BUCKETS: tuple[tuple[str, str, Callable[[datetime, int], Any]], ...] = (
    ("keep_last", "last snapshot", lambda time, index: index),
    ("keep_hourly", "hourly snapshot", lambda time, index: (time.date(), time.hour)),
    ("keep_daily", "daily snapshot", lambda time, index: time.date()),
    ("keep_weekly", "weekly snapshot", lambda time, index: time.isocalendar()[:2]),
    ("keep_monthly", "monthly snapshot", lambda time, index: (time.year, time.month)),
    ("keep_yearly", "yearly snapshot", lambda time, index: time.year),
)
assert tuple(key for key, _, _ in _BUCKETS) == KEEP_COUNTS


@dataclass(frozen=True)
class Decision:
    snapshot: Any
    keep: bool
    reasons: tuple[str, ...]


def retention_policy(raw: Any, *, field: str, allow_empty: bool = False) -> dict:
    """A forget policy ({"keep_daily": 7, "keep_within": "30d"}), normalised.

    ``field`` prefixes the error keys (``params.policy`` for a forget job, ``retention`` for
    a source group); ``allow_empty`` accepts ``{}`` (keep everything).
    """

    def fail(key: str, message: str):
        name = f"{field}.{key}" if key else field
        raise ValidationFailed(message, fields={name: [message]})

    if raw is None and allow_empty:
        return {}
    if not isinstance(raw, dict):
        fail("", 'The retention policy must be an object such as {"keep_daily": 7}.')
    unknown = sorted(set(raw) - set(RULES))
    if unknown:
        fail(unknown[0], f"Unknown retention rule {unknown[0]!r}.")
    policy: dict[str, Any] = {}
    for key in KEEP_COUNTS:
        value = raw.get(key)
        if value in (None, "", 0):
            continue
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()):
            value = int(value.strip())  # an HTML form posts strings; the JSON API refused them
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(key, f"{key} must be a whole number ≥ 1 (or empty).")
        if value > MAX_KEEP:
            fail(key, f"{key} must be at most {MAX_KEEP}.")
        policy[key] = value
    within = raw.get("keep_within")
    if within not in (None, ""):
        if (
            not isinstance(within, str)
            or not within.strip()
            or len(within.strip()) > MAX_DURATION_LENGTH
            or not _DURATION.match(within.strip())
        ):
            fail("keep_within", "keep_within is a duration such as 1y6m, 30d or 12h.")
        if max(parse_duration(within)) > MAX_DURATION_NUMBER:
            fail(
                "keep_within",
                f"keep_within: each number must be at most {MAX_DURATION_NUMBER} (100y is plenty).",
            )
        policy["keep_within"] = within.strip()
    if not policy and not allow_empty:
        fail("", "Give at least one retention rule (keep last, daily, … or within).")
    return policy


def parse_duration(text: str) -> tuple[int, int, int, int]:
    """``1y2m3d4h`` as (years, months, days, hours)."""
    parts = {"y": 0, "m": 0, "d": 0, "h": 0}
    for number, unit in _DURATION_PART.findall(text or ""):
        parts[unit] += int(number)
    return parts["y"], parts["m"], parts["d"], parts["h"]


def duration_text(text: str) -> str:
    """The duration as restic prints it in a reason (zero parts left out)."""
    years, months, days, hours = parse_duration(text)
    return "".join(
        f"{value}{unit}"
        for value, unit in ((years, "y"), (months, "m"), (days, "d"), (hours, "h"))
        if value
    )


def subtract(time: datetime, years: int, months: int, days: int, hours: int) -> datetime:
    """Go's ``t.AddDate(-y, -m, -d).Add(-h hours)``: an overflowing day rolls over
    (31 March minus one month is 3 March), as restic computes it; a duration reaching
    before year 1 (a policy stored before durations were bounded) gives year 1."""
    month_index = time.month - 1 - months
    year = time.year - years + month_index // 12
    try:
        first = time.replace(year=year, month=month_index % 12 + 1, day=1)
        return first + timedelta(days=time.day - 1 - days) - timedelta(hours=hours)
    except (ValueError, OverflowError):  # before year 1: every snapshot is within
        return _BEGINNING


def _clock(snapshot: Any) -> datetime:
    """The snapshot's time on the clock of the host that took it (restic's buckets)."""
    offset = getattr(snapshot, "time_offset_minutes", None)
    if offset is None or snapshot.time.tzinfo is None:
        return snapshot.time
    return snapshot.time.astimezone(timezone(timedelta(minutes=offset)))


def _newest_first(snapshots: Iterable[Any]) -> list[Any]:
    return sorted(
        snapshots,
        key=lambda snapshot: (snapshot.time, getattr(snapshot, "snapshot_id", "")),
        reverse=True,
    )


def apply_policy(snapshots: Iterable[Any], policy: dict) -> list[Decision]:
    """Keep/remove for one group of snapshots (objects with ``.time``), newest first."""
    ordered = _newest_first(snapshots)
    if not any(policy.get(key) for key in RULES):
        return [Decision(snapshot, True, (EMPTY_POLICY_REASON,)) for snapshot in ordered]
    if not ordered:
        return []
    remaining = {key: int(policy.get(key) or 0) for key in KEEP_COUNTS}
    last_bucket: dict[str, Any] = {key: object() for key in KEEP_COUNTS}
    within = policy.get("keep_within")
    cutoff = subtract(_clock(ordered[0]), *parse_duration(within)) if within else None
    decisions = []
    for index, snapshot in enumerate(ordered):
        reasons = []
        if cutoff is not None and _clock(snapshot) > cutoff:
            reasons.append(f"within {duration_text(within)}")
        for key, reason, bucket_of in _BUCKETS:
            if remaining[key] <= 0:
                continue
            bucket = bucket_of(_clock(snapshot), index)
            if bucket != last_bucket[key]:
                last_bucket[key] = bucket
                remaining[key] -= 1
                reasons.append(reason)
        decisions.append(Decision(snapshot, bool(reasons), tuple(reasons)))
    return decisions


def group_key(snapshot: Any) -> tuple[str, tuple[str, ...]]:
    """restic's default grouping: the host name and the (sorted) backed-up paths."""
    return (snapshot.hostname or "", tuple(sorted(snapshot.paths or [])))


def preview(snapshots: Sequence[Any], policy: dict) -> list[Decision]:
    """Decisions for every snapshot, grouped like ``restic forget`` (newest first overall)."""
    groups: dict[tuple, list[Any]] = {}
    for snapshot in snapshots:
        groups.setdefault(group_key(snapshot), []).append(snapshot)
    decisions = [
        decision for members in groups.values() for decision in apply_policy(members, policy)
    ]
    return sorted(
        decisions,
        key=lambda decision: (
            decision.snapshot.time,
            getattr(decision.snapshot, "snapshot_id", ""),
        ),
        reverse=True,
    )


def describe(policy: dict) -> str:
    """The policy in words: "the last 3, 7 daily, 4 weekly, everything within 30d"."""
    if not policy:
        return "keep every snapshot"
    words = {
        "keep_last": "the last {}",
        "keep_hourly": "{} hourly",
        "keep_daily": "{} daily",
        "keep_weekly": "{} weekly",
        "keep_monthly": "{} monthly",
        "keep_yearly": "{} yearly",
    }
    parts = [words[key].format(policy[key]) for key in KEEP_COUNTS if policy.get(key)]
    if policy.get("keep_within"):
        parts.append(f"everything within {policy['keep_within']} of the newest")
    return "keep " + ", ".join(parts)
