"""Alert evaluation benchmark: one ticker pass over a large fleet, on SQLite (issue 14).

    python tests/bench/alerts_tick.py                      # 5,000 hosts, 3 groups each
    python tests/bench/alerts_tick.py --hosts 1000 --profile

Not a test (pytest does not collect it; no timing assertions). Steps:

1. A fresh data dir (a temporary one unless ``--data-dir``) with the migrated SQLite database,
   seeded straight through the models: N enrolled hosts, 3 source groups each ("system",
   "home", "db"); a nightly schedule on system+home of every host and an hourly one on the
   db group of even hosts (odd hosts' db group is unscheduled; every 10th host has a maximum
   age for it). Most groups were backed up recently. Every 20th host is offline (silent for
   2 h), every 25th host's nightly groups are overdue (last success 3 days ago), every 100th
   host has not confirmed its schedule version for an hour; 200 hosts carry an open
   backup_failed alert fired 30 h ago (so the first pass writes reminders); two channels
   (all alerts, critical only) and a tag silence.
2. The first tick: ``app.ticker.tick`` at the seeded "now" (it opens the alerts), then
   ``--steady`` ticks 30 s apart in which nothing changes. For each: the process's CPU
   seconds (``time.process_time``: the server and SQLite, which runs in-process) and the wall
   time, for ``alerts.evaluate`` alone and for the whole tick (lost jobs, maintenance,
   rpc sweep, alerts, commit).
3. Sanity: the first tick opened exactly the expected alerts per rule and wrote the expected
   outbox rows; a steady tick opens, resolves and writes nothing; no time is negative. The
   script says whether it holds and exits 1 if not.

Prints a markdown table (stdout); progress to stderr. ``--profile`` prints the top of a
cProfile of one steady ``alerts.evaluate``. Goal (issue 14): < 1 s CPU per steady tick.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("system", "home", "db")
OFFLINE_EVERY = 20
OVERDUE_EVERY = 25
UNSYNCED_EVERY = 100
MAX_AGE_EVERY = 10
OPEN_FAILED = 200
TICK_SECONDS = 30


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def seed(hosts_count: int, now) -> dict:
    """The fleet described in the module docstring; returns the expected first-tick
    alerts per rule and outbox rows."""
    from app.extensions import db
    from app.models import (
        Alert,
        AlertOverride,
        Host,
        Notification,
        NotificationChannel,
        Schedule,
        Silence,
        SourceGroup,
    )
    from app.services.alerts import open_key

    expected = Counter()
    hosts = []
    for index in range(hosts_count):
        offline = index % OFFLINE_EVERY == 0
        unsynced = index % UNSYNCED_EVERY == 0
        hosts.append(
            Host(
                hostname=f"bench-{index:05d}",
                os="linux",
                arch="x86_64",
                agent_version="bench",
                restic_version="0.16.4",
                protocol_version=1,
                repo_status="ready",
                tags=["lab"] if index % 50 == 7 else ["prod"],
                created_at=now - timedelta(days=60),
                enrolled_at=now - timedelta(days=60),
                last_seen_at=now - (timedelta(hours=2) if offline else timedelta(seconds=5)),
                schedule_version=2,
                agent_schedule_version=1 if unsynced else 2,
                schedule_changed_at=now - timedelta(hours=1 if unsynced else 24 * 30),
            )
        )
        expected["agent_offline"] += offline
        expected["schedule_not_applied"] += unsynced
    db.session.add_all(hosts)
    db.session.flush()
    _progress(f"  {len(hosts)} hosts")

    groups = []
    for index, host in enumerate(hosts):
        overdue = index % OVERDUE_EVERY == 0
        for name in GROUPS:
            if name == "db":
                last = now - timedelta(minutes=20 if index % 2 == 0 else 60 * 24)
            else:
                last = now - (timedelta(days=3) if overdue else timedelta(hours=3))
            groups.append(
                SourceGroup(
                    host_id=host.id,
                    name=name,
                    includes=[f"/{name}"],
                    created_at=now - timedelta(days=60),
                    updated_at=now - timedelta(days=60),
                    last_successful_backup_at=last,
                )
            )
        expected["backup_overdue"] += 2 * overdue
    db.session.add_all(groups)
    db.session.flush()
    _progress(f"  {len(groups)} source groups")

    schedules = []
    for index, host in enumerate(hosts):
        system, home, database = groups[3 * index : 3 * index + 3]
        nightly = Schedule(
            host_id=host.id,
            name="nightly",
            cron=f"{index % 60} 2 * * *",
            created_at=now - timedelta(days=60),
            updated_at=now - timedelta(days=60),
        )
        nightly.source_groups = [system, home]
        schedules.append(nightly)
        if index % 2 == 0:
            hourly = Schedule(
                host_id=host.id,
                name="hourly",
                cron=f"{index % 60} * * * *",
                created_at=now - timedelta(days=60),
                updated_at=now - timedelta(days=60),
            )
            hourly.source_groups = [database]
            schedules.append(hourly)
        elif index % MAX_AGE_EVERY == 1:
            db.session.add(
                AlertOverride(rule="backup_overdue", host_id=host.id, max_age_seconds=7 * 86400)
            )
    db.session.add_all(schedules)
    db.session.flush()
    _progress(f"  {len(schedules)} schedules")

    channels = [
        NotificationChannel(name="everything", kind="webhook", min_severity="info"),
        NotificationChannel(name="critical", kind="webhook", min_severity="critical"),
    ]
    db.session.add_all(channels)
    fired = now - timedelta(hours=30)
    failed = []
    for index in range(0, hosts_count, max(1, hosts_count // OPEN_FAILED))[:OPEN_FAILED]:
        host = hosts[index]
        failed.append(
            Alert(
                open_key=open_key("backup_failed", host.id, "system"),
                rule="backup_failed",
                host_id=host.id,
                subject="system",
                severity="critical",
                state="firing",
                message=f"Backup of system on {host.hostname} failed: benchmark",
                details={},
                occurrences=1,
                fired_at=fired,
                last_fired_at=fired,
            )
        )
        expected["reminders"] += 0 if "lab" in host.tags else 2  # both channels want it
    db.session.add_all(failed)
    db.session.flush()
    db.session.add_all(  # their "firing" went out 30 h ago: a reminder is due (24 h)
        Notification(
            idempotency_key=uuid.uuid4().hex,
            alert_id=alert.id,
            channel_id=channel.id,
            event="firing",
            state="sent",
            attempts=1,
            next_attempt_at=fired,
            created_at=fired,
            sent_at=fired,
        )
        for alert in failed
        for channel in channels
    )
    db.session.add(
        Silence(
            tag="lab",
            reason="benchmark lab",
            starts_at=now - timedelta(days=1),
            ends_at=now + timedelta(days=1),
            created_by="bench",
            created_at=now - timedelta(days=1),
        )
    )
    db.session.commit()
    # firing rows: one per channel that wants it (warning: "everything" only), none when muted
    for index, host in enumerate(hosts):
        muted = "lab" in host.tags
        if muted:
            continue
        expected["outbox"] += (index % OFFLINE_EVERY == 0) + (index % UNSYNCED_EVERY == 0)
        expected["outbox"] += 2 * 2 * (index % OVERDUE_EVERY == 0)  # critical, two groups
    expected["outbox"] += expected["reminders"] + 2 * len(failed)  # and the old firing rows
    return dict(expected)


def _counts():
    from sqlalchemy import func, select

    from app.extensions import db
    from app.models import Alert, Notification

    opened = Counter(
        dict(
            db.session.execute(
                select(Alert.rule, func.count())
                .where(Alert.state != "resolved")
                .group_by(Alert.rule)
            ).all()
        )
    )
    outbox = Counter(
        dict(
            db.session.execute(
                select(Notification.event, func.count()).group_by(Notification.event)
            ).all()
        )
    )
    return opened, outbox


def timed_tick(box, now, listening_since) -> dict:
    """One ``ticker.tick``: CPU and wall seconds of the whole tick and of alerts.evaluate."""
    from app import ticker
    from app.services import alerts

    measured = {}
    evaluate = alerts.evaluate

    def timed_evaluate(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            measured["evaluate_cpu"] = time.process_time() - cpu
            measured["evaluate_wall"] = time.perf_counter() - wall

    alerts.evaluate = timed_evaluate
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        ticker.tick(box, now, listening_since=listening_since)
        measured["tick_cpu"] = time.process_time() - cpu
        measured["tick_wall"] = time.perf_counter() - wall
    finally:
        alerts.evaluate = evaluate
    return measured


def run(hosts_count: int, steady: int, data_dir: Path, profile: bool) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.models.types import utcnow
    from app.services import alerts

    app = create_app(
        {
            "RM_DATA_DIR": data_dir,
            "RM_SECRET_KEY_FILE": data_dir / "secret.key",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{data_dir / 'restic-manager.db'}",
        }
    )
    problems = []
    rows = []
    with app.app_context():
        upgrade()
        now = utcnow()
        started = time.monotonic()
        _progress(f"seeding {hosts_count} hosts x {len(GROUPS)} groups")
        expected = seed(hosts_count, now)
        _progress(f"seeded in {time.monotonic() - started:.1f} s; expected {expected}")
        db.session.remove()
        box = app.extensions["secretbox"]
        listening_since = now - timedelta(days=1)

        first = timed_tick(box, now, listening_since)
        db.session.remove()
        opened, outbox = _counts()
        rows.append(("first", first))
        for rule in ("agent_offline", "backup_overdue", "schedule_not_applied"):
            if opened[rule] != expected[rule]:
                problems.append(f"{rule}: {opened[rule]} open, expected {expected[rule]}")
        if opened["backup_failed"] != min(OPEN_FAILED, hosts_count):
            problems.append(f"backup_failed: {opened['backup_failed']} open after the first tick")
        if outbox.total() != expected["outbox"]:
            problems.append(f"outbox: {dict(outbox)} rows, expected {expected['outbox']}")
        if outbox["reminder"] != expected["reminders"]:
            problems.append(f"reminders: {outbox['reminder']}, expected {expected['reminders']}")
        db.session.remove()

        for number in range(1, steady + 1):
            measured = timed_tick(
                box, now + timedelta(seconds=TICK_SECONDS * number), listening_since
            )
            db.session.remove()
            rows.append((f"steady {number}", measured))
            again, outbox_again = _counts()
            if again != opened or outbox_again != outbox:
                problems.append(
                    f"steady tick {number} changed something: {dict(again)} open, "
                    f"{outbox_again} outbox rows (was {dict(opened)}, {outbox})"
                )
            db.session.remove()

        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            alerts.evaluate(
                now + timedelta(seconds=TICK_SECONDS * (steady + 1)),
                listening_since=listening_since,
            )
            profiler.disable()
            db.session.rollback()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
            print(text.getvalue(), file=sys.stderr)
        db.session.remove()
        db.engine.dispose()

    for label, measured in rows:
        if any(value < 0 for value in measured.values()):
            problems.append(f"{label}: a negative time {measured}")
    print(
        "| hosts | groups | tick | alerts.evaluate CPU s | evaluate wall s | "
        "whole tick CPU s | tick wall s |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for label, measured in rows:
        print(
            f"| {hosts_count:,} | {hosts_count * len(GROUPS):,} | {label} | "
            f"{measured['evaluate_cpu']:.2f} | {measured['evaluate_wall']:.2f} | "
            f"{measured['tick_cpu']:.2f} | {measured['tick_wall']:.2f} |"
        )
    opened_text = ", ".join(f"{rule} {count}" for rule, count in sorted(opened.items()))
    outbox_text = ", ".join(f"{event} {count}" for event, count in sorted(outbox.items()))
    print(f"\nopen after the first tick: {opened_text}; outbox rows: {outbox_text}")
    steady_cpu = [measured["tick_cpu"] for label, measured in rows[1:]]
    if steady_cpu:
        verdict = "met" if max(steady_cpu) < 1.0 else "MISSED"
        print(f"goal < 1 s CPU per steady tick: {verdict} (worst {max(steady_cpu):.2f} s)")
    if problems:
        print("sanity: FAILED\n  " + "\n  ".join(problems))
        return 1
    print(
        "sanity: ok (expected alerts opened per rule, expected outbox rows, steady ticks "
        "change nothing, no negative times)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--steady", type=int, default=3, help="steady ticks after the first")
    parser.add_argument("--data-dir", type=Path, help="must not exist yet (default: a temp dir)")
    parser.add_argument("--profile", action="store_true", help="cProfile one steady evaluate")
    args = parser.parse_args()
    if args.data_dir is not None:
        if args.data_dir.exists() and any(args.data_dir.iterdir()):
            parser.error(f"{args.data_dir} is not empty: the benchmark needs a fresh data dir")
        args.data_dir.mkdir(parents=True, exist_ok=True)
        return run(args.hosts, args.steady, args.data_dir, args.profile)
    data_dir = Path(tempfile.mkdtemp(prefix="rm-alerts-bench-"))
    try:
        return run(args.hosts, args.steady, data_dir, args.profile)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
