"""A download on `serve --workers 2` (PostgreSQL): every chunk reaches the browser, whether
it was posted to the worker streaming the download (handed over directly) or to the other
one (a file in the data directory and a wake-up on the bus); and across two servers that
share the database but not a data directory, through ``rpc_chunks``.

The agent speaks raw HTTP, each chunk on a fresh connection, so its chunks land on both
workers; which worker took each is read from /proc, so the test knows both paths ran, and
the server's log line at the end of each download says how its bytes came.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from tests.conftest import fresh_database_url
from tests.e2e.processes import clean_env
from tests.e2e.workers_helpers import (
    MultiWorkerServer,
    PollingAgent,
    cluster_fixture,  # noqa: F401  (the ``cluster`` fixture)
    needs_postgres,
    seed_host,
)
from tests.factories import SNAP_A

CHUNK = 1024 * 1024  # an older agent's chunk: the server still takes it
ROUNDS = 6


_PATHS = re.compile(
    r"download [0-9a-f]+: (\d+) bytes \((\d+) handed over in this process, (\d+) through "
    r"files, (\d+) through the database\)"
)


def byte_paths(server, downloads: int) -> list[tuple[int, int, int, int]]:
    """``(bytes, direct, files, database)`` of every download the server finished, once it
    has logged ``downloads`` of them: the line is written as the response ends, which may be
    a moment after the browser has read the last byte."""
    deadline = time.monotonic() + 10
    while True:
        paths = [tuple(map(int, match)) for match in _PATHS.findall(server.log())]
        if len(paths) >= downloads or time.monotonic() > deadline:
            return paths
        time.sleep(0.05)


class DumpAgent(PollingAgent):
    """Answers rpc.dump with ``content``, its chunks posted to ``data_server`` (the
    polled server unless given)."""

    def __init__(self, server: MultiWorkerServer, token: str, content: bytes, data_server=None):
        super().__init__(server, token)
        self.data_server = data_server or server
        self.content = content
        self.data_workers: list[int] = []
        self.replies: list[dict] = []

    def post(self, path: str, body: bytes, content_type: str):
        conn = self.data_server.connect()
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
            conn.request("POST", f"/api/agent/v1/rpc/{path}", body=body, headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            worker = self.data_server.worker_of(conn)
        finally:
            conn.close()
        assert response.status == 200, answer
        return answer, worker

    def handle(self, command: dict) -> None:
        if command["type"] == "rpc.dump":
            self.answer(command["payload"]["rpc_id"])

    def answer(self, rpc_id: str) -> None:
        content = self.content
        header = {"ok": True, "result": {"name": "big.bin", "size": len(content)}}
        reply, _ = self.post(rpc_id, json.dumps(header).encode(), "application/json")
        self.replies.append(reply)
        for offset in range(0, len(content), CHUNK):
            chunk = content[offset : offset + CHUNK]
            answer, worker = self.post(
                f"{rpc_id}/data?offset={offset}", chunk, "application/octet-stream"
            )
            assert answer == {"committed": offset + len(chunk)}
            self.data_workers.append(worker)
        end = {"ok": True, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
        self.post(f"{rpc_id}/end", json.dumps(end).encode(), "application/json")


@needs_postgres
def test_a_download_gets_every_chunk_from_either_worker(cluster):
    server, admin, agent_token, host_id = cluster
    content = os.urandom(4 * CHUNK + 12345)
    agent = DumpAgent(server, agent_token, content)
    agent.start()
    same = across = downloads = 0
    try:
        time.sleep(0.5)
        for _ in range(ROUNDS):
            downloads += 1
            browser = server.connect()
            path = f"/api/v1/hosts/{host_id}/snapshots/{SNAP_A[:8]}/download?path=/srv/big.bin"
            browser.request("GET", path, headers={"Authorization": f"Bearer {admin}"})
            response = browser.getresponse()
            browser_worker = server.worker_of(browser)
            first = len(agent.data_workers)
            body = response.read()
            browser.close()
            assert response.status == 200, body[:300]
            assert len(body) == len(content) and body == content
            workers = agent.data_workers[first:]
            same += sum(worker == browser_worker for worker in workers)
            across += sum(worker != browser_worker for worker in workers)
            if same and across:
                break
    finally:
        agent.stop.set()
        agent.join(5)
    assert agent.replies[0]["max_chunk_bytes"] >= CHUNK
    assert same and across, f"chunks stayed on one side of the browser: {same=} {across=}"
    # One machine: the other worker's chunks went through files, none through the database;
    # every download's files were removed when it ended.
    paths = byte_paths(server, downloads)
    assert len(paths) == downloads and all(size == len(content) for size, *_ in paths), paths
    assert sum(files for _, _, files, _ in paths) > 0, paths
    assert sum(database for *_, database in paths) == 0, paths
    spool = Path(server.env["RM_DATA_DIR"]) / "downloads"
    assert not spool.exists() or list(spool.iterdir()) == []


class OneWorkerServer(MultiWorkerServer):
    worker_count = 1


@needs_postgres
def test_across_servers_the_chunks_go_through_the_database(tmp_path, migrated_template):
    """Two servers on one database, each with its own data directory: a chunk posted to
    the server that does not stream the download cannot be left as a file for it."""
    database_url = fresh_database_url(migrated_template, tmp_path)
    key = tmp_path / "shared-secret.key"
    servers = []
    try:
        for name in ("one", "two"):
            env = clean_env(
                RM_DATA_DIR=str(tmp_path / name),
                RM_DATABASE_URL=database_url,
                RM_SECRET_KEY_FILE=str(key),
            )
            (tmp_path / name).mkdir()
            server = OneWorkerServer(tmp_path / name, env)
            server.start()
            servers.append(server)
        browser_side, agent_side = servers
        admin = browser_side.admin_token("correct horse battery staple")
        host_id, agent_token = seed_host(
            {
                "RM_DATA_DIR": tmp_path / "one",
                "RM_SECRET_KEY_FILE": key,
                "SQLALCHEMY_DATABASE_URI": database_url,
            },
            "across-1",
        )
        content = os.urandom(3 * CHUNK + 777)
        agent = DumpAgent(agent_side, agent_token, content)
        agent.start()
        try:
            time.sleep(0.5)
            browser = browser_side.connect()
            path = f"/api/v1/hosts/{host_id}/snapshots/{SNAP_A[:8]}/download?path=/srv/big.bin"
            browser.request("GET", path, headers={"Authorization": f"Bearer {admin}"})
            response = browser.getresponse()
            body = response.read()
            browser.close()
        finally:
            agent.stop.set()
            agent.join(5)
        assert response.status == 200, body[:300]
        assert body == content
        assert byte_paths(browser_side, 1) == [(len(content), 0, 0, len(content))]
    finally:
        for server in servers:
            server.kill()
