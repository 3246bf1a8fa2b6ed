"""Long-poll dispatch benchmark: N parked agents against one real `restic-manager serve`.

    python tests/bench/longpoll.py --agents 100 1000 3000

Not a test (pytest does not collect it; no timing assertions). For each N:

1. ``seed.py`` makes a fresh data dir: N enrolled hosts with agent tokens, an admin and a
   personal access token (straight through the models, no HTTP).
2. The real server starts as a subprocess: ``python -m app.cli serve`` (gunicorn, one gevent
   worker, SQLite), ``RM_OFFLINE_AFTER_SECONDS`` large, ``ulimit -n`` raised to the hard limit.
3. ``loadgen.py`` runs the N agents in ONE gevent process: hello, then poll/ack in a loop
   with the server's 25 s hold. Agent starts are spread over ``--ramp`` (default 25 s = one
   poll cycle) so the fleet's polls are out of phase, as in a fleet that has run a while.
4. Once every agent has a poll in flight (counted by the load generator) and the server
   answers /readyz promptly, the server's RSS and idle CPU are read from /proc.
5. M jobs (``POST /api/v1/hosts/{id}/jobs {"kind": "probe"}`` with the PAT) go to random
   hosts, one every ``--interval`` s. Dispatch latency = time.monotonic() just before the
   API request is sent → time.monotonic() when the agent's poll response carrying that job's
   command has been read (CLOCK_MONOTONIC is system-wide on Linux, so the two processes'
   clocks compare).

Prints one markdown table row per N (stdout); progress goes to stderr. ``--json FILE``
also writes the raw numbers, every (send time, latency, API round trip) sample included.
Defaults: M = 500 jobs 50 ms apart (25 s, one whole poll cycle; p99 is then the 5th worst
sample rather than the 2nd), about a minute per N.

``--gc-log`` puts ``gclog/sitecustomize.py`` on the server's PYTHONPATH, which logs the
worker's garbage-collector pauses into its log; the table then counts the full collections
that fell into the dispatch window. ``--server-gc freeze|freeze-threshold|off`` is an
experiment with the worker's collector settings (``gclog/gunicorn_gc.py``), for trying a
server change before making it; results with it are not the shipped server's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
GC_LINE = re.compile(r"\[gc\] pid=(?P<pid>\d+) at=(?P<at>[\d.]+) gen=(?P<gen>\d) ms=(?P<ms>[\d.]+)")
# The server's own fds beyond one socket per agent: listener, SQLite, logs, gevent's hub.
FD_MARGIN = 200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile() -> tuple[int, int]:
    """soft = hard for RLIMIT_NOFILE (used as preexec_fn for the server and the agents)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- /proc ---------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# --- the pieces ----------------------------------------------------------------------------


class Server:
    """`python -m app.cli serve` (exec's gunicorn: the pid is the gunicorn master)."""

    def __init__(self, data_dir: Path, port: int, gc_log: bool = False, gc_mode: str = "as-is"):
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.log_path = data_dir / "server.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("RM_") and key != "GUNICORN_CMD_ARGS"
        }
        env.update(
            {
                "RM_DATA_DIR": str(data_dir),
                "RM_OFFLINE_AFTER_SECONDS": "86400",  # jobs need an "online" host
                "PYTHONUNBUFFERED": "1",
            }
        )
        if gc_log:  # gclog/sitecustomize.py: one stderr line per collector pause
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(BENCH / "gclog"), env.get("PYTHONPATH")])
            )
        if gc_mode != "as-is":  # an experiment: see gclog/gunicorn_gc.py
            env["GUNICORN_CMD_ARGS"] = f"-c {BENCH / 'gclog' / 'gunicorn_gc.py'}"
            env["BENCH_SERVER_GC"] = gc_mode
        with open(self.log_path, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{port}"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                preexec_fn=raise_nofile,  # setrlimit only
                start_new_session=True,  # its own process group: stop() ends exactly these
            )

    @property
    def workers(self) -> list[int]:
        return children(self.process.pid)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, float]:
        """(status, seconds) of one GET on a fresh connection."""
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status, time.monotonic() - started
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited ({self.process.returncode}); see {self.log_path}"
                )
            try:
                if self.get("/readyz", timeout=2)[0] == 200 and self.workers:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; see {self.log_path}")

    def memory(self) -> dict:
        workers = self.workers
        return {
            "master_kib": rss_kib(self.process.pid),
            "worker_kib": sum(rss_kib(pid) for pid in workers),
            "workers": len(workers),
        }

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.workers)

    def worker_fds(self) -> int:
        return sum(open_fds(pid) for pid in self.workers)

    def gc_pauses(self, pids: list[int], start: float, end: float) -> dict:
        """Collector pauses of ``pids`` between two monotonic times (needs --gc-log)."""
        pauses = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = GC_LINE.match(line)
            if match and int(match["pid"]) in pids and start <= float(match["at"]) <= end:
                pauses.append((int(match["gen"]), float(match["ms"])))
        full = [ms for gen, ms in pauses if gen == 2]
        return {
            "full_collections": len(full),
            "full_max_ms": max(full, default=0.0),
            "full_total_ms": sum(full),
            "max_pause_ms": max((ms for _, ms in pauses), default=0.0),
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # gunicorn: quick shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # A worker outliving its master would keep the port; it is in our process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class LoadGenerator:
    """loadgen.py as a subprocess; a thread reads its JSON lines."""

    def __init__(self, base: str, tokens: Path, ramp: float):
        self.process = subprocess.Popen(
            [
                *(sys.executable, str(BENCH / "loadgen.py")),
                *("--base", base, "--tokens", str(tokens), "--ramp", str(ramp)),
            ],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            preexec_fn=raise_nofile,
            start_new_session=True,
        )
        self.lock = threading.Lock()
        self.status: dict = {}
        self.received: dict[int, float] = {}  # job id → first receipt (monotonic)
        self.redeliveries = 0
        self.errors: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            record = json.loads(line)
            with self.lock:
                if record["ev"] == "status":
                    self.status = record
                elif record["ev"] == "cmd" and record["job_id"] is not None:
                    if record["job_id"] in self.received or record["delivery_count"] > 1:
                        self.redeliveries += 1
                    self.received.setdefault(record["job_id"], record["t"])
                elif record["ev"] == "error":
                    self.errors.append(f"host {record['host_id']}: {record['what']}")

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.status)

    def stop(self) -> dict:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # prints a final status, then exits
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=5)
        return self.snapshot()


class Dispatcher:
    """Starts probe jobs through the public API with the personal access token."""

    def __init__(self, port: int, pat: str):
        self.port = port
        self.headers = {
            "Authorization": f"Bearer {pat}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.conn: http.client.HTTPConnection | None = None

    def start_probe(self, host_id: int) -> tuple[float, int, float]:
        """(monotonic time just before sending, job id, API round trip in s)."""
        body = json.dumps({"kind": "probe"})
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.connect()  # not part of the measured interval
            sent = time.monotonic()
            try:
                self.conn.request("POST", f"/api/v1/hosts/{host_id}/jobs", body, self.headers)
                response = self.conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None  # keep-alive dropped between requests: retry once, fresh
                if attempt == 2:
                    raise
                continue
            answered = time.monotonic()
            if response.will_close:
                self.conn.close()
                self.conn = None
            if response.status != 201:
                raise RuntimeError(f"POST jobs for host {host_id}: {response.status} {raw[:300]!r}")
            return sent, json.loads(raw)["id"], answered - sent
        raise AssertionError("unreachable")


# --- one run -------------------------------------------------------------------------------


def wait_parked(loadgen: LoadGenerator, server: Server, agents: int, timeout: float) -> dict:
    """Every agent has sent hello and has a poll in flight, and the server has caught up."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        status = loadgen.snapshot()
        if (
            status.get("hello_ok") == agents
            and status.get("first_poll") == agents
            and status.get("in_flight") == agents
        ):
            break
        if loadgen.process.poll() is not None:
            raise RuntimeError(f"load generator exited ({loadgen.process.returncode})")
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited ({server.process.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"not all {agents} agents parked after {timeout:.0f} s: {status}; "
                f"server worker fds {server.worker_fds()}; last errors {loadgen.errors[-5:]}"
            )
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            log(
                f"  parking: hello {status.get('hello_ok', 0)}/{agents}, "
                f"in flight {status.get('in_flight', 0)}, errors {status.get('errors', 0)}"
            )
        time.sleep(0.1)
    # In flight on the client side may still be queued at the server; when /readyz answers
    # at once three times in a row, the server has worked through what was sent before it.
    quick = 0
    while quick < 3:
        _, seconds = server.get("/readyz")
        quick = quick + 1 if seconds < 0.05 else 0
        time.sleep(0.2)
    return loadgen.snapshot()


def run_once(agents: int, args, workdir: Path) -> dict:
    data_dir = workdir / f"n{agents}"
    tokens_path = workdir / f"tokens-{agents}.json"
    log(f"N={agents}: seeding {data_dir}")
    subprocess.run(
        [
            *(sys.executable, str(BENCH / "seed.py"), "--agents", str(agents)),
            *("--data-dir", str(data_dir), "--out", str(tokens_path)),
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seeded = json.loads(tokens_path.read_text())
    host_ids = [host["id"] for host in seeded["hosts"]]

    server = Server(data_dir, free_port(), gc_log=args.gc_log, gc_mode=args.server_gc)
    loadgen = None
    try:
        server.wait_ready()
        baseline = server.memory()
        log(f"N={agents}: server up at {server.base}, worker RSS {baseline['worker_kib']} KiB")

        loadgen = LoadGenerator(server.base, tokens_path, args.ramp)
        parked_at = wait_parked(loadgen, server, agents, timeout=args.ramp + 60 + agents / 20)
        cpu_before, idle_started = server.worker_cpu(), time.monotonic()
        time.sleep(args.settle)
        idle_cpu = (server.worker_cpu() - cpu_before) / (time.monotonic() - idle_started)
        idle = server.memory()
        fds = server.worker_fds()
        worker_pids = server.workers
        log(
            f"N={agents}: all parked; worker RSS {idle['worker_kib']} KiB, "
            f"idle worker CPU {idle_cpu:.0%}, worker fds {fds}"
        )

        rng = random.Random(args.seed + agents)
        dispatcher = Dispatcher(server.port, seeded["pat"])
        sent: dict[int, float] = {}
        api_seconds: list[float] = []
        api_by_job: dict[int, float] = {}
        before = loadgen.snapshot()
        loadgen_cpu_before = cpu_seconds(loadgen.process.pid)
        cpu_before, window_started = server.worker_cpu(), time.monotonic()
        for index in range(args.commands):
            target = window_started + index * args.interval
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            started, job_id, took = dispatcher.start_probe(rng.choice(host_ids))
            sent[job_id] = started
            api_seconds.append(took)
            api_by_job[job_id] = took
        deadline = time.monotonic() + args.grace
        while time.monotonic() < deadline:
            with loadgen.lock:
                if all(job_id in loadgen.received for job_id in sent):
                    break
            time.sleep(0.05)
        window_ended = time.monotonic()
        window = window_ended - window_started
        busy_cpu = (server.worker_cpu() - cpu_before) / window
        loadgen_cpu = (cpu_seconds(loadgen.process.pid) - loadgen_cpu_before) / window
        after = loadgen.snapshot()
        loaded = server.memory()
        final = loadgen.stop()
        with loadgen.lock:
            latencies = sorted(
                (loadgen.received[job_id] - started) * 1000
                for job_id, started in sent.items()
                if job_id in loadgen.received
            )
            redeliveries, errors = loadgen.redeliveries, list(loadgen.errors)
            samples = [  # (sent, monotonic s; latency ms or None; API round trip ms)
                (
                    started,
                    (loadgen.received[job_id] - started) * 1000
                    if job_id in loadgen.received
                    else None,
                    api_by_job[job_id] * 1000,
                )
                for job_id, started in sent.items()
            ]
    finally:
        if loadgen is not None:
            loadgen.stop()
        server.stop()
    gc_window = server.gc_pauses(worker_pids, window_started, window_ended) if args.gc_log else {}

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    api_ms = sorted(seconds * 1000 for seconds in api_seconds)
    ended = delta("polls_204") + delta("polls_cmd") + delta("polls_other")
    result = {
        "agents": agents,
        "sent": len(sent),
        "received": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else math.nan,
        "api_p50_ms": percentile(api_ms, 50),
        "api_p99_ms": percentile(api_ms, 99),
        "rss_baseline_kib": baseline["worker_kib"],
        "rss_idle_kib": idle["worker_kib"],
        "rss_master_kib": idle["master_kib"],
        "rss_after_kib": loaded["worker_kib"],
        "worker_fds": fds,
        "idle_worker_cpu": idle_cpu,
        "dispatch_worker_cpu": busy_cpu,
        "dispatch_loadgen_cpu": loadgen_cpu,
        "window_seconds": window,
        "gc_window": gc_window,
        "window_polls_ended": ended,
        "window_polls_204": delta("polls_204"),
        "window_polls_cmd": delta("polls_cmd"),
        "total_polls_204": final.get("polls_204", 0),
        "total_polls_cmd": final.get("polls_cmd", 0),
        "parked_status": parked_at,
        "redeliveries": redeliveries,
        "errors": len(errors),
        "first_errors": errors[:5],
        "samples": samples,
    }
    log(
        f"N={agents}: received {result['received']}/{result['sent']}, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms, errors {result['errors']}; during dispatch: worker "
        f"CPU {busy_cpu:.0%}, load generator CPU {loadgen_cpu:.0%}"
    )
    if args.gc_log:
        log(
            f"N={agents}: server full GCs during dispatch: {gc_window['full_collections']}, "
            f"longest {gc_window['full_max_ms']:.0f} ms, total {gc_window['full_total_ms']:.0f} ms "
            f"of {window:.0f} s; longest pause of any generation {gc_window['max_pause_ms']:.0f} ms"
        )
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


COLUMNS = (
    "N agents",
    "p50",
    "p95",
    "p99",
    "max",
    "received/sent",
    "worker RSS idle (Δ per agent)",
    "idle worker CPU",
    "polls ended 204 / command",
    "API POST p50 / p99",
)
GC_COLUMN = "server full GCs in window (longest)"


def header(gc_log: bool) -> str:
    names = [*COLUMNS, GC_COLUMN] if gc_log else list(COLUMNS)
    return f"| {' | '.join(names)} |\n|{'---:|' * len(names)}"


def row(result: dict) -> str:
    if "failed" in result:
        return f"| {result['agents']:,} | failed: {result['failed']} |"
    gc = result["gc_window"]
    per_agent = (result["rss_idle_kib"] - result["rss_baseline_kib"]) / result["agents"]
    ended = result["window_polls_ended"] or 1
    return (
        f"| {result['agents']:,} | {result['p50_ms']:.1f} ms | {result['p95_ms']:.1f} ms "
        f"| {result['p99_ms']:.1f} ms | {result['max_ms']:.1f} ms "
        f"| {result['received']}/{result['sent']} "
        f"| {result['rss_idle_kib'] / 1024:.0f} MiB ({per_agent:.1f} KiB) "
        f"| {result['idle_worker_cpu']:.0%} "
        f"| {result['window_polls_204'] / ended:.0%} / {result['window_polls_cmd'] / ended:.0%} "
        f"| {result['api_p50_ms']:.1f} / {result['api_p99_ms']:.1f} ms |"
        + (f" {gc['full_collections']} ({gc['full_max_ms']:.0f} ms) |" if gc else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--commands", type=int, default=500, help="jobs dispatched per N (M)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between jobs")
    parser.add_argument("--ramp", type=float, default=25.0, help="spread agent starts (s)")
    parser.add_argument("--settle", type=float, default=3.0, help="idle window for RSS/CPU (s)")
    parser.add_argument("--grace", type=float, default=15.0, help="wait for stragglers (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gc-log", action="store_true", help="log the server's collector pauses (gclog/)"
    )
    parser.add_argument(
        "--server-gc",
        choices=["as-is", "freeze", "freeze-threshold", "off"],
        default="as-is",
        help="experiment: collector settings in the server worker (gclog/gunicorn_gc.py)",
    )
    parser.add_argument("--keep", action="store_true", help="keep data dirs and server logs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    soft, hard = raise_nofile()
    needed = max(args.agents) + FD_MARGIN
    if hard < needed:
        log(
            f"RLIMIT_NOFILE hard limit is {hard}; N={max(args.agents)} needs about {needed} "
            "descriptors in the server and in the load generator each. Raise the hard limit "
            "(e.g. `ulimit -Hn` as root, or LimitNOFILE= in the unit) and rerun."
        )
        return 2
    log(f"RLIMIT_NOFILE {soft}/{hard}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    if args.server_gc != "as-is":
        log(f"EXPERIMENT: server worker collector mode {args.server_gc!r}, not the shipped server")

    workdir = Path(tempfile.mkdtemp(prefix="rm-longpoll-"))
    results = []
    try:
        for agents in args.agents:
            try:
                results.append(run_once(agents, args, workdir))
            except (RuntimeError, OSError, subprocess.CalledProcessError) as failure:
                log(f"N={agents}: FAILED: {failure}")
                results.append({"agents": agents, "failed": str(failure)})
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(header(args.gc_log))
    for result in results:
        print(row(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
