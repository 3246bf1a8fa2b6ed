"""Restore, browse, download and diff: the JSON API and the agent's rpc answers.

The agent's side here is raw HTTP (tests/e2e/test_restore_e2e.py runs the real agent and
restic); this file pins down the server's rules: validation, confirmation, timeouts,
caching, hostile answers, and the bytes of a download arriving intact.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from app.agent_api import rpc as agent_rpc
from app.extensions import db
from app.models import AuditLog, Command, DiffEntry, Host, Job, RpcCall, RpcChunk
from app.models.types import utcnow
from app.models.user import Role
from app.services import rpc
from tests.conftest import LiveServer
from tests.factories import (
    SNAP_A,
    SNAP_B,
    AgentCalls,
    add_snapshots,
    bearer_headers,
    make_enrolled_host,
    queue_job,
)


@pytest.fixture
def operator(make_user):
    return bearer_headers(make_user(Role.operator))


@pytest.fixture
def host(app):
    host, token = make_enrolled_host()
    add_snapshots(host)
    host.agent_token_plain = token  # for the tests' agent calls
    return host


def job_count() -> int:
    return db.session.scalar(select(func.count()).select_from(Job))


# --- restores ---------------------------------------------------------------------------------


def test_restore_defaults_to_a_new_directory_named_after_the_job(app, host, operator):
    client = app.test_client()
    response = client.post(
        f"/api/v1/hosts/{host.id}/restores",
        json={"snapshot_id": "aaaaaaaa", "include": ["/srv/data/a.txt", "/srv/data/sub/"]},
        headers=operator,
    )
    assert response.status_code == 201, response.get_json()
    job = response.get_json()
    assert job["kind"] == "restore"
    assert job["params"] == {
        "snapshot_id": SNAP_A,
        "include": ["/srv/data/a.txt", "/srv/data/sub"],
        "in_place": False,
        "verify": False,
        "target": f"$HOME/rm-restore/{job['id']}",
    }
    command = db.session.scalar(select(Command).where(Command.job_id == job["id"]))
    assert command.type == "job.run"
    assert command.payload == {"kind": "restore", "params": job["params"]}
    entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "host.restore"))
    assert entry.payload["target"] == job["params"]["target"]


def test_restore_in_place_needs_the_host_name_and_queues_nothing_without_it(app, host, operator):
    client = app.test_client()
    url = f"/api/v1/hosts/{host.id}/restores"
    body = {"snapshot_id": SNAP_B, "include": ["/srv/data/a.txt"], "in_place": True}
    for typed in (None, "", "web-2", "WEB-1 "):
        answer = client.post(url, json=dict(body, confirm_hostname=typed), headers=operator)
        assert answer.status_code == 422
        assert answer.get_json()["error"] == "confirmation_required"
        assert "Type the host name (web-1)" in answer.get_json()["message"]
    assert job_count() == 0
    answer = client.post(url, json=dict(body, confirm_hostname="web-1"), headers=operator)
    assert answer.status_code == 201
    assert answer.get_json()["params"]["target"] == "/"
    assert answer.get_json()["params"]["in_place"] is True


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"snapshot_id": "nothex!!"}, "snapshot_id", 422),
        ({"snapshot_id": "cccccccc"}, None, 404),
        ({"snapshot_id": SNAP_A, "include": ["relative/path"]}, "include", 422),
        ({"snapshot_id": SNAP_A, "include": ["/srv/../etc/shadow"]}, "include", 422),
        ({"snapshot_id": SNAP_A, "include": 5}, "include", 422),
        ({"snapshot_id": SNAP_A, "include": ["/a"] * 501}, "include", 422),
        ({"snapshot_id": SNAP_A, "target": "relative"}, "target", 422),
        ({"snapshot_id": SNAP_A, "target": "/"}, "target", 422),
        ({"snapshot_id": SNAP_A, "target": "$HOME/../etc"}, "target", 422),
        ({"snapshot_id": SNAP_A, "in_place": "yes"}, "in_place", 422),
        ({"snapshot_id": SNAP_A, "surprise": 1}, "surprise", 422),
        (
            {"snapshot_id": SNAP_A, "in_place": True, "confirm_hostname": "web-1", "target": "/x"},
            "target",
            422,
        ),
    ],
)
def test_restore_refuses_bad_input_precisely(app, host, operator, body, field, status):
    answer = app.test_client().post(
        f"/api/v1/hosts/{host.id}/restores", json=body, headers=operator
    )
    assert answer.status_code == status, answer.get_json()
    if field:
        assert field in answer.get_json()["fields"]
    assert job_count() == 0


def test_restore_accepts_home_and_tilde_targets_for_the_agent_to_expand(app, host, operator):
    client = app.test_client()
    for target in ("$HOME/restored", "~/restored/", "/srv/restore"):
        answer = client.post(
            f"/api/v1/hosts/{host.id}/restores",
            json={"snapshot_id": SNAP_A, "target": target},
            headers=operator,
        )
        assert answer.status_code == 201
        assert answer.get_json()["params"]["target"] == target.rstrip("/")
        assert answer.get_json()["params"]["include"] == []


def test_restore_is_for_operators_and_online_hosts(app, host, make_user):
    client = app.test_client()
    url = f"/api/v1/hosts/{host.id}/restores"
    viewer = bearer_headers(make_user(Role.viewer))
    assert client.post(url, json={"snapshot_id": SNAP_A}, headers=viewer).status_code == 403
    host.last_seen_at = utcnow() - timedelta(hours=1)
    db.session.commit()
    operator = bearer_headers(make_user(Role.operator))
    answer = client.post(url, json={"snapshot_id": SNAP_A}, headers=operator)
    assert answer.status_code == 409
    assert answer.get_json()["error"] == "host_offline"
    assert job_count() == 0


def test_the_jobs_endpoint_points_restores_to_their_own(app, host, operator):
    answer = app.test_client().post(
        f"/api/v1/hosts/{host.id}/jobs",
        json={"kind": "restore", "params": {"snapshot_id": SNAP_A}},
        headers=operator,
    )
    assert answer.status_code == 422
    assert "/restores" in answer.get_json()["message"]


# --- diff ---------------------------------------------------------------------------------------


def test_diff_job_resolves_both_snapshots_and_refuses_one_twice(app, host, operator):
    client = app.test_client()
    url = f"/api/v1/hosts/{host.id}/jobs"
    same = {"kind": "diff", "params": {"snapshot_a": "aaaaaaaa", "snapshot_b": SNAP_A}}
    answer = client.post(url, json=same, headers=operator)
    assert answer.status_code == 422
    assert answer.get_json()["fields"]["params.snapshot_b"] == [
        "Pick two different snapshots to compare."
    ]
    unknown = {"kind": "diff", "params": {"snapshot_a": "aaaaaaaa", "snapshot_b": "ffffffff"}}
    assert client.post(url, json=unknown, headers=operator).status_code == 404
    good = {"kind": "diff", "params": {"snapshot_a": "aaaaaaaa", "snapshot_b": "bbbbbbbb"}}
    answer = client.post(url, json=good, headers=operator)
    assert answer.status_code == 201
    assert answer.get_json()["params"] == {"snapshot_a": SNAP_A, "snapshot_b": SNAP_B}


def test_diff_report_events_become_a_filterable_paged_table(app, host, operator):
    job = queue_job(app, host, "diff")
    agent = AgentCalls(app, host.agent_token_plain, job)
    agent.event("job.started")
    agent.event(
        "diff.report",
        batch=0,
        changes=[
            {
                "path": "/srv/data/a.txt",
                "modifier": "M",
                "type": "file",
                "size_before": 20,
                "size_after": 31,
            },
            {
                "path": "/srv/data/sub/b.txt",
                "modifier": "-",
                "type": "file",
                "size_before": 12,
                "size_after": None,
            },
        ],
    )
    agent.event(
        "diff.report",
        batch=1,
        changes=[
            {
                "path": "/srv/data/sub/c.txt",
                "modifier": "+",
                "type": "file",
                "size_before": None,
                "size_after": 3531,
            }
        ],
    )
    agent.finish(
        stats={
            "changed_files": 1,
            "changes": 3,
            "reported": 3,
            "truncated": False,
            "added": {"files": 1, "bytes": 3531},
            "removed": {"files": 1},
        }
    )
    client = app.test_client()
    page = client.get(f"/api/v1/jobs/{job.id}/diff", headers=operator).get_json()
    assert [item["path"] for item in page["items"]] == [
        "/srv/data/a.txt",
        "/srv/data/sub/b.txt",
        "/srv/data/sub/c.txt",
    ]
    assert page["items"][0]["change"] == "modified"
    assert page["counts"] == {"+": 1, "-": 1, "M": 1, "T": 0}
    assert page["summary"]["added"]["bytes"] == 3531  # restic's: repository data
    assert page["sizes"] == {  # the files' sizes, as the items show them
        "added": {"bytes": 3531, "unknown": 0},
        "removed": {"bytes": 12, "unknown": 0},
        "modified": {"bytes_before": 20, "bytes_after": 31, "unknown": 0},
    }
    added = client.get(f"/api/v1/jobs/{job.id}/diff?modifier=%2B", headers=operator).get_json()
    assert [item["size_after"] for item in added["items"]] == [3531]
    first = client.get(f"/api/v1/jobs/{job.id}/diff?limit=2", headers=operator).get_json()
    assert first["next"] == 2 and first["total"] == 3
    bad = client.get(f"/api/v1/jobs/{job.id}/diff?modifier=x", headers=operator)
    assert bad.status_code == 422


def test_a_hostile_diff_report_is_rejected_and_stores_nothing(app, host):
    job = queue_job(app, host, "diff")
    agent = AgentCalls(app, host.agent_token_plain, job)
    for changes in (
        "not a list",
        [{"path": "/x", "modifier": "<script>"}],
        [{"path": "", "modifier": "+"}],
        [{"path": "/ok", "modifier": "+"}] * 1001,
    ):
        event = {
            "event_id": f"bad-{len(str(changes))}",
            "type": "diff.report",
            "job_id": job.id,
            "attempt_id": job.attempt_id,
            "ts": "2026-11-25T20:31:00Z",
            "data": {"changes": changes},
        }
        answer = agent.client.post(
            "/api/agent/v1/events", json={"events": [event]}, headers=agent.headers
        ).get_json()
        assert answer["rejected"][0]["error"] == "invalid_event"
    assert db.session.scalar(select(func.count()).select_from(DiffEntry)) == 0


# --- rpc: the agent's answers -------------------------------------------------------------------


def new_call(app, host: Host, method: str = "ls", **params) -> RpcCall:
    params = params or {"snapshot_id": SNAP_A, "path": "/srv", "max_entries": 2000}
    call = rpc.request_call(
        app.extensions["secretbox"],
        host,
        method,
        params,
        key=rpc.cache_key(method, SNAP_A, params.get("path", "/")),
        now=utcnow(),
    )
    db.session.commit()
    return call


def agent_post(app, host, path, **kwargs):
    headers = {"Authorization": f"Bearer {host.agent_token_plain}"}
    return app.test_client().post(f"/api/agent/v1/rpc/{path}", headers=headers, **kwargs)


def test_an_answer_is_checked_and_stored_once(app, host):
    call = new_call(app, host)
    for bad in (
        {"result": {}},
        {"ok": True, "result": {"items": "nope"}},
        {"ok": True, "result": {"items": [{"name": "a/b", "type": "file", "path": "/a"}]}},
        {"ok": True, "result": {"items": [{"name": "a", "type": "bomb", "path": "/a"}]}},
        {
            "ok": True,
            "result": {"items": [{"name": "a", "type": "file", "path": "/a", "size": -1}]},
        },
    ):
        answer = agent_post(app, host, call.id, json=bad)
        assert answer.status_code == 422, bad
    items = [
        {"name": "b.txt", "type": "file", "path": "/srv/b.txt", "size": 3, "mtime": "x"},
        {"name": "A", "type": "dir", "path": "/srv/A", "size": 99},
        {"name": "sub", "type": "dir", "path": "/srv/sub"},
        {"name": "file10", "type": "file", "path": "/srv/file10", "size": 1},
        {"name": "disk10", "type": "dir", "path": "/srv/disk10"},
        {"name": "File2", "type": "file", "path": "/srv/File2", "size": 1},
        {"name": "disk9", "type": "dir", "path": "/srv/disk9"},
        {"name": "file1", "type": "file", "path": "/srv/file1", "size": 1},
    ]
    answer = agent_post(app, host, call.id, json={"ok": True, "result": {"items": items}})
    assert answer.status_code == 200
    db.session.expire_all()
    stored = db.session.get(RpcCall, call.id)
    assert stored.status == "answered"
    # Directories first, then as people count: file2 before file10, case aside.
    assert [item["name"] for item in stored.result["items"]] == [
        "A",
        "disk9",
        "disk10",
        "sub",
        "b.txt",
        "file1",
        "File2",
        "file10",
    ]
    assert stored.result["items"][0]["size"] is None  # only files have sizes
    again = agent_post(app, host, call.id, json={"ok": True, "result": {"items": []}})
    assert again.status_code == 409


def test_a_host_cannot_answer_another_hosts_call(app, host):
    call = new_call(app, host)
    _other, other_token = make_enrolled_host("web-2")
    answer = app.test_client().post(
        f"/api/agent/v1/rpc/{call.id}",
        json={"ok": True, "result": {"items": []}},
        headers={"Authorization": f"Bearer {other_token}"},
    )
    assert answer.status_code == 404
    unauthenticated = app.test_client().post(f"/api/agent/v1/rpc/{call.id}", json={"ok": True})
    assert unauthenticated.status_code == 401


def test_download_bytes_are_ordered_bounded_and_deduplicated(app, host, monkeypatch):
    monkeypatch.setattr(agent_rpc, "TURN_WAIT_SECONDS", 0.2)  # the gap below waits this long
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=10)
    too_big = {"ok": True, "result": {"name": "f", "size": 11}}
    assert agent_post(app, host, call.id, json=too_big).status_code == 413
    early = agent_post(app, host, f"{call.id}/data?offset=0", data=b"abc")
    assert early.status_code == 409
    header = {"ok": True, "result": {"name": "f", "size": 6}}
    assert agent_post(app, host, call.id, json=header).status_code == 200
    octets = {"content_type": "application/octet-stream"}
    assert agent_post(app, host, f"{call.id}/data?offset=0", data=b"abc", **octets).get_json() == {
        "committed": 3
    }
    repeat = agent_post(app, host, f"{call.id}/data?offset=0", data=b"abc", **octets)
    assert repeat.get_json() == {"committed": 3}
    gap = agent_post(app, host, f"{call.id}/data?offset=5", data=b"f", **octets)
    assert gap.status_code == 416 and gap.get_json()["committed"] == 3
    over = agent_post(app, host, f"{call.id}/data?offset=3", data=b"defg", **octets)
    assert over.status_code == 413
    last = agent_post(app, host, f"{call.id}/data?offset=3", data=b"def", **octets)
    assert last.status_code == 200
    wrong_size = agent_post(
        app, host, f"{call.id}/end", json={"ok": True, "bytes": 5, "sha256": "0" * 64}
    )
    assert wrong_size.status_code == 200
    db.session.expire_all()
    assert db.session.get(RpcCall, call.id).status == "failed"


def test_a_chunk_sent_ahead_waits_for_the_one_before_it(app, host, monkeypatch):
    """Two chunks in flight: the later one may arrive first; it waits (holding no lock) for
    its turn, a chunk further ahead is refused at once, and one whose predecessor never
    comes gets 416 after TURN_WAIT_SECONDS."""
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=20)
    reply = agent_post(app, host, call.id, json={"ok": True, "result": {"name": "f", "size": 9}})
    assert reply.get_json()["chunks_in_flight"] == 2
    octets = {"content_type": "application/octet-stream"}
    answers = {}

    def post_ahead():
        answers["ahead"] = agent_post(app, host, f"{call.id}/data?offset=3", data=b"def", **octets)

    ahead = threading.Thread(target=post_ahead)
    ahead.start()
    time.sleep(0.3)
    assert ahead.is_alive()  # waiting for the chunk before it
    first = agent_post(app, host, f"{call.id}/data?offset=0", data=b"abc", **octets)
    assert first.get_json() == {"committed": 3}
    ahead.join(5)
    assert answers["ahead"].get_json() == {"committed": 6}
    assert rpc.take_chunks(call.id, 0) == [b"abc", b"def"]
    db.session.commit()
    started = time.monotonic()
    far = agent_post(app, host, f"{call.id}/data?offset={6 + (8 << 20) + 1}", data=b"x", **octets)
    assert far.status_code == 416 and far.get_json()["committed"] == 6
    assert time.monotonic() - started < 1
    monkeypatch.setattr(agent_rpc, "TURN_WAIT_SECONDS", 0.3)
    started = time.monotonic()
    orphan = agent_post(app, host, f"{call.id}/data?offset=8", data=b"i", **octets)
    assert orphan.status_code == 416 and orphan.get_json()["committed"] == 6
    assert time.monotonic() - started >= 0.3
    last = agent_post(app, host, f"{call.id}/data?offset=6", data=b"ghi", **octets)
    assert last.get_json() == {"committed": 9}


def test_a_closed_download_tells_the_agent_to_stop(app, host):
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=10)
    agent_post(app, host, call.id, json={"ok": True, "result": {"name": "f", "size": 6}})
    rpc.give_up(call.id, now=utcnow())
    db.session.commit()
    answer = agent_post(
        app, host, f"{call.id}/data?offset=0", data=b"abc", content_type="application/octet-stream"
    )
    assert answer.status_code == 410
    assert answer.get_json()["error"] == "rpc_closed"


def test_the_header_reply_names_the_chunk_size_an_agent_may_send(app, host, app_factory):
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=20 << 20)
    header = {"ok": True, "result": {"name": "f", "size": 9 << 20}}
    reply = agent_post(app, host, call.id, json=header)
    assert reply.get_json() == {
        "ok": True,
        "max_chunk_bytes": rpc.MAX_CHUNK_BYTES,
        "chunks_in_flight": agent_rpc.CHUNKS_IN_FLIGHT,
    }
    octets = {"content_type": "application/octet-stream"}
    big = agent_post(app, host, f"{call.id}/data?offset=0", data=b"x" * (8 << 20), **octets)
    assert big.get_json() == {"committed": 8 << 20}
    over = agent_post(app, host, f"{call.id}/data?offset={8 << 20}", data=b"y" * ((8 << 20) + 1))
    assert over.status_code == 413
    # A listing's reply stays {"ok": true}; a smaller body limit lowers the chunk size.
    listing = new_call(app, host)
    assert agent_post(
        app, host, listing.id, json={"ok": True, "result": {"items": []}}
    ).get_json() == {"ok": True}
    assert rpc.chunk_cap(2 << 20) == 2 << 20 and rpc.chunk_cap(64 << 20) == rpc.MAX_CHUNK_BYTES


def test_a_chunk_shorter_than_announced_is_refused(app, host):
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=20)
    agent_post(app, host, call.id, json={"ok": True, "result": {"name": "f", "size": 12}})
    short = agent_post(
        app,
        host,
        f"{call.id}/data?offset=0",
        data=b"abc",
        content_type="application/octet-stream",
        environ_overrides={"CONTENT_LENGTH": "10"},
    )
    assert short.status_code == 400 and short.get_json()["error"] == "incomplete_body"
    assert db.session.get(RpcCall, call.id).bytes_committed == 0


def test_a_download_nobody_reads_holds_the_agent_back(app, host, monkeypatch):
    """Back-pressure: beyond MAX_UNREAD_BYTES unread, an upload waits for the browser to
    read, then answers 429 rpc_busy and stores nothing; once read, the chunk is taken."""
    monkeypatch.setattr(rpc, "MAX_UNREAD_BYTES", 5)
    monkeypatch.setattr(agent_rpc, "ROOM_WAIT_SECONDS", 0.3)
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=20)
    agent_post(app, host, call.id, json={"ok": True, "result": {"name": "f", "size": 12}})
    octets = {"content_type": "application/octet-stream"}
    first = agent_post(app, host, f"{call.id}/data?offset=0", data=b"abcd", **octets)
    assert first.get_json() == {"committed": 4}  # the first chunk always has room
    started = time.monotonic()
    busy = agent_post(app, host, f"{call.id}/data?offset=4", data=b"efgh", **octets)
    assert time.monotonic() - started >= 0.3
    assert busy.status_code == 429 and busy.get_json()["error"] == "rpc_busy"
    assert busy.headers["Retry-After"] == "1"
    assert rpc.unread_bytes(call.id, host.id) == 4
    assert rpc.unread_bytes(call.id, host.id + 1) == 0  # another host's call: none
    assert rpc.take_chunks(call.id, 0) == [b"abcd"]
    db.session.commit()
    again = agent_post(app, host, f"{call.id}/data?offset=4", data=b"efgh", **octets)
    assert again.get_json() == {"committed": 8}
    assert rpc.take_chunks(call.id, 4) == [b"efgh"]


def test_take_chunks_reads_a_bounded_contiguous_run(app, host):
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=20)
    agent_post(app, host, call.id, json={"ok": True, "result": {"name": "f", "size": 12}})
    octets = {"content_type": "application/octet-stream"}
    for offset, data in ((0, b"abc"), (3, b"def"), (6, b"ghi")):
        agent_post(app, host, f"{call.id}/data?offset={offset}", data=data, **octets)
    assert rpc.take_chunks(call.id, 0, max_bytes=4) == [b"abc", b"def"]  # starting below 4
    assert rpc.take_chunks(call.id, 6) == [b"ghi"]
    assert rpc.take_chunks(call.id, 9) == []
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(RpcChunk)) == 0


def test_old_calls_and_their_bytes_are_swept(app, host):
    call = new_call(app, host, "dump", snapshot_id=SNAP_A, path="/srv/f", max_bytes=10)
    db.session.add(RpcChunk(rpc_id=call.id, byte_offset=0, data=b"x"))
    db.session.commit()
    assert rpc.sweep(utcnow()) == 0
    assert rpc.sweep(utcnow() + timedelta(hours=2)) == 1
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(RpcChunk)) == 0


# --- rpc: the browser's wait, against a live server and an agent speaking HTTP -------------------


class FakeAgent(threading.Thread):
    """Long-polls the live server and answers rpc commands with ``handler(command)``."""

    def __init__(self, url: str, token: str, handler):
        super().__init__(daemon=True)
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.handler = handler
        self.stop = threading.Event()
        self.commands: list[dict] = []

    def run(self):
        acks = []
        while not self.stop.is_set():
            try:
                answer = self.session.post(
                    f"{self.url}/api/agent/v1/poll", json={"acks": acks, "wait": 1}, timeout=10
                )
            except requests.RequestException:
                return  # the server went away at the end of the test
            acks = []
            if answer.status_code != 200:
                continue
            for command in answer.json()["commands"]:
                acks.append({"command_id": command["command_id"], "result": "accepted"})
                if command["type"].startswith("rpc."):
                    self.commands.append(command)
                    self.handler(self, command)

    def post(self, path: str, **kwargs):
        return self.session.post(f"{self.url}/api/agent/v1/rpc/{path}", timeout=10, **kwargs)


@pytest.fixture
def live(app_factory, request):
    # 2 s unless a test asks for more (indirect parametrize): a download's header once
    # missed 2 s on a loaded machine, and its tests are not about the timeout.
    wait = getattr(request, "param", 2)
    app = app_factory(RM_RPC_WAIT_SECONDS=wait, RM_POLL_WAIT_SECONDS=1)
    server = LiveServer(app)
    server.start()
    with app.app_context():
        host, token = make_enrolled_host()
        add_snapshots(host)
        host_id = host.id
    yield server, app, host_id, token
    server.stop()


@pytest.fixture
def run_agent(live):
    """``run_agent(handler)``: a FakeAgent polling the live server, stopped at the end."""
    server, _, _, token = live
    started = []

    def start(handler):
        agent = FakeAgent(server.url, token, handler)
        started.append(agent)
        agent.start()
        return agent

    yield start
    for agent in started:
        agent.stop.set()
        agent.join(5)


def refuse_with(error: str, message: str):
    """A handler that answers every call with the protocol error ``error``."""

    def answer(agent, command):
        agent.post(
            command["payload"]["rpc_id"], json={"ok": False, "error": error, "message": message}
        )

    return answer


def live_headers(app, role=Role.operator):  # browsing needs operator (issue 13)
    from app.services import users

    with app.app_context():
        user = users.create_user(f"u-{role.name}-{time.monotonic_ns()}", "pw-123456789012", role)
        db.session.commit()
        return bearer_headers(user)


def test_tree_waits_for_the_agent_then_serves_from_the_cache(live, run_agent):
    server, app, host_id, _ = live

    def answer(agent, command):
        payload = command["payload"]
        assert payload["path"] == "/srv/data" and payload["snapshot_id"] == SNAP_A
        items = [{"name": "a.txt", "type": "file", "path": "/srv/data/a.txt", "size": 20}]
        agent.post(payload["rpc_id"], json={"ok": True, "result": {"items": items}})

    agent = run_agent(answer)
    headers = live_headers(app)
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/tree?path=/srv/data/"
    first = requests.get(url, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    assert first.json()["items"][0]["size"] == 20
    assert first.json()["cached"] is False and first.json()["path"] == "/srv/data"
    second = requests.get(url, headers=headers, timeout=10).json()
    assert second["cached"] is True and second["items"] == first.json()["items"]
    assert len(agent.commands) == 1  # asked once
    with app.app_context():  # both listings audited with the path (issue 13)
        audited = db.session.scalars(
            select(AuditLog).where(AuditLog.action == "snapshot.directory_listed")
        ).all()
        assert [(entry.payload["path"], entry.payload["cached"]) for entry in audited] == [
            ("/srv/data", False),
            ("/srv/data", True),
        ]


def test_tree_says_timed_out_then_uses_the_late_answer(live, run_agent):
    server, app, host_id, _ = live
    late = threading.Event()

    def answer(agent, command):
        def later():
            late.wait(10)
            agent.post(command["payload"]["rpc_id"], json={"ok": True, "result": {"items": []}})

        threading.Thread(target=later, daemon=True).start()

    run_agent(answer)
    headers = live_headers(app)
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/tree?path=/"
    started = time.monotonic()
    first = requests.get(url, headers=headers, timeout=10)
    assert first.status_code == 504
    assert first.json()["error"] == "agent_timeout"
    assert "did not answer within 2 s" in first.json()["message"]
    assert time.monotonic() - started < 5
    late.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = requests.get(url, headers=headers, timeout=10)
        if again.status_code == 200:
            break
        time.sleep(0.2)
    assert again.status_code == 200 and again.json()["items"] == []


def test_a_listing_never_delivered_is_asked_again_on_the_next_try(live, run_agent):
    # The agent stopped polling (but the host still counts as online): the first try times
    # out and its command is withdrawn. Once the agent is back, the retry must ask anew.
    server, app, host_id, _ = live
    headers = live_headers(app)
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/tree?path=/srv"
    assert requests.get(url, headers=headers, timeout=10).status_code == 504
    with app.app_context():
        states = db.session.scalars(select(Command.state).where(Command.type == "rpc.ls"))
        assert list(states) == ["expired"]

    def answer(agent, command):
        agent.post(command["payload"]["rpc_id"], json={"ok": True, "result": {"items": []}})

    agent = run_agent(answer)
    retry = requests.get(url, headers=headers, timeout=10)
    assert retry.status_code == 200, retry.text
    assert len(agent.commands) == 1


def test_tree_errors_of_the_agent_keep_their_meaning(live, run_agent):
    server, app, host_id, _ = live

    run_agent(refuse_with("not_found", "/srv/nope is not in snapshot aaaaaaaa"))
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/tree?path=/srv/nope"
    answer_ = requests.get(url, headers=live_headers(app), timeout=10)
    assert answer_.status_code == 404
    assert answer_.json() == {
        "error": "not_found",
        "message": "/srv/nope is not in snapshot aaaaaaaa",
    }


def test_tree_of_an_offline_host_answers_at_once(live):
    server, app, host_id, _ = live
    with app.app_context():
        db.session.get(Host, host_id).last_seen_at = utcnow() - timedelta(hours=1)
        db.session.commit()
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/tree"
    answer = requests.get(url, headers=live_headers(app), timeout=10)
    assert answer.status_code == 409 and answer.json()["error"] == "host_offline"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(RpcCall)) == 0


@pytest.mark.parametrize("live", [20], indirect=True)
def test_download_streams_the_agents_bytes_intact(live, run_agent):
    server, app, host_id, _ = live
    content = bytes(range(256)) * 9000  # 2.3 MB: several chunks

    def answer(agent, command):
        payload = command["payload"]
        rpc_id = payload["rpc_id"]
        assert payload["path"] == "/srv/data/big.bin"

        def send():
            agent.post(
                rpc_id, json={"ok": True, "result": {"name": "big.bin", "size": len(content)}}
            )
            for offset in range(0, len(content), 1024 * 1024):
                chunk = content[offset : offset + 1024 * 1024]
                reply = agent.post(
                    f"{rpc_id}/data?offset={offset}",
                    data=chunk,
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert reply.status_code == 200, reply.text
                time.sleep(0.1)
            agent.post(
                f"{rpc_id}/end",
                json={
                    "ok": True,
                    "bytes": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                },
            )

        threading.Thread(target=send, daemon=True).start()

    run_agent(answer)
    headers = live_headers(app, Role.operator)
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/download?path=/srv/data/big.bin"
    download = requests.get(url, headers=headers, timeout=30)
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["Content-Length"] == str(len(content))
    assert 'filename="big.bin"' in download.headers["Content-Disposition"]
    viewer = requests.get(url, headers=live_headers(app, Role.viewer), timeout=10)
    assert viewer.status_code == 403
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(RpcChunk)) == 0
        entry = db.session.scalar(
            select(AuditLog).where(AuditLog.action == "snapshot.file_downloaded")
        )
        assert entry.payload["path"] == "/srv/data/big.bin"


def test_download_refusals_come_back_as_json(live, run_agent):
    server, app, host_id, _ = live

    run_agent(refuse_with("too_large", "/srv/data/big.bin is 5.0 GiB, over the 1.0 GiB cap"))
    url = f"{server.url}/api/v1/hosts/{host_id}/snapshots/aaaaaaaa/download?path=/srv/data/big.bin"
    refused = requests.get(url, headers=live_headers(app, Role.operator), timeout=10)
    assert refused.status_code == 413
    assert refused.json()["error"] == "too_large"
    root = requests.get(
        url.replace("/srv/data/big.bin", "/"), headers=live_headers(app, Role.operator), timeout=10
    )
    assert root.status_code == 422
