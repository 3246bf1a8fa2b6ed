"""The retention preview: restic's forget policy in Python, checked against restic itself.

The comparison with the real restic is skipped when restic is not installed, unless
RM_REQUIRE_RESTIC=1 (CI): then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from app.services import retention
from app.services.repository import parse_restic_time

RESTIC = shutil.which("restic")
PASSWORD = "retention-Preview-pass-9"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def _snap(name: str, time: str, hostname="web-1", paths=("/etc",)):
    return SimpleNamespace(snapshot_id=name, time=_at(time), hostname=hostname, paths=list(paths))


def _kept(decisions) -> list[str]:
    return [d.snapshot.snapshot_id for d in decisions if d.keep]


def _reasons(decisions) -> dict[str, tuple[str, ...]]:
    return {d.snapshot.snapshot_id: d.reasons for d in decisions}


# --- pure ----------------------------------------------------------------------------------


def test_an_empty_policy_keeps_everything():
    snapshots = [_snap("a", "2026-01-01 10:00"), _snap("b", "2026-01-02 10:00")]
    decisions = retention.apply_policy(snapshots, {})
    assert _kept(decisions) == ["b", "a"]
    assert decisions[0].reasons == (retention.EMPTY_POLICY_REASON,)


def test_keep_last_keeps_the_newest_n():
    snapshots = [_snap(str(day), f"2026-01-{day:02d} 10:00") for day in range(1, 6)]
    decisions = retention.apply_policy(snapshots, {"keep_last": 2})
    assert _kept(decisions) == ["5", "4"]
    assert [d.keep for d in decisions] == [True, True, False, False, False]


def test_keep_daily_keeps_the_newest_of_each_day_until_the_count_is_used():
    snapshots = [
        _snap("d3-late", "2026-01-03 23:00"),
        _snap("d3-early", "2026-01-03 01:00"),
        _snap("d2", "2026-01-02 12:00"),
        _snap("d1", "2026-01-01 12:00"),
    ]
    decisions = retention.apply_policy(snapshots, {"keep_daily": 2})
    assert _kept(decisions) == ["d3-late", "d2"]
    assert _reasons(decisions)["d2"] == ("daily snapshot",)


def test_days_without_snapshots_do_not_use_up_the_count():
    snapshots = [_snap("new", "2026-03-01 10:00"), _snap("old", "2025-01-01 10:00")]
    assert _kept(retention.apply_policy(snapshots, {"keep_daily": 2})) == ["new", "old"]


def test_weekly_uses_iso_weeks():
    # 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
    snapshots = [
        _snap("mon", "2026-01-05 10:00"),
        _snap("sun", "2026-01-04 10:00"),
        _snap("sat", "2026-01-03 10:00"),
    ]
    assert _kept(retention.apply_policy(snapshots, {"keep_weekly": 5})) == ["mon", "sun"]


def test_a_snapshot_kept_by_several_rules_lists_every_reason():
    snapshots = [_snap("only", "2026-01-05 10:00")]
    (decision,) = retention.apply_policy(
        snapshots, {"keep_last": 1, "keep_daily": 1, "keep_yearly": 1, "keep_within": "1d"}
    )
    assert decision.reasons == ("within 1d", "last snapshot", "daily snapshot", "yearly snapshot")


def test_keep_within_counts_back_from_the_newest_snapshot_not_from_now():
    snapshots = [
        _snap("newest", "2020-06-10 12:00"),
        _snap("inside", "2020-06-01 12:01"),
        _snap("edge", "2020-06-01 12:00"),  # exactly 9 days older: not "after" the cutoff
    ]
    decisions = retention.apply_policy(snapshots, {"keep_within": "9d"})
    assert _kept(decisions) == ["newest", "inside"]


def test_month_arithmetic_rolls_over_like_go():
    # 31 March minus one month is "31 February", which Go normalises to 3 March.
    assert retention.subtract(_at("2026-03-31 12:00"), 0, 1, 0, 0) == _at("2026-03-03 12:00")
    assert retention.subtract(_at("2026-01-15 12:00"), 1, 2, 3, 4) == _at("2024-11-12 08:00")


def test_groups_are_host_and_paths_each_with_its_own_counts():
    snapshots = [
        _snap("etc-2", "2026-01-02 10:00"),
        _snap("etc-1", "2026-01-01 10:00"),
        _snap("home-1", "2026-01-01 09:00", paths=("/home",)),
        _snap("other-host", "2026-01-01 08:00", hostname="db-1"),
    ]
    decisions = retention.preview(snapshots, {"keep_last": 1})
    assert _kept(decisions) == ["etc-2", "home-1", "other-host"]
    assert [d.snapshot.snapshot_id for d in decisions][1] == "etc-1"  # newest first overall


def test_paths_are_grouped_whatever_their_order():
    snapshots = [
        _snap("b", "2026-01-02 10:00", paths=("/home", "/etc")),
        _snap("a", "2026-01-01 10:00", paths=("/etc", "/home")),
    ]
    assert _kept(retention.preview(snapshots, {"keep_last": 1})) == ["b"]


def test_policy_in_words():
    assert retention.describe({}) == "keep every snapshot"
    assert (
        retention.describe({"keep_daily": 7, "keep_last": 3, "keep_within": "30d"})
        == "keep the last 3, 7 daily, everything within 30d of the newest"
    )


# --- against the real restic ---------------------------------------------------------------

# Chosen to cross hours, days, ISO weeks (2025-12-29 is in week 1 of 2026), months and years.
SNAPSHOT_TIMES = [
    "2024-02-29 23:30:00",
    "2024-12-31 23:59:00",
    "2025-01-01 00:01:00",
    "2025-03-31 12:00:00",
    "2025-06-15 08:00:00",
    "2025-12-28 10:00:00",
    "2025-12-29 10:00:00",
    "2026-01-03 09:00:00",
    "2026-01-03 09:45:00",
    "2026-01-03 10:15:00",
    "2026-01-04 22:00:00",
    "2026-01-05 06:00:00",
    "2026-01-05 06:30:00",
    "2026-02-01 00:00:00",
    "2026-03-01 12:00:00",
    "2026-03-31 18:00:00",
]
POLICIES = [
    {"keep_last": 3},
    {"keep_hourly": 4},
    {"keep_daily": 5},
    {"keep_weekly": 3},
    {"keep_monthly": 4},
    {"keep_yearly": 2},
    {"keep_within": "1m"},
    {"keep_within": "1y2m3d4h"},
    {"keep_within": "27d"},
    {"keep_last": 2, "keep_daily": 3, "keep_weekly": 2, "keep_monthly": 3, "keep_yearly": 5},
    {"keep_hourly": 2, "keep_within": "3d"},
    {"keep_daily": 100},
]


@pytest.fixture(scope="module")
def real_repository(tmp_path_factory):
    if RESTIC is None:
        if os.environ.get("RM_REQUIRE_RESTIC") == "1":
            pytest.fail("restic is not installed but RM_REQUIRE_RESTIC=1", pytrace=False)
        pytest.skip("restic is not installed (set RM_REQUIRE_RESTIC=1 to fail)")
    root = tmp_path_factory.mktemp("retention")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "TZ": "UTC",  # restic reads --time in local time and buckets by the snapshot's zone
        "RESTIC_REPOSITORY": str(root / "repo"),
        "RESTIC_PASSWORD": PASSWORD,
        "RESTIC_CACHE_DIR": str(root / "cache"),
    }

    def restic(*args) -> str:
        result = subprocess.run(
            [RESTIC, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True
        )
        return result.stdout.decode()

    restic("init")
    for name in ("etc", "home"):
        (root / name).mkdir()
        (root / name / "file").write_text(name)
    for index, time in enumerate(SNAPSHOT_TIMES):
        restic("backup", "--quiet", "--tag", "grp", "--time", time, str(root / "etc"))
        if index % 3 == 0:  # a second group (other paths) with fewer snapshots
            restic("backup", "--quiet", "--tag", "grp", "--time", time, str(root / "home"))
    restic(
        "backup", "--quiet", "--tag", "other", "--time", "2026-04-01 00:00:00", str(root / "etc")
    )
    return restic


def _restic_flags(policy: dict) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in policy.items()]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda policy: json.dumps(policy))
def test_the_preview_agrees_with_restic_forget_dry_run(real_repository, policy):
    listed = json.loads(real_repository("snapshots", "--json", "--tag", "grp"))
    snapshots = [
        SimpleNamespace(
            snapshot_id=item["id"],
            time=parse_restic_time(item["time"]),
            hostname=item["hostname"],
            paths=item["paths"],
        )
        for item in listed
    ]
    assert len(snapshots) == len(SNAPSHOT_TIMES) + 6

    groups = json.loads(
        real_repository("forget", "--dry-run", "--json", "--tag", "grp", *_restic_flags(policy))
    )
    restic_keep = {item["id"] for group in groups for item in group["keep"] or []}
    restic_remove = {item["id"] for group in groups for item in group["remove"] or []}
    # restic 0.14 prints the reasons without the snapshot id, in the order of "keep"
    restic_reasons = {
        kept["id"]: tuple(reason["matches"])
        for group in groups
        for kept, reason in zip(group["keep"] or [], group["reasons"] or [], strict=True)
    }

    decisions = retention.preview(snapshots, policy)
    ours_keep = {d.snapshot.snapshot_id for d in decisions if d.keep}
    ours_remove = {d.snapshot.snapshot_id for d in decisions if not d.keep}
    assert ours_keep == restic_keep
    assert ours_remove == restic_remove
    assert {d.snapshot.snapshot_id: d.reasons for d in decisions if d.keep} == restic_reasons


def test_times_from_restic_keep_their_instant():
    # the stored list is UTC; restic's timestamps carry an offset and nanoseconds
    assert parse_restic_time("2026-01-03T10:15:00.123456789+01:00") == _at(
        "2026-01-03 09:15:00.123456"
    )
    assert timedelta(0) == parse_restic_time("2026-01-03T09:15:00Z") - _at("2026-01-03 09:15")


def test_days_are_counted_on_the_clock_of_the_host_that_took_the_snapshot():
    """23:30 and 00:30 at UTC+2 are two days there (restic keeps both with keep_daily 2),
    though both fall on one UTC day."""

    def snap(ident, utc_hour, offset):
        time = datetime(2026, 11, 25, utc_hour, 30, tzinfo=timezone.utc)
        return SimpleNamespace(
            snapshot_id=ident,
            time=time,
            time_offset_minutes=offset,
            hostname="h",
            paths=["/etc"],
            tags=[],
        )

    for offset, kept in ((120, 2), (0, 1), (None, 1)):
        decisions = retention.preview(
            [snap("a", 21, offset), snap("b", 22, offset)], {"keep_daily": 2}
        )
        assert sum(decision.keep for decision in decisions) == kept, offset


def test_the_offset_restic_wrote_is_kept():
    from app.services.repository import restic_time_offset

    assert restic_time_offset("2026-11-25T23:30:00.123456789+02:00") == 120
    assert restic_time_offset("2026-11-25T23:30:00-05:30") == -330
    assert restic_time_offset("2026-11-25T23:30:00Z") == 0
    assert restic_time_offset("yesterday") is None
