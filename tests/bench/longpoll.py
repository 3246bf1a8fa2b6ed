"""Long-poll dispatch benchmark: N parked agents against one real `restic-manager serve`.

    python tests/bench/longpoll.py --agents 5000                        # SQLite, one worker
    python tests/bench/longpoll.py --pg --workers 4 --agents 20000      # PostgreSQL, 4 workers

Not a test (pytest does not collect it; no timing assertions). For each N:

1. ``seed.py`` makes a fresh data dir: N enrolled hosts (repository "ready") with agent
   tokens, an admin and a personal access token (straight through the models, no HTTP).
   ``--pg``: into a fresh PostgreSQL database ``rm_bench_<N>`` at 127.0.0.1:5432 (dropped
   at the end unless ``--keep``).
2. The real server starts as a subprocess on ``--port`` (18610): ``python -m app.cli serve
   --workers W`` (gunicorn, gevent workers), ``RM_OFFLINE_AFTER_SECONDS`` large, ``ulimit -n``
   raised to the hard limit. ``--backlog B`` (experiment) passes gunicorn ``--backlog``.
3. ``loadgen.py`` runs the N agents split over ``--loadgen-procs`` K gevent processes
   (default: one per core), each with ``ulimit -n`` raised: hello, then poll/ack in a loop
   with the server's 25 s hold. Connection starts are spread over ``--ramp`` (default
   max(25 s, N/200 s)), interleaved across the K processes, so the fleet's polls are out of
   phase as in a fleet that has run a while. While parking, the log shows the hello rate,
   slow connects (SYN retries at a full listen backlog), the kernel's ListenOverflows, the
   CPU of the workers and of the load generators, and how long the workers were runnable
   but waiting for a CPU (/proc/<pid>/schedstat: the shared machine holding them back).
4. Once every agent has a poll in flight (summed status lines of the K processes) and the
   server answers /readyz promptly, an idle window of ``--settle`` s: worker RSS (summed and
   largest), worker CPU (summed and per worker), descriptors per worker (about the polls
   parked in each), and **CPU ms per idle poll** = worker CPU seconds in the window / polls
   that ended in it without a command (the load generators' polls_204 + reconcile-only 200s).
5. M probe jobs (``POST /api/v1/hosts/{id}/jobs {"kind": "probe"}`` with the PAT), one
   every ``--interval`` s, to M distinct hosts (a second probe for a host whose first is
   still "running" would answer with that first job). Dispatch latency = time.monotonic()
   just before the API request is sent → time.monotonic() when the agent's poll response
   carrying that job's command has been read (CLOCK_MONOTONIC is system-wide on Linux, so
   the processes' clocks compare), matched by job id.

Sanity: a round is INVALID (the table says why; exit status 1) when not every planned POST
answered 201/202 with a new job, a command was received before its POST was sent, a job
was never received or received twice (or a command id repeated, or delivery_count > 1, or
delivered to another host than the job's), a command arrived for a job this run did not
start, not every agent was parked before the idle window and at dispatch start, any agent
request failed, or no poll ended in the idle window. The load it ran under is printed with
the results: the machine's speed (``machine.py``: runs compare only across like machines),
1-minute loadavg at start, before and after dispatch; CPU of the load generators and of
each server worker, idle and during dispatch; run-queue wait; listen overflows. "> 1 s"
counts commands that took over a second: with several workers, an agent parked in one
worker waiting on a command queued in another would show there (the bus must wake it
across processes).

Prints one markdown table row per N (stdout); progress goes to stderr. ``--json FILE``
also writes the raw numbers, every (send time, latency, API round trip) sample included.
Before the window, ``--warmup`` jobs (default 40, to hosts the window does not use) run a
worker's first-job code once in every worker; their latencies are printed apart, and they
are checked like the others. Defaults: M = 500 jobs 50 ms apart (25 s, one whole poll
cycle; p99 is then the 5th worst sample rather than the 2nd).

``--gc-log`` puts ``gclog/sitecustomize.py`` on the server's PYTHONPATH, which logs the
worker's garbage-collector pauses into its log; the table then counts the full collections
that fell into the dispatch window.

**Dispatch CPU per job** = (worker CPU during the dispatch window minus the idle window's rate
over the same time) / jobs sent: what starting and delivering one job costs the workers
(its API call, the woken poll's lease, the acknowledging poll). ``--profile DIR`` records
the workers with ``py-spy`` (not installed with the project: ``pip install py-spy``; needs
ptrace rights) during the dispatch window only, one collapsed-stack file per worker in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402

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


def start_profilers(directory: Path | None, pids: list[int], agents: int) -> list:
    """``py-spy record`` of each worker until :func:`stop_profilers` (none without DIR)."""
    if directory is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    profilers = []
    for pid in pids:
        out = directory / f"dispatch-{agents}-{pid}.txt"
        argv = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
        argv += ["--rate", "250", "--nonblocking"]
        profilers.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    time.sleep(1.0)  # attached before the first job
    return profilers


def stop_profilers(profilers: list) -> None:
    """SIGINT makes py-spy write its file; wait for it."""
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            log(f"py-spy {profiler.pid} did not finish its profile")


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


def schedstat(pid: int) -> tuple[float, float]:
    """(s on a CPU, s runnable but waiting for one) since start: /proc/<pid>/schedstat."""
    try:
        ran, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# --- the pieces ----------------------------------------------------------------------------


class Server:
    """`python -m app.cli serve` (exec's gunicorn: the pid is the gunicorn master)."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        gc_log: bool = False,
        workers: int = 1,
        database_url: str | None = None,
        backlog: int | None = None,
        hold: int | None = None,
    ):
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
        if database_url:
            env["RM_DATABASE_URL"] = database_url
        if hold:  # the server's long-poll hold (the load generator follows the default)
            env["RM_POLL_WAIT_SECONDS"] = str(hold)
        if gc_log:  # gclog/sitecustomize.py: one stderr line per collector pause
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(BENCH / "gclog"), env.get("PYTHONPATH")])
            )
        if backlog:  # an experiment: gunicorn's listen backlog (default 2048)
            env["GUNICORN_CMD_ARGS"] = f"--backlog {backlog}"
        with open(self.log_path, "wb") as output:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "app.cli", "serve"),
                    *("--bind", f"127.0.0.1:{port}", "--workers", str(workers)),
                ],
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

    def wait_ready(self, timeout: float = 90.0) -> None:
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
        each = [rss_kib(pid) for pid in self.workers]
        return {
            "master_kib": rss_kib(self.process.pid),
            "worker_kib": sum(each),
            "worker_max_kib": max(each, default=0),
            "workers": len(each),
        }

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.workers)

    def worker_cpu_each(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.workers}

    def worker_sched(self) -> tuple[float, float]:
        """Summed over the workers: (s on a CPU, s runnable but waiting for a CPU)."""
        each = [schedstat(pid) for pid in self.workers]
        return sum(ran for ran, _ in each), sum(waited for _, waited in each)

    def worker_fds(self) -> int:
        return sum(open_fds(pid) for pid in self.workers)

    def worker_fds_each(self) -> dict[int, int]:
        """Descriptors per worker: with every agent parked, about its share of the polls."""
        return {pid: open_fds(pid) for pid in self.workers}

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


class LoadGenerators:
    """K loadgen.py processes (``--slice i --slices K``), one reader thread each."""

    def __init__(self, base: str, tokens: Path, ramp: float, procs: int):
        self.lock = threading.Lock()
        self.status: dict[int, dict] = {}  # slice -> its latest status line
        # every command received: (command_id, job_id, host_id, delivery_count, t, slice)
        self.commands: list[tuple] = []
        self.by_job: dict[int, list[tuple]] = {}
        self.errors: list[str] = []
        self.processes = [
            subprocess.Popen(
                [
                    *(sys.executable, str(BENCH / "loadgen.py")),
                    *("--base", base, "--tokens", str(tokens), "--ramp", str(ramp)),
                    *("--slice", str(index), "--slices", str(procs)),
                ],
                stdout=subprocess.PIPE,
                cwd=ROOT,
                preexec_fn=raise_nofile,  # setrlimit only: each process holds N/K sockets
                start_new_session=True,
            )
            for index in range(procs)
        ]
        self.readers = [
            threading.Thread(target=self._read, args=(index, process), daemon=True)
            for index, process in enumerate(self.processes)
        ]
        for reader in self.readers:
            reader.start()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def _read(self, index: int, process: subprocess.Popen) -> None:
        for line in process.stdout:
            record = json.loads(line)
            with self.lock:
                if record["ev"] == "status":
                    self.status[index] = record
                elif record["ev"] == "cmd":
                    receipt = (
                        record["command_id"],
                        record["job_id"],
                        record["host_id"],
                        record["delivery_count"],
                        record["t"],
                        index,
                    )
                    self.commands.append(receipt)
                    if record["job_id"] is not None:
                        self.by_job.setdefault(record["job_id"], []).append(receipt)
                elif record["ev"] == "error":
                    self.errors.append(f"host {record['host_id']}: {record['what']}")

    def wait_delivered(self, job_ids, seconds: float) -> None:
        """Until every job in ``job_ids`` has reached its agent, or ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if all(job_id in self.by_job for job_id in job_ids):
                    return
            time.sleep(0.05)

    def snapshot(self) -> dict:
        """The counters summed over the processes (maxima for the *_max ones)."""
        with self.lock:
            statuses = [dict(status) for status in self.status.values()]
        total: dict = {"reporting": len(statuses), "error_kinds": {}}
        for status in statuses:
            for key, value in status.items():
                if key.endswith("_max"):
                    total[key] = max(total.get(key, 0), value)
                elif key == "error_kinds":
                    for kind, count in value.items():
                        total["error_kinds"][kind] = total["error_kinds"].get(kind, 0) + count
                elif (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and key not in ("t", "slice", "pid")
                ):
                    total[key] = total.get(key, 0) + value
        return total

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def exited(self) -> int | None:
        for process in self.processes:
            if process.poll() is not None:
                return process.returncode
        return None

    def stop(self) -> dict:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # prints a final status, then exits
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for reader in self.readers:
            reader.join(timeout=5)
        return self.snapshot()


def warm_up(dispatcher, loadgen, hosts: list[int], args) -> tuple[dict, list[str]]:
    """Jobs before the measured window, ``args.interval`` apart, to hosts the window does
    not use; waits for them (at most ``args.grace``). A worker's first job runs code and
    statements it has not run since it started (the API's inserts, the woken poll's lease,
    their SQLAlchemy compilation, PostgreSQL's caches on each pooled connection): tens of
    ms each on four workers at once, a one-off after every restart. The window measures
    the steady state; the warm-up's own latencies are printed apart and its jobs checked
    like the rest (delivered exactly once, to their host). ``--warmup 0``: none."""
    sent: dict[int, tuple[float, int]] = {}
    failures: list[str] = []
    for host_id in hosts:
        started, job_id, _, failure = dispatcher.start_probe(host_id)
        if failure is not None or job_id is None:
            failures.append(f"host {host_id}: {failure}")
        else:
            sent[job_id] = (started, host_id)
        time.sleep(args.interval)
    loadgen.wait_delivered(sent, args.grace)
    time.sleep(1.0)  # the acknowledging polls, then a quiet second before the window
    return sent, failures


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

    def start_probe(self, host_id: int) -> tuple[float, int | None, float, str | None]:
        """(monotonic time just before sending, job id or None, API round trip s, failure).

        Never retried: a request that was written may have created its job, and a retry
        would start a second one for the same host (the old driver did; its missing and
        doubled jobs showed up as impossible numbers).
        """
        body = json.dumps({"kind": "probe"})
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.connect()  # not part of the measured interval
            except OSError as error:
                self.conn = None
                return time.monotonic(), None, 0.0, f"connect: {error}"
        sent = time.monotonic()
        try:
            self.conn.request("POST", f"/api/v1/hosts/{host_id}/jobs", body, self.headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.conn.close()
            self.conn = None
            return sent, None, time.monotonic() - sent, f"{type(error).__name__}: {error}"
        answered = time.monotonic()
        if response.will_close:
            self.conn.close()
            self.conn = None
        if response.status not in (201, 202):
            return sent, None, answered - sent, f"HTTP {response.status}: {raw[:200]!r}"
        try:
            return sent, int(json.loads(raw)["id"]), answered - sent, None
        except (ValueError, KeyError, TypeError):
            return sent, None, answered - sent, f"HTTP {response.status} without a job id"


# --- the machine's load --------------------------------------------------------------------


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def listen_overflows() -> dict:
    """TcpExt ListenOverflows / ListenDrops: SYNs or handshakes dropped at a full backlog."""
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names and names[0] == "TcpExt:":
            table = dict(zip(names[1:], values[1:]))
            return {key: int(table.get(key, 0)) for key in ("ListenOverflows", "ListenDrops")}
    return {}


# --- one run -------------------------------------------------------------------------------


def wait_parked(loadgen: LoadGenerators, server: Server, agents: int, timeout: float) -> dict:
    """Every agent has sent hello and has a poll in flight, and the server has caught up."""
    started = time.monotonic()
    deadline = started + timeout
    last_report = 0.0
    # (s since start, hellos answered, worker CPU s, load generators' CPU s): the rates
    samples: list[tuple[float, int, float, float, float]] = []
    overflows_start = listen_overflows().get("ListenOverflows", 0)
    while True:
        status = loadgen.snapshot()
        if (
            status.get("reporting") == len(loadgen.processes)
            and status.get("hello_ok") == agents
            and status.get("first_poll") == agents
            and status.get("in_flight") == agents
        ):
            break
        if (code := loadgen.exited()) is not None:
            raise RuntimeError(f"a load generator exited ({code})")
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited ({server.process.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"not all {agents} agents parked after {timeout:.0f} s: hello "
                f"{status.get('hello_ok', 0)}, in flight {status.get('in_flight', 0)}, "
                f"errors {status.get('errors', 0)} {status.get('error_kinds')}; server worker "
                f"fds {server.worker_fds()}; last errors {loadgen.errors[-3:]}"
            )
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            samples.append(
                (
                    last_report - started,
                    status.get("hello_ok", 0),
                    server.worker_cpu(),
                    loadgen.cpu(),
                    server.worker_sched()[1],
                )
            )
            now, hellos, worker, generators, waited = samples[-1]
            span = now - samples[-2][0] if len(samples) > 1 else 1.0
            previous = samples[-2] if len(samples) > 1 else (0.0, 0, worker, generators, waited)
            log(
                f"  parking: hello {hellos}/{agents} ({(hellos - previous[1]) / span:.0f}/s), "
                f"in flight {status.get('in_flight', 0)}, errors {status.get('errors', 0)}, "
                f"slowest connect {status.get('connect_ms_max', 0):.0f} ms, connects > 0.5 s "
                f"{status.get('connect_slow', 0)}, listen overflows "
                f"{listen_overflows().get('ListenOverflows', 0) - overflows_start}; CPU: workers "
                f"{(worker - previous[2]) / span:.0%} (+ {(waited - previous[4]) / span:.0%} "
                f"runnable waiting for a CPU), load generators "
                f"{(generators - previous[3]) / span:.0%}; loadavg {loadavg():.1f}"
                + (f"; errors {status.get('error_kinds')}" if status.get("errors") else "")
            )
        time.sleep(0.1)
    # In flight on the client side may still be queued at the server; when /readyz answers
    # at once three times in a row, the server has worked through what was sent before it.
    quick = 0
    while quick < 3:
        try:
            _, seconds = server.get("/readyz")
        except OSError:  # a 5 s timeout: still busy
            seconds = math.inf
        quick = quick + 1 if seconds < 0.05 else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"all parked, but /readyz still slow after {timeout:.0f} s")
        time.sleep(0.2)
    status = loadgen.snapshot()
    status["parking_seconds"] = time.monotonic() - started
    return status


def pg_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def pg_admin(*argv: str) -> None:
    subprocess.run(
        [*argv, "-h", "127.0.0.1", "-U", "postgres"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_once(agents: int, args, workdir: Path) -> dict:
    data_dir = workdir / f"n{agents}"
    tokens_path = workdir / f"tokens-{agents}.json"
    database = f"rm_bench_{agents}" if args.pg else None
    seed_argv = [
        *(sys.executable, str(BENCH / "seed.py"), "--agents", str(agents)),
        *("--data-dir", str(data_dir), "--out", str(tokens_path)),
    ]
    if database:
        subprocess.run(
            ["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", database], check=True
        )
        pg_admin("createdb", database)
        seed_argv += ["--database-url", pg_url(database)]
    log(f"N={agents}: seeding {data_dir}" + (f" and PostgreSQL {database}" if database else ""))
    subprocess.run(seed_argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seeded = json.loads(tokens_path.read_text())
    host_ids = [host["id"] for host in seeded["hosts"]]
    ramp = args.ramp if args.ramp is not None else max(25.0, agents / 200)
    planned = min(args.commands, agents)
    if planned < args.commands:
        log(f"N={agents}: {planned} commands, not {args.commands}: one per host at most")

    server = Server(
        data_dir,
        args.port,
        gc_log=args.gc_log,
        workers=args.workers,
        database_url=pg_url(database) if database else None,
        backlog=args.backlog,
        hold=args.hold,
    )
    loadgen = None
    failures: list[str] = []  # POSTs that did not start a job
    try:
        server.wait_ready()
        baseline = server.memory()
        # The workers' own background (ticker, bus, housekeeping) before any agent connects:
        # subtracted for the net CPU per idle poll, which matters at small N.
        cpu_before, base_started = server.worker_cpu(), time.monotonic()
        time.sleep(args.baseline)
        base_cpu = (server.worker_cpu() - cpu_before) / (time.monotonic() - base_started)
        log(
            f"N={agents}: server up at {server.base} ({args.workers} worker(s), "
            f"{'PostgreSQL' if database else 'SQLite'}), worker RSS {baseline['worker_kib']} KiB; "
            f"{args.loadgen_procs} load generator process(es), ramp {ramp:.0f} s"
        )
        overflows_before = listen_overflows()
        load_start = loadavg()
        loadgen = LoadGenerators(server.base, tokens_path, ramp, args.loadgen_procs)
        parked_at = wait_parked(
            loadgen, server, agents, timeout=args.park_timeout or ramp + 60 + agents / 20
        )
        overflows_parked = listen_overflows()

        # Idle window: every agent parked, nothing to deliver. CPU per idle poll = worker CPU
        # in the window / polls that ended in it (204s and reconcile-only 200s).
        idle_before = loadgen.snapshot()
        per_worker_before = server.worker_cpu_each()
        sched_before = server.worker_sched()
        lg_cpu_before, idle_started = loadgen.cpu(), time.monotonic()
        time.sleep(args.settle)
        idle_seconds = time.monotonic() - idle_started
        idle_waiting = (server.worker_sched()[1] - sched_before[1]) / idle_seconds
        per_worker_idle = {
            pid: (cpu - per_worker_before.get(pid, cpu)) / idle_seconds
            for pid, cpu in server.worker_cpu_each().items()
        }
        idle_cpu = sum(per_worker_idle.values())
        idle_loadgen_cpu = (loadgen.cpu() - lg_cpu_before) / idle_seconds
        idle_after = loadgen.snapshot()
        idle_polls = sum(
            idle_after.get(key, 0) - idle_before.get(key, 0) for key in ("polls_204", "polls_other")
        )
        cpu_ms_per_poll = idle_cpu * idle_seconds * 1000 / idle_polls if idle_polls else math.nan
        net_ms_per_poll = (
            max(0.0, idle_cpu - base_cpu) * idle_seconds * 1000 / idle_polls
            if idle_polls
            else math.nan
        )
        idle = server.memory()
        fds_each = server.worker_fds_each()
        worker_pids = server.workers
        log(
            f"N={agents}: all parked in {parked_at['parking_seconds']:.0f} s; worker RSS "
            f"{idle['worker_kib'] // 1024} MiB (largest {idle['worker_max_kib'] // 1024} MiB), "
            f"idle worker CPU {idle_cpu:.0%} ({idle_polls} polls in {idle_seconds:.0f} s, "
            f"{cpu_ms_per_poll:.2f} ms CPU per idle poll, {net_ms_per_poll:.2f} ms net of the "
            f"{base_cpu:.0%} the workers use with no agent), "
            f"fds per worker {sorted(fds_each.values())}"
        )

        # Distinct hosts: a second probe for a host whose first one is still running (the
        # simulated agent accepts and never finishes) answers with that first job.
        chooser = random.Random(args.seed + agents)
        targets = chooser.sample(host_ids, planned)
        dispatcher = Dispatcher(server.port, seeded["pat"])
        warm_hosts = chooser.sample(
            sorted(set(host_ids) - set(targets)), min(args.warmup, agents - planned)
        )
        # The driver's own collector stays out of the measured times (each sample's send
        # time and API round trip are taken here): collected and frozen once, off until
        # the window has ended, as in the load generators.
        gc.collect()
        gc.freeze()
        gc.disable()
        warm_sent, warm_failures = warm_up(dispatcher, loadgen, warm_hosts, args)
        sent: dict[int, tuple[float, int]] = {}  # job id -> (sent at, host id)
        api_by_job: dict[int, float] = {}
        profilers = start_profilers(args.profile, worker_pids, agents)
        before = loadgen.snapshot()
        load_before = loadavg()
        lg_cpu_before = loadgen.cpu()
        per_worker_before = server.worker_cpu_each()
        sched_before = server.worker_sched()
        window_started = time.monotonic()
        for index, host_id in enumerate(targets):
            target = window_started + index * args.interval
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            started, job_id, took, failure = dispatcher.start_probe(host_id)
            if failure is not None or job_id is None:
                failures.append(f"host {host_id}: {failure}")
                continue
            if job_id in sent:
                failures.append(f"host {host_id}: job id {job_id} answered twice")
                continue
            sent[job_id] = (started, host_id)
            api_by_job[job_id] = took
        loadgen.wait_delivered(sent, args.grace)
        time.sleep(0.5)  # a duplicate delivery would arrive right behind the first
        window_ended = time.monotonic()
        gc.enable()
        stop_profilers(profilers)
        window = window_ended - window_started
        per_worker_busy = {
            pid: (cpu - per_worker_before.get(pid, cpu)) / window
            for pid, cpu in server.worker_cpu_each().items()
        }
        busy_cpu = sum(per_worker_busy.values())
        busy_waiting = (server.worker_sched()[1] - sched_before[1]) / window
        loadgen_cpu = (loadgen.cpu() - lg_cpu_before) / window
        load_after = loadavg()
        after = loadgen.snapshot()
        loaded = server.memory()
        overflows_after = listen_overflows()
        final = loadgen.stop()
        with loadgen.lock:
            commands = list(loadgen.commands)
            by_job = {job_id: list(receipts) for job_id, receipts in loadgen.by_job.items()}
            errors = list(loadgen.errors)
    finally:
        if loadgen is not None:
            loadgen.stop()
        server.stop()
        if database and not args.keep:
            subprocess.run(
                ["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", database],
                check=False,
            )
    gc_window = server.gc_pauses(worker_pids, window_started, window_ended) if args.gc_log else {}

    # --- sanity: what would make the numbers impossible or meaningless -----------------
    invalid: list[str] = []
    if len(sent) != planned:
        invalid.append(
            f"{len(sent)} of {planned} planned commands sent (POST 201/202); "
            f"first failures {failures[:3]}"
        )
    latencies, negative, missing, doubled, wrong_host, redelivered = [], [], [], [], [], []
    samples = []  # (sent monotonic s, latency ms or None, API round trip ms)
    for job_id, (started, host_id) in sent.items():
        receipts = by_job.get(job_id, [])
        if not receipts:
            missing.append(job_id)
            samples.append((started, None, api_by_job[job_id] * 1000))
            continue
        if len(receipts) > 1:
            doubled.append(job_id)
        _, _, got_host, _, received, _ = receipts[0]
        if got_host != host_id:
            wrong_host.append((job_id, host_id, got_host))
        if any(receipt[3] != 1 for receipt in receipts):
            redelivered.append(job_id)
        latency = (received - started) * 1000
        if latency < 0:
            negative.append((job_id, round(latency, 1)))
        latencies.append(latency)
        samples.append((started, latency, api_by_job[job_id] * 1000))
    command_ids = [receipt[0] for receipt in commands]
    duplicate_ids = len(command_ids) - len(set(command_ids))
    unexpected = [
        receipt
        for receipt in commands
        if receipt[1] is not None and receipt[1] not in sent and receipt[1] not in warm_sent
    ]
    warm_latencies, warm_problems = [], list(warm_failures)
    for job_id, (started, host_id) in warm_sent.items():
        receipts = by_job.get(job_id, [])
        if len(receipts) != 1 or receipts[0][2] != host_id:
            warm_problems.append(f"job {job_id}: {len(receipts)} deliveries")
        elif receipts[0][4] < started:
            warm_problems.append(f"job {job_id}: received before sent")
        else:
            warm_latencies.append((receipts[0][4] - started) * 1000)
    if warm_problems:
        invalid.append(f"warm-up: {len(warm_problems)} problems, first {warm_problems[:3]}")
    if missing:
        invalid.append(f"{len(missing)} commands never received (e.g. jobs {missing[:3]})")
    if negative:
        invalid.append(f"{len(negative)} received before sent (job, ms): {negative[:3]}")
    if doubled or duplicate_ids:
        invalid.append(
            f"delivered more than once: {len(doubled)} jobs, {duplicate_ids} repeated command ids"
        )
    if redelivered:
        invalid.append(f"{len(redelivered)} commands with delivery_count > 1")
    if wrong_host:
        invalid.append(
            f"{len(wrong_host)} delivered to the wrong host (job, for, got): {wrong_host[:3]}"
        )
    if unexpected:
        invalid.append(
            f"{len(unexpected)} commands for jobs this run did not start "
            f"(job ids {sorted({receipt[1] for receipt in unexpected})[:5]})"
        )
    for label, status in (("before the idle window", parked_at), ("at dispatch start", before)):
        if status.get("in_flight") != agents or status.get("hello_ok") != agents:
            invalid.append(
                f"not all agents parked {label}: hello {status.get('hello_ok')}, "
                f"in flight {status.get('in_flight')} of {agents}"
            )
    if final.get("errors", 0):
        invalid.append(f"{final['errors']} agent request errors: {final.get('error_kinds')}")
    if idle_polls <= 0:
        invalid.append("no poll ended in the idle window: CPU per idle poll unknown")

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    # What dispatching cost the workers beyond their idle load over the same time.
    job_cpu_ms = (busy_cpu - idle_cpu) * window * 1000 / len(sent) if sent else math.nan
    latencies.sort()
    api_ms = sorted(seconds * 1000 for seconds in api_by_job.values())
    ended = delta("polls_204") + delta("polls_cmd") + delta("polls_other")
    result = {
        "agents": agents,
        "database": "postgresql" if database else "sqlite",
        "workers": args.workers,
        "loadgen_procs": args.loadgen_procs,
        "ramp_seconds": ramp,
        "planned": planned,
        "sent": len(sent),
        "received": len(latencies),
        "post_failures": failures,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else math.nan,
        "over_1s": sum(1 for latency in latencies if latency > 1000),
        "api_p50_ms": percentile(api_ms, 50),
        "api_p99_ms": percentile(api_ms, 99),
        "rss_baseline_kib": baseline["worker_kib"],
        "rss_idle_kib": idle["worker_kib"],
        "rss_idle_max_worker_kib": idle["worker_max_kib"],
        "rss_master_kib": idle["master_kib"],
        "rss_after_kib": loaded["worker_kib"],
        "worker_fds": sorted(fds_each.values()),
        "idle_seconds": idle_seconds,
        "idle_polls": idle_polls,
        "idle_worker_cpu": idle_cpu,
        "idle_worker_cpu_each": sorted(per_worker_idle.values()),
        "cpu_ms_per_idle_poll": cpu_ms_per_poll,
        "baseline_worker_cpu": base_cpu,
        "net_cpu_ms_per_idle_poll": net_ms_per_poll,
        # runnable but waiting for a CPU (summed over workers, share of wall time): how much
        # the rest of the machine held the server back
        "idle_worker_runqueue_wait": idle_waiting,
        "dispatch_worker_runqueue_wait": busy_waiting,
        "idle_loadgen_cpu": idle_loadgen_cpu,
        "dispatch_worker_cpu": busy_cpu,
        "dispatch_cpu_ms_per_job": job_cpu_ms,
        "dispatch_worker_cpu_each": sorted(per_worker_busy.values()),
        "dispatch_loadgen_cpu": loadgen_cpu,
        "loadavg_start": load_start,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "listen_overflows": {
            "ramp": {
                key: overflows_parked.get(key, 0) - overflows_before.get(key, 0)
                for key in overflows_before
            },
            "total": {
                key: overflows_after.get(key, 0) - overflows_before.get(key, 0)
                for key in overflows_before
            },
        },
        "window_seconds": window,
        "gc_window": gc_window,
        "window_polls_ended": ended,
        "window_polls_204": delta("polls_204"),
        "window_polls_cmd": delta("polls_cmd"),
        "parked_status": parked_at,
        "final_status": final,
        "errors": final.get("errors", 0),
        "first_errors": errors[:5],
        "invalid": invalid,
        "samples": samples,
        "warmup_jobs": len(warm_sent),
        "warmup_ms": sorted(warm_latencies),
    }
    log(
        f"N={agents}: received {result['received']}/{result['sent']} of {planned} planned, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms, > 1 s {result['over_1s']}, errors {result['errors']}"
    )
    if warm_sent or warm_failures:
        warm = result["warmup_ms"]
        log(
            f"N={agents}: warm-up before the window (not in the numbers): {len(warm)} of "
            f"{len(warm_sent) + len(warm_failures)} delivered"
            + (
                f", first {warm_latencies[0]:.1f} ms, median {percentile(warm, 50):.1f} ms, "
                f"max {warm[-1]:.1f} ms"
                if warm
                else ""
            )
        )
    log(f"N={agents}: {load_line(result)}")
    if args.gc_log:
        log(
            f"N={agents}: server full GCs during dispatch: {gc_window['full_collections']}, "
            f"longest {gc_window['full_max_ms']:.0f} ms, total {gc_window['full_total_ms']:.0f} ms "
            f"of {window:.0f} s; longest pause of any generation {gc_window['max_pause_ms']:.0f} ms"
        )
    for reason in invalid:
        log(f"N={agents}: INVALID: {reason}")
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


def load_line(result: dict) -> str:
    each = " + ".join(f"{cpu:.0%}" for cpu in result["dispatch_worker_cpu_each"])
    overflow = result["listen_overflows"]["total"]
    return (
        f"load: loadavg 1-min {result['loadavg_start']:.2f} at start, "
        f"{result['loadavg_before']:.2f} before dispatch, {result['loadavg_after']:.2f} after; "
        f"load generators ({result['loadgen_procs']} proc) CPU {result['idle_loadgen_cpu']:.0%} "
        f"idle, {result['dispatch_loadgen_cpu']:.0%} during dispatch; server workers CPU "
        f"{result['idle_worker_cpu']:.0%} idle, {result['dispatch_worker_cpu']:.0%} during "
        f"dispatch ({each}; {result['dispatch_cpu_ms_per_job']:.1f} ms CPU per job beyond the "
        f"idle load); workers runnable but waiting for a CPU "
        f"{result['idle_worker_runqueue_wait']:.0%} idle, "
        f"{result['dispatch_worker_runqueue_wait']:.0%} during dispatch; "
        f"listen overflows/drops {overflow.get('ListenOverflows', 0)}/"
        f"{overflow.get('ListenDrops', 0)}; parked per worker (fds) {result['worker_fds']}"
    )


COLUMNS = (
    "N agents",
    "DB, workers",
    "p50",
    "p95",
    "p99",
    "max",
    "> 1 s",
    "received/sent/planned",
    "worker RSS idle (largest worker)",
    "idle worker CPU",
    "CPU per idle poll (net of baseline)",
    "errors",
    "loadavg before / after",
    "workers waiting for a CPU idle / dispatch",
    "API POST p50 / p99",
    "verdict",
)
GC_COLUMN = "server full GCs in window (longest)"


def header(gc_log: bool) -> str:
    names = [*COLUMNS, GC_COLUMN] if gc_log else list(COLUMNS)
    return f"| {' | '.join(names)} |\n|{'---:|' * len(names)}"


def row(result: dict) -> str:
    if "failed" in result:
        return f"| {result['agents']:,} | INVALID: run failed: {result['failed']} |"
    gc = result["gc_window"]
    verdict = "INVALID: " + "; ".join(result["invalid"]) if result["invalid"] else "valid"
    return (
        f"| {result['agents']:,} | {result['database']}, {result['workers']} "
        f"| {result['p50_ms']:.1f} ms | {result['p95_ms']:.1f} ms "
        f"| {result['p99_ms']:.1f} ms | {result['max_ms']:.1f} ms | {result['over_1s']} "
        f"| {result['received']}/{result['sent']}/{result['planned']} "
        f"| {result['rss_idle_kib'] / 1024:.0f} MiB "
        f"({result['rss_idle_max_worker_kib'] / 1024:.0f}) "
        f"| {result['idle_worker_cpu']:.0%} "
        f"| {result['cpu_ms_per_idle_poll']:.2f} ms ({result['net_cpu_ms_per_idle_poll']:.2f}) "
        f"| {result['errors']} "
        f"| {result['loadavg_before']:.1f} / {result['loadavg_after']:.1f} "
        f"| {result['idle_worker_runqueue_wait']:.0%} / "
        f"{result['dispatch_worker_runqueue_wait']:.0%} "
        f"| {result['api_p50_ms']:.1f} / {result['api_p99_ms']:.1f} ms "
        f"| {verdict} |"
        + (f" {gc['full_collections']} ({gc['full_max_ms']:.0f} ms) |" if gc else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument(
        "--pg",
        action="store_true",
        help="PostgreSQL: seed a fresh database rm_bench_<N> at 127.0.0.1:5432 (dropped after)",
    )
    parser.add_argument("--workers", type=int, default=1, help="serve --workers W (W > 1: --pg)")
    parser.add_argument(
        "--loadgen-procs",
        type=int,
        default=os.cpu_count() or 1,
        help="load generator processes sharing the agents (default: one per core)",
    )
    parser.add_argument("--port", type=int, default=18610, help="the server's port")
    parser.add_argument(
        "--hold", type=int, help="RM_POLL_WAIT_SECONDS for the server (default: its own, 25)"
    )
    parser.add_argument("--backlog", type=int, help="experiment: gunicorn --backlog (default 2048)")
    parser.add_argument("--commands", type=int, default=500, help="jobs dispatched per N (M)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between jobs")
    parser.add_argument(
        "--warmup",
        type=int,
        default=40,
        help="jobs before the measured window, to hosts it does not use (0: none)",
    )
    parser.add_argument(
        "--ramp", type=float, help="spread agent starts (s; default max(25, N/200))"
    )
    parser.add_argument(
        "--park-timeout", type=float, help="give up parking after (s; default ramp + 60 + N/20)"
    )
    parser.add_argument(
        "--baseline", type=float, default=5.0, help="worker CPU with no agent, measured (s)"
    )
    parser.add_argument("--settle", type=float, default=10.0, help="idle window for RSS/CPU (s)")
    parser.add_argument("--grace", type=float, default=15.0, help="wait for stragglers (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--gc-log", action="store_true", help="log the server's collector pauses (gclog/)"
    )
    parser.add_argument("--keep", action="store_true", help="keep data dirs and server logs")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy record the workers during dispatch into DIR (collapsed stacks)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if args.workers > 1 and not args.pg:
        parser.error("--workers > 1 needs --pg (serve refuses several workers on SQLite)")
    if args.loadgen_procs < 1:
        parser.error("--loadgen-procs must be at least 1")
    if args.profile is not None and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")

    # Started in the background (nohup ... &), SIGINT arrives ignored: take it back, and let
    # SIGTERM unwind too, so the round's finally blocks stop the server and the load
    # generators and drop the PostgreSQL database.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    soft, hard = raise_nofile()
    # Each load generator process holds N/K sockets; each server worker about N/W (the kernel
    # spreads the connections over the workers' accept loops, not exactly evenly: 25 % slack).
    biggest = max(args.agents)
    per_process = max(biggest / args.loadgen_procs, 1.25 * biggest / args.workers)
    needed = math.ceil(min(per_process, biggest)) + FD_MARGIN
    if hard < needed:
        log(
            f"RLIMIT_NOFILE hard limit is {hard}; N={biggest} needs about {needed} "
            "descriptors in a server worker or a load generator process. Raise the hard limit "
            "(e.g. `ulimit -Hn` as root, or LimitNOFILE= in the unit), or use more "
            "--loadgen-procs / --workers, and rerun."
        )
        return 2
    speed = machine.speed_ms()
    log(
        f"RLIMIT_NOFILE {soft}/{hard}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
        f"{machine.describe(speed)}"
    )

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
    for result in results:
        result["machine_speed_ms"] = round(speed, 3)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"{os.cpu_count()} CPUs, {machine.describe(speed)}\n")
    print(header(args.gc_log))
    for result in results:
        print(row(result))
    for result in results:
        if "failed" not in result:
            print(f"\nN={result['agents']:,}: {load_line(result)}")
    bad = [r for r in results if "failed" in r or r["invalid"]]
    if bad:
        print(f"\nINVALID rounds: {', '.join(str(r['agents']) for r in bad)} (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
