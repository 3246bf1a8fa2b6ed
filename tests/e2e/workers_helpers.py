"""Shared by the `serve --workers 2` tests (PostgreSQL): the two-worker server, which worker
holds a connection (read from /proc), a parked long poll, a protocol-level agent and the
``cluster`` fixture (a test module imports ``cluster_fixture`` and asks for ``cluster``)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from app import create_app
from app.extensions import db
from tests.conftest import POSTGRES_URL, fresh_database_url
from tests.e2e.processes import Server, clean_env, wait_until
from tests.factories import add_snapshots, make_enrolled_host

needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="needs RM_TEST_DATABASE_URL")


class MultiWorkerServer(Server):
    worker_count = 2

    def start(self, timeout: float = 30) -> None:
        argv = [sys.executable, "-m", "app.cli", "serve", "--workers", str(self.worker_count)]
        self._spawn([*argv, "--bind", f"127.0.0.1:{self.port}"])

        def ready():
            assert self.process.poll() is None, self.tail()
            return (
                len(self.workers()) == self.worker_count
                and self.request("GET", "/readyz")[0] == 200
            )

        wait_until(ready, timeout, "both workers to be ready")

    def workers(self) -> list[int]:
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [int(child) for child in children]

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        conn.connect()
        return conn

    def request(self, method, path, body=None, token=None, conn=None):
        """``(status, json or None)`` on a fresh connection (or ``conn``)."""
        own = conn is None
        conn = conn or self.connect()
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            if own:
                conn.close()
        return response.status, (json.loads(raw) if raw and raw[:1] in b"[{" else None)

    def sockets(self) -> list[tuple[str, int, str]]:
        """``(state, remote port, socket inode name)`` of every socket on the server's port
        (state "0A" is LISTEN)."""
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                    remote = int(fields[2].rsplit(":", 1)[1], 16)
                    found.append((fields[3], remote, f"socket:[{fields[9]}]"))
        return found

    def socket_owners(self) -> dict[str, int]:
        """Socket inode name -> the worker holding it (the master where it holds it)."""
        owners = {}
        for pid in [self.process.pid, *self.workers()]:  # a worker's entry wins
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        owners[os.readlink(f"/proc/{pid}/fd/{fd}")] = pid
            except OSError:
                continue
        return owners

    def workers_of(self, client_ports: set[int]) -> dict[int, int] | None:
        """Client port -> the worker that accepted it; None until every one is accepted."""
        owners = self.socket_owners()
        workers = set(self.workers())
        held = {
            remote: owners.get(name)
            for _, remote, name in self.sockets()
            if remote in client_ports and owners.get(name) in workers
        }
        return held if len(held) == len(client_ports) else None

    def worker_of(self, conn: http.client.HTTPConnection, timeout: float = 3.0) -> int:
        """The worker process that accepted ``conn``'s connection."""
        port = conn.sock.getsockname()[1]
        held = wait_until(
            lambda: self.workers_of({port}), timeout, "the worker holding the connection", 0.01
        )
        return held[port]


class ParkedPoll(threading.Thread):
    """One long poll on its own connection; records when its answer arrived."""

    def __init__(self, server: MultiWorkerServer, token: str, acks=(), wait: float = 5):
        super().__init__(daemon=True)
        self.server, self.token = server, token
        self.body = {"acks": list(acks), "wait": wait}
        self.conn = server.connect()
        self.answered_at = None
        self.status = None
        self.answer = None

    def run(self):
        try:
            self.status, self.answer = self.server.request(
                "POST", "/api/agent/v1/poll", self.body, self.token, self.conn
            )
            self.answered_at = time.monotonic()
        finally:
            self.conn.close()

    def commands(self) -> list[dict]:
        return (self.answer or {}).get("commands", [])


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(tmp_path_factory, migrated_template):
    """A two-worker server on the test database, an enrolled host with two snapshots, an
    admin token and the host's agent token (shared by this module's tests: starting it
    takes a while)."""
    if not POSTGRES_URL:
        pytest.skip("needs RM_TEST_DATABASE_URL")
    tmp_path = tmp_path_factory.mktemp("multiworker")
    data_dir = tmp_path / "server-data"
    database_url = fresh_database_url(migrated_template, tmp_path)
    server = MultiWorkerServer(
        tmp_path, clean_env(RM_DATA_DIR=str(data_dir), RM_DATABASE_URL=database_url)
    )
    try:
        server.start()
        admin = server.admin_token("correct horse battery staple")
        host_id, agent_token = seed_host(
            {"RM_DATA_DIR": data_dir, "SQLALCHEMY_DATABASE_URI": database_url}, "multi-1"
        )
        settle(server, agent_token)
        yield server, admin, agent_token, host_id
    finally:
        server.kill()


def seed_host(config: dict, hostname: str) -> tuple[int, str]:
    """An enrolled host with two snapshots, written through an app of its own on the
    servers' database: ``(host id, agent token)``."""
    seeder = create_app(config)
    with seeder.app_context():
        host, agent_token = make_enrolled_host(hostname)
        add_snapshots(host)
        db.session.commit()
        host_id = host.id
        db.session.remove()
        db.engine.dispose()
    return host_id, agent_token


def settle(server, token, acks=()):
    """Poll without waiting until nothing is pending (the first poll's reconcile, acks)."""
    acks = list(acks)
    for _ in range(10):
        status, answer = server.request(
            "POST", "/api/agent/v1/poll", {"acks": acks, "wait": 0}, token
        )
        if status == 204:
            return
        acks = [{"command_id": c["command_id"], "result": "accepted"} for c in answer["commands"]]
    raise AssertionError("the agent's queue never emptied")


class PollingAgent(threading.Thread):
    """A protocol-level agent: polls (a fresh connection each time), acknowledges what it
    got and hands each command to :meth:`handle`, until ``stop`` is set."""

    def __init__(self, server: MultiWorkerServer, token: str):
        super().__init__(daemon=True)
        self.server, self.token = server, token
        self.stop = threading.Event()

    def run(self):
        acks = []
        while not self.stop.is_set():
            poll = ParkedPoll(self.server, self.token, acks, wait=2)
            try:
                poll.run()
            except (OSError, http.client.HTTPException):
                return
            acks = [{"command_id": c["command_id"], "result": "accepted"} for c in poll.commands()]
            for command in poll.commands():
                self.handle(command)

    def handle(self, command: dict) -> None:
        raise NotImplementedError
