"""Host lifecycle (issue 15): delete a host (its agent gets 410), rename, tags and bulk tags,
over the JSON API and the services, on real rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import (
    AgentToken,
    Alert,
    AuditLog,
    Command,
    Host,
    HostCredential,
    Job,
    JobLog,
    RepoStats,
    RetiredAgentToken,
    Role,
    Schedule,
    Silence,
    Snapshot,
    SourceGroup,
)
from app.models.types import utcnow
from app.services import alerts, hosts
from app.services.audit import Actor
from app.services.errors import ValidationFailed
from tests.factories import (
    TS,
    bearer_headers,
    csrf_token,
    enroll_agent,
    form_token,
    make_enrolled_host,
    make_host,
    make_job,
    make_user,
    mint_enrollment_token,
    queue_job,
)

API = "/api/v1"
ADMIN = Actor("user", None, "admin")


def _fill(app, host: Host) -> None:
    """Everything a working host accumulates: jobs, logs, snapshots, stats, a schedule,
    an alert, a silence, a queued command."""
    now = utcnow()
    job = make_job(host, status="failed")
    db.session.add(JobLog(job_id=job.id, seq=1, ts=now, stream="stdout", text="hello"))
    db.session.add(Snapshot(host_id=host.id, snapshot_id="a" * 64, short_id="aaaaaaaa", time=now))
    db.session.add(RepoStats(host_id=host.id, job_id=job.id, taken_at=now, total_size=10))
    group = db.session.scalar(select(SourceGroup).where(SourceGroup.host_id == host.id))
    schedule = Schedule(host_id=host.id, name="nightly", cron="0 3 * * *")
    schedule.source_groups = [group]
    db.session.add(schedule)
    db.session.add(
        Silence(
            host_id=host.id, reason="maintenance", ends_at=now + timedelta(hours=1), created_by="t"
        )
    )
    db.session.commit()
    alerts.fire(alerts.Context(now, host_ids=[host.id]), host, "backup_failed", "default", "failed")
    db.session.commit()
    queue_job(app, host)


def _count(model, host_id: int) -> int:
    return db.session.scalar(
        select(func.count()).select_from(model).where(model.host_id == host_id)
    )


def _delete(client, host_id: int, confirm="web-1"):
    return client.delete(f"{API}/hosts/{host_id}", json={"confirm_hostname": confirm})


# --- delete -----------------------------------------------------------------------------------


def test_delete_needs_the_hostname_typed_exactly(app, api):
    host, _ = make_enrolled_host("web-1")
    admin = api(Role.admin)
    for wrong in ("web-2", "WEB-1", "", None, 7, "web-1\x00"):
        response = admin.delete(f"{API}/hosts/{host.id}", json={"confirm_hostname": wrong})
        assert response.status_code == 422, (wrong, response.get_json())
        assert "confirm_hostname" in response.get_json()["fields"]
    assert admin.delete(f"{API}/hosts/{host.id}").status_code == 422  # no body at all
    response = admin.delete(f"{API}/hosts/{host.id}", json={"confirm_hostname": "web-1", "x": 1})
    assert response.status_code == 422 and "x" in response.get_json()["fields"]
    db.session.expire_all()
    assert db.session.get(Host, host.id) is not None


def test_delete_removes_everything_of_the_host_and_nothing_else(app, api):
    host, plain = make_enrolled_host("web-1")
    other, other_plain = make_enrolled_host("db-1")
    _fill(app, host)
    _fill(app, other)
    host_id = host.id
    job_ids = list(db.session.scalars(select(Job.id).where(Job.host_id == host_id)))
    before = {model: _count(model, other.id) for model in _HOST_TABLES}

    response = _delete(api(Role.admin), host_id)
    assert response.status_code == 204, response.get_data(as_text=True)

    db.session.expire_all()
    assert db.session.get(Host, host_id) is None
    for model in _HOST_TABLES:
        assert _count(model, host_id) == 0, model.__name__
        assert _count(model, other.id) == before[model], model.__name__
    assert db.session.scalar(select(func.count(JobLog.id)).where(JobLog.job_id.in_(job_ids))) == 0
    assert db.session.scalar(select(func.count(Schedule.id))) == 1  # the other host's
    retired = db.session.scalars(select(RetiredAgentToken)).all()
    assert [(row.host_id, row.hostname) for row in retired] == [(host_id, "web-1")]
    row = db.session.scalar(select(AuditLog).where(AuditLog.action == "host.deleted"))
    assert row.target_id == str(host_id) and row.payload["hostname"] == "web-1"
    assert plain not in str(row.payload)
    # the other host's agent carries on
    other_call = app.test_client().post(
        "/api/agent/v1/hello",
        json={"protocol_version": 1, "boot_id": "boot-1", "running": []},
        headers={"Authorization": f"Bearer {other_plain}"},
    )
    assert other_call.status_code == 200


_HOST_TABLES = (Job, Snapshot, RepoStats, Schedule, Alert, Silence, Command, SourceGroup)
_HOST_TABLES += (AgentToken, HostCredential)


def _admin(app):
    """A test client of ``app`` with an administrator's personal access token."""
    client = app.test_client()
    client.environ_base.update(bearer_headers(make_user(Role.admin)))
    client.environ_base["HTTP_AUTHORIZATION"] = client.environ_base.pop("Authorization")
    return client


def test_the_deleted_hosts_agent_gets_410_on_every_call(protocol_app):
    app = protocol_app
    agent, host_id = enroll_agent(app, "web-1")
    assert agent.hello().status_code == 200
    job_id = make_job(db.session.get(Host, host_id), status="running").id
    assert _delete(_admin(app), host_id).status_code == 204

    calls = [
        agent.hello(),
        agent.poll(),
        agent.post("/events", {"events": [{"event_id": "e" * 32, "type": "x", "ts": TS}]}),
        agent.post(f"/jobs/{job_id}/logs", {"attempt_id": "a" * 32, "first_seq": 1, "records": []}),
        agent.post("/runs", {}),
    ]
    for response in calls:
        assert response.status_code == 410, response.get_data(as_text=True)
        body = response.get_json()
        assert body["error"] == "host_deleted"
        assert "This host (web-1) was deleted on the server" in body["message"]
        assert "the agent stops" in body["message"]
    # an unknown token is still 401, not 410
    assert agent.post("/hello", {}, token="rma_unknown").status_code == 401


def test_the_same_hostname_enrolls_again_after_a_delete(protocol_app):
    app = protocol_app
    _, plain = mint_enrollment_token(app, "web-1")  # minted before the host exists
    old, host_id = enroll_agent(app, "web-1")
    refused = app.test_client().post(
        "/api/agent/v1/enroll", json={"token": plain, "protocol_version": 1}
    )
    assert refused.status_code == 409
    assert "DELETE /api/v1/hosts/{id}" in refused.get_json()["message"]
    assert _delete(_admin(app), host_id).status_code == 204

    again, new_id = enroll_agent(app, "web-1")  # SQLite may even give it the same id
    assert again.hello().status_code == 200
    assert old.hello().status_code == 410  # the old agent's token stays retired
    assert db.session.get(Host, new_id).hostname == "web-1"


def test_only_admins_change_or_delete_hosts(app, api):
    host = make_host("web-1")
    for role in (Role.viewer, Role.operator):
        client = api(role)
        assert _delete(client, host.id).status_code == 403
        assert client.patch(f"{API}/hosts/{host.id}", json={"tags": ["x"]}).status_code == 403
        bulk = client.post(f"{API}/hosts/tags", json={"host_ids": [host.id], "add": ["x"]})
        assert bulk.status_code == 403
    assert api(Role.viewer).get(f"{API}/hosts?tag=x").status_code == 200
    refused = api(Role.viewer).get(f"{API}/hosts?tag=not%20a%20tag")
    assert refused.status_code == 422 and "tag" in refused.get_json()["fields"]
    db.session.expire_all()
    assert db.session.get(Host, host.id).tags == []


def test_delete_of_an_unknown_host_is_404(app, api):
    assert _delete(api(Role.admin), 2**31 - 1).status_code == 404


# --- rename and tags ----------------------------------------------------------------------------


def test_rename_and_retag_through_patch(app, api):
    host = make_host("web-1")
    make_host("db-1")
    admin = api(Role.admin)
    response = admin.patch(
        f"{API}/hosts/{host.id}", json={"hostname": "web-2", "tags": ["eu", "db", "eu"]}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["hostname"] == "web-2"
    assert response.get_json()["tags"] == ["eu", "db"]
    put = admin.put(f"{API}/hosts/{host.id}", json={"tags": ["db"]})
    assert put.status_code == 200 and put.get_json()["tags"] == ["db"]

    taken = admin.patch(f"{API}/hosts/{host.id}", json={"hostname": "db-1", "tags": ["zz"]})
    assert taken.status_code == 409 and taken.get_json()["error"] == "hostname_taken"
    db.session.expire_all()
    assert (db.session.get(Host, host.id).hostname, db.session.get(Host, host.id).tags) == (
        "web-2",
        ["db"],
    )
    actions = db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
    assert actions.count("host.renamed") == 1 and actions.count("host.tags_changed") == 2


@pytest.mark.parametrize(
    "tags, problem",
    [
        (["ok", "bad tag"], "is not a tag"),
        (["a" * 65], "is not a tag"),
        (["-lead"], "is not a tag"),
        (["semi;colon"], "is not a tag"),
        (["nul\x00"], "NUL"),
        ([f"t{n}" for n in range(21)], "At most 20 tags"),
        ("db", "must be a JSON array"),
        ([1], "string"),
    ],
)
def test_bad_tags_are_refused_and_nothing_changes(app, api, tags, problem):
    host = make_host("web-1", tags=["keep"])
    response = api(Role.admin).patch(f"{API}/hosts/{host.id}", json={"tags": tags})
    assert response.status_code == 422, response.get_json()
    assert problem in response.get_json()["message"], response.get_json()
    db.session.expire_all()
    assert db.session.get(Host, host.id).tags == ["keep"]


def test_patch_refuses_unknown_keys_bad_names_and_wrong_types(app, api):
    host = make_host("web-1")
    admin = api(Role.admin)
    for body, field in (
        ({"os": "linux"}, "os"),
        ({"hostname": "bad name"}, "hostname"),
        ({"hostname": 5}, "hostname"),
        ({"hostname": "x" * 300}, "hostname"),
    ):
        response = admin.patch(f"{API}/hosts/{host.id}", json=body)
        assert response.status_code == 422, (body, response.get_json())
        assert field in response.get_json()["fields"]
    db.session.expire_all()
    assert db.session.get(Host, host.id).hostname == "web-1"


def test_the_form_text_splits_on_commas_and_spaces(app):
    assert hosts.parse_tags("db, eu  prod,,db") == ["db", "eu", "prod"]
    with pytest.raises(ValidationFailed) as refused:
        hosts.parse_tags("ok b/ad")
    assert refused.value.fields["tags"] == [
        "'b/ad' is not a tag: a tag is 1-64 letters, digits and . _ : @ + - "
        "(starting with a letter or digit)."
    ]


def test_list_hosts_filters_by_tag(app, api):
    make_host("web-1", tags=["db", "eu"])
    make_host("web-2", tags=["eu"])
    make_host("web-3")
    viewer = api(Role.viewer)

    def names(tag):
        items = viewer.get(f"{API}/hosts?tag={tag}").get_json()["items"]
        return [item["hostname"] for item in items]

    assert names("eu") == ["web-1", "web-2"]
    assert names("db") == ["web-1"]
    assert names("none") == []
    assert len(viewer.get(f"{API}/hosts").get_json()["items"]) == 3


def test_bulk_tags_add_and_remove(app, api):
    one = make_host("web-1", tags=["staging"])
    two = make_host("web-2", tags=["eu"])
    untouched = make_host("web-3", tags=["staging"])
    admin = api(Role.admin)
    response = admin.post(
        f"{API}/hosts/tags",
        json={"host_ids": [one.id, two.id], "add": ["eu", "prod"], "remove": ["staging"]},
    )
    assert response.status_code == 200, response.get_json()
    assert {h["hostname"]: h["tags"] for h in response.get_json()["items"]} == {
        "web-1": ["eu", "prod"],
        "web-2": ["eu", "prod"],
    }
    db.session.expire_all()
    assert db.session.get(Host, untouched.id).tags == ["staging"]
    row = db.session.scalar(select(AuditLog).where(AuditLog.action == "host.tags_bulk_changed"))
    assert row.payload["hosts"] == ["web-1", "web-2"]

    for body, field in (
        ({"host_ids": [], "add": ["x"]}, "host_ids"),
        ({"host_ids": [one.id]}, "add"),
        ({"host_ids": ["1"], "add": ["x"]}, "host_ids"),
        ({"host_ids": [2**63], "add": ["x"]}, "host_ids"),
        ({"host_ids": [one.id], "add": ["bad tag"]}, "add"),
        ({"host_ids": [one.id], "add": ["x"], "colour": "red"}, "colour"),
    ):
        refused = admin.post(f"{API}/hosts/tags", json=body)
        assert refused.status_code == 422, (body, refused.get_json())
        assert field in refused.get_json()["fields"], (body, refused.get_json())
    missing = admin.post(f"{API}/hosts/tags", json={"host_ids": [one.id, 2**31 - 1], "add": ["x"]})
    assert missing.status_code == 404
    db.session.expire_all()
    assert db.session.get(Host, one.id).tags == ["eu", "prod"]


def test_bulk_tags_keep_the_per_host_limit(app):
    host = make_host("web-1", tags=[f"t{n}" for n in range(20)])
    with pytest.raises(ValidationFailed):
        hosts.bulk_tags([host.id], ["one-more"], actor=ADMIN)


# --- pages: the host's Manage tab and the dashboard's bulk tagging ------------------------------


def test_manage_tab_renames_retags_with_field_errors(app, login_as):
    host = make_host("web-1", tags=["keep"])
    make_host("db-1")
    browser = login_as(Role.admin)
    page = browser.get(f"/hosts/{host.id}/manage").get_data(as_text=True)
    assert "The repository itself is untouched" in page and "The agent stops" in page
    token = csrf_token(page)

    bad = browser.post(
        f"/hosts/{host.id}/manage/tags", data={"csrf_token": token, "tags": "db b/ad"}
    )
    assert bad.status_code == 422
    text = bad.get_data(as_text=True)
    assert 'aria-invalid="true"' in text and "&#39;b/ad&#39; is not a tag" in text
    assert 'value="db b/ad"' in text  # what was typed stays to be corrected
    good = browser.post(
        f"/hosts/{host.id}/manage/tags", data={"csrf_token": token, "tags": "db, eu eu"}
    )
    assert good.status_code == 302
    taken = browser.post(
        f"/hosts/{host.id}/manage/rename", data={"csrf_token": token, "hostname": "db-1"}
    )
    assert taken.status_code == 409
    assert "Another host is already named db-1." in taken.get_data(as_text=True)
    renamed = browser.post(
        f"/hosts/{host.id}/manage/rename", data={"csrf_token": token, "hostname": "web-9"}
    )
    assert renamed.status_code == 302
    db.session.expire_all()
    assert (db.session.get(Host, host.id).hostname, db.session.get(Host, host.id).tags) == (
        "web-9",
        ["db", "eu"],
    )


def test_manage_tab_deletes_only_with_the_hostname_typed(app, login_as):
    host_id = make_host("web-1").id
    browser = login_as(Role.admin)
    token = form_token(browser, f"/hosts/{host_id}/manage")
    wrong = browser.post(
        f"/hosts/{host_id}/manage/delete", data={"csrf_token": token, "confirm_hostname": "web"}
    )
    assert wrong.status_code == 422
    assert "Type the hostname (web-1) exactly" in wrong.get_data(as_text=True)
    no_csrf = browser.post(f"/hosts/{host_id}/manage/delete", data={"confirm_hostname": "web-1"})
    assert no_csrf.status_code == 400
    db.session.expire_all()
    assert db.session.get(Host, host_id) is not None
    done = browser.post(
        f"/hosts/{host_id}/manage/delete",
        data={"csrf_token": token, "confirm_hostname": "web-1"},
        follow_redirects=True,
    )
    assert done.status_code == 200
    assert "web-1 was deleted. Its repository is untouched" in done.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Host, host_id) is None


def test_dashboard_bulk_tags_the_selected_hosts(app, login_as):
    one, two, three = make_host("web-1"), make_host("web-2"), make_host("web-3", tags=["old"])
    operator = login_as(Role.operator)
    assert 'form="bulk-tags"' not in operator.get("/").get_data(as_text=True)
    browser = login_as(Role.admin)
    page = browser.get("/").get_data(as_text=True)
    assert page.count('form="bulk-tags"') == 3 and 'id="bulk-tags"' in page
    token = csrf_token(page)
    added = browser.post(
        "/hosts/tags",
        data={
            "csrf_token": token,
            "host_ids": [one.id, two.id],
            "tag": "db eu",
            "action": "add",
            "return_to": "/?tag=old",
        },
    )
    assert added.status_code == 302 and added.headers["Location"].endswith("/?tag=old")
    removed = browser.post(
        "/hosts/tags",
        data={"csrf_token": token, "host_ids": [two.id], "tag": "eu", "action": "remove"},
        follow_redirects=True,
    )
    assert "eu removed from web-2." in removed.get_data(as_text=True)
    nothing = browser.post(
        "/hosts/tags",
        data={"csrf_token": token, "tag": "db", "action": "add", "return_to": "https://evil/"},
        follow_redirects=True,
    )
    assert "select at least one host" in nothing.get_data(as_text=True)
    db.session.expire_all()
    assert [db.session.get(Host, h.id).tags for h in (one, two, three)] == [
        ["db", "eu"],
        ["db"],
        ["old"],
    ]
    filtered = browser.get("/?tag=db").get_data(as_text=True)
    assert "web-1" in filtered and "web-2" in filtered and ">web-3<" not in filtered
