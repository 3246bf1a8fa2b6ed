"""Log ingest benchmark: lines per second stored through POST /api/agent/v1/jobs/{id}/logs.

    python tests/bench/log_ingest.py                     # batches of 500 and 1,000, 1 and 4 writers
    python tests/bench/log_ingest.py --batch 500 --writers 1 --lines 200000

Not a test (pytest does not collect it; no timing assertions). Steps:

1. ``seed.py`` makes a fresh data dir (SQLite): one enrolled host per writer, an
   administrator and a personal access token.
2. The real server starts: ``python -m app.cli serve`` (gunicorn, one gevent worker), through
   ``tests/e2e/processes.py``. The protocol caps a batch at 500 records (``parse.MAX_RECORDS``,
   a constant, not a setting); so that 1,000-line batches can be measured too, a gunicorn
   config hook (written to the work dir, passed with ``GUNICORN_CMD_ARGS``) raises that cap to
   the largest ``--batch`` in the worker after it loaded the app. Nothing else changes.
3. Per run, each writer is an agent: ``hello``, a probe job started through ``/api/v1`` with
   the PAT, its ``job.run`` taken from a ``poll`` (for the attempt id), ``job.started``; then
   it sends ``--lines`` records in batches, one batch in flight per job as the protocol says,
   over one keep-alive connection. Bodies are built and JSON-encoded before the clock starts,
   so the client's own work is not measured.
4. Throughput = lines stored (the answers' ``committed_seq``) / wall time from the first
   request to the last answer, over all writers. The server worker's CPU comes from /proc.

Prints a markdown table on stdout; progress goes to stderr. ``--json FILE`` also writes the
raw numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parents[1]
for path in (str(ROOT), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

from longpoll import children, cpu_seconds, log, percentile  # noqa: E402

from tests.e2e.processes import Server, clean_env  # noqa: E402

GUNICORN_HOOK = '''\
"""Written by tests/bench/log_ingest.py: raise the protocol's batch cap for the benchmark."""
import os
import sys


def post_worker_init(worker):
    from app.agent_api import parse

    parse.MAX_RECORDS = int(os.environ["BENCH_MAX_LOG_BATCH"])
    sys.stderr.write(f"[bench] log batch cap raised to {parse.MAX_RECORDS}\\n")
'''


def iso_now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class Connection:
    """One keep-alive HTTP/1.1 connection: JSON in, (status, JSON or None, seconds) out."""

    def __init__(self, port: int, token: str):
        self.port = port
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | dict | None = None):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                self.conn.connect()
            started = time.monotonic()
            try:
                self.conn.request(method, path, body, self.headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            took = time.monotonic() - started
            if response.will_close:
                self.conn.close()
                self.conn = None
            data = json.loads(raw) if raw and response.status != 204 else None
            return response.status, data, took
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class AgentJob:
    """A host's agent with one running probe job, ready to send log records."""

    def __init__(self, port: int, host: dict, pat: str):
        self.host = host
        self.agent = Connection(port, host["token"])
        self.api = Connection(port, pat)
        boot_id = f"bench-{host['id']}-{time.monotonic_ns()}"
        self.boot_id = boot_id
        status, _, _ = self.agent.request(
            "POST",
            "/api/agent/v1/hello",
            {
                "protocol_version": 1,
                "agent_version": "bench",
                "restic_version": "0.16.4",
                "hostname": host["hostname"],
                "os": "linux",
                "arch": "x86_64",
                "boot_id": boot_id,
                "running": [],
            },
        )
        if status != 200:
            raise RuntimeError(f"hello: {status}")
        status, job, _ = self.api.request(
            "POST", f"/api/v1/hosts/{host['id']}/jobs", {"kind": "probe"}
        )
        if status != 201:
            raise RuntimeError(f"start job: {status} {job}")
        self.job_id = job["id"]
        self.attempt_id = self._attempt_from_poll()
        self.event("job.started", {})
        self.next_seq = 1

    def _attempt_from_poll(self) -> str:
        acks: list = []
        for _ in range(20):
            status, data, _ = self.agent.request(
                "POST",
                "/api/agent/v1/poll",
                {"boot_id": self.boot_id, "acks": acks, "running": [], "wait": 0},
            )
            commands = (data or {}).get("commands", []) if status == 200 else []
            acks = [{"command_id": c["command_id"], "result": "accepted"} for c in commands]
            for command in commands:
                if command["type"] == "job.run" and command["job_id"] == self.job_id:
                    self.agent.request(
                        "POST",
                        "/api/agent/v1/poll",
                        {"boot_id": self.boot_id, "acks": acks, "running": [], "wait": 0},
                    )
                    return command["attempt_id"]
        raise RuntimeError(f"job.run for job {self.job_id} never arrived")

    def event(self, type_: str, data: dict) -> None:
        event = {
            "event_id": f"{self.job_id}-{type_}-{time.monotonic_ns()}",
            "type": type_,
            "job_id": self.job_id,
            "attempt_id": self.attempt_id,
            "ts": iso_now(),
            "data": data,
        }
        status, answer, _ = self.agent.request("POST", "/api/agent/v1/events", {"events": [event]})
        if status != 200 or answer["rejected"]:
            raise RuntimeError(f"event {type_}: {status} {answer}")

    def log_body(self, first_seq: int, texts: list[str], stream: str = "stdout") -> bytes:
        ts = iso_now()
        records = [{"ts": ts, "stream": stream, "text": text} for text in texts]
        return json.dumps(
            {"attempt_id": self.attempt_id, "first_seq": first_seq, "records": records}
        ).encode()

    def send_logs(self, body: bytes) -> tuple[dict, float]:
        status, answer, took = self.agent.request(
            "POST", f"/api/agent/v1/jobs/{self.job_id}/logs", body
        )
        if status != 200:
            raise RuntimeError(f"logs: {status} {answer}")
        return answer, took

    def close(self) -> None:
        self.agent.close()
        self.api.close()


def restic_like_line(n: int) -> str:
    """About 100 characters, like the per-file lines of a verbose restic run."""
    return (
        f"new       /srv/data/project-{n % 97:02d}/src/module_{n:07d}/handler.py, "
        f"saved in 0.00{n % 10}s (4.{n % 10} KiB added)"
    )


def start_server(workdir: Path, hosts: int, max_batch: int) -> tuple[Server, dict]:
    data_dir, tokens = workdir / "data", workdir / "tokens.json"
    subprocess.run(
        [
            *(sys.executable, str(BENCH / "seed.py"), "--agents", str(hosts)),
            *("--data-dir", str(data_dir), "--out", str(tokens)),
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seeded = json.loads(tokens.read_text())
    hook = workdir / "gunicorn_bench.py"
    hook.write_text(GUNICORN_HOOK)
    env = clean_env(
        RM_DATA_DIR=str(data_dir),
        RM_OFFLINE_AFTER_SECONDS="86400",  # jobs need an "online" host
        GUNICORN_CMD_ARGS=f"-c {hook}",
        BENCH_MAX_LOG_BATCH=str(max_batch),
    )
    server = Server(workdir, env)
    server.start(timeout=60)
    return server, seeded


def worker_cpu(server: Server) -> float:
    return sum(cpu_seconds(pid) for pid in children(server.process.pid))


def run_once(server: Server, seeded: dict, batch: int, writers: int, lines: int) -> dict:
    hosts = seeded["hosts"][:writers]
    jobs = [AgentJob(server.port, host, seeded["pat"]) for host in hosts]
    bodies = {
        job.job_id: [
            job.log_body(start + 1, [restic_like_line(n) for n in range(start, start + batch)])
            for start in range(0, lines, batch)
        ]
        for job in jobs
    }
    barrier = threading.Barrier(writers + 1)
    results: dict[int, dict] = {}

    def write(job: AgentJob) -> None:
        latencies = []
        barrier.wait()
        started = time.monotonic()
        committed = 0
        for body in bodies[job.job_id]:
            answer, took = job.send_logs(body)
            latencies.append(took)
            committed = answer["committed_seq"]
        results[job.job_id] = {
            "started": started,
            "ended": time.monotonic(),
            "committed": committed,
            "latencies": latencies,
        }

    threads = [threading.Thread(target=write, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    cpu_before = worker_cpu(server)
    barrier.wait()
    for thread in threads:
        thread.join()
    cpu_used = worker_cpu(server) - cpu_before
    for job in jobs:
        job.event("job.finished", {"status": "succeeded", "exit_code": 0, "stats": {}})
        job.close()
    started = min(r["started"] for r in results.values())
    ended = max(r["ended"] for r in results.values())
    stored = sum(r["committed"] for r in results.values())
    latencies = sorted(ms * 1000 for r in results.values() for ms in r["latencies"])
    seconds = ended - started
    return {
        "batch": batch,
        "writers": writers,
        "lines": stored,
        "expected": lines * writers,
        "seconds": seconds,
        "lines_per_second": stored / seconds,
        "post_p50_ms": percentile(latencies, 50),
        "post_p99_ms": percentile(latencies, 99),
        "post_max_ms": latencies[-1],
        "worker_cpu": cpu_used / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--lines", type=int, default=100_000, help="lines per writer and run")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and server log")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if args.lines > 200_000:
        parser.error("--lines above RM_JOB_LOG_MAX_RECORDS (200,000) would be truncated")

    workdir = Path(tempfile.mkdtemp(prefix="rm-log-ingest-"))
    results = []
    server, seeded = start_server(workdir, max(args.writers), max(args.batch))
    log(f"server up at {server.url} (batch cap raised to {max(args.batch)} for this run)")
    try:
        for batch in args.batch:
            for writers in args.writers:
                result = run_once(server, seeded, batch, writers, args.lines)
                results.append(result)
                log(
                    f"batch {batch}, {writers} writer(s): {result['lines']:,} lines in "
                    f"{result['seconds']:.2f} s = {result['lines_per_second']:,.0f} lines/s; "
                    f"POST p50 {result['post_p50_ms']:.1f} ms, p99 {result['post_p99_ms']:.1f} ms; "
                    f"worker CPU {result['worker_cpu']:.0%}"
                )
    finally:
        server.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(
        "| batch | writers | lines stored | seconds | lines/s | POST p50 | POST p99 | worker CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['batch']:,} | {r['writers']} | {r['lines']:,}/{r['expected']:,} "
            f"| {r['seconds']:.2f} | {r['lines_per_second']:,.0f} "
            f"| {r['post_p50_ms']:.1f} ms | {r['post_p99_ms']:.1f} ms | {r['worker_cpu']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
