"""The fleet views at 5,000 hosts with 30 days of jobs: dashboard, its refresh, GET /hosts.

    .venv/bin/python tests/bench/fleet_views.py                      # SQLite
    .venv/bin/python tests/bench/fleet_views.py --pg                 # PostgreSQL (rm_bench_fleet)
    .venv/bin/python tests/bench/fleet_views.py --hosts 5000 --days 30 --requests 40

Pytest does not collect it and it asserts no timing; it checks its own sanity and says so.

1. A scratch database: a SQLite file in a temp dir, or with ``--pg`` the PostgreSQL database
   ``rm_bench_fleet`` (created, dropped at the end). ``upgrade head`` builds the schema.
2. ``--hosts`` hosts (70 % online, 20 % offline, 10 % never seen; 1-3 of 20 tags each; sizes,
   snapshot counts, OS) and one backup per host per day for ``--days`` days (every 23rd
   failed; the hosts' last-backup columns point at the newest), a backup running on 1 % of
   hosts and a firing alert on 5 %. Bulk inserts (executemany), then ANALYZE.
3. A real ``python -m app.cli serve`` (one worker) on that database, an administrator made
   with the CLI, a browser session logged in through the form and a personal access token.
4. ``--requests`` times each (after two warm-up calls), wall time on the loopback (server
   time plus a little transfer), median and p95, and the bytes of each answer:
   the dashboard's full page; its 5 s refresh (``X-Refresh-Regions: fleet``) answered 200,
   and answered 304 with ``If-None-Match``; page 21 of the host table (after following 20
   ``Next`` links); sorted by last backup; filtered by a tag and by ``failing``;
   ``GET /api/v1/hosts?limit=100`` (first page), a cursor page from the middle, and the
   unpaged ``GET /api/v1/hosts`` for comparison.
5. Sanity, checked on every answer: status codes as planned (200, or 304 for the
   conditional refresh, where one 200 per wall-clock minute is allowed because the "… min
   ago" texts change), 50 rows on a page and "1-50 of 5,000" (an en dash), the page
   after 20 Next links starts at row 1,001, API pages full with a next_cursor and
   continuing the previous page, the unpaged list holding every host; every request
   found in the server's access log, whose own time (gunicorn's %(M)s) is reported next
   to the client's.
"""

# ruff: noqa: S608 -- the SQL here is built from the benchmark's own names, never input

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_seed_jobs import (  # noqa: E402 -- this script's folder, as poll_cost imports seed
    JOB_INSERT,
    Insane,
    check,
    job_row,
    log,
    reset_sequences,
    time_stamper,
)

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_NAME = "rm_bench_fleet"
TAGS = [f"t{number:02d}" for number in range(20)]
PASSWORD = "benchmark admin passphrase"
HOST_LINK = re.compile(r'class="hostlink" href="/hosts/\d+">([^<]+)</a>')
RANGE = re.compile(r'class="fleetpager__range">([^<]+)</span>')
NEXT = re.compile(r'href="([^"]+)" rel="next"')
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


# --- seeding -----------------------------------------------------------------------------


def fill(url: str, workdir: Path, args, now: datetime) -> dict:
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db

    app = create_app(
        {
            "RM_DATA_DIR": workdir,
            "RM_SECRET_KEY_FILE": workdir / "secret.key",
            "SQLALCHEMY_DATABASE_URI": url,
            "RM_TICKER_ENABLED": False,
        }
    )
    rng = random.Random(17)
    planned = {"hosts": args.hosts, "jobs": 0, "alerts": 0, "running": 0}
    with app.app_context():
        upgrade()
        dialect = db.engine.dialect.name
        stamp = time_stamper(dialect)
        marker = "%s" if dialect == "postgresql" else "?"
        raw = db.engine.raw_connection()
        started = time.perf_counter()
        try:
            cursor = raw.cursor()
            hosts, jobs, alerts = [], [], []
            for host_id in range(1, args.hosts + 1):
                roll = rng.random()
                seen = (
                    now - timedelta(seconds=rng.randint(1, 600))
                    if roll < 0.7
                    else (now - timedelta(hours=rng.randint(2, 200)) if roll < 0.9 else None)
                )
                last_id = last_status = last_at = ok_id = ok_at = None
                for day in range(args.days, 0, -1):
                    job_id = (args.days - day) * args.hosts + host_id
                    created = now - timedelta(days=day, minutes=host_id % 600)
                    status = "failed" if job_id % 23 == 0 else "succeeded"
                    jobs.append(
                        job_row(
                            dialect,
                            job_id,
                            host_id,
                            "backup",
                            status,
                            created,
                            created + timedelta(seconds=2),
                            created + timedelta(minutes=3),
                        )
                    )
                    last_id, last_status, last_at = job_id, status, created + timedelta(minutes=3)
                    if status == "succeeded":
                        ok_id, ok_at = last_id, last_at
                tags = rng.sample(TAGS, rng.randint(1, 3))
                hosts.append(
                    (
                        host_id,
                        f"host-{host_id:05d}.example.net",
                        rng.choice(["ready"] * 18 + ["error", "unknown"]),
                        json.dumps(tags),
                        stamp(now - timedelta(days=args.days + 5)),
                        rng.randint(0, 400),
                        0,
                        stamp(seen) if seen else None,
                        rng.choice(["linux", "linux", "linux", "windows", "darwin"]),
                        rng.choice(["amd64", "arm64"]),
                        rng.randint(1, 900) * 1024**3 if rng.random() < 0.95 else None,
                        last_id,
                        last_status,
                        stamp(last_at) if last_at else None,
                        ok_id,
                        stamp(ok_at) if ok_at else None,
                    )
                )
                if host_id % 20 == 0:
                    alerts.append(
                        (
                            f"backup_failed:{host_id}",
                            "backup_failed",
                            host_id,
                            "backup failed",
                            "critical" if host_id % 40 == 0 else "warning",
                            "firing",
                            "The last backup failed.",
                            "{}",
                            1,
                            stamp(now),
                            stamp(now),
                        )
                    )
            cursor.executemany(
                "INSERT INTO hosts (id, hostname, repo_status, tags, created_at, snapshot_count,"
                " schedule_version, last_seen_at, os, arch, repo_size_bytes, last_backup_job_id,"
                " last_backup_status, last_backup_at, last_successful_backup_job_id,"
                f" last_successful_backup_at) VALUES ({', '.join([marker] * 16)})",
                hosts,
            )
            raw.commit()
            running_id = args.days * args.hosts
            for host_id in range(1, args.hosts + 1, 100):
                running_id += 1
                created = now - timedelta(minutes=5)
                jobs.append(
                    job_row(
                        dialect,
                        running_id,
                        host_id,
                        "backup",
                        "running",
                        created,
                        created,
                        None,
                        attempt_id="b" * 32,
                        stats="{}",
                    )
                )
                planned["running"] += 1
            job_sql = f"{JOB_INSERT} VALUES ({', '.join([marker] * 16)})"
            for start in range(0, len(jobs), 50_000):
                cursor.executemany(job_sql, jobs[start : start + 50_000])
                raw.commit()
            planned["jobs"] = len(jobs)
            cursor.executemany(
                "INSERT INTO alerts (open_key, rule, host_id, subject, severity, state, message,"
                f" details, occurrences, fired_at, last_fired_at) VALUES"
                f" ({', '.join([marker] * 11)})",
                alerts,
            )
            planned["alerts"] = len(alerts)
            reset_sequences(cursor, dialect, ("hosts", "jobs", "alerts"))
            cursor.execute("ANALYZE")
            raw.commit()
            counted = {}
            for table in ("hosts", "jobs", "alerts"):
                cursor.execute(f"SELECT count(*) FROM {table}")
                counted[table] = cursor.fetchone()[0]
        finally:
            raw.close()
        db.engine.dispose()
    check(counted["hosts"] == planned["hosts"], f"{counted['hosts']} hosts stored")
    check(counted["jobs"] == planned["jobs"], f"{counted['jobs']} jobs stored")
    check(counted["alerts"] == planned["alerts"], f"{counted['alerts']} alerts stored")
    planned["fill_seconds"] = round(time.perf_counter() - started, 1)
    return planned


# --- the server ---------------------------------------------------------------------------


def start_server(url: str, workdir: Path, port: int):
    env = {key: value for key, value in os.environ.items() if not key.startswith("RM_")}
    env.update(
        PYTHONUNBUFFERED="1",
        RM_DATA_DIR=str(workdir),
        RM_DATABASE_URL=url,
        RM_TICKER_ENABLED="false",
        # the seeded "online" hosts were seen up to 10 minutes before the run started
        RM_OFFLINE_AFTER_SECONDS="3600",
    )

    def cli(*command, stdin=""):
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *command],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
        check(done.returncode == 0, f"{command[0]} failed: {done.stderr.strip()[-500:]}")
        return done.stdout.strip()

    cli("create-admin", "--username", "admin", "--password-stdin", stdin=PASSWORD)
    token = cli("create-token", "--user", "admin", "--name", "bench")
    server_log = open(workdir / "server.log", "w")  # noqa: SIM115 -- closed with the server
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, token


def wait_ready(process, workdir: Path, port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        check(
            process.poll() is None, f"serve exited: {(workdir / 'server.log').read_text()[-800:]}"
        )
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except (requests.ConnectionError, requests.Timeout):
            pass
        check(time.monotonic() < deadline, "serve did not become ready in 60 s")
        time.sleep(0.2)
    return base


def stop_server(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


# --- measuring ----------------------------------------------------------------------------


def timed(session, url, expect=(200,), **headers):
    started = time.perf_counter()
    answer = session.get(url, headers=headers, timeout=60, allow_redirects=False)
    elapsed = (time.perf_counter() - started) * 1000
    check(answer.status_code in expect, f"{url}: {answer.status_code}, expected {expect}")
    check(0 < elapsed < 60_000, f"{url}: impossible time {elapsed} ms")
    return answer, elapsed


ACCESS = re.compile(r'"GET (\S+) HTTP/1\.1" (\d{3}) \S+ (\d+)ms$')
SERVER_LOG: Path | None = None


def server_times(offset: int, path: str) -> list[int]:
    """The server's own time (gunicorn's %(M)s) of the GETs of ``path`` logged after
    ``offset``: request in, answer out, the network left aside."""
    time.sleep(0.3)  # the access log is written after the answer
    with open(SERVER_LOG, encoding="utf-8", errors="replace") as log_file:
        log_file.seek(offset)
        return [
            int(match.group(3))
            for line in log_file
            if (match := ACCESS.search(line.rstrip())) and match.group(1) == path
        ]


def series(name, session, url, runs, expect=(200,), verify=None, **headers) -> dict:
    for _ in range(2):
        timed(session, url, expect, **headers)
    time.sleep(0.3)  # the warm-up calls' log lines are written
    offset = SERVER_LOG.stat().st_size
    times, sizes, codes = [], [], []
    for _ in range(runs):
        answer, elapsed = timed(session, url, expect, **headers)
        if verify:
            verify(answer)
        times.append(elapsed)
        sizes.append(len(answer.content))
        codes.append(answer.status_code)
    times.sort()
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    served = sorted(server_times(offset, path))
    check(len(served) == runs, f"{len(served)} of {runs} requests of {path} in the access log")
    check(served[-1] <= times[-1] + 1, f"{path}: the server took longer than the client saw")
    return {
        "name": name,
        "server_median_ms": statistics.median(served),
        "server_p95_ms": served[max(0, int(len(served) * 0.95) - 1)],
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
        "bytes": round(statistics.median(sizes)),
        "codes": {code: codes.count(code) for code in sorted(set(codes))},
    }


def _page_check(first_row: int, hosts: int, per_page: int = 50):
    def verify(answer):
        names = HOST_LINK.findall(answer.text)
        check(len(names) == per_page, f"{len(names)} rows on a page, expected {per_page}")
        shown = RANGE.search(answer.text)
        expected = f"{first_row:,}\u2013{first_row + per_page - 1:,} of {hosts:,}"
        check(shown and shown.group(1) == expected, f"pager says {shown and shown.group(1)}")

    return verify


def measure(base: str, token: str, args, server_log: Path) -> list[dict]:
    global SERVER_LOG
    SERVER_LOG = server_log
    browser = requests.Session()
    page = browser.get(f"{base}/login", timeout=10).text
    answer = browser.post(
        f"{base}/login",
        data={"csrf_token": CSRF.search(page).group(1), "username": "admin", "password": PASSWORD},
        timeout=10,
    )
    check(answer.status_code == 200 and "/logout" in answer.text, "login failed")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    runs, hosts = args.requests, args.hosts
    results = [
        series("dashboard, full page", browser, f"{base}/", runs, verify=_page_check(1, hosts))
    ]
    fleet = {"X-Refresh-Regions": "fleet"}
    results.append(
        series(
            "refresh 200 (no ETag)",
            browser,
            f"{base}/",
            runs,
            verify=_page_check(1, hosts),
            **fleet,
        )
    )
    etag = timed(browser, f"{base}/", **fleet)[0].headers.get("ETag")
    check(bool(etag), "the refresh answered without an ETag")
    started = time.monotonic()
    conditional = series(
        "refresh 304 (If-None-Match)",
        browser,
        f"{base}/",
        runs,
        expect=(200, 304),
        **fleet,
        **{"If-None-Match": etag},
    )
    minutes = (time.monotonic() - started) / 60
    fresh = conditional["codes"].get(200, 0)
    check(
        fresh <= int(minutes) + 2,
        f"{fresh} of {runs} conditional refreshes answered 200 in {minutes:.1f} min: the ETag "
        "changes although nothing changed",
    )
    results.append(conditional)
    # page 21 by following Next links, as a browser without JavaScript would
    url = f"{base}/"
    for _ in range(20):
        link = NEXT.search(browser.get(url, timeout=30).text)
        check(link is not None, "no Next link before page 21")
        url = base + link.group(1).replace("&amp;", "&")
    results.append(
        series("dashboard, page 21 (keyset)", browser, url, runs, verify=_page_check(1001, hosts))
    )
    results.append(
        series(
            "dashboard, sorted by last backup",
            browser,
            f"{base}/?sort=last_backup&dir=desc",
            runs,
            verify=_page_check(1, hosts),
        )
    )
    tagged = api.get(f"{base}/api/v1/hosts?tag=t07", timeout=60).json()["items"]
    check(0 < len(tagged) < hosts, f"{len(tagged)} hosts tagged t07")

    def tag_check(answer):
        names = HOST_LINK.findall(answer.text)
        check(len(names) == min(50, len(tagged)), f"{len(names)} rows for tag t07")
        check(f"of {len(tagged):,}" in RANGE.search(answer.text).group(1), "tag count wrong")

    results.append(
        series("dashboard, ?tag=t07", browser, f"{base}/?tag=t07", runs, verify=tag_check)
    )
    results.append(series("dashboard, ?status=failing", browser, f"{base}/?status=failing", runs))

    def api_page(limit):
        def verify(answer):
            body = answer.json()
            check(len(body["items"]) == limit, f"{len(body['items'])} items, expected {limit}")
            check(isinstance(body["next_cursor"], str), "no next_cursor on a full page")

        return verify

    results.append(
        series(
            "API /hosts?limit=100",
            api,
            f"{base}/api/v1/hosts?limit=100",
            runs,
            verify=api_page(100),
        )
    )
    cursor, previous = None, None
    for _ in range(25):
        body = api.get(
            f"{base}/api/v1/hosts?limit=100" + (f"&cursor={cursor}" if cursor else ""), timeout=30
        ).json()
        if previous:
            check(body["items"][0]["hostname"] > previous, "a cursor page does not continue")
        previous, cursor = body["items"][-1]["hostname"], body["next_cursor"]
    results.append(
        series(
            "API /hosts?limit=100&cursor= (page 26)",
            api,
            f"{base}/api/v1/hosts?limit=100&cursor={cursor}",
            runs,
            verify=api_page(100),
        )
    )

    def everything(answer):
        body = answer.json()
        check(len(body["items"]) == hosts and body["next_cursor"] is None, "unpaged list short")

    results.append(
        series(
            "API /hosts unpaged (comparison)",
            api,
            f"{base}/api/v1/hosts",
            max(3, runs // 5),
            verify=everything,
        )
    )
    return results


def report(name: str, planned: dict, results: list[dict]) -> None:
    print(
        f"\n{name}: {planned['hosts']:,} hosts, {planned['jobs']:,} jobs "
        f"({planned['running']} running), {planned['alerts']} open alerts; "
        f"filled in {planned['fill_seconds']} s"
    )
    print(f"| {'request':40} | server median / p95 ms | client median / p95 ms | bytes | answers |")
    print(f"|{'-' * 42}|------------------------|------------------------|-------|---------|")
    for row in results:
        codes = ", ".join(f"{code} x{count}" for code, count in row["codes"].items())
        print(
            f"| {row['name']:40} | {row['server_median_ms']} / {row['server_p95_ms']} | "
            f"{row['median_ms']} / {row['p95_ms']} | {row['bytes']:,} | {codes} |"
        )
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per view")
    parser.add_argument("--pg", action="store_true", help=f"PostgreSQL ({PG_NAME}) not SQLite")
    parser.add_argument("--port", type=int, default=18601)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    check(args.hosts > 2600 and args.days >= 1, "--hosts > 2600 (page 26 of the API, not its last)")
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-fleet-"))
    now = datetime.now(timezone.utc)
    if args.pg:
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {PG_NAME}")
            c.execute(f"CREATE DATABASE {PG_NAME}")
        url, name = f"{PG_SERVER}/{PG_NAME}", "PostgreSQL"
    else:
        url, name = f"sqlite:///{workdir / 'restic-manager.db'}", "SQLite"
    process = None
    try:
        log(f"{name}: seeding {args.hosts:,} hosts x {args.days} days of backups")
        planned = fill(url, workdir, args, now)
        log(f"seeded in {planned['fill_seconds']} s; starting serve on port {args.port}")
        process, token = start_server(url, workdir, args.port)
        base = wait_ready(process, workdir, args.port)
        load_before = os.getloadavg()
        results = measure(base, token, args, workdir / "server.log")
        report(name, planned, results)
        load_after = os.getloadavg()
        print(
            f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
            f"on {os.cpu_count()} CPUs: times above include that contention"
        )
    except Insane as error:
        print(f"INSANE: {error} (work dir {workdir})", file=sys.stderr)
        return 1
    finally:
        if process is not None:
            stop_server(process)
        if args.pg:
            import psycopg

            with psycopg.connect(
                "host=127.0.0.1 user=postgres dbname=postgres", autocommit=True
            ) as c:
                c.execute(f"DROP DATABASE IF EXISTS {PG_NAME} WITH (FORCE)")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
