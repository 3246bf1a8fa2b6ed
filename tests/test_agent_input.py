"""The agent protocol's input boundary (app/agent_api/parse.py): odd bodies are a 4xx that
names the field and changes nothing, never a 500 (issue 13)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import AgentEvent, Host, Job, JobLog
from app.models.types import utcnow
from tests.factories import TS, enroll_agent, queue_job

AGENT = "/api/agent/v1"


@pytest.fixture
def agent(protocol_app):
    agent, _ = enroll_agent(protocol_app)
    return agent


@pytest.fixture
def job(protocol_app, agent):
    host = db.session.scalar(select(Host))
    job = queue_job(protocol_app, host)
    job.status, job.started_at = "running", utcnow()
    db.session.commit()
    return job


def _raw(agent, path: str, text: str):
    return agent.client.post(
        AGENT + path,
        data=text,
        content_type="application/json",
        headers={"Authorization": f"Bearer {agent.token}"},
    )


def _state():
    db.session.expire_all()
    host = db.session.scalar(select(Host))
    return (
        (host.boot_id, host.hostname, host.os, host.agent_version),
        db.session.scalars(select(AgentEvent.event_id)).all(),
        db.session.scalars(select(Job.id)).all(),
        db.session.scalars(select(JobLog.text)).all(),
    )


def _refused(response, field: str | None = None, status: int = 422) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert set(body) >= {"error", "message"} and len(response.get_data()) < 2000, body
    if field is not None:
        assert list(body["fields"]) == [field], body
    return body


def _event(**fields):
    return {"event_id": "e1", "type": "schedule.applied", "ts": TS, "data": {}, **fields}


@pytest.mark.parametrize("path", ["/hello", "/poll", "/events", "/runs", "/rpc/abc", "/enroll"])
def test_deep_nesting_is_a_400_not_a_recursion_error(agent, path):
    before = _state()
    for text in ("[" * 50_000, '{"a": ' * 10_000):  # under enroll's 64 KiB body limit
        _refused(_raw(agent, path, text), status=400)
    nested = {"events": [_event(data={"a": json.loads("[" * 40 + "]" * 40)})]}
    body = _refused(agent.post("/events", nested))
    (field,) = body["fields"]
    assert field.startswith("events[0].data.a[0][0]") and field.endswith("…"), body
    assert _state() == before


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/hello", {"protocol_version": 1, "boot_id": "b\x00"}, "boot_id"),
        ("/hello", {"protocol_version": 1, "hostname": "web\x00"}, "hostname"),
        ("/poll", {"boot_id": "b\x00", "wait": 0}, "boot_id"),
        ("/poll", {"acks": [{"command_id": "c\x00"}], "wait": 0}, "acks[0].command_id"),
        ("/events", {"events": [_event(event_id="e\x00")]}, "events[0].event_id"),
        ("/events", {"events": [_event(data={"reason": "x\x00"})]}, "events[0].data.reason"),
        ("/events", {"events": [_event(data={"k\x00": 1})]}, "events[0].data"),
        ("/runs", {"run_id": "r\x00", "kind": "backup"}, "run_id"),
    ],
)
def test_nul_characters_are_refused_with_the_field_named(agent, path, body, field):
    before = _state()
    assert "NUL" in _refused(agent.post(path, body), field)["message"]
    assert _state() == before


@pytest.mark.parametrize(
    "path, text, field",
    [
        ("/hello", '{"protocol_version": 1, "hostname": "\\ud800"}', "hostname"),
        ("/poll", '{"boot_id": "\\udfff", "wait": 0}', "boot_id"),
        (
            "/events",
            '{"events": [{"event_id": "\\ud800", "type": "x", "ts": "' + TS + '"}]}',
            "events[0].event_id",
        ),
        (
            "/runs",
            '{"run_id": "r", "kind": "backup", "params": {"paths": ["/\\udc80"]}}',
            "params.paths[0]",
        ),
    ],
)
def test_lone_surrogates_are_refused_with_the_field_named(agent, path, text, field):
    before = _state()
    assert "surrogate" in _refused(_raw(agent, path, text), field)["message"]
    assert _state() == before


def test_log_text_keeps_nul_stripped_but_refuses_surrogates(agent, job):
    def send(text: str):
        return _raw(
            agent,
            f"/jobs/{job.id}/logs",
            f'{{"attempt_id": "{job.attempt_id}", "first_seq": 1, "records": [{{"ts": "{TS}",'
            f' "stream": "stdout", "text": "{text}"}}]}}',
        )

    before = _state()
    _refused(send("bad \\ud800"), "records[0].text")
    assert _state() == before
    assert send("a\\u0000b").status_code == 200
    assert _state()[3] == ["ab"]


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/hello", {"protocol_version": "1"}, "protocol_version"),
        ("/hello", {"protocol_version": True}, "protocol_version"),
        ("/poll", {"wait": "5"}, "wait"),
        ("/poll", {"boot_id": 7, "wait": 0}, "boot_id"),
        ("/runs", {"run_id": "r", "schedule_id": "12", "kind": "backup"}, "schedule_id"),
        ("/runs", {"run_id": "r", "schedule_version": 1.5, "kind": "backup"}, "schedule_version"),
        ("/enroll", {"token": "rme_x", "protocol_version": "1"}, "protocol_version"),
        ("/rpc/abc", {"ok": "true"}, "ok"),
    ],
)
def test_strings_are_not_integers(agent, path, body, field):
    before = _state()
    _refused(agent.post(path, body), field)
    assert _state() == before


def test_log_batches_take_integers_only(agent, job):
    response = agent.post(
        f"/jobs/{job.id}/logs",
        {"attempt_id": job.attempt_id, "first_seq": "1", "records": []},
    )
    _refused(response, "first_seq")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"events": [_event(data={"version": 2**64})]}, "events[0].data.version"),
        ({"events": [_event(job_id=2**70)]}, "events[0].job_id"),
        ({"events": [_event(data={"n": -(2**63) - 1})]}, "events[0].data.n"),
    ],
)
def test_integers_stay_within_64_bits(agent, body, field):
    before = _state()
    _refused(agent.post("/events", body), field)
    assert _state() == before


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_numbers_are_finite(agent, number):
    text = '{"events": [{"event_id": "e1", "type": "x", "ts": "TS", "data": {"p": N}}]}'
    response = _raw(agent, "/events", text.replace("TS", TS).replace("N", number))
    _refused(response, "events[0].data.p")


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:00:00-05:00",  # past year 9999 in UTC: no OverflowError
        "9999-06-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "x" * 100_000,
    ],
)
def test_times_are_iso_8601_within_a_sane_range(agent, ts):
    before = _state()
    _refused(agent.post("/events", {"events": [_event(ts=ts)]}), "events[0].ts")
    run = {"run_id": "r1", "kind": "backup", "params": {"group": "default", "paths": ["/etc"]}}
    _refused(agent.post("/runs", {**run, "fired_at": ts}), "fired_at")
    assert _state() == before


def test_a_clock_without_battery_is_still_believed(agent):
    """An agent whose clock says 1970 (no RTC yet) is wrong, but its events are kept."""
    response = agent.post("/events", {"events": [_event(ts="1970-01-01T00:00:05Z")]})
    assert response.status_code == 200 and response.get_json()["acked"] == ["e1"]


def test_huge_values_and_keys_are_not_echoed(agent):
    for body in (
        {"events": [_event(event_id="e" * 1_000_000)]},
        {"events": [_event(data={"k" * 1_000_000: 1})]},
        {"boot_id": "b" * 1_000_000, "wait": 0},
        {"events": [_event(ts="2026" + "9" * 1_000_000)]},
    ):
        path = "/poll" if "boot_id" in body else "/events"
        _refused(agent.post(path, body))
