"""`restic-manager serve --workers 2` on PostgreSQL: wake-ups cross worker processes.

A protocol-level agent (raw HTTP, one fresh connection per request) parks its long poll
in one worker while the API request that queues its command, the SSE viewer of its job or
the browser's snapshot-tree request lands in the other. Which worker holds a connection is
read from /proc (the worker process owning the accepted socket), so the test knows it
covered both directions instead of hoping.

Each worker listens on a socket of its own, and connections spread evenly over them.
SQLite refuses several workers, and `serve` refuses a port in use, before gunicorn starts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

from tests.e2e.processes import ROOT, clean_env, wait_until
from tests.e2e.workers_helpers import (
    MultiWorkerServer,
    ParkedPoll,
    PollingAgent,
    cluster_fixture,  # noqa: F401  (the ``cluster`` fixture)
    needs_postgres,
    settle,
)
from tests.factories import SNAP_A

ROUNDS = 12  # per scenario; stops early once both cross-worker directions were seen
MIN_ROUNDS = 4


def directions_seen(pairs) -> set:
    return {(a, b) for a, b in pairs if a != b}


@needs_postgres
def test_commands_reach_an_agent_parked_in_either_worker_within_a_second(cluster):
    server, admin, agent_token, host_id = cluster
    pairs, latencies = [], []
    for round_ in range(ROUNDS):
        poll = ParkedPoll(server, agent_token)
        poll.start()
        poll_worker = server.worker_of(poll.conn)
        time.sleep(0.3)  # parked by now (an earlier look would find the command anyway)
        api = server.connect()
        queued_at = time.monotonic()
        status, job = server.request(
            "POST", f"/api/v1/hosts/{host_id}/jobs", {"kind": "snapshots"}, admin, api
        )
        assert status == 201, job
        api_worker = server.worker_of(api)
        api.close()
        poll.join(10)
        assert poll.answered_at is not None, "the parked poll never answered"
        latency = poll.answered_at - queued_at
        delivered = [c for c in poll.commands() if c.get("job_id")]
        assert poll.status == 200 and delivered, (poll.status, poll.answer)
        assert delivered[0]["job_id"] == job["id"]
        pairs.append((poll_worker, api_worker))
        latencies.append(latency)
        assert latency < 1.0, (
            f"round {round_}: queued in worker {api_worker}, parked in {poll_worker}: "
            f"delivered after {latency:.2f} s"
        )
        # Acknowledge it and finish the job so the next one can be queued.
        acks = [{"command_id": c["command_id"], "result": "accepted"} for c in poll.commands()]
        settle(server, agent_token, acks)
        finish_job(server, agent_token, delivered[0])
        if round_ + 1 >= MIN_ROUNDS and len(directions_seen(pairs)) == 2:
            break
    assert directions_seen(pairs), f"every round stayed in one worker: {pairs}"
    assert max(latencies) < 1.0


def finish_job(server, token, payload):
    """The agent's end of a job: started, then finished (so the next may be queued)."""
    events = [
        {
            "event_id": f"{payload['job_id']}-{kind}",
            "type": kind,
            "job_id": payload["job_id"],
            "attempt_id": payload["attempt_id"],
            "ts": "2026-01-01T00:00:00Z",
            "data": data,
        }
        for kind, data in (
            ("job.started", {}),
            ("job.finished", {"status": "succeeded", "exit_code": 0, "final_seq": 0}),
        )
    ]
    status, answer = server.request("POST", "/api/agent/v1/events", {"events": events}, token)
    assert status == 200 and not answer["rejected"], answer


class SseViewer(threading.Thread):
    """GET /api/v1/jobs/<id>/stream on its own connection; notes when each log line came."""

    def __init__(self, server: MultiWorkerServer, token: str, job_id: int, after: int):
        super().__init__(daemon=True)
        self.server = server
        self.path = f"/api/v1/jobs/{job_id}/stream?after={after}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = server.connect()
        self.lines: dict[str, float] = {}
        self.opened = threading.Event()

    def run(self):
        try:
            self.conn.request("GET", self.path, headers=self.headers)
            response = self.conn.getresponse()
            assert response.status == 200
            self.opened.set()
            event = None
            while True:
                raw = response.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "log":
                    self.lines[json.loads(line[5:])["text"]] = time.monotonic()
                elif line.startswith("data:") and event == "end":
                    return
        except (OSError, http.client.HTTPException):
            return
        finally:
            self.conn.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(2)


@needs_postgres
def test_an_sse_viewer_sees_lines_posted_through_either_worker_at_once(cluster):
    server, admin, agent_token, host_id = cluster
    status, job = server.request(
        "POST", f"/api/v1/hosts/{host_id}/jobs", {"kind": "snapshots"}, admin
    )
    assert status == 201
    poll = ParkedPoll(server, agent_token, wait=0)
    poll.run()
    (command,) = [c for c in poll.commands() if c.get("job_id")]
    attempt_id = command["attempt_id"]
    pairs, seq = [], 1
    for round_ in range(ROUNDS):
        viewer = SseViewer(server, admin, job["id"], after=seq - 1)
        viewer.start()
        viewer_worker = server.worker_of(viewer.conn)
        assert viewer.opened.wait(5)
        time.sleep(0.3)  # the stream has read what there was and waits on the bus
        text = f"line {round_}"
        agent = server.connect()
        posted_at = time.monotonic()
        status, answer = server.request(
            "POST",
            f"/api/agent/v1/jobs/{job['id']}/logs",
            {
                "attempt_id": attempt_id,
                "first_seq": seq,
                "records": [{"ts": "2026-01-01T00:00:00Z", "stream": "stdout", "text": text}],
            },
            agent_token,
            agent,
        )
        assert status == 200, answer
        # Told it is watched even when the viewer sits in the other worker: flush every second.
        assert answer["watched"] is True, answer
        agent_worker = server.worker_of(agent)
        agent.close()
        seq += 1
        wait_until(lambda: text in viewer.lines, 3, f"{text!r} on the SSE stream", 0.01)  # noqa: B023
        latency = viewer.lines[text] - posted_at
        viewer.close()
        pairs.append((viewer_worker, agent_worker))
        assert latency < 1.0, (
            f"posted through worker {agent_worker}, watched in {viewer_worker}: "
            f"shown after {latency:.2f} s"
        )
        if round_ + 1 >= MIN_ROUNDS and len(directions_seen(pairs)) == 2:
            break
    assert directions_seen(pairs), f"every round stayed in one worker: {pairs}"


class TreeAgent(PollingAgent):
    """Answers rpc.ls with one file."""

    def __init__(self, server: MultiWorkerServer, token: str):
        super().__init__(server, token)
        self.answer_workers: list[int] = []

    def handle(self, command: dict) -> None:
        if command["type"] != "rpc.ls":
            return
        payload = command["payload"]
        items = [{"name": "a.txt", "type": "file", "path": payload["path"] + "/a.txt"}]
        conn = self.server.connect()
        status, answer = self.server.request(
            "POST",
            f"/api/agent/v1/rpc/{payload['rpc_id']}",
            {"ok": True, "result": {"items": items}},
            self.token,
            conn,
        )
        assert status == 200, answer
        self.answer_workers.append(self.server.worker_of(conn))
        conn.close()


@needs_postgres
def test_a_snapshot_tree_is_answered_across_workers(cluster):
    server, admin, agent_token, host_id = cluster
    agent = TreeAgent(server, agent_token)
    agent.start()
    pairs = []
    try:
        time.sleep(0.5)
        for round_ in range(ROUNDS):
            browser = server.connect()
            asked_at = time.monotonic()
            path = f"/srv/data/dir{round_}"  # a new directory each time: never cached
            status, answer = server.request(
                "GET",
                f"/api/v1/hosts/{host_id}/snapshots/{SNAP_A[:8]}/tree?path={path}",
                None,
                admin,
                browser,
            )
            took = time.monotonic() - asked_at
            browser_worker = server.worker_of(browser)
            browser.close()
            assert status == 200, answer
            assert answer["items"][0]["path"] == f"{path}/a.txt" and answer["cached"] is False
            # The browser can have the answer before the agent has read its own POST's reply.
            deadline = time.monotonic() + 5
            while len(agent.answer_workers) <= round_ and time.monotonic() < deadline:
                time.sleep(0.01)
            pairs.append((browser_worker, agent.answer_workers[-1]))
            assert took < 2.0, f"round {round_}: the tree took {took:.2f} s"
            if round_ + 1 >= MIN_ROUNDS and len(directions_seen(pairs)) == 2:
                break
    finally:
        agent.stop.set()
        agent.join(5)
    assert directions_seen(pairs), f"every round stayed in one worker: {pairs}"


LISTEN = "0A"


@needs_postgres
def test_each_worker_listens_on_its_own_socket_and_connections_spread_evenly(cluster):
    """`serve --workers N` passes --reuse-port: each worker accepts from a socket of its
    own (SO_REUSEPORT), which the kernel fills evenly, instead of all of them racing for
    the master's one socket (at 20,000 agents one worker held twice another's share)."""
    server = cluster[0]
    owners = server.socket_owners()
    listeners = [owners.get(name) for state, _, name in server.sockets() if state == LISTEN]
    assert sorted(listeners) == sorted(server.workers()), (listeners, server.workers())
    connections = [server.connect() for _ in range(200)]
    try:
        ports = {conn.sock.getsockname()[1] for conn in connections}
        held = wait_until(
            lambda: server.workers_of(ports), 10, "every connection accepted by a worker"
        )
    finally:
        for conn in connections:
            conn.close()
    counts = Counter(held.values())
    assert set(counts) == set(server.workers()), counts
    # By the 4-tuple's hash: 100 each on average, a standard deviation of about 7.
    assert min(counts.values()) >= 60, counts


def serve_two_workers(env: dict, bind: str) -> subprocess.CompletedProcess:
    """`serve --workers 2 --bind BIND`, expected to refuse before gunicorn starts."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--bind", bind],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def test_sqlite_refuses_several_workers_before_starting(tmp_path):
    env = clean_env(
        RM_DATA_DIR=str(tmp_path / "data"),
        RM_DATABASE_URL=f"sqlite:///{tmp_path}/data/rm.db",
    )
    result = serve_two_workers(env, "127.0.0.1:1")
    assert result.returncode != 0
    assert "--workers 2 needs PostgreSQL" in result.stderr
    assert "SQLite has a single writer" in result.stderr
    assert "RM_DATABASE_URL=postgresql://" in result.stderr
    assert "listening" not in result.stdout + result.stderr
    database = tmp_path / "data" / "rm.db"
    if database.exists():  # refused before any migration ran
        with sqlite3.connect(database) as conn:
            assert not conn.execute("SELECT name FROM sqlite_master").fetchall()


def test_serve_refuses_a_port_in_use_before_starting_anything(tmp_path):
    """Where each worker opens its own socket, gunicorn would restart the workers that
    cannot bind for ever: `serve` refuses the address first, in one line, with status 1."""
    env = clean_env(
        RM_DATA_DIR=str(tmp_path / "data"),
        # Never reached: the address is refused before migrations.
        RM_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/nothing",
    )
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        bind = f"127.0.0.1:{other.getsockname()[1]}"
        started = time.monotonic()
        result = serve_two_workers(env, bind)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on {bind}: the address is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout + result.stderr
    assert time.monotonic() - started < 30  # not gunicorn's retries, let alone a restart loop
