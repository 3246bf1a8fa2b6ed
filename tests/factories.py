"""Test data and the small HTTP helpers the test modules share: hosts, jobs, enrolled
agents, users' tokens and CSRF-protected forms.

Everything that touches the database needs an application context (the ``app`` fixture
opens one). The fixtures that wrap these (``make_user``, ``login_as``, ``api``) live in
tests/conftest.py.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from datetime import timedelta

from app.extensions import db
from app.models import AgentToken, Host, Job, Role, Snapshot, SourceGroup
from app.models.types import utcnow
from app.security import hash_token, new_token
from app.services import api_tokens, enrollment, jobs, users
from app.services.audit import Actor

TEST_PASSWORD = "correct horse battery"
ENROLLED_REPO_PASSWORD = "correct-horse-repo-Secret-42"
TS = "2026-11-25T20:31:00.123Z"  # when the agent says its events and log lines happened

_CSRF = re.compile(
    r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"'
)


# --- forms and sign-in -----------------------------------------------------------------------


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "page has no CSRF token"
    return match.group(1) or match.group(2)


def form_token(client, path: str) -> str:
    """The CSRF token of the form on the page at ``path``."""
    return csrf_token(client.get(path).get_data(as_text=True))


def login(client, username: str, password: str = TEST_PASSWORD):
    token = form_token(client, "/login")
    return client.post(
        "/login",
        data={"csrf_token": token, "username": username, "password": password},
    )


def bearer_headers(user) -> dict:
    """Request headers carrying a new personal access token of ``user``."""
    _, plain = api_tokens.create_token(user, "stream test", now=utcnow())
    db.session.commit()
    return {"Authorization": f"Bearer {plain}"}


# --- users -----------------------------------------------------------------------------------

_user_numbers = itertools.count(1)


def make_user(role: Role = Role.admin, username: str | None = None, password: str = TEST_PASSWORD):
    """A user of ``role`` (named after it, e.g. ``operator3``, unless ``username``)."""
    user = users.create_user(username or f"{role.value}{next(_user_numbers)}", password, role)
    db.session.commit()
    return user


# --- hosts -----------------------------------------------------------------------------------


def make_host(hostname: str = "web-1", *, seen_seconds_ago: float | None = 5, **fields) -> Host:
    """A host row with a "default" source group (/etc), as the agent's reports leave it.

    ``seen_seconds_ago=None``: never seen; a ``last_seen_at`` in ``fields`` wins over it.
    """
    seen = None if seen_seconds_ago is None else utcnow() - timedelta(seconds=seen_seconds_ago)
    fields.setdefault("last_seen_at", seen)
    host = Host(hostname=hostname, **fields)
    db.session.add(host)
    db.session.flush()
    db.session.add(SourceGroup(host_id=host.id, name="default", includes=["/etc"]))
    db.session.commit()
    return host


def make_enrolled_host(hostname: str = "web-1") -> tuple[Host, str]:
    """An enrolled, online host and its agent token, written straight to the database (no
    enrollment commands queued)."""
    now = utcnow()
    host = make_host(
        hostname, os="linux", arch="x86_64", enrolled_at=now, last_seen_at=now, boot_id="boot-1"
    )
    plain = new_token("rma")
    db.session.add(AgentToken(host_id=host.id, token_hash=hash_token(plain), created_at=now))
    db.session.commit()
    return host, plain


# --- snapshots -------------------------------------------------------------------------------

SNAP_A = "a" * 8 + "1" * 56
SNAP_B = "b" * 8 + "2" * 56


def add_snapshots(host: Host) -> None:
    """Two snapshots of /srv/data (SNAP_A two hours old, SNAP_B one), as the agent reports them."""
    now = utcnow()
    for index, snapshot_id in enumerate((SNAP_A, SNAP_B)):
        db.session.add(
            Snapshot(
                host_id=host.id,
                snapshot_id=snapshot_id,
                short_id=snapshot_id[:8],
                time=now - timedelta(hours=2 - index),
                paths=["/srv/data"],
                tags=["default"],
            )
        )
    db.session.commit()


def mint_enrollment_token(app, hostname="web-1", paths=("/etc", "/home")):
    """An enrollment token for ``hostname``: ``(row, plain token)``."""
    token, plain = enrollment.mint_token(
        app.extensions["secretbox"],
        created_by=None,
        hostname=hostname,
        repo_url="rest:https://backup:pw@backup.example.com/web-1",
        repo_username="backup",
        repo_password=ENROLLED_REPO_PASSWORD,
        paths=list(paths),
        now=utcnow(),
    )
    db.session.commit()
    return token, plain


class Agent:
    """An agent's protocol calls (hello, poll, any POST), in raw HTTP against the test app.

    Like the real agent, a poll acknowledges every command the previous answer brought
    (the server delivers a command again to a poll that does not: its answer was lost);
    ``acks=`` given explicitly replaces that, ``acks=[]`` acknowledges nothing."""

    def __init__(self, app, token: str, boot_id: str = "boot-1"):
        self.client = app.test_client()
        self.token = token
        self.boot_id = boot_id
        self.unacked: list[dict] = []  # what the last answer brought

    def post(self, path, body, token=None):
        return self.client.post(
            f"/api/agent/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    def hello(self, running=(), protocol=1):
        return self.post(
            "/hello",
            {
                "protocol_version": protocol,
                "agent_version": "0.1.0",
                "restic_version": "0.14.0",
                "hostname": "web-1",
                "os": "linux",
                "arch": "x86_64",
                "boot_id": self.boot_id,
                "running": list(running),
            },
        )

    def poll(self, acks=None, running=(), wait=0):
        acks = list(self.unacked if acks is None else acks)
        response = self.post(
            "/poll",
            {"boot_id": self.boot_id, "acks": acks, "running": list(running), "wait": wait},
        )
        if response.status_code in (200, 204):  # a poll that got through: acks delivered
            commands = (response.get_json(silent=True) or {}).get("commands") or []
            self.unacked = [{"command_id": command["command_id"]} for command in commands]
        return response


def enroll_agent(app, hostname="web-1", *, bring_up=False) -> tuple[Agent, int]:
    """Enroll a host through the agent API: ``(agent, host_id)``.

    Unless ``bring_up``, its repository counts as checked already, so no automatic probe
    job gets in the way of tests about something else.
    """
    _, plain = mint_enrollment_token(app, hostname)
    response = app.test_client().post(
        "/api/agent/v1/enroll",
        json={
            "token": plain,
            "hostname": "ignored-when-token-names-one",
            "os": "linux",
            "arch": "x86_64",
            "agent_version": "0.1.0",
            "restic_version": "0.14.0",
            "protocol_version": 1,
        },
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["agent_token"].startswith("rma_")
    assert body["settings"]["poll_wait_seconds"] == 2
    if not bring_up:
        db.session.get(Host, body["host_id"]).repo_status = "ready"
        db.session.commit()
    return Agent(app, body["agent_token"]), body["host_id"]


# --- jobs ------------------------------------------------------------------------------------


def make_job(host: Host, kind="backup", status="succeeded", *, age=timedelta(0), **fields) -> Job:
    """A job row in any state, created ``age`` ago by the user alice (no command queued)."""
    job = Job(
        host_id=host.id,
        kind=kind,
        status=status,
        attempt_id="a" * 32,
        actor_type="user",
        actor_label="alice",
        created_at=utcnow() - age,
        **fields,
    )
    db.session.add(job)
    db.session.commit()
    return job


def queue_job(app, host: Host, kind: str = "probe") -> Job:
    """A job started the way the server starts one: queued, with its job.run command."""
    job = jobs.create_job(
        app.extensions["secretbox"], host, kind, params={}, actor=Actor.system(), now=utcnow()
    )
    db.session.commit()
    return job


class AgentCalls:
    """The agent's side of one job (log lines, events, the finish), in raw HTTP."""

    def __init__(self, app, token: str, job: Job):
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"}
        self.job_id = job.id
        self.attempt_id = job.attempt_id
        self.next_seq = 1
        self.events = 0

    def logs(self, texts, stream="stdout"):
        records = [{"ts": TS, "stream": stream, "text": text} for text in texts]
        response = self.client.post(
            f"/api/agent/v1/jobs/{self.job_id}/logs",
            json={"attempt_id": self.attempt_id, "first_seq": self.next_seq, "records": records},
            headers=self.headers,
        )
        assert response.status_code == 200, response.get_json()
        self.next_seq = response.get_json()["committed_seq"] + 1
        return response.get_json()

    def event(self, type_, **data):
        self.events += 1
        event = {
            "event_id": f"{self.job_id}-{type_}-{self.events}",
            "type": type_,
            "job_id": self.job_id,
            "attempt_id": self.attempt_id,
            "ts": TS,
            "data": data,
        }
        response = self.client.post(
            "/api/agent/v1/events", json={"events": [event]}, headers=self.headers
        )
        assert response.get_json()["rejected"] == [], response.get_json()
        return response.get_json()

    def finish(self, status="succeeded", **data):
        data.setdefault("exit_code", 0)
        self.event("job.finished", status=status, final_seq=self.next_seq - 1, **data)


def park_poll(agent: Agent, result: dict, key: str, wait: float = 10) -> threading.Thread:
    """``agent.poll(wait=wait)`` in a thread: its answer lands in ``result[key]`` and the
    seconds it took in ``result[key + "_seconds"]``."""

    def run():
        started = time.monotonic()
        result[key] = agent.poll(wait=wait)
        result[key + "_seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread
