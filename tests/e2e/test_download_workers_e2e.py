"""A download on `serve --workers 2` (PostgreSQL): every chunk reaches the browser, whether
it was posted to the worker streaming the download (handed over directly) or to the other
one (through ``rpc_chunks`` and a wake-up on the bus).

The agent speaks raw HTTP, each chunk on a fresh connection, so its chunks land on both
workers; which worker took each is read from /proc, so the test knows both paths ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from tests.e2e.workers_helpers import (
    MultiWorkerServer,
    PollingAgent,
    cluster_fixture,  # noqa: F401  (the ``cluster`` fixture)
    needs_postgres,
)
from tests.factories import SNAP_A

CHUNK = 1024 * 1024  # an older agent's chunk: the server still takes it
ROUNDS = 6


class DumpAgent(PollingAgent):
    """Answers rpc.dump with ``content``."""

    def __init__(self, server: MultiWorkerServer, token: str, content: bytes):
        super().__init__(server, token)
        self.content = content
        self.data_workers: list[int] = []
        self.replies: list[dict] = []

    def post(self, path: str, body: bytes, content_type: str):
        conn = self.server.connect()
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
            conn.request("POST", f"/api/agent/v1/rpc/{path}", body=body, headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            worker = self.server.worker_of(conn)
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
    same = across = 0
    try:
        time.sleep(0.5)
        for _ in range(ROUNDS):
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
