"""Download benchmark: one file out of a snapshot, through restic-manager vs. bare restic.

    python tests/bench/download.py                      # SQLite, one worker
    python tests/bench/download.py --pg --workers 2     # PostgreSQL, two workers
    python tests/bench/download.py --pg --servers 2     # two servers, one database

Not a test (pytest does not collect it; no timing assertions). Needs restic on PATH.

1. One ``--mb`` MiB file of random bytes is backed up once through a real
   ``restic-manager serve`` and the real agent (``python -m agent``), as in production
   (restic 0.14, local repository).
2. Bare ``restic --no-lock dump <snapshot> <file>`` into a pipe read by this process,
   timed end to end (restic start → last byte).
3. ``GET /api/v1/hosts/{id}/snapshots/{snapshot}/download?path=…`` with an API token:
   the server queues ``rpc.dump``, the agent runs the same ``restic dump`` and posts the
   bytes, the server passes them to this request (handed over in the worker, as files
   between workers, through the database between servers). Timed from the request to the
   last byte; the server's log line says how the bytes came, and must account for all.

Each is run ``--rounds`` times, alternating; medians are printed in MiB/s. Sanity: every
download's size and sha256 must equal the file's, else the benchmark fails rather than
print a number for a wrong transfer. With ``--workers 2`` the upload and the download
may land on different workers (the bus and a file in the data directory carry them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.processes import Api, Server, clean_env, enroll_agent  # noqa: E402

PASSWORD = "bench-download-password"
MIB = 1024 * 1024
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/rm_bench_download"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BenchServer(Server):
    """``serve`` on a chosen port with ``--workers N``."""

    def __init__(self, work: Path, env: dict, port: int, workers: int):
        super().__init__(work, env)
        self.port, self.workers = port, workers
        self.url = f"http://127.0.0.1:{port}"

    def _spawn(self, argv: list) -> None:
        super()._spawn([*argv, "--workers", str(self.workers)])


def reset_postgres(url: str) -> None:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    server, _, name = plain.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')  # the bench's own, made on first use
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


_PATHS = re.compile(
    r"download [0-9a-f]+: (\d+) bytes \((\d+) handed over in this process, (\d+) through "
    r"files, (\d+) through the database\)"
)


def byte_paths(server: Server, size: int, seen: int) -> tuple[str, int]:
    """How the bytes of the download that just ended came (the server logs it) and the
    count of such lines now; fails unless exactly one new line accounts for every byte."""
    for _ in range(50):  # the line is written as the response ends
        lines = _PATHS.findall(server.log())
        if len(lines) > seen:
            break
        time.sleep(0.1)
    if len(lines) != seen + 1:
        raise RuntimeError(f"expected one new download line in the server log, got {lines[seen:]}")
    total, direct, files, database = map(int, lines[-1])
    if total != size or direct + files + database != size:
        raise RuntimeError(f"the server accounts for {lines[-1]} bytes of {size}")
    parts = [(direct, "handed over"), (files, "through files"), (database, "through the database")]
    text = ", ".join(f"{amount / MIB:.0f} MiB {how}" for amount, how in parts if amount)
    return text, len(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the file (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18602)
    parser.add_argument("--workers", type=int, default=1, help="per server")
    parser.add_argument(
        "--servers",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: the agent polls a second server (own data directory, same database) and "
        "the download streams from the first: every chunk goes through the database",
    )
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="emptied first (schema public)")
    args = parser.parse_args()
    if (args.workers > 1 or args.servers > 1) and not args.pg:
        parser.error("--workers > 1 and --servers 2 need --pg (SQLite has one process)")

    with tempfile.TemporaryDirectory(prefix="rm-bench-download-") as scratch:
        work = Path(scratch)
        home = work / "home"
        home.mkdir()
        data = work / "data"
        data.mkdir()
        big = data / "big.bin"
        digest = hashlib.sha256()
        with open(big, "wb") as out:
            for _ in range(args.mb):
                block = os.urandom(MIB)
                digest.update(block)
                out.write(block)
        expected = (args.mb * MIB, digest.hexdigest())
        repo = work / "repo"
        env = dict(
            RM_DATA_DIR=str(work / "server-data"),
            RM_OFFLINE_AFTER_SECONDS="60",
            RM_RPC_WAIT_SECONDS="60",
            RM_DOWNLOAD_MAX_MB=str(args.mb + 10),
        )
        if args.pg:
            reset_postgres(args.pg_url)
            env["RM_DATABASE_URL"] = args.pg_url
        env["RM_SECRET_KEY_FILE"] = str(work / "secret.key")  # shared by --servers 2
        server = BenchServer(work, clean_env(**env), args.port, args.workers)
        server.start(timeout=60)
        servers = [server]
        agent = None
        try:
            if args.servers == 2:  # the agent's: its own data directory, the same database
                (work / "second").mkdir()
                env["RM_DATA_DIR"] = str(work / "second-data")
                second = BenchServer(work / "second", clean_env(**env), args.port + 1, args.workers)
                second.start(timeout=60)
                servers.append(second)
            api = Api(server, server.admin_token(PASSWORD, username="bench"))
            agent = enroll_agent(
                api,
                servers[-1],
                hostname="bench",
                repo=repo,
                repo_password=PASSWORD,
                home=work / "agent-home",
                log_path=work / "agent.log",
                paths=(str(data),),
                HOME=str(home),
            )
            host_id = api.get("/hosts").json()["items"][0]["id"]
            agent.start()
            api.wait_repo_ready(host_id, timeout=120)
            log("backing up …")
            job = api.wait_job(api.run(host_id, "backup"), timeout=600)
            if job["status"] != "succeeded":
                raise RuntimeError(f"backup {job['status']}: {agent.tail()}")
            snapshot = job["stats"]["snapshot_id"]
            download_url = f"{api.base}/hosts/{host_id}/snapshots/{snapshot}/download"
            bare_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "RESTIC_REPOSITORY": str(repo),
                "RESTIC_PASSWORD": PASSWORD,
                "RESTIC_CACHE_DIR": str(home / "bare-cache"),
            }

            def check(size: int, sha: str, what: str) -> None:
                if (size, sha) != expected:
                    raise RuntimeError(
                        f"{what}: got {size} bytes sha256 {sha[:16]}…, expected "
                        f"{expected[0]} bytes sha256 {expected[1][:16]}…: not a valid run"
                    )

            def bare() -> float:
                started = time.perf_counter()
                process = subprocess.Popen(
                    ["restic", "--no-lock", "dump", snapshot, str(big)],
                    env=bare_env,
                    stdout=subprocess.PIPE,
                )
                size, sha = 0, hashlib.sha256()
                while block := process.stdout.read(MIB):
                    size += len(block)
                    sha.update(block)
                if process.wait() != 0:
                    raise RuntimeError(f"restic dump exited {process.returncode}")
                elapsed = time.perf_counter() - started
                check(size, sha.hexdigest(), "bare restic dump")
                return elapsed

            def through_server() -> float:
                started = time.perf_counter()
                size, sha = 0, hashlib.sha256()
                with api.session.get(
                    download_url, params={"path": str(big)}, stream=True, timeout=600
                ) as reply:
                    if reply.status_code != 200:
                        raise RuntimeError(f"download: {reply.status_code} {reply.text[:300]}")
                    for block in reply.iter_content(MIB):
                        size += len(block)
                        sha.update(block)
                elapsed = time.perf_counter() - started
                check(size, sha.hexdigest(), "download")
                return elapsed

            bare()  # warm restic's cache and the page cache alike for both
            bares, downloads, paths, seen = [], [], [], 0
            for round_number in range(args.rounds):
                bares.append(bare())
                downloads.append(through_server())
                path, seen = byte_paths(server, args.mb * MIB, seen)
                paths.append(path)
                log(
                    f"round {round_number + 1}: bare {args.mb / bares[-1]:.0f} MiB/s, "
                    f"download {args.mb / downloads[-1]:.0f} MiB/s — {path}"
                )
        finally:
            if agent is not None:
                agent.kill()
            for running in servers:
                running.kill()

    bare_rate = args.mb / statistics.median(bares)
    download_rate = args.mb / statistics.median(downloads)
    database = f"PostgreSQL, {args.workers} worker(s)" if args.pg else "SQLite, 1 worker"
    if args.servers == 2:
        database += " per server, 2 servers"
    title = f"one {args.mb} MiB random file, {database}, medians of {args.rounds}"
    print(f"\n{title} (sha256 checked)\n")
    print("| what | MiB/s | time |")
    print("|---|---|---|")
    print(f"| bare `restic dump` | {bare_rate:.0f} | {statistics.median(bares):.2f} s |")
    print(
        f"| download through restic-manager | {download_rate:.0f} | "
        f"{statistics.median(downloads):.2f} s |"
    )
    print(f"| ratio | {download_rate / bare_rate:.2f} x | |")
    print("\nper round (bare, download, how the chunks went):")
    for bare_time, download_time, path in zip(bares, downloads, paths):
        print(f"- {args.mb / bare_time:.0f} MiB/s, {args.mb / download_time:.0f} MiB/s, {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
