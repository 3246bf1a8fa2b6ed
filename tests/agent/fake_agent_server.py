"""A small, real HTTP server that speaks the agent side of docs/protocol.md.

It is deliberately simple (one host, commands delivered once unless redelivered) and
records everything the agent sends, so tests can assert on the wire traffic.
"""

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

AGENT_TOKEN = "rma_fake-agent-token-0123456789"
SETTINGS = {
    "poll_wait_seconds": 1,
    "offline_after_seconds": 90,
    "log_flush_seconds": 0.2,
    "log_flush_watched_seconds": 0.2,
    "max_log_batch_records": 500,
    "command_lease_seconds": 60,
}
HOST_DELETED = {
    "error": "host_deleted",
    "message": "This host (web-1) was deleted on the server at 2026-12-03 21:40 UTC; the agent "
    "stops. Re-enroll it from the Add host page to back it up again.",
}
_LOGS = re.compile(r"^/api/agent/v1/jobs/(\d+)/logs$")
_RPC = re.compile(r"^/api/agent/v1/rpc/([0-9a-fA-F]{32})(?:/(data|end))?$")


class FakeServer:
    def __init__(self):
        self.condition = threading.Condition()
        self.settings = dict(SETTINGS)
        self.down = False  # answer every request with a proxy's HTML 502 page
        self.down_endpoints: set = set()  # … or only these ("poll", "events", …)
        self.enroll_answer: Tuple[int, Dict[str, Any]] = (
            201,
            {"host_id": 7, "agent_token": AGENT_TOKEN, "settings": self.settings},
        )
        self.hello_answer: Optional[Tuple[int, Dict[str, Any]]] = None
        self.deleted = False  # every authenticated call answers 410 host_deleted (and parked polls)
        self.queued: List[Dict[str, Any]] = []
        self.reconcile: List[Dict[str, Any]] = []
        self.acks: List[Dict[str, Any]] = []
        self.polls: List[Dict[str, Any]] = []
        self.hellos: List[Dict[str, Any]] = []
        self.enrolls: List[Dict[str, Any]] = []
        self.events: Dict[str, Dict[str, Any]] = {}
        self.event_order: List[str] = []
        self.logs: Dict[int, List[Dict[str, Any]]] = {}
        self.log_requests: List[Dict[str, Any]] = []
        self.stale_jobs: set = set()
        self.cancelling_jobs: set = set()
        self.watched_jobs: set = set()  # answer "watched": true for these jobs' records
        self.truncate_at: Dict[int, int] = {}
        self.raw_bodies: List[bytes] = []
        self.timeline: List[str] = []  # the path of every request, in arrival order
        self.committed_when_received: Dict[str, int] = {}  # event_id → job's committed seq
        self.runs: Dict[str, Dict[str, Any]] = {}  # run_id → {"body", "job_id", "attempt_id"}
        self.run_requests: List[Dict[str, Any]] = []
        self.next_run_job_id = 1000
        self.rpc_answers: Dict[str, List[Dict[str, Any]]] = {}  # every answer posted
        self.rpc_data: Dict[str, bytearray] = {}  # bytes committed per call
        self.rpc_chunks: Dict[str, List[Tuple[int, int]]] = {}  # (offset, length) received
        self.rpc_ends: Dict[str, List[Dict[str, Any]]] = {}
        self.rpc_close_after: Dict[str, int] = {}  # answer 410 once this many bytes are in
        self.rpc_closed: set = set()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def delete_host(self) -> None:
        """From now on every call (a parked poll too) answers 410 host_deleted."""
        with self.condition:
            self.deleted = True
            self.condition.notify_all()

    def start(self) -> "FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def queue(self, command: Dict[str, Any]) -> None:
        with self.condition:
            self.queued.append(command)
            self.condition.notify_all()

    def committed(self, job_id: int) -> int:
        with self.condition:
            return len(self.logs.get(job_id, []))

    def events_of(self, job_id: Optional[int] = None, event_type: Optional[str] = None):
        with self.condition:
            found = [self.events[event_id] for event_id in self.event_order]
        return [
            event
            for event in found
            if (job_id is None or event["job_id"] == job_id)
            and (event_type is None or event["type"] == event_type)
        ]

    # -- endpoints ---------------------------------------------------------------------

    def rpc_answer(self, rpc_id: str) -> Optional[Dict[str, Any]]:
        with self.condition:
            answers = self.rpc_answers.get(rpc_id) or []
            return answers[0] if answers else None

    def rpc_end(self, rpc_id: str) -> Optional[Dict[str, Any]]:
        with self.condition:
            ends = self.rpc_ends.get(rpc_id) or []
            return ends[0] if ends else None

    def handle(self, path: str, headers, body: Any) -> Tuple[int, Any]:
        if path == "/api/agent/v1/enroll":
            with self.condition:
                self.enrolls.append(body)
            return self.enroll_answer
        if headers.get("Authorization") != f"Bearer {AGENT_TOKEN}":
            return 401, {"error": "unauthenticated", "message": "unknown agent token"}
        if self.deleted:
            return 410, HOST_DELETED
        if path == "/api/agent/v1/hello":
            with self.condition:
                self.hellos.append(body)
            return self.hello_answer or (
                200,
                {"host_id": 7, "settings": self.settings, "reconcile": []},
            )
        if path == "/api/agent/v1/poll":
            return self._poll(body)
        if path == "/api/agent/v1/events":
            return self._events(body)
        if path == "/api/agent/v1/runs":
            return self._runs(body)
        match = _LOGS.match(path)
        if match:
            return self._logs(int(match.group(1)), body)
        address = urlsplit(path)
        match = _RPC.match(address.path)
        if match:
            return self._rpc(match.group(1), match.group(2), address.query, headers, body)
        return 404, {"error": "not_found", "message": path}

    def _poll(self, body):
        deadline = time.monotonic() + self.settings["poll_wait_seconds"]
        with self.condition:
            self.polls.append(body)
            self.acks.extend(body.get("acks") or [])
            while not (self.queued or self.reconcile):
                if self.deleted:
                    return 410, HOST_DELETED
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 204, None
                self.condition.wait(remaining)
            commands, self.queued = self.queued, []
            reconcile, self.reconcile = self.reconcile, []
        return 200, {"commands": commands, "reconcile": reconcile, "settings": self.settings}

    def _events(self, body):
        acked, rejected = [], []
        with self.condition:
            for event in body["events"]:
                if event.get("job_id") in self.stale_jobs:
                    rejected.append({"event_id": event["event_id"], "error": "stale_attempt"})
                    continue
                if event["event_id"] not in self.events:
                    self.events[event["event_id"]] = event
                    self.committed_when_received[event["event_id"]] = len(
                        self.logs.get(event.get("job_id"), [])
                    )
                    self.event_order.append(event["event_id"])
                acked.append(event["event_id"])
            batch_jobs = {event.get("job_id") for event in body["events"]}
            watched = sorted(job_id for job_id in self.watched_jobs if job_id in batch_jobs)
        return 200, {"acked": acked, "rejected": rejected, "watched": watched}

    def _runs(self, body):
        """Idempotent by run_id, like the real server."""
        with self.condition:
            self.run_requests.append(body)
            if not isinstance(body.get("run_id"), str) or body.get("kind") != "backup":
                return 422, {"error": "validation_failed", "message": "bad run"}
            known = self.runs.get(body["run_id"])
            if known is not None:
                return 200, {"job_id": known["job_id"], "attempt_id": known["attempt_id"]}
            job_id = self.next_run_job_id
            self.next_run_job_id += 1
            self.runs[body["run_id"]] = {
                "body": body,
                "job_id": job_id,
                "attempt_id": f"run-attempt-{job_id}",
            }
            return 201, {"job_id": job_id, "attempt_id": f"run-attempt-{job_id}"}

    def _rpc(self, rpc_id, part, query, headers, body):
        """The three rpc endpoints (docs/protocol.md, "rpc.* commands")."""
        with self.condition:
            if part is None:
                answers = self.rpc_answers.setdefault(rpc_id, [])
                answers.append(body)
                if len(answers) > 1:
                    return 409, {"error": "rpc_answered", "message": "already answered"}
                return 200, {"ok": True}
            if part == "end":
                self.rpc_ends.setdefault(rpc_id, []).append(body)
                return 200, {"ok": True}
            if headers.get("Content-Type") != "application/octet-stream":
                return 415, {"error": "unsupported_media_type", "message": "octet-stream only"}
            offset = int(parse_qs(query)["offset"][0])
            self.rpc_chunks.setdefault(rpc_id, []).append((offset, len(body)))
            stored = self.rpc_data.setdefault(rpc_id, bytearray())
            if rpc_id in self.rpc_closed:
                return 410, {"error": "rpc_closed", "message": "nobody waits any more"}
            if offset > len(stored):
                return 416, {"error": "rpc_gap", "committed": len(stored), "message": "gap"}
            stored += body[len(stored) - offset :]
            close_after = self.rpc_close_after.get(rpc_id)
            if close_after is not None and len(stored) >= close_after:
                self.rpc_closed.add(rpc_id)
            return 200, {"committed": len(stored)}

    def _logs(self, job_id, body):
        with self.condition:
            self.log_requests.append({"job_id": job_id, **body})
            if job_id in self.stale_jobs:
                return 409, {"error": "stale_attempt", "message": "not the current attempt"}
            stored = self.logs.setdefault(job_id, [])
            committed = len(stored)
            first_seq = body["first_seq"]
            if first_seq > committed + 1:
                return 416, {"error": "log_gap", "committed_seq": committed, "message": "gap"}
            cap = self.truncate_at.get(job_id)
            truncated = False
            for offset, record in enumerate(body["records"]):
                seq = first_seq + offset
                if seq <= len(stored):
                    continue
                if cap is not None and len(stored) >= cap:
                    truncated = True
                    break
                stored.append({"seq": seq, **record})
            state = "cancelling" if job_id in self.cancelling_jobs else "running"
            return 200, {
                "committed_seq": len(stored),
                "job_state": state,
                "truncated": truncated,
                "watched": job_id in self.watched_jobs,
            }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        fake: FakeServer = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with fake.condition:
            fake.raw_bodies.append(raw)
            fake.timeline.append(self.path.rsplit("/", 1)[-1])
        if fake.down or self.path.rsplit("/", 1)[-1] in fake.down_endpoints:
            page = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
            self._send(502, page, "text/html")
            return
        if urlsplit(self.path).path.endswith("/data"):
            body: Any = raw  # rpc data: the bytes of a file
        else:
            body = json.loads(raw or b"{}")
        status, answer = fake.handle(self.path, self.headers, body)
        if answer is None:
            self._send(status, b"", None)
        else:
            self._send(status, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: Optional[str]) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


def all_files(root) -> List[Path]:
    """Every file under ``root`` (to grep for secrets)."""
    return [Path(directory) / name for directory, _, names in os.walk(root) for name in names]
