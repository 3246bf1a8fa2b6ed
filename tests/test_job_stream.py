"""/api/v1 live job view: the SSE stream, cancel, log downloads, and the agent's `watched`."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from sqlalchemy import func, select

from app import live
from app.bus import host_key, job_key
from app.extensions import db
from app.models import AuditLog, Command, Job, Role
from app.models.types import utcnow
from app.services import jobs
from tests.factories import (
    TS,
    AgentCalls,
    bearer_headers,
    make_enrolled_host,
    queue_job,
)


def parse_sse(text: str) -> list[dict]:
    """Blocks of an event stream: {"event", "data", "id"} or {"comment"} or {"retry"}."""
    items = []
    for block in text.split("\n\n"):
        if not block:
            continue
        item: dict = {}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "":
                item.setdefault("comment", value)
            elif field == "data":
                item["data"] = json.loads(value)
            elif field in ("event", "id", "retry"):
                item[field] = value
        items.append(item)
    return items


@pytest.fixture
def viewer_headers(make_user):
    return bearer_headers(make_user(Role.viewer))


# --- the stream, read to its end -------------------------------------------------------------


def test_stream_sends_every_record_in_order_then_status_and_end(app, viewer_headers):
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    for start in range(0, 1200, 400):  # more than one read batch (500)
        agent.logs([f"line {n}" for n in range(start + 1, start + 401)])
    agent.logs(["oops"], stream="stderr")
    agent.finish(stats={"files_new": 3})

    response = app.test_client().get(f"/api/v1/jobs/{job.id}/stream", headers=viewer_headers)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    body = response.get_data(as_text=True)
    assert body.startswith("retry: 3000\n: ping\n\n")
    items = parse_sse(body)
    logs = [item for item in items if item.get("event") == "log"]
    assert [item["data"]["seq"] for item in logs] == list(range(1, 1202))
    assert [item["id"] for item in logs] == [str(n) for n in range(1, 1202)]
    assert logs[0]["data"] == {"seq": 1, "ts": TS, "stream": "stdout", "text": "line 1"}
    assert logs[-1]["data"]["stream"] == "stderr"
    names = [item.get("event") for item in items if "event" in item]
    assert names.count("status") == 1 and names[-1] == "end"  # status is sent when it changes
    assert "progress" not in names  # a finished job's last progress is not news
    end = items[-1]["data"]
    assert end["status"] == "succeeded" and end["stats"] == {"files_new": 3}
    assert set(end) >= {
        "id",
        "status",
        "error",
        "exit_code",
        "stats",
        "started_at",
        "finished_at",
        "log_truncated",
        "lines_dropped",
    }
    assert app.extensions["bus"].waiting(job_key(job.id)) == 0  # the waiter was closed


def test_stream_resumes_after_last_event_id_or_after(app, viewer_headers):
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    agent = AgentCalls(app, token, job)
    agent.logs([f"line {n}" for n in range(1, 11)])
    agent.finish()
    client = app.test_client()

    def seqs(**kwargs):
        response = client.get(f"/api/v1/jobs/{job.id}/stream", **kwargs)
        assert response.status_code == 200
        items = parse_sse(response.get_data(as_text=True))
        assert items[-1]["event"] == "end"
        return [item["data"]["seq"] for item in items if item.get("event") == "log"]

    assert seqs(headers={**viewer_headers, "Last-Event-ID": "7"}) == [8, 9, 10]
    assert seqs(headers=viewer_headers, query_string={"after": "4"}) == [5, 6, 7, 8, 9, 10]
    # A reconnecting EventSource keeps the page's ?after= but sends a newer Last-Event-ID.
    both = {"headers": {**viewer_headers, "Last-Event-ID": "9"}, "query_string": {"after": "2"}}
    assert seqs(**both) == [10]
    assert seqs(headers=viewer_headers, query_string={"after": "10"}) == []
    bad = client.get(f"/api/v1/jobs/{job.id}/stream?after=ten", headers=viewer_headers)
    assert bad.status_code == 422 and bad.get_json()["error"] == "validation_failed"


def test_stream_of_a_queued_job_cancelled_before_it_started_ends_at_once(app, viewer_headers):
    host, _ = make_enrolled_host()
    job = queue_job(app, host)
    jobs.request_cancel(app.extensions["secretbox"], job, host, now=utcnow())
    db.session.commit()
    body = app.test_client().get(f"/api/v1/jobs/{job.id}/stream", headers=viewer_headers)
    items = parse_sse(body.get_data(as_text=True))
    assert [item.get("event") for item in items if "event" in item] == ["status", "end"]
    assert items[-1]["data"]["status"] == "cancelled"
    assert items[-1]["data"]["cancel_requested_at"] is not None


def test_stream_and_downloads_of_unknown_jobs_are_404_json(app, viewer_headers):
    client = app.test_client()
    for suffix in ("stream", "log.txt", "log.ndjson"):
        response = client.get(f"/api/v1/jobs/4242/{suffix}", headers=viewer_headers)
        assert response.status_code == 404, suffix
        assert response.get_json()["error"] == "not_found"


def test_stream_needs_a_signed_in_viewer_and_accepts_sessions(app, login_as):
    host, _ = make_enrolled_host()
    job = queue_job(app, host)
    jobs.request_cancel(app.extensions["secretbox"], job, host, now=utcnow())
    db.session.commit()
    anonymous = app.test_client().get(f"/api/v1/jobs/{job.id}/stream")
    assert anonymous.status_code == 401
    assert anonymous.get_json()["error"] == "unauthenticated"
    browser = login_as(Role.viewer)  # EventSource sends the session cookie
    response = browser.get(f"/api/v1/jobs/{job.id}/stream")
    assert response.status_code == 200
    assert parse_sse(response.get_data(as_text=True))[-1]["event"] == "end"


def test_stream_holds_no_connection_between_reads(app, viewer_headers, monkeypatch):
    """Each chunk is read in its own short session: none is checked out while it is written."""
    monkeypatch.setattr(live, "RECHECK_SECONDS", 0.05)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    agent.logs(["first"])
    db.session.remove()
    pool = db.engine.pool
    response = app.test_client().get(f"/api/v1/jobs/{job.id}/stream", headers=viewer_headers)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry: 3000")
    assert b"first" in next(chunks)
    assert pool.checkedout() == 0
    agent.logs(["second"])
    db.session.remove()
    assert b"second" in next(chunks)
    assert pool.checkedout() == 0
    response.close()
    assert app.extensions["bus"].waiting(job_key(job.id)) == 0


def test_viewers_woken_together_share_one_read(app, viewer_headers, monkeypatch):
    """One publish, three viewers: the records are read (and encoded) once, not three times."""
    reads = []
    real_read = live._read
    monkeypatch.setattr(live, "_read", lambda *args: reads.append(args) or real_read(*args))
    monkeypatch.setattr(live, "RECHECK_SECONDS", 5.0)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    db.session.remove()
    client = app.test_client()
    streams = [
        iter(client.get(f"/api/v1/jobs/{job.id}/stream", headers=viewer_headers).response)
        for _ in range(3)
    ]
    for stream in streams:
        assert next(stream).startswith(b"retry:")
        assert b"event: status" in next(stream)
    assert len(reads) == 1
    agent.logs(["shared line"])
    for stream in streams:
        assert b'"text":"shared line"' in next(stream)  # the publish woke each at once
    assert len(reads) == 2
    for stream in streams:
        stream.close()
    assert app.extensions["bus"].waiting(job_key(job.id)) == 0


def test_a_long_stream_ends_without_end_so_the_browser_reconnects(app, viewer_headers, monkeypatch):
    """After MAX_STREAM_SECONDS the stream stops (no `end`): EventSource reconnects with
    Last-Event-ID, which signs the viewer in again."""
    monkeypatch.setattr(live, "MAX_STREAM_SECONDS", 0.3)
    monkeypatch.setattr(live, "RECHECK_SECONDS", 0.05)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    AgentCalls(app, token, job).logs(["only line"])
    response = app.test_client().get(f"/api/v1/jobs/{job.id}/stream", headers=viewer_headers)
    items = parse_sse(response.get_data(as_text=True))
    assert [i.get("event") for i in items if "event" in i] == ["log", "status"]
    assert app.extensions["bus"].waiting(job_key(job.id)) == 0


# --- the stream, live ------------------------------------------------------------------------


class StreamReader(threading.Thread):
    """Reads an SSE response on a real socket and collects its items as they arrive."""

    def __init__(self, url: str, headers: dict):
        super().__init__(daemon=True)
        self.url = url
        self.headers = headers
        self.items: list[dict] = []
        self.changed = threading.Condition()
        self.finished = False
        self.response = None

    def run(self):
        with requests.get(self.url, headers=self.headers, stream=True, timeout=30) as response:
            self.response = response
            block = []
            for raw in response.iter_lines(chunk_size=1):  # deliver each line at once
                line = raw.decode()
                if line:
                    block.append(line)
                    continue
                with self.changed:
                    self.items.extend(parse_sse("\n".join(block) + "\n\n"))
                    self.changed.notify_all()
                block = []
        with self.changed:
            self.finished = True
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "an item"):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.items):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out waiting for {what}; got {self.items}"
                self.changed.wait(remaining)

    def events(self, name: str) -> list:
        with self.changed:
            return [item["data"] for item in self.items if item.get("event") == name]


def test_live_stream_delivers_records_progress_status_and_end(live_server, monkeypatch):
    monkeypatch.setattr(live, "RECHECK_SECONDS", 30.0)  # only bus wakeups move it
    app = live_server.app
    bus = app.extensions["bus"]
    with app.app_context():
        from app.services import users

        viewer = users.create_user("watcher", "correct horse battery", Role.viewer)
        db.session.commit()
        headers = bearer_headers(viewer)
        host, token = make_enrolled_host()
        job = queue_job(app, host)
        agent = AgentCalls(app, token, job)
        assert agent.logs(["before anyone watched"])["watched"] is False

        reader = StreamReader(f"{live_server.url}/api/v1/jobs/{job.id}/stream", headers)
        reader.start()
        reader.wait_for(lambda items: any(i.get("event") == "status" for i in items))
        assert reader.events("log")[0]["text"] == "before anyone watched"
        assert reader.items[0] == {"retry": "3000", "comment": "ping"}

        # Parked: the stream waits on the bus and holds no database connection.
        db.session.remove()
        time.sleep(0.3)
        assert db.engine.pool.checkedout() == 0
        assert bus.waiting(job_key(job.id)) > 0  # the stream and its job feed

        agent.event("job.started")
        reader.wait_for(lambda _: any(s["status"] == "running" for s in reader.events("status")))
        answer = agent.logs(["scanning /etc", "scanning /home"])
        assert answer["watched"] is True
        agent.event("job.progress", percent=42.5, files_done=10, total_files=20)
        reader.wait_for(lambda _: reader.events("progress"), what="progress")
        assert reader.events("progress")[-1]["percent"] == 42.5
        agent.logs([f"file {n}" for n in range(100)])
        agent.finish(stats={"snapshot_id": "ab" * 32})
        reader.join(10)
        assert reader.finished, "the stream did not end after the job finished"

        texts = [record["text"] for record in reader.events("log")]
        assert texts == [
            "before anyone watched",
            "scanning /etc",
            "scanning /home",
            *[f"file {n}" for n in range(100)],
        ]
        assert [r["seq"] for r in reader.events("log")] == list(range(1, 104))
        assert reader.items[-1]["event"] == "end"
        assert reader.items[-1]["data"]["status"] == "succeeded"
        statuses = [s["status"] for s in reader.events("status")]
        assert statuses[0] == "queued" and statuses[-1] == "succeeded"
        # The stream is gone: the agent is told nobody watches any more.
        deadline = time.monotonic() + 5
        while bus.waiting(job_key(job.id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bus.waiting(job_key(job.id)) == 0
        db.session.remove()
        assert db.engine.pool.checkedout() == 0


def test_live_stream_pings_when_silent_and_rechecks_without_wakeups(live_server, monkeypatch):
    monkeypatch.setattr(live, "PING_SECONDS", 0.3)
    monkeypatch.setattr(live, "RECHECK_SECONDS", 0.1)
    app = live_server.app
    with app.app_context():
        from app.services import users

        headers = bearer_headers(users.create_user("pinged", "correct horse battery", Role.viewer))
        db.session.commit()
        host, _ = make_enrolled_host()
        job = queue_job(app, host)
        job_id = job.id
        reader = StreamReader(f"{live_server.url}/api/v1/jobs/{job_id}/stream", headers)
        reader.start()
        reader.wait_for(
            lambda items: sum(1 for i in items if i.get("comment") == "ping") >= 3,
            what="keepalive pings",
        )
        # A change made without a publish (as by another worker process) is still noticed.
        job = db.session.get(Job, job_id)
        job.status = "lost"
        job.finished_at = utcnow()
        db.session.commit()
        reader.join(5)
        assert reader.finished and reader.items[-1]["event"] == "end"
        assert reader.items[-1]["data"]["status"] == "lost"


def test_first_viewer_of_a_running_job_asks_the_agent_to_watch(app, viewer_headers):
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    agent = AgentCalls(app, token, job)
    client = app.test_client()
    url = f"/api/v1/jobs/{job.id}/stream"
    watches = select(Command).where(Command.job_id == job.id, Command.type == "job.watch")
    client.get(url, headers=viewer_headers).close()
    assert db.session.scalars(watches).all() == []  # queued: nothing runs yet to watch
    assert agent.event("job.started")["watched"] == []

    bus = app.extensions["bus"]
    with bus.listen(host_key(host.id)) as parked_poll:
        first = client.get(url, headers=viewer_headers)
        assert parked_poll.wait(0)  # the agent's long poll is woken to take it
    first_chunks = iter(first.response)
    next(first_chunks)  # the stream has begun
    second = client.get(url, headers=viewer_headers)
    (watch,) = db.session.scalars(watches).all()  # one command, not one per viewer
    assert (watch.host_id, watch.payload, watch.state) == (host.id, {}, "queued")
    delivered = client.post(
        "/api/agent/v1/poll",
        json={"boot_id": "boot-1", "acks": [], "running": [], "wait": 0},
        headers=agent.headers,
    ).get_json()["commands"]
    assert [(c["type"], c["job_id"]) for c in delivered if c["type"] == "job.watch"] == [
        ("job.watch", job.id)
    ]
    # The events answer names the batch's watched jobs (a backup sends progress, not lines).
    assert agent.event("job.progress", percent=5.0)["watched"] == [job.id]
    first_chunks.close()
    second.close()
    assert agent.event("job.progress", percent=6.0)["watched"] == []


def test_agent_log_answer_says_unwatched_without_streams(app):
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    answer = AgentCalls(app, token, job).logs(["x"])
    assert answer == {
        "committed_seq": 1,
        "job_state": "queued",
        "truncated": False,
        "watched": False,
    }


# --- cancel ----------------------------------------------------------------------------------


@pytest.fixture
def operator_headers(make_user):
    return bearer_headers(make_user(Role.operator))


def test_cancel_a_queued_job_ends_it_at_once(app, operator_headers):
    host, _ = make_enrolled_host()
    job = queue_job(app, host)
    bus = app.extensions["bus"]
    with bus.listen(host_key(host.id)) as agent_poll, bus.listen(job_key(job.id)) as viewer:
        response = app.test_client().post(f"/api/v1/jobs/{job.id}/cancel", headers=operator_headers)
        assert agent_poll.wait(0) and viewer.wait(0)  # both woken after the commit
    assert response.status_code == 202
    body = response.get_json()
    assert (body["id"], body["status"]) == (job.id, "cancelled")
    assert body["error"] == "Cancelled before it started."
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "cancelled"
    audit = db.session.scalars(select(AuditLog).where(AuditLog.action == "job.cancel_requested"))
    (entry,) = audit.all()
    assert (entry.target_type, entry.target_id) == ("job", str(job.id))
    assert entry.payload["host"] == "web-1"


def test_cancel_a_running_job_asks_the_agent_once(app, operator_headers):
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    AgentCalls(app, token, job).event("job.started")
    client = app.test_client()
    first = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=operator_headers)
    assert first.status_code == 202
    assert first.get_json()["status"] == "running"
    again = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=operator_headers)
    assert again.status_code == 202
    db.session.expire_all()
    assert db.session.get(Job, job.id).cancel_requested_at is not None
    cancels = db.session.scalars(
        select(Command).where(Command.job_id == job.id, Command.type == "job.cancel")
    ).all()
    assert len(cancels) == 1 and cancels[0].state == "queued"
    audited = select(func.count()).where(AuditLog.action == "job.cancel_requested")
    assert db.session.scalar(audited) == 1
    # The agent hears it on its next log answer too.
    assert AgentCalls(app, token, job).logs(["x"])["job_state"] == "cancelling"


def test_cancel_a_finished_job_is_a_conflict(app, operator_headers):
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    AgentCalls(app, token, job).finish(status="failed", exit_code=1, error="Fatal: boom")
    response = app.test_client().post(f"/api/v1/jobs/{job.id}/cancel", headers=operator_headers)
    assert response.status_code == 409
    assert response.get_json()["error"] == "job_finished"
    missing = app.test_client().post("/api/v1/jobs/999/cancel", headers=operator_headers)
    assert missing.status_code == 404


def test_viewers_may_read_but_not_cancel(app, viewer_headers):
    host, _ = make_enrolled_host()
    job = queue_job(app, host)
    client = app.test_client()
    refused = client.post(f"/api/v1/jobs/{job.id}/cancel", headers=viewer_headers)
    assert refused.status_code == 403
    assert client.get(f"/api/v1/jobs/{job.id}/log.txt", headers=viewer_headers).status_code == 200
    assert client.post(f"/api/v1/jobs/{job.id}/cancel").status_code == 401
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "queued"


# --- downloads -------------------------------------------------------------------------------


def test_log_txt_has_a_header_every_line_and_the_truncation_note(app_factory, monkeypatch):
    monkeypatch.setattr(live, "DOWNLOAD_CHUNK", 3)  # several chunks for a small log
    app = app_factory(RM_JOB_LOG_MAX_RECORDS=100)
    with app.app_context():
        from app.services import users

        headers = bearer_headers(users.create_user("reader", "correct horse battery", Role.viewer))
        host, token = make_enrolled_host()
        job = queue_job(app, host, kind="backup")
        agent = AgentCalls(app, token, job)
        assert agent.logs([f"line {n}" for n in range(1, 121)])["truncated"] is True
        agent.finish(lines_dropped=7)
        response = app.test_client().get(f"/api/v1/jobs/{job.id}/log.txt", headers=headers)
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        assert response.headers["Content-Disposition"] == (
            f'attachment; filename="job-{job.id}.log.txt"'
        )
        lines = response.get_data(as_text=True).splitlines()
        assert lines[0] == f"# job {job.id} · backup · host web-1 · status succeeded"
        assert lines[1].startswith("# times are UTC")
        body = lines[2:102]
        assert body[0] == "20:31:00.123 STDOUT line 1"
        assert body[-1] == "20:31:00.123 STDOUT line 100"
        assert "RM_JOB_LOG_MAX_RECORDS" in lines[102] and "100 lines" in lines[102]
        assert "dropped 7 lines" in lines[103]
        assert len(lines) == 104


def test_log_ndjson_has_one_record_per_line(app, viewer_headers, monkeypatch):
    monkeypatch.setattr(live, "DOWNLOAD_CHUNK", 2)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    agent = AgentCalls(app, token, job)
    agent.logs(["a", 'quote " and ünïcode', "c"])
    agent.logs(["restic unlock: removed stale locks"], stream="agent")
    response = app.test_client().get(f"/api/v1/jobs/{job.id}/log.ndjson", headers=viewer_headers)
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert f'filename="job-{job.id}.log.ndjson"' in response.headers["Content-Disposition"]
    records = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[1] == {"seq": 2, "ts": TS, "stream": "stdout", "text": 'quote " and ünïcode'}
    assert records[3]["stream"] == "agent"
    empty = queue_job(app, host)
    nothing = app.test_client().get(f"/api/v1/jobs/{empty.id}/log.ndjson", headers=viewer_headers)
    assert nothing.status_code == 200 and nothing.get_data() == b""
