"""The job list with 1,000,000 jobs, and the housekeeping purge rate (not a test).

    .venv/bin/python tests/bench/jobs_million.py                 # SQLite and PostgreSQL
    .venv/bin/python tests/bench/jobs_million.py --db sqlite --jobs 200000 --calls 20

Pytest does not collect it and it asserts no timing; it checks its own sanity and says so.

1. A scratch database: a SQLite file in a temp dir, and/or the PostgreSQL database
   ``rm_bench_jobs`` (created, and dropped at the end) on ``--pg`` (default the local server,
   user postgres). ``upgrade head`` builds the schema, so the indexes are the migrations'.
2. ``--hosts`` hosts (every 10th tagged ``prod``), ``--jobs`` jobs spread evenly over them
   and over the last 180 days (ids ascending with time; mostly succeeded backups), and
   ``--log-lines`` log lines for each of ``--log-jobs`` jobs, half of them finished more
   than 90 days ago. Bulk inserts: executemany on SQLite, COPY on PostgreSQL; then ANALYZE.
3. Through the Flask test client with a personal access token (the whole request: auth,
   query, JSON), ``--calls`` times each, a random host each call:
   ``GET /api/v1/jobs?host_id=H`` (first page, 200 jobs), the same host's second page of
   100 (``limit=100&before=next_before``), and ``GET /api/v1/jobs?tag=prod``; median, p95.
   Each answer is checked: 200, a full page, the right hosts, ids descending, and page 2
   continuing page 1.
4. The query plans (EXPLAIN QUERY PLAN / EXPLAIN ANALYZE) of those queries and of the
   dashboard's "jobs of the last 7 days by status" are printed.
5. Housekeeping: ``purge_job_logs`` with RM_JOB_LOG_RETENTION_DAYS=90, the production batch
   (5,000 lines per transaction, 50 ms pause) but no per-pass bound (one pass does it
   all); lines removed per second, with and without the pauses. Checked: exactly the old
   jobs' lines gone, the newer ones kept.
"""

# ruff: noqa: S608 -- the SQL here is built from the benchmark's own integers, never input

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_seed_jobs import (  # noqa: E402 -- this script's folder, as poll_cost imports seed
    JOB_INSERT,
    check,
    job_row,
    log,
    reset_sequences,
    sqlite_time,
    time_stamper,
)

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/rm_bench_jobs"
TAG_EVERY = 10
PAGE = 200
HALF = 100
CHUNK = 50_000


def job_rows(args, now: datetime):
    """(id, host_id, kind, status, created, started, finished, log_lines) for every job."""
    span = timedelta(days=180).total_seconds()
    log_every = max(1, args.jobs // max(1, args.log_jobs)) if args.log_jobs else 0
    for job_id in range(1, args.jobs + 1):
        created = now - timedelta(seconds=span * (1 - job_id / args.jobs)) - timedelta(hours=1)
        host_id = (job_id - 1) % args.hosts + 1
        status = "failed" if job_id % 23 == 0 else "succeeded"
        kind = "check" if job_id % 11 == 0 else "backup"
        lines = args.log_lines if log_every and job_id % log_every == 0 else 0
        yield (
            job_id,
            host_id,
            kind,
            status,
            created,
            created + timedelta(seconds=2),
            created + timedelta(minutes=3),
            lines,
        )


def fill(app, args, now: datetime) -> dict:
    """Hosts, jobs and log lines by bulk insert; returns what was planned."""
    from app.extensions import db

    dialect = db.engine.dialect.name
    stamp = time_stamper(dialect)
    raw = db.engine.raw_connection()
    planned = {"jobs": 0, "log_lines": 0, "old_log_lines": 0, "old_log_jobs": 0}
    cutoff = now - timedelta(days=90)
    try:
        cursor = raw.cursor()
        hosts = [
            (
                host_id,
                f"bench-{host_id:05d}",
                "ready",
                json.dumps(["prod"] if host_id % TAG_EVERY == 0 else ["lab"]),
                stamp(now - timedelta(days=200)),
                0,
                0,
            )
            for host_id in range(1, args.hosts + 1)
        ]
        marker = "%s" if dialect == "postgresql" else "?"
        cursor.executemany(
            "INSERT INTO hosts (id, hostname, repo_status, tags, created_at, snapshot_count,"
            f" schedule_version) VALUES ({', '.join([marker] * 7)})",
            hosts,
        )
        raw.commit()
        started = time.perf_counter()
        log_sql = "INSERT INTO job_logs (job_id, seq, ts, stream, text)"
        jobs_buffer, logs_buffer = [], []

        def flush_jobs():
            if not jobs_buffer:
                return
            if dialect == "postgresql":
                with cursor.copy(
                    JOB_INSERT.replace("INSERT INTO ", "COPY ") + " FROM STDIN"
                ) as copy:
                    for row in jobs_buffer:
                        copy.write_row(row)
            else:
                cursor.executemany(f"{JOB_INSERT} VALUES ({', '.join(['?'] * 16)})", jobs_buffer)
            raw.commit()
            jobs_buffer.clear()

        def flush_logs():
            if not logs_buffer:
                return
            if dialect == "postgresql":
                with cursor.copy(
                    "COPY job_logs (job_id, seq, ts, stream, text) FROM STDIN"
                ) as copy:
                    for row in logs_buffer:
                        copy.write_row(row)
            else:
                cursor.executemany(f"{log_sql} VALUES (?, ?, ?, ?, ?)", logs_buffer)
            raw.commit()
            logs_buffer.clear()

        for job_id, host_id, kind, status, created, began, finished, lines in job_rows(args, now):
            jobs_buffer.append(
                job_row(
                    dialect,
                    job_id,
                    host_id,
                    kind,
                    status,
                    created,
                    began,
                    finished,
                    log_lines=lines,
                )
            )
            planned["jobs"] += 1
            if lines:
                at = stamp(began)
                logs_buffer.extend(
                    (job_id, seq, at, "stdout", f"processed file /srv/data/{seq:06d}.bin")
                    for seq in range(1, lines + 1)
                )
                planned["log_lines"] += lines
                if finished < cutoff:
                    planned["old_log_lines"] += lines
                    planned["old_log_jobs"] += 1
            if len(jobs_buffer) >= CHUNK:
                flush_jobs()
                log(f"  {job_id:,} jobs ({time.perf_counter() - started:.0f} s)")
            if len(logs_buffer) >= CHUNK:
                flush_logs()
        flush_jobs()
        flush_logs()
        reset_sequences(cursor, dialect, ("jobs", "hosts"))
        cursor.execute("ANALYZE")
        raw.commit()
        planned["fill_seconds"] = time.perf_counter() - started
    finally:
        raw.close()
    return planned


def count(sql: str) -> int:
    from sqlalchemy import text

    from app.extensions import db

    return db.session.execute(text(sql)).scalar()


def explain(sql: str) -> str:
    from sqlalchemy import text

    from app.extensions import db

    if db.engine.dialect.name == "postgresql":
        rows = db.session.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}")).all()
        return "\n".join(row[0] for row in rows)
    rows = db.session.execute(text(f"EXPLAIN QUERY PLAN {sql}")).all()
    return "\n".join(str(row[-1]) for row in rows)


def timed(client, url: str):
    started = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - started) * 1000
    check(elapsed >= 0, f"negative time {elapsed} ms for {url}")
    check(response.status_code == 200, f"{url}: HTTP {response.status_code}")
    return elapsed, response.get_json()


def summary(name: str, samples: list) -> dict:
    check(len(samples) >= 2, f"{name}: too few samples")
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"what": name, "median": statistics.median(ordered), "p95": p95, "n": len(ordered)}


def measure(app, args, token: str) -> list:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    rng = random.Random(17)
    tagged = {host_id for host_id in range(1, args.hosts + 1) if host_id % TAG_EVERY == 0}
    per_host = args.jobs // args.hosts
    first, second, tag = [], [], []
    timed(client, "/api/v1/jobs?limit=1")  # warm-up: imports, caches
    for _ in range(args.calls):
        host_id = rng.randint(1, args.hosts)
        elapsed, body = timed(client, f"/api/v1/jobs?host_id={host_id}")
        items = body["items"]
        check(len(items) == min(PAGE, per_host), f"host {host_id}: {len(items)} jobs")
        check(all(item["host_id"] == host_id for item in items), "a job of another host")
        ids = [item["id"] for item in items]
        check(ids == sorted(ids, reverse=True), "not newest first")
        first.append(elapsed)
        # Keyset paging in pages of HALF: page 2 starts where page 1 ended.
        _, half = timed(client, f"/api/v1/jobs?host_id={host_id}&limit={HALF}")
        check(half["next_before"] == half["items"][-1]["id"], "next_before is not the last id")
        elapsed, page2 = timed(
            client, f"/api/v1/jobs?host_id={host_id}&limit={HALF}&before={half['next_before']}"
        )
        check(
            [item["id"] for item in half["items"] + page2["items"]] == ids[: 2 * HALF],
            "pages 1 and 2 of 100 are not the first 200 jobs",
        )
        second.append(elapsed)
        elapsed, body = timed(client, "/api/v1/jobs?tag=prod")
        check(len(body["items"]) == PAGE, f"tag page: {len(body['items'])} jobs")
        check(all(item["host_id"] in tagged for item in body["items"]), "an untagged host")
        tag.append(elapsed)
    results = [
        summary("GET /api/v1/jobs?host_id=H (first page)", first),
        summary("GET /api/v1/jobs?tag=prod (first page)", tag),
    ]
    if len(second) >= 2:
        results.insert(1, summary("GET /api/v1/jobs?host_id=H&limit=100&before=… (page 2)", second))
    return results


def purge(app, planned: dict, now: datetime) -> dict:
    from app.extensions import db
    from app.services import housekeeping

    before = count("SELECT count(*) FROM job_logs")
    check(
        before == planned["log_lines"], f"{before} log lines stored, {planned['log_lines']} planned"
    )
    started = time.perf_counter()
    report = housekeeping.purge_job_logs(
        now, retention_days=90, max_rows=10**12, max_batches=10**9, commit=db.session.commit
    )
    elapsed = time.perf_counter() - started
    check(elapsed > 0, "no time passed")
    after = count("SELECT count(*) FROM job_logs")
    check(report.log_rows == planned["old_log_lines"], f"removed {report.log_rows} lines")
    check(after == before - planned["old_log_lines"], f"{after} lines left of {before}")
    marked = count("SELECT count(*) FROM jobs WHERE log_purged_at IS NOT NULL")
    from sqlalchemy import func, select

    from app.models import Job

    cutoff_jobs = db.session.scalar(
        select(func.count()).where(Job.finished_at < now - timedelta(days=90))
    )
    check(marked == cutoff_jobs, f"{marked} jobs marked, {cutoff_jobs} finished before the cutoff")
    pauses = report.batches * housekeeping.BATCH_PAUSE_SECONDS
    return {
        "rows": report.log_rows,
        "batches": report.batches,
        "jobs_marked": marked,
        "seconds": elapsed,
        "rows_per_second": report.log_rows / elapsed,
        "rows_per_second_without_pauses": report.log_rows / max(1e-9, elapsed - pauses),
    }


def run_one(name: str, url: str, args, workdir: Path) -> dict:
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.models import Role
    from app.models.types import utcnow
    from app.services import api_tokens, users

    app = create_app(
        {
            "RM_DATA_DIR": workdir,
            "RM_SECRET_KEY_FILE": workdir / "secret.key",
            "SQLALCHEMY_DATABASE_URI": url,
            "RM_TICKER_ENABLED": False,
        }
    )
    now = utcnow()
    with app.app_context():
        upgrade()
        log(f"{name}: filling {args.jobs:,} jobs over {args.hosts:,} hosts")
        planned = fill(app, args, now)
        stored = count("SELECT count(*) FROM jobs")
        check(stored == planned["jobs"] == args.jobs, f"{stored} jobs stored")
        check(count("SELECT count(*) FROM hosts") == args.hosts, "hosts missing")
        admin = users.create_user("bench-admin", "benchmark admin passphrase", Role.admin)
        _, token = api_tokens.create_token(admin, "jobs benchmark", now=now)
        db.session.commit()
        host = args.hosts // 2
        plans = {
            "host page": explain(
                f"SELECT * FROM jobs WHERE host_id = {host} ORDER BY id DESC LIMIT {PAGE}"
            ),
            "tag page": explain(
                "SELECT * FROM jobs WHERE host_id IN ("
                + ", ".join(str(h) for h in range(TAG_EVERY, args.hosts + 1, TAG_EVERY))
                + f") ORDER BY id DESC LIMIT {PAGE}"
            ),
            "dashboard 7 days": explain(
                "SELECT status, count(id) FROM jobs WHERE created_at >= "
                + (
                    "now() - interval '7 days'"
                    if db.engine.dialect.name == "postgresql"
                    else f"'{sqlite_time(now - timedelta(days=7))}'"
                )
                + " GROUP BY status"
            ),
        }
        results = measure(app, args, token)
        db.session.remove()
        purged = purge(app, planned, utcnow())
        size = None
        if db.engine.dialect.name == "sqlite":
            size = Path(url.removeprefix("sqlite:///")).stat().st_size
        db.session.remove()
        db.engine.dispose()
    return {
        "db": name,
        "planned": planned,
        "results": results,
        "plans": plans,
        "purge": purged,
        "sqlite_bytes": size,
    }


def report(outcome: dict) -> None:
    """Printed as soon as one database is done (flushed: a later failure keeps it)."""
    planned = outcome["planned"]
    print(f"\n### {outcome['db']}\n")
    print(
        f"{planned['jobs']:,} jobs, {planned['log_lines']:,} log lines "
        f"(filled in {planned['fill_seconds']:.0f} s)"
        + (f", file {outcome['sqlite_bytes'] / 2**20:,.0f} MiB" if outcome["sqlite_bytes"] else "")
    )
    print("\n| request | median | p95 | calls |\n|---|---:|---:|---:|")
    for row in outcome["results"]:
        print(f"| `{row['what']}` | {row['median']:.1f} ms | {row['p95']:.1f} ms | {row['n']} |")
    purged = outcome["purge"]
    print(
        f"\nPurge: {purged['rows']:,} lines of {purged['jobs_marked']:,} jobs in "
        f"{purged['seconds']:.1f} s, {purged['batches']} batches: "
        f"{purged['rows_per_second']:,.0f} lines/s "
        f"({purged['rows_per_second_without_pauses']:,.0f} lines/s without the 50 ms pauses)"
    )
    for name, plan in outcome["plans"].items():
        print(f"\nplan, {name}:\n```\n{plan}\n```")
    print("\nsanity: every check passed (counts, page sizes, hosts, order, purge).", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--log-jobs", type=int, default=20_000)
    parser.add_argument("--log-lines", type=int, default=50)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--pg", default=PG_DEFAULT, help="scratch database, dropped at the end")
    args = parser.parse_args()
    check(args.jobs >= args.hosts * 2, "need at least two jobs per host")
    check(args.hosts >= TAG_EVERY * 2, "need tagged hosts")
    import sqlalchemy as sa

    outcomes = []
    with tempfile.TemporaryDirectory(prefix="rm-jobs-bench-") as scratch:
        workdir = Path(scratch)
        if args.db in ("sqlite", "both"):
            url = f"sqlite:///{workdir / 'jobs.db'}"
            outcomes.append(run_one("SQLite", url, args, workdir))
            report(outcomes[-1])
        if args.db in ("postgresql", "both"):
            url = sa.engine.make_url(args.pg)
            admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}"'))
                connection.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
            try:
                outcomes.append(
                    run_one("PostgreSQL", url.render_as_string(hide_password=False), args, workdir)
                )
                report(outcomes[-1])
            finally:
                with admin.connect() as connection:
                    connection.execute(
                        sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
                    )
                admin.dispose()
    print(f"\n`{' '.join(sys.argv)}` at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
