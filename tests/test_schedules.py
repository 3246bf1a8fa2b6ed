"""Schedules on the server: CRUD, the schedule.set push and its ack, agent-started runs."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Command, Host, Job, Role, Schedule, SourceGroup
from app.services import schedules
from app.services.errors import ValidationFailed
from tests.factories import TS, enroll_agent, form_token

PRE_HOOK = "pg_dump --secret-Hook-Body > /var/backups/db.sql"
POST_HOOK = "echo host-default-post-Hook"


@pytest.fixture
def app(protocol_app):
    """The API clients below talk to the protocol app."""
    return protocol_app


@pytest.fixture
def host_with_groups(protocol_app):
    """An enrolled host with groups default (/etc, /home) and db (/var/lib/db, hooks)."""
    agent, host_id = enroll_agent(protocol_app)
    box = protocol_app.extensions["secretbox"]
    group = SourceGroup(host_id=host_id, name="db", includes=["/var/lib/db"], excludes=["*.tmp"])
    db.session.add(group)
    db.session.flush()
    group.sealed_pre_hook = box.seal(
        PRE_HOOK, table="source_groups", column="pre_hook", row_id=group.id
    )
    host = db.session.get(Host, host_id)
    host.sealed_post_hook = box.seal(POST_HOOK, table="hosts", column="post_hook", row_id=host_id)
    host.limit_download_kib = 2048
    db.session.commit()
    agent.poll()  # whatever enrollment queued is out of the way
    return agent, host_id


def _sets(host_id, states=("queued", "leased")):
    return list(
        db.session.scalars(
            select(Command)
            .where(
                Command.host_id == host_id,
                Command.type == "schedule.set",
                Command.state.in_(states),
            )
            .order_by(Command.created_at)
        )
    )


def _create(client, host_id, **fields):
    body = {"name": "nightly", "cron": "30 2 * * *", "source_groups": ["default"], **fields}
    return client.post(f"/api/v1/hosts/{host_id}/schedules", json=body)


# --- API CRUD ------------------------------------------------------------------------------


def test_create_list_update_delete_through_the_api(api, host_with_groups):
    _, host_id = host_with_groups
    operator = api()
    created = _create(operator, host_id, source_groups=["default", "db"], missed_policy="skip")
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["cron_description"] == "every day at 02:30"
    assert body["source_groups"] == ["db", "default"]
    assert body["enabled"] is True and body["missed_policy"] == "skip"
    assert len(body["next_runs"]) == 3 and all(at.endswith(":30:00Z") for at in body["next_runs"])
    assert body["last_run"] is None

    listing = api(Role.viewer).get(f"/api/v1/hosts/{host_id}/schedules").get_json()
    assert [item["name"] for item in listing["items"]] == ["nightly"]
    assert listing["schedule_version"] == 1
    assert listing["agent_schedule_version"] is None and listing["in_sync"] is False

    sid = body["id"]
    changed = operator.put(
        f"/api/v1/hosts/{host_id}/schedules/{sid}",
        json={"cron": "*/15 * * * *", "enabled": False, "source_groups": [body["id"] and "db"]},
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["cron_description"] == "every 15 minutes"
    assert changed.get_json()["enabled"] is False
    assert changed.get_json()["name"] == "nightly"  # absent fields stay
    assert db.session.get(Host, host_id).schedule_version == 2

    assert operator.delete(f"/api/v1/hosts/{host_id}/schedules/{sid}").status_code == 204
    assert operator.get(f"/api/v1/hosts/{host_id}/schedules/{sid}").status_code == 404
    db.session.expire_all()
    assert db.session.get(Host, host_id).schedule_version == 3
    actions = db.session.scalars(
        select(AuditLog.action).where(AuditLog.target_type == "schedule").order_by(AuditLog.id)
    ).all()
    assert actions == ["schedule.created", "schedule.updated", "schedule.deleted"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # seconds: more often than once a minute
        ({"cron": "@daily"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),  # never fires
        ({"cron": 5}, "cron"),
        ({"source_groups": []}, "source_groups"),
        ({"source_groups": ["nope"]}, "source_groups"),
        ({"source_groups": [999]}, "source_groups"),
        ({"enabled": "yes"}, "enabled"),
        ({"missed_policy": "always"}, "missed_policy"),
    ],
)
def test_invalid_schedules_are_refused_and_change_nothing(api, host_with_groups, fields, field):
    _, host_id = host_with_groups
    response = _create(api(), host_id, **fields)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["fields"]
    db.session.expire_all()
    assert db.session.scalar(select(func.count(Schedule.id))) == 0
    assert db.session.get(Host, host_id).schedule_version == 0
    assert _sets(host_id) == []


def test_names_are_unique_per_host_and_groups_belong_to_the_host(
    protocol_app, api, host_with_groups
):
    _, host_id = host_with_groups
    operator = api()
    assert _create(operator, host_id).status_code == 201
    again = _create(operator, host_id)
    assert again.status_code == 422 and "name" in again.get_json()["fields"]
    _, other_id = enroll_agent(protocol_app, "db-1")
    other_group = db.session.scalar(select(SourceGroup).where(SourceGroup.host_id == other_id))
    foreign = _create(operator, host_id, name="x", source_groups=[other_group.id])
    assert foreign.status_code == 422
    # Same name on another host is fine.
    assert _create(operator, other_id).status_code == 201


def test_viewer_cannot_write_and_other_hosts_schedules_are_not_found(
    protocol_app, api, host_with_groups
):
    _, host_id = host_with_groups
    sid = _create(api(), host_id).get_json()["id"]
    assert _create(api(Role.viewer), host_id, name="other").status_code == 403
    _, other_id = enroll_agent(protocol_app, "db-1")
    assert api().get(f"/api/v1/hosts/{other_id}/schedules/{sid}").status_code == 404
    assert api().delete(f"/api/v1/hosts/{other_id}/schedules/{sid}").status_code == 404


# --- schedule.set --------------------------------------------------------------------------


def test_schedule_set_carries_everything_with_hooks_only_sealed(api, host_with_groups):
    agent, host_id = host_with_groups
    _create(api(), host_id, source_groups=["db"])
    [command] = _sets(host_id)
    stored = json.dumps(command.payload)
    assert PRE_HOOK not in stored and POST_HOOK not in stored
    assert PRE_HOOK.encode() not in command.sealed_payload

    delivered = [c for c in agent.poll().get_json()["commands"] if c["type"] == "schedule.set"]
    assert len(delivered) == 1
    payload = delivered[0]["payload"]
    assert payload["version"] == 1
    assert payload["limits"] == {"upload_kib": None, "download_kib": 2048}
    assert payload["hooks_allowed_by_server"] is True
    groups = {group["name"]: group for group in payload["groups"]}
    assert set(groups) == {"db", "default"}  # every group, not only the scheduled ones
    assert groups["db"]["paths"] == ["/var/lib/db"] and groups["db"]["excludes"] == ["*.tmp"]
    assert groups["db"]["pre_hook"] == PRE_HOOK
    assert groups["db"]["post_hook"] == POST_HOOK  # the host default fills in
    assert groups["default"]["pre_hook"] is None
    [schedule] = payload["schedules"]
    assert schedule == {
        "id": schedule["id"],
        "name": "nightly",
        "cron": "30 2 * * *",
        "enabled": True,
        "missed_policy": "run_once",
        "groups": [groups["db"]["id"]],
    }


def test_newer_set_supersedes_older_ones_still_waiting(api, host_with_groups):
    agent, host_id = host_with_groups
    operator = api()
    _create(operator, host_id, name="one")
    _create(operator, host_id, name="two")
    _create(operator, host_id, name="three")
    [waiting] = _sets(host_id)
    assert waiting.payload["version"] == 3
    superseded = _sets(host_id, states=("acked",))
    assert [command.result for command in superseded] == ["superseded", "superseded"]
    delivered = [c for c in agent.poll().get_json()["commands"] if c["type"] == "schedule.set"]
    assert [c["payload"]["version"] for c in delivered] == [3]
    assert len(delivered[0]["payload"]["schedules"]) == 3


def test_ack_sets_agent_version_and_in_sync(api, host_with_groups):
    agent, host_id = host_with_groups
    viewer = api(Role.viewer)
    _create(api(), host_id)

    def ack(version, event_id):
        event = {"event_id": event_id, "type": "schedule.applied", "ts": TS, "data": {}}
        event["data"]["version"] = version
        response = agent.post("/events", {"events": [event]})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    assert ack(7, "e-future")["rejected"] == []  # above the server's version: ignored
    assert viewer.get(f"/api/v1/hosts/{host_id}/schedules").get_json()["in_sync"] is False
    assert ack(1, "e-1")["rejected"] == []
    listing = viewer.get(f"/api/v1/hosts/{host_id}/schedules").get_json()
    assert listing["agent_schedule_version"] == 1 and listing["in_sync"] is True
    assert ack("x", "e-bad")["rejected"][0]["error"] == "invalid_event"


def test_hello_pushes_the_set_again_when_the_agent_is_behind(api, host_with_groups):
    agent, host_id = host_with_groups
    _create(api(), host_id)
    agent.poll()  # delivered, never acked: leased
    agent.hello()
    assert len(_sets(host_id)) == 1  # one is still out there: no second copy
    for command in _sets(host_id):
        command.state = "acked"  # acked, but the agent lost its state afterwards
    db.session.commit()
    agent.hello()
    [again] = _sets(host_id)
    assert again.payload["version"] == 1
    host = db.session.get(Host, host_id)
    host.agent_schedule_version = 1
    for command in _sets(host_id):
        command.state = "acked"
    db.session.commit()
    agent.hello()
    assert _sets(host_id) == []  # in sync: nothing to send


def test_hello_sends_nothing_for_a_host_without_schedules(host_with_groups):
    agent, host_id = host_with_groups
    agent.hello()
    assert _sets(host_id) == []


# --- POST /runs ----------------------------------------------------------------------------


def _run(agent, run_id, schedule_id, /, *, token=None, **extra):
    body = {
        "run_id": run_id,
        "schedule_id": schedule_id,
        "schedule_version": 1,
        "kind": "backup",
        "params": {
            "group": "default",
            "paths": ["/etc", "/home"],
            "excludes": [],
            "tags": ["default"],
            "limit_upload_kib": None,
            "limit_download_kib": 2048,
            "pre_hook": PRE_HOOK,
        },
        "fired_at": "2026-11-25T02:30:00.000Z",
        **extra,
    }
    return agent.post("/runs", body, token=token)


def test_runs_are_registered_once_per_run_id(api, host_with_groups):
    agent, host_id = host_with_groups
    sid = _create(api(), host_id).get_json()["id"]
    first = _run(agent, "a" * 32, sid)
    assert first.status_code == 201, first.get_json()
    again = _run(agent, "a" * 32, sid)
    assert again.status_code == 200
    assert again.get_json() == first.get_json()
    other = _run(agent, "b" * 32, sid)
    assert other.status_code == 201
    assert other.get_json()["job_id"] != first.get_json()["job_id"]

    job = db.session.get(Job, first.get_json()["job_id"])
    assert job.status == "queued" and job.kind == "backup"
    assert (job.actor_type, job.actor_label, job.schedule_id) == ("schedule", "nightly", sid)
    assert job.attempt_id == first.get_json()["attempt_id"]
    assert "pre_hook" not in job.params and PRE_HOOK not in json.dumps(job.params)
    assert job.params["group"] == "default" and job.params["limit_download_kib"] == 2048
    assert job.created_at == datetime(2026, 11, 25, 2, 30, tzinfo=timezone.utc)
    # The agent runs it already: no job.run goes out.
    assert db.session.scalar(select(func.count()).where(Command.type == "job.run")) == 0

    # Events then flow under the returned ids, like any job.
    started = agent.post(
        "/events",
        {
            "events": [
                {
                    "event_id": "run-started",
                    "type": "job.started",
                    "job_id": job.id,
                    "attempt_id": job.attempt_id,
                    "ts": TS,
                    "data": {},
                }
            ]
        },
    )
    assert started.get_json()["rejected"] == []
    listing = api(Role.viewer).get(f"/api/v1/hosts/{host_id}/schedules").get_json()
    assert listing["items"][0]["last_run"]["job_id"] == other.get_json()["job_id"]


def test_a_run_of_a_deleted_schedule_is_still_recorded(api, host_with_groups):
    agent, host_id = host_with_groups
    operator = api()
    sid = _create(operator, host_id).get_json()["id"]
    operator.delete(f"/api/v1/hosts/{host_id}/schedules/{sid}")
    response = _run(agent, "c" * 32, sid)
    assert response.status_code == 201
    job = db.session.get(Job, response.get_json()["job_id"])
    assert (job.actor_label, job.schedule_id) == ("deleted schedule", None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "prune"}, "kind"),
        ({"run_id": ""}, "run_id"),
        ({"schedule_id": "x"}, "schedule_id"),
        ({"fired_at": "yesterday"}, "fired_at"),
        ({"params": {"paths": ["/etc"]}}, "group"),
        ({"params": {"group": 3}}, "group"),
        ({"params": {"group": "g", "paths": ["relative"]}}, "paths"),
        ({"params": {"group": "g", "excludes": "x"}}, "excludes"),
        ({"params": {"group": "g", "limit_upload_kib": -1}}, "limit_upload_kib"),
    ],
)
def test_runs_validate_every_field(host_with_groups, change, field):
    agent, _ = host_with_groups
    response = _run(agent, "d" * 32, None, **change)
    assert response.status_code == 422, response.get_json()
    assert any(field in name for name in response.get_json()["fields"])
    assert db.session.scalar(select(func.count(Job.id)).where(Job.run_id.is_not(None))) == 0


def test_runs_need_the_agent_token(protocol_app, host_with_groups):
    agent, _ = host_with_groups
    assert _run(agent, "e" * 32, None, token="rma_wrong").status_code == 401


def test_a_run_id_of_another_host_is_refused(protocol_app, host_with_groups):
    agent, _ = host_with_groups
    other, _ = enroll_agent(protocol_app, "db-1")
    assert _run(agent, "f" * 32, None).status_code == 201
    assert _run(other, "f" * 32, None).status_code == 409


# --- cron in words, next runs (pure) -------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("* * * * *", "every minute"),
        ("*/15 * * * *", "every 15 minutes"),
        ("0 * * * *", "every hour"),
        ("5 * * * *", "every hour at minute 5"),
        ("0 */6 * * *", "every 6 hours"),
        ("30 2 * * *", "every day at 02:30"),
        ("0 2,14 * * *", "every day at 02:00 and 14:00"),
        ("30 2 * * 1", "at 02:30 on Monday"),
        ("30 2 * * mon", "at 02:30 on Monday"),
        ("0 3 * * 0", "at 03:00 on Sunday"),
        ("0 3 * * 7", "at 03:00 on Sunday"),
        ("0 3 * * 1,3,5", "at 03:00 on Monday, Wednesday and Friday"),
        ("0 22 * * 1-5", "at 22:00 on weekdays"),
        ("0 4 1 * *", "at 04:00 on day 1 of every month"),
        ("0 4 1 1 *", "0 4 1 1 *"),
        ("0 4-6 * * *", "0 4-6 * * *"),
        ("0 4 L * *", "0 4 L * *"),
    ],
)
def test_cron_in_words(cron, words):
    assert schedules.describe(cron) == words


def test_next_runs_are_in_utc():
    after = datetime(2026, 11, 25, 2, 30, 0, tzinfo=timezone.utc)
    runs = schedules.next_runs("30 2 * * *", 3, after=after)
    assert runs == [datetime(2026, 11, day, 2, 30, tzinfo=timezone.utc) for day in (26, 27, 28)]
    assert schedules.next_runs("*/15 * * * *", 2, after=after) == [
        datetime(2026, 11, 25, 2, 45, tzinfo=timezone.utc),
        datetime(2026, 11, 25, 3, 0, tzinfo=timezone.utc),
    ]


def test_validate_cron_normalises_spaces():
    assert schedules.validate_cron("  30   2 * *  * ") == "30 2 * * *"
    with pytest.raises(ValidationFailed):
        schedules.validate_cron("30 2 * *")


# --- the Schedules tab ---------------------------------------------------------------------


@pytest.fixture
def browser(protocol_app, login_as, host_with_groups):
    return login_as(Role.operator)


def _groups_by_name(host_id):
    return {
        group.name: group.id
        for group in db.session.scalars(select(SourceGroup).where(SourceGroup.host_id == host_id))
    }


def test_schedules_tab_creates_edits_toggles_and_deletes(browser, host_with_groups):
    _, host_id = host_with_groups
    page = f"/hosts/{host_id}/schedules"
    groups = _groups_by_name(host_id)
    html = browser.get(page).get_data(as_text=True)
    assert "No schedules yet" in html and 'aria-current="page"' in html
    assert "30 2 * * *" in html  # a preset next to the cron field

    created = browser.post(
        page,
        data={
            "csrf_token": form_token(browser, page),
            "name": "nightly",
            "cron": "30 2 * * 1",
            "source_groups": [str(groups["db"])],
            "missed_policy": "skip",
            "enabled": "y",
        },
    )
    assert created.status_code == 302, created.get_data(as_text=True)
    html = browser.get(page).get_data(as_text=True)
    assert "at 02:30 on Monday" in html and "Next runs (UTC)" in html
    assert "schedules</a> waiting for the agent" in html
    schedule = db.session.scalar(select(Schedule))
    assert schedule.missed_policy == "skip" and [g.name for g in schedule.source_groups] == ["db"]

    edit = f"{page}/{schedule.id}/edit"
    assert 'value="nightly"' in browser.get(edit).get_data(as_text=True)
    saved = browser.post(
        edit,
        data={
            "csrf_token": form_token(browser, edit),
            "name": "nightly",
            "cron": "*/15 * * * *",
            "source_groups": [str(groups["db"]), str(groups["default"])],
            "missed_policy": "run_once",
        },
    )
    assert saved.status_code == 302
    db.session.expire_all()
    assert schedule.cron == "*/15 * * * *" and schedule.enabled is False
    assert len(schedule.source_groups) == 2

    toggled = browser.post(
        f"{page}/{schedule.id}/enabled", data={"csrf_token": form_token(browser, page)}
    )
    assert toggled.status_code == 302
    db.session.expire_all()
    assert schedule.enabled is True

    deleted = browser.post(
        f"{page}/{schedule.id}/delete", data={"csrf_token": form_token(browser, page)}
    )
    assert deleted.status_code == 302
    assert db.session.scalar(select(func.count(Schedule.id))) == 0
    assert db.session.get(Host, host_id).schedule_version == 4


def test_a_refused_form_keeps_the_input_and_changes_nothing(browser, host_with_groups):
    _, host_id = host_with_groups
    page = f"/hosts/{host_id}/schedules"
    groups = _groups_by_name(host_id)
    response = browser.post(
        page,
        data={
            "csrf_token": form_token(browser, page),
            "name": "weekly-typo",
            "cron": "0 3 * * * *",
            "source_groups": [str(groups["db"])],
            "missed_policy": "run_once",
        },
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'value="weekly-typo"' in html and 'value="0 3 * * * *"' in html
    assert "Use exactly five fields" in html
    no_groups = browser.post(
        page,
        data={
            "csrf_token": form_token(browser, page),
            "name": "x",
            "cron": "0 3 * * *",
            "missed_policy": "skip",
        },
    )
    assert no_groups.status_code == 422
    assert "Pick at least one source group" in no_groups.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.scalar(select(func.count(Schedule.id))) == 0
    assert db.session.get(Host, host_id).schedule_version == 0


def test_a_refused_edit_leaves_the_schedule_as_it_was(browser, api, host_with_groups):
    _, host_id = host_with_groups
    operator = api()
    first = _create(operator, host_id).get_json()
    _create(operator, host_id, name="other")
    page = f"/hosts/{host_id}/schedules"
    response = browser.post(
        f"{page}/{first['id']}/edit",
        data={
            "csrf_token": form_token(browser, page),
            "name": "other",
            "cron": "0 5 * * *",
            "source_groups": [str(_groups_by_name(host_id)["default"])],
            "missed_policy": "run_once",
            "enabled": "y",
        },
    )
    assert response.status_code == 422
    assert "already has a schedule named" in response.get_data(as_text=True)
    db.session.expire_all()
    schedule = db.session.get(Schedule, first["id"])
    assert (schedule.name, schedule.cron) == ("nightly", "30 2 * * *")
    assert db.session.get(Host, host_id).schedule_version == 2


def test_viewer_sees_schedules_but_no_forms(login_as, api, host_with_groups):
    _, host_id = host_with_groups
    _create(api(), host_id)
    html = login_as(Role.viewer).get(f"/hosts/{host_id}/schedules").get_data(as_text=True)
    assert "every day at 02:30" in html
    assert "New schedule" not in html and "Delete…" not in html


def test_host_header_says_in_sync_after_the_ack(login_as, api, host_with_groups):
    agent, host_id = host_with_groups
    _create(api(), host_id)
    event = {"event_id": "e1", "type": "schedule.applied", "ts": TS, "data": {"version": 1}}
    agent.post("/events", {"events": [event]})
    viewer = login_as(Role.viewer)
    assert "schedules</a> applied" in viewer.get(f"/hosts/{host_id}").get_data(as_text=True)
    _create(api(), host_id, name="second")
    html = viewer.get(f"/hosts/{host_id}").get_data(as_text=True)
    assert "schedules</a> waiting for the agent" in html and "(server 2)" not in html


def test_dashboard_shows_the_next_run_of_a_single_schedule(login_as, api, host_with_groups):
    _, host_id = host_with_groups
    operator = api()
    viewer = login_as(Role.viewer)
    _create(operator, host_id, cron="17 4 * * *")
    assert "04:17 UTC" in viewer.get("/").get_data(as_text=True)
    _create(operator, host_id, name="second", cron="18 5 * * *")
    html = viewer.get("/").get_data(as_text=True)
    assert "04:17 UTC" not in html and "05:18 UTC" not in html  # two schedules: no single answer


def test_a_concurrent_registration_of_the_same_run_answers_with_the_first_job(
    monkeypatch, host_with_groups
):
    """The insert of the loser of a race hits the unique run_id and returns the winner."""
    from app.services import jobs

    agent, _ = host_with_groups
    first = _run(agent, "9" * 32, None)
    looked_up = jobs._registered_run
    calls = []

    def miss_once(host, run_id):
        calls.append(run_id)
        return None if len(calls) == 1 else looked_up(host, run_id)

    monkeypatch.setattr(jobs, "_registered_run", miss_once)
    again = _run(agent, "9" * 32, None)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()
    assert db.session.scalar(select(func.count(Job.id))) == 1
