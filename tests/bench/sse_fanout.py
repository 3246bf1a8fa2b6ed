"""SSE fan-out benchmark: many browsers following one job's live log on a real server.

    python tests/bench/sse_fanout.py                                  # 200 viewers, 30 s
    python tests/bench/sse_fanout.py --viewers 200 --rate 10 --lines-per-batch 50

Not a test (pytest does not collect it; no timing assertions). Steps:

1. ``seed.py`` makes a fresh data dir (SQLite) with one enrolled host, an administrator and a
   personal access token; the real server starts (``python -m app.cli serve``: gunicorn, one
   gevent worker) through ``tests/e2e/processes.py``.
2. An agent (``log_ingest.AgentJob``) says hello, gets a probe job started through the API,
   takes its ``job.run`` from a poll and reports ``job.started``.
3. V viewers open ``GET /api/v1/jobs/{id}/stream`` with the PAT, all in ONE gevent process
   (this file run with ``--viewer-process``), and parse the event stream line by line.
4. Once every viewer has its first ``status`` event, the writer (the agent) sends a batch of
   ``--lines-per-batch`` records ``--rate`` times a second for ``--seconds``, plus a
   ``job.progress`` event every second, as an agent does while a job is watched. Every line's
   text starts with ``sent=<time.monotonic()>`` taken just before its batch was POSTed.
5. A viewer takes ``time.monotonic()`` when it has parsed a ``log`` event; latency = that
   minus the line's send time (CLOCK_MONOTONIC is system-wide on Linux, so the processes'
   clocks compare). Then ``job.finished``: every stream must end with ``end``.

Reports p50/p99/max delivery latency over every (viewer, line) pair, lines delivered vs
expected (each viewer must see every line once, in order), the writer's POST round trips
(ingest while the fan-out runs), whether the agent was told ``watched``, and the server
worker's CPU. Markdown on stdout, progress on stderr, ``--json FILE`` for the raw numbers.
"""

from __future__ import annotations

import sys

if "--viewer-process" in sys.argv:  # the viewers' process: gevent patches before any import
    from gevent import monkey

    monkey.patch_all()

import argparse
import http.client
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parents[1]
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    import math

    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- the viewers' process ------------------------------------------------------------------


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


SENT = b'"text":"sent='


def viewer(port: int, token: str, job_id: int, state: dict) -> None:
    """Follow one stream to its `end`; append each log line's latency (s) to state.

    The arrival time is taken when a read from the socket returns, before that data is
    parsed, so the viewers' own parsing (200 of them share one process) counts as little
    as possible; the send time is cut out of the raw bytes without a JSON parser.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request(
        "GET",
        f"/api/v1/jobs/{job_id}/stream",
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    )
    response = conn.getresponse()
    if response.status != 200:
        state["errors"].append(f"HTTP {response.status}")
        return
    latencies = state["latencies"]
    buffer, last_seq, out_of_order, connected, ended = b"", 0, 0, False, False
    while not ended:
        data = response.read1(65536)
        received = time.monotonic()
        if not data:
            break
        buffer += data
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            if block.startswith(b"id: "):
                seq = int(block[4 : block.index(b"\n")])
                start = block.index(SENT) + len(SENT)
                latencies.append(received - float(block[start : block.index(b" ", start)]))
                if seq != last_seq + 1:
                    out_of_order += 1
                last_seq = seq
            elif block.startswith(b"event: status") and not connected:
                connected = True
                state["connected"] += 1
                if state["connected"] == state["viewers"]:
                    emit({"ev": "ready", "t": time.monotonic()})
            elif block.startswith(b"event: end"):
                ended = True
                break
    conn.close()
    state["last_seqs"].append(last_seq)
    state["out_of_order"] += out_of_order
    state["ended"] += ended


def viewer_process(args) -> int:
    import gevent

    state = {
        "viewers": args.viewers,
        "connected": 0,
        "ended": 0,
        "out_of_order": 0,
        "latencies": [],
        "last_seqs": [],
        "errors": [],
    }
    greenlets = []
    for _ in range(args.viewers):
        greenlets.append(gevent.spawn(viewer, args.port, args.token, args.job_id, state))
        gevent.sleep(0.005)  # open the streams over a second, not in one burst
    gevent.joinall(greenlets)
    for greenlet in greenlets:
        if greenlet.exception is not None:
            state["errors"].append(repr(greenlet.exception))
    latencies = sorted(state.pop("latencies"))
    emit(
        {
            "ev": "done",
            "samples": len(latencies),
            "p50_ms": percentile(latencies, 50) * 1000,
            "p90_ms": percentile(latencies, 90) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
            **state,
        }
    )
    return 0


# --- the driver ----------------------------------------------------------------------------


class Viewers:
    def __init__(self, port: int, token: str, job_id: int, count: int):
        self.process = subprocess.Popen(
            [
                *(sys.executable, __file__, "--viewer-process"),
                *("--port", str(port), "--token", token, "--job-id", str(job_id)),
                *("--viewers", str(count)),
            ],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.result: dict | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            record = json.loads(line)
            if record["ev"] == "ready":
                self.ready.set()
            elif record["ev"] == "done":
                self.result = record

    def finish(self, timeout: float) -> dict:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.reader.join(5)
        if self.result is None:
            raise RuntimeError("the viewers' process ended without a result")
        return self.result


def run(args) -> dict:
    from log_ingest import AgentJob, start_server, worker_cpu
    from longpoll import cpu_seconds, log

    workdir = Path(tempfile.mkdtemp(prefix="rm-sse-fanout-"))
    server, seeded = start_server(workdir, hosts=1, max_batch=500)
    viewers = None
    try:
        log(f"server up at {server.url}")
        agent = AgentJob(server.port, seeded["hosts"][0], seeded["pat"])
        viewers = Viewers(server.port, seeded["pat"], agent.job_id, args.viewers)
        if not viewers.ready.wait(60):
            raise RuntimeError("not every viewer connected within 60 s")
        log(f"{args.viewers} viewers connected to job {agent.job_id}; writing for {args.seconds} s")
        time.sleep(1)
        interval = 1 / args.rate
        batches = int(args.seconds * args.rate)
        posts, watched, seq = [], [], 1
        viewers_cpu_before = cpu_seconds(viewers.process.pid)
        cpu_before, window_started = worker_cpu(server), time.monotonic()
        next_progress = window_started
        for index in range(batches):
            target = window_started + index * interval
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            sent = time.monotonic()
            texts = [f"sent={sent:.6f} line {seq + n}" for n in range(args.lines_per_batch)]
            answer, took = agent.send_logs(agent.log_body(seq, texts))
            seq = answer["committed_seq"] + 1
            posts.append(took * 1000)
            watched.append(answer.get("watched"))
            if time.monotonic() >= next_progress:
                percent = 100 * (index + 1) / batches
                agent.event("job.progress", {"percent": percent, "files_done": index})
                next_progress += 1
        window = time.monotonic() - window_started
        cpu = (worker_cpu(server) - cpu_before) / window
        viewers_cpu = (cpu_seconds(viewers.process.pid) - viewers_cpu_before) / window
        agent.event(
            "job.finished",
            {"status": "succeeded", "exit_code": 0, "stats": {}, "final_seq": seq - 1},
        )
        result = viewers.finish(timeout=120)
        agent.close()
    finally:
        if viewers is not None and viewers.process.poll() is None:
            viewers.process.kill()
        server.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    posts.sort()
    lines = seq - 1
    result.update(
        {
            "viewers": args.viewers,
            "rate": args.rate,
            "lines_per_batch": args.lines_per_batch,
            "lines": lines,
            "expected_samples": lines * args.viewers,
            "post_p50_ms": percentile(posts, 50),
            "post_p99_ms": percentile(posts, 99),
            "watched_always": all(watched),
            "worker_cpu": cpu,
            "viewers_cpu": viewers_cpu,
            "complete_viewers": sum(1 for s in result["last_seqs"] if s == lines),
        }
    )
    result.pop("last_seqs")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the writer writes")
    parser.add_argument("--rate", type=float, default=1.0, help="log batches per second")
    parser.add_argument("--lines-per-batch", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the data dir and server log")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    # The viewers' process (started by the driver):
    parser.add_argument("--viewer-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--job-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.viewer_process:
        return viewer_process(args)

    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(
        "| viewers | writer | lines | delivered (viewers complete) | p50 | p90 | p99 | max "
        "| writer POST p50 / p99 | watched | server worker CPU | viewers' process CPU |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    print(
        f"| {result['viewers']} | {result['rate']:g}/s x {result['lines_per_batch']} lines "
        f"| {result['lines']:,} | {result['samples']:,}/{result['expected_samples']:,} "
        f"({result['complete_viewers']}/{result['viewers']}) "
        f"| {result['p50_ms']:.1f} ms | {result['p90_ms']:.1f} ms | {result['p99_ms']:.1f} ms "
        f"| {result['max_ms']:.1f} ms "
        f"| {result['post_p50_ms']:.1f} / {result['post_p99_ms']:.1f} ms "
        f"| {'yes' if result['watched_always'] else 'no'} | {result['worker_cpu']:.0%} "
        f"| {result['viewers_cpu']:.0%} |"
    )
    if result["errors"] or result["out_of_order"] or result["ended"] != result["viewers"]:
        print(
            f"\nproblems: errors {result['errors'][:5]}, out of order {result['out_of_order']}, "
            f"streams ended with `end`: {result['ended']}/{result['viewers']}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
