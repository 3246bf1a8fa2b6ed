"""CPU cost of one idle long poll in the real server (not a test; see docs/performance.md).

    python tests/bench/poll_cost.py --hosts 2000 --seconds 20

Seeds a fresh data dir (``seed.py``: N enrolled hosts with agent tokens; their repositories
"ready", so no poll has bring-up work to do), starts the real server (``python -m app.cli
serve``, one gevent worker, SQLite; ``--pg``: a fresh PostgreSQL database), then a client
process drives idle polls over keep-alive connections for ``--seconds``, in two modes:

- ``wait=0``: the poll does all its work (authentication, heartbeat, reconcile, lease) and
  answers 204 at once: the cost of the request itself;
- ``wait=W`` (``--park``, default 1 s): the poll also parks on the bus for W seconds, as a real
  idle agent's 25 s poll does, so registering and timing out a waiter is counted too.

The worker's CPU time (utime + stime from /proc) over the window divided by the polls
answered in it is the CPU per idle poll. Sanity: every poll must answer 204 (anything else
is counted and makes the run INVALID), the client must have answered polls in the window,
and the window's CPU must be positive.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from seed import seed  # noqa: E402

CLIENT = r"""
from gevent import monkey
monkey.patch_all()
import gc, http.client, json, sys, time, gevent
gc.disable()
port, wait, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
tokens = json.loads(sys.stdin.read())
counts = {"ok": 0, "other": 0, "errors": 0}
body = json.dumps({"acks": [], "running": [], "boot_id": "bench-boot", "wait": wait}).encode()
stop_at = None
def agent(token):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    while stop_at is None or time.monotonic() < stop_at:
        try:
            conn.request("POST", "/api/agent/v1/poll", body=body, headers=headers)
            response = conn.getresponse(); response.read()
        except Exception:
            counts["errors"] += 1; conn.close(); gevent.sleep(0.1); continue
        if stop_at is not None:
            counts["ok" if response.status == 204 else "other"] += 1
            if response.status != 204 and counts["other"] < 3:
                sys.stderr.write(f"poll answered {response.status}\n")
# warm-up: every agent's first poll (heartbeat writes, caches) is not counted
greenlets = [gevent.spawn(agent, token) for token in tokens]
gevent.sleep(max(2.0, wait * 2 + 1))
print(json.dumps({"ev": "start", "t": time.monotonic()}), flush=True)
counts.update(ok=0, other=0, errors=0)
stop_at = time.monotonic() + seconds
gevent.sleep(seconds)
print(json.dumps({"ev": "end", "t": time.monotonic(), **counts}), flush=True)
gevent.killall(greenlets, timeout=wait + 5)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(master: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{master}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(pid) for pid in children)
    return pids


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(port: int, master: int, tokens: list[str], wait: float, seconds: float) -> dict:
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(wait), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    client.stdin.write(json.dumps(tokens))
    client.stdin.close()
    workers = worker_pids(master)
    start_line = json.loads(client.stdout.readline())
    cpu_start = sum(cpu_seconds(pid) for pid in workers)
    end_line = json.loads(client.stdout.readline())
    cpu_end = sum(cpu_seconds(pid) for pid in workers)
    client.wait(timeout=wait + 30)
    polls = end_line["ok"]
    cpu = cpu_end - cpu_start
    problems = []
    if end_line["other"] or end_line["errors"]:
        problems.append(f"{end_line['other']} non-204 answers, {end_line['errors']} errors")
    if polls <= 0:
        problems.append("no poll answered in the window")
    if cpu <= 0:
        problems.append("worker CPU did not advance")
    return {
        "wait": wait,
        "agents": len(tokens),
        "window_s": round(end_line["t"] - start_line["t"], 2),
        "polls": polls,
        "polls_per_s": round(polls / (end_line["t"] - start_line["t"]), 1),
        "worker_cpu_s": round(cpu, 2),
        "cpu_ms_per_poll": round(cpu * 1000 / polls, 3) if polls else None,
        "worker_cpu_share": round(cpu / (end_line["t"] - start_line["t"]), 2),
        "valid": not problems,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000, help="seeded hosts (the agents)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per mode")
    parser.add_argument("--park", type=float, default=1.0, help="hold of the parked mode (s)")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="agents polling at once, wait=0 mode"
    )
    parser.add_argument(
        "--pg", action="store_true", help="PostgreSQL: a fresh database rm_bench_pollcost"
    )
    args = parser.parse_args()
    speed = machine.speed_ms()  # before the server starts
    database_url = None
    if args.pg:
        database_url = "postgresql+psycopg://postgres@127.0.0.1:5432/rm_bench_pollcost"
        pg = ["-h", "127.0.0.1", "-U", "postgres", "rm_bench_pollcost"]
        subprocess.run(["dropdb", "--if-exists", *pg], check=True)
        subprocess.run(["createdb", *pg], check=True)
    try:
        return run(args, database_url, speed)
    finally:
        if args.pg:
            subprocess.run(["dropdb", "--if-exists", *pg], check=False)


def run(args, database_url, speed: float) -> int:
    with tempfile.TemporaryDirectory(prefix="rm-pollcost-") as scratch:
        data_dir = Path(scratch) / "data"
        seeded = seed(data_dir, args.hosts, database_url)  # repositories "ready"
        port = free_port()
        env = dict(os.environ, RM_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
        if database_url:
            env["RM_DATABASE_URL"] = database_url
        log = (data_dir / "server.log").open("w")  # closed with the scratch dir
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            import urllib.request

            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print(f"server did not start; see {data_dir / 'server.log'}")
                        return 2
                    time.sleep(0.3)
            tokens = [host["token"] for host in seeded["hosts"]]
            results = [
                measure(port, server.pid, tokens[: args.concurrency], 0.0, args.seconds),
                measure(port, server.pid, tokens, args.park, args.seconds),
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"database: {'PostgreSQL' if database_url else 'SQLite'}; load average: "
        f"{os.getloadavg()}; {machine.describe(speed)}"
    )
    print("| mode | agents | polls/s | worker CPU | CPU per idle poll | valid |")
    print("|---|---:|---:|---:|---:|---|")
    for row in results:
        mode = "wait=0" if row["wait"] == 0 else f"parked {row['wait']:g} s"
        valid = "yes" if row["valid"] else "INVALID: " + "; ".join(row["problems"])
        print(
            f"| {mode} | {row['agents']} | {row['polls_per_s']} | "
            f"{row['worker_cpu_share']:.0%} | {row['cpu_ms_per_poll']} ms | {valid} |"
        )
    print(json.dumps(results))
    return 0 if all(row["valid"] for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
