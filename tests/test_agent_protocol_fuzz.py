"""Fuzz the agent protocol's bodies with hypothesis (issue 13): no answer is a 5xx, and a
refused request (any 4xx) leaves the database exactly as it was.

Each endpoint gets bodies of three kinds: any JSON value at all, a well-formed body with
one field replaced by any JSON value, and the well-formed body with hostile strings
(NUL, lone surrogates, megabyte-long text) and numbers (past 64 bits, NaN, Infinity)
put in its fields. Runs on SQLite, and on PostgreSQL when RM_TEST_DATABASE_URL is set
(tests/conftest.py). Derandomized with a fixed budget, so CI time stays under a minute.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.extensions import db
from app.models import Host
from app.models.types import utcnow
from app.services import rpc
from tests.factories import TS, enroll_agent, queue_job

AGENT = "/api/agent/v1"
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE_STRINGS = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "x\udfffy", "\U0001f600", "x" * 70_000, "../../etc", "%00"]
)
HOSTILE_NUMBERS = st.sampled_from(
    [0, -1, 2**63, -(2**63) - 1, 2**64, 10**30, 1.5, float("nan"), float("inf"), True]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | HOSTILE_STRINGS
    | HOSTILE_NUMBERS
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
DEEP = st.integers(min_value=30, max_value=3000).map(lambda depth: "[" * depth + "]" * depth)


def _valid_bodies(job, calls) -> dict[str, dict]:
    """One well-formed body per endpoint (path → body)."""
    event = {
        "event_id": "e-fuzz",
        "type": "job.progress",
        "job_id": job.id,
        "attempt_id": job.attempt_id,
        "ts": TS,
        "data": {"percent": 10.0, "files_done": 1, "current_files": ["/etc/hosts"]},
    }
    return {
        "/hello": {
            "protocol_version": 1,
            "agent_version": "0.1.0",
            "restic_version": "0.14.0",
            "hostname": "web-1",
            "os": "linux",
            "arch": "x86_64",
            "boot_id": "boot-1",
            "running": [{"job_id": job.id, "attempt_id": job.attempt_id, "state": "running"}],
        },
        "/poll": {
            "boot_id": "boot-1",
            "acks": [{"command_id": "c" * 32, "result": "accepted"}],
            "running": [{"job_id": job.id, "attempt_id": job.attempt_id, "state": "running"}],
            "wait": 0,
        },
        "/events": {"events": [event]},
        f"/jobs/{job.id}/logs": {
            "attempt_id": job.attempt_id,
            "first_seq": 1,
            "records": [{"ts": TS, "stream": "stdout", "text": "scanning /etc"}],
        },
        "/runs": {
            "run_id": "r" * 32,
            "schedule_id": 1,
            "schedule_version": 1,
            "kind": "backup",
            "params": {"group": "default", "paths": ["/etc"], "tags": ["default"]},
            "fired_at": TS,
        },
        f"/rpc/{calls['ls']}": {
            "ok": True,
            "result": {"items": [{"name": "etc", "type": "dir", "path": "/etc"}]},
        },
        f"/rpc/{calls['dump']}": {"ok": True, "result": {"name": "hosts", "size": 3}},
        f"/rpc/{calls['dump']}/end": {"ok": True, "bytes": 3, "sha256": "0" * 64},
        "/enroll": {"token": "rme_unknown", "hostname": "web-2", "protocol_version": 1},
    }


@pytest.fixture
def protocol(app_factory):
    """An enrolled agent, a running job and two rpc calls waiting for answers."""
    app = app_factory(RM_POLL_WAIT_SECONDS=2)
    with app.app_context():
        agent, _ = enroll_agent(app)
        app.config["RM_POLL_WAIT_SECONDS"] = 0  # a fuzzed poll never parks
        host = db.session.scalar(select(Host))
        host.last_seen_at = utcnow()
        job = queue_job(app, host, "backup")
        job.status, job.started_at = "running", utcnow()
        box = app.extensions["secretbox"]
        calls = {
            method: rpc.request_call(
                box,
                host,
                method,
                {"snapshot_id": "a" * 64, "path": "/etc"},
                key=method,
                now=utcnow(),
            ).id
            for method in ("ls", "dump")
        }
        db.session.commit()
        yield agent, _valid_bodies(job, calls)


def _state() -> list:
    """Every row of every table: what a refused request must not change."""
    db.session.rollback()
    rows = []
    for table in db.metadata.sorted_tables:
        rows.append(sorted(map(repr, db.session.execute(table.select()))))
    return rows


def _send(agent, path: str, payload: str):
    headers = {} if path == "/enroll" else {"Authorization": f"Bearer {agent.token}"}
    return agent.client.post(
        AGENT + path, data=payload, content_type="application/json", headers=headers
    )


def _check(agent, path: str, payload: str) -> None:
    before = _state()
    response = _send(agent, path, payload)
    assert response.status_code < 500, (path, payload[:300], response.get_data()[:300])
    if 400 <= response.status_code < 500:
        assert response.get_json() is not None, response.get_data()[:300]
        assert len(response.get_data()) < 4000, response.get_data()[:300]
        assert _state() == before, (path, payload[:300], response.get_json())


def _dump(value) -> str:
    return json.dumps(value, allow_nan=True)  # ensure_ascii keeps lone surrogates as \ud800


def _replace(body: dict, data) -> tuple[dict, str]:
    """``body`` with one of its fields (possibly nested one level) replaced by ``data``."""
    key = data.draw(st.sampled_from(sorted(body)))
    changed = json.loads(json.dumps(body))
    inner = changed[key]
    if isinstance(inner, list) and inner and isinstance(inner[0], dict):
        inner_key = data.draw(st.sampled_from(sorted(inner[0])))
        inner[0][inner_key] = data.draw(JSON | HOSTILE_STRINGS | HOSTILE_NUMBERS)
    elif isinstance(inner, dict) and inner and data.draw(st.booleans()):
        inner_key = data.draw(st.sampled_from(sorted(inner)))
        inner[inner_key] = data.draw(JSON | HOSTILE_STRINGS | HOSTILE_NUMBERS)
    else:
        changed[key] = data.draw(JSON | HOSTILE_STRINGS | HOSTILE_NUMBERS)
    return changed, key


@FUZZ
@given(data=st.data())
def test_no_body_gives_a_5xx_and_refusals_change_nothing(protocol, data):
    agent, bodies = protocol
    path = data.draw(st.sampled_from(sorted(bodies)))
    kind = data.draw(st.sampled_from(["any", "field", "field", "deep"]))
    if kind == "any":
        payload = _dump(data.draw(JSON))
    elif kind == "deep":
        payload = data.draw(DEEP)
    else:
        payload = _dump(_replace(bodies[path], data)[0])
    _check(agent, path, payload)


@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_every_endpoint_survives_its_own_body_with_one_field_changed(protocol, data):
    agent, bodies = protocol
    for path, body in sorted(bodies.items()):
        changed, _ = _replace(body, data)
        _check(agent, path, _dump(changed))
