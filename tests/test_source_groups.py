"""Source groups: rules, JSON API, Sources tab, retention preview and backup hooks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Command, Host, Job, Role, Schedule, Snapshot, SourceGroup
from app.models.types import utcnow
from app.services import commands
from tests.factories import form_token, make_host

HOOK = "pg_dump app > /var/backups/app.sql  # s3cret-hook-body"


def _count(model) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def _groups_url(host, group=None):
    base = f"/api/v1/hosts/{host.id}/source-groups"
    return base if group is None else f"{base}/{group if isinstance(group, int) else group.id}"


def _add_snapshots(host, tag, days):
    newest = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    for day in range(days):
        number = db.session.scalar(select(func.count()).select_from(Snapshot)) + 1
        db.session.add(
            Snapshot(
                host_id=host.id,
                snapshot_id=f"{number:064x}",
                short_id=f"{number:08x}",
                time=newest - timedelta(days=day),
                hostname=host.hostname,
                paths=["/etc"],
                tags=[tag],
            )
        )
    db.session.commit()


# --- API -----------------------------------------------------------------------------------


def test_create_read_update_delete_through_the_api(app, api):
    host = make_host("web-1")
    admin = api(Role.admin)
    version = host.schedule_version
    created = admin.post(
        _groups_url(host),
        json={
            "name": "db",
            "includes": ["/var/lib/postgresql", "/etc/postgresql"],
            "excludes": ["*.tmp"],
            "retention": {"keep_daily": 7, "keep_within": "30d"},
            "pre_hook": HOOK,
        },
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["name"] == "db"
    assert body["retention"] == {"keep_daily": 7, "keep_within": "30d"}
    assert (body["retry_max"], body["retry_backoff_seconds"]) == (3, 300)
    assert (body["pre_hook_set"], body["post_hook_set"]) == (True, False)
    assert body["schedules"] == []
    assert "pre_hook" not in body and HOOK not in created.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Host, host.id).schedule_version > version

    listed = api(Role.viewer).get(_groups_url(host)).get_json()["items"]
    assert [item["name"] for item in listed] == ["db", "default"]

    # an update that leaves the hook out keeps it; other fields change
    updated = admin.put(_groups_url(host, body["id"]), json={"excludes": [], "retry_max": 0})
    assert updated.status_code == 200
    assert updated.get_json()["pre_hook_set"] is True
    assert updated.get_json()["excludes"] == []
    assert (
        admin.put(_groups_url(host, body["id"]), json={"pre_hook": None}).get_json()["pre_hook_set"]
        is False
    )

    assert admin.delete(_groups_url(host, body["id"])).status_code == 204
    assert admin.get(_groups_url(host, body["id"])).status_code == 404
    actions = [row.action for row in db.session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions[-4:] == [
        "source_group.created",
        "source_group.updated",
        "source_group.updated",
        "source_group.deleted",
    ]
    assert all(HOOK not in str(row.payload) for row in db.session.scalars(select(AuditLog)))


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "", "includes": ["/etc"]}, "name", "required"),
        ({"name": "has space", "includes": ["/etc"]}, "name", "restic tag"),
        ({"name": "x" * 65, "includes": ["/etc"]}, "name", "64"),
        ({"name": "default", "includes": ["/etc"]}, "name", "already has"),
        ({"name": "g", "includes": []}, "includes", "at least one"),
        ({"name": "g", "includes": ["etc"]}, "includes", "not an absolute path"),
        ({"name": "g", "includes": ["/etc"], "excludes": ["a\x07"]}, "excludes", "control"),
        (
            {"name": "g", "includes": ["/etc"], "excludes": [f"*.{n}" for n in range(101)]},
            "excludes",
            "At most 100",
        ),
        (
            {"name": "g", "includes": ["/etc"], "retention": {"keep_daily": -1}},
            "retention.keep_daily",
            "whole number",
        ),
        (
            {"name": "g", "includes": ["/etc"], "retention": {"keep_within": "forever"}},
            "retention.keep_within",
            "duration",
        ),
        (
            {"name": "g", "includes": ["/etc"], "retention": {"keep_forever": 1}},
            "retention.keep_forever",
            "Unknown",
        ),
        ({"name": "g", "includes": ["/etc"], "retry_max": 21}, "retry_max", "0 to 20"),
        (
            {"name": "g", "includes": ["/etc"], "retry_backoff_seconds": 29},
            "retry_backoff_seconds",
            "30 to 86400",
        ),
        ({"name": "g", "includes": ["/etc"], "pre_hook": "x" * 8193}, "pre_hook", "8 KiB"),
        ({"name": "g", "includes": ["/etc"], "colour": "red"}, "colour", "Unknown field"),
    ],
)
def test_precise_refusals_change_nothing(app, api, body, field, words):
    host = make_host("web-1")
    before = (_count(SourceGroup), _count(AuditLog), _count(Command))
    response = api(Role.admin).post(_groups_url(host), json=body)
    assert response.status_code == 422, response.get_json()
    errors = response.get_json()["fields"]
    assert field in errors and words in errors[field][0], errors
    assert (_count(SourceGroup), _count(AuditLog), _count(Command)) == before


def test_operators_may_not_touch_hooks_and_are_told_why(app, api):
    host = make_host("web-1")
    group = host.source_groups[0]
    operator = api(Role.operator)
    refused = operator.put(_groups_url(host, group), json={"pre_hook": "rm -rf /"})
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "hooks_need_admin"
    assert "root" in refused.get_json()["message"]
    refused = operator.post(
        _groups_url(host), json={"name": "g", "includes": ["/srv"], "post_hook": "id"}
    )
    assert refused.status_code == 403
    # sending no hook, or removing one that is not set, is no hook change
    assert operator.put(_groups_url(host, group), json={"pre_hook": None}).status_code == 200
    assert api(Role.viewer).put(_groups_url(host, group), json={}).status_code == 403


def test_deleting_a_group_a_schedule_uses_names_the_schedules(app, api):
    host = make_host("web-1")
    extra = SourceGroup(host_id=host.id, name="db", includes=["/srv"])
    db.session.add(extra)
    db.session.flush()
    for name in ("nightly", "hourly"):
        schedule = Schedule(host_id=host.id, name=name, cron="0 * * * *")
        schedule.source_groups.append(extra)
        db.session.add(schedule)
    db.session.commit()
    response = api().delete(_groups_url(host, extra))
    assert response.status_code == 409
    assert response.get_json()["error"] == "group_in_use"
    assert "hourly, nightly" in response.get_json()["message"]
    assert api().get(_groups_url(host, extra)).get_json()["schedules"] == ["hourly", "nightly"]


def test_the_last_group_is_not_deleted(app, api):
    host = make_host("web-1")
    response = api().delete(_groups_url(host, host.source_groups[0]))
    assert response.status_code == 409
    assert response.get_json()["error"] == "last_group"
    assert _count(SourceGroup) == 1


def test_another_hosts_group_is_not_found(app, api):
    host, other = make_host("web-1"), make_host("web-2")
    assert api().get(_groups_url(host, other.source_groups[0])).status_code == 404


# --- retention preview ---------------------------------------------------------------------


def test_retention_preview_for_viewers(app, api):
    host = make_host("web-1")
    group = host.source_groups[0]
    group.retention = {"keep_last": 2}
    db.session.commit()
    _add_snapshots(host, "default", 5)
    _add_snapshots(host, "other", 3)
    viewer = api(Role.viewer)
    url = _groups_url(host, group) + "/retention-preview"
    saved = viewer.post(url)
    assert saved.status_code == 200, saved.get_json()
    assert (len(saved.get_json()["keep"]), len(saved.get_json()["remove"])) == (2, 3)
    assert saved.get_json()["keep"][0]["reasons"] == ["last snapshot"]
    typed = viewer.post(url, json={"retention": {"keep_daily": 4}}).get_json()
    assert (len(typed["keep"]), len(typed["remove"])) == (4, 1)
    assert typed["remove"][0]["time"] < typed["keep"][-1]["time"]
    everything = viewer.post(url, json={"retention": {}}).get_json()
    assert len(everything["keep"]) == 5 and everything["remove"] == []
    bad = viewer.post(url, json={"retention": {"keep_daily": "x"}})
    assert bad.status_code == 422


# --- backup jobs: hooks sealed, host caps --------------------------------------------------


def test_backup_hooks_travel_sealed_and_host_caps_apply(app, api):
    host = make_host("web-1", limit_upload_kib=512)
    admin = api(Role.admin)
    group = host.source_groups[0]
    assert admin.put(_groups_url(host, group), json={"pre_hook": HOOK}).status_code == 200
    started = admin.post(f"/api/v1/hosts/{host.id}/jobs", json={"kind": "backup"})
    assert started.status_code == 201, started.get_json()
    assert HOOK not in started.get_data(as_text=True)
    job = db.session.get(Job, started.get_json()["id"])
    assert "pre_hook" not in job.params
    assert job.params["limit_upload_kib"] == 512
    assert job.params["limit_download_kib"] is None
    command = db.session.scalar(select(Command).where(Command.job_id == job.id))
    assert HOOK not in str(command.payload)
    delivered = commands.delivery_json(app.extensions["secretbox"], command)
    assert delivered["payload"]["params"]["pre_hook"] == HOOK
    assert "post_hook" not in delivered["payload"]["params"]
    assert delivered["payload"]["params"]["paths"] == ["/etc"]
    # a run-now override wins over the host cap
    override = admin.post(
        f"/api/v1/hosts/{host.id}/jobs",
        json={"kind": "backup", "params": {"limit_upload_kib": 64}},
    )
    assert override.get_json()["params"]["limit_upload_kib"] == 64


def test_a_group_without_hooks_uses_the_host_default(app, api):
    host = make_host("web-1")
    box = app.extensions["secretbox"]
    host.sealed_post_hook = box.seal("echo done", table="hosts", column="post_hook", row_id=host.id)
    db.session.commit()
    started = api().post(f"/api/v1/hosts/{host.id}/jobs", json={"kind": "backup"})
    command = db.session.scalar(select(Command).where(Command.job_id == started.get_json()["id"]))
    params = commands.delivery_json(box, command)["payload"]["params"]
    assert params["post_hook"] == "echo done" and "pre_hook" not in params


# --- Sources tab ---------------------------------------------------------------------------


def test_sources_tab_lists_groups_with_run_now(app, login_as):
    host = make_host("web-1")
    group = host.source_groups[0]
    group.retention = {"keep_daily": 7}
    db.session.commit()
    page = login_as(Role.operator).get(f"/hosts/{host.id}/sources")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "/etc" in html and "Keep 7 daily" in html
    assert 'name="backup-group" value="default"' in html
    assert 'aria-current="page"' in html
    viewer_html = login_as(Role.viewer).get(f"/hosts/{host.id}/sources").get_data(as_text=True)
    assert "Run now" not in viewer_html and "/etc" in viewer_html


def test_create_in_the_ui_keeps_input_on_errors_and_saves_when_right(app, login_as):
    host = make_host("web-1")
    browser = login_as(Role.operator)
    token = form_token(browser, f"/hosts/{host.id}/sources/new")
    form = {
        "csrf_token": token,
        "name": "db",
        "includes": "/srv/db\nrelative/path",
        "excludes": "*.tmp",
        "keep_daily": "7",
        "retry_max": "3",
        "retry_backoff_seconds": "300",
        "action": "save",
    }
    before = (_count(SourceGroup), _count(AuditLog))
    refused = browser.post(f"/hosts/{host.id}/sources/new", data=form)
    html = refused.get_data(as_text=True)
    assert refused.status_code == 422
    assert "not an absolute path" in html and "relative/path" in html and "*.tmp" in html
    assert (_count(SourceGroup), _count(AuditLog)) == before
    saved = browser.post(f"/hosts/{host.id}/sources/new", data={**form, "includes": "/srv/db"})
    assert saved.status_code == 302
    group = db.session.scalar(select(SourceGroup).where(SourceGroup.name == "db"))
    assert group.includes == ["/srv/db"] and group.retention == {"keep_daily": 7}


def test_ui_preview_shows_kept_and_removed_without_saving(app, login_as):
    host = make_host("web-1")
    _add_snapshots(host, "default", 4)
    group = host.source_groups[0]
    browser = login_as(Role.operator)
    token = form_token(browser, f"/hosts/{host.id}/sources/{group.id}/edit")
    response = browser.post(
        f"/hosts/{host.id}/sources/{group.id}/edit",
        data={
            "csrf_token": token,
            "name": "default",
            "includes": "/etc",
            "keep_last": "1",
            "retry_max": "3",
            "retry_backoff_seconds": "300",
            "action": "preview",
        },
    )
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<strong>1</strong> kept, <strong>3</strong> removed" in html
    assert "last snapshot" in html
    db.session.expire_all()
    assert db.session.get(SourceGroup, group.id).retention == {}


def test_ui_delete_confirms_and_shows_refusals(app, login_as):
    host = make_host("web-1")
    browser = login_as(Role.operator)
    only = host.source_groups[0]
    page = browser.get(f"/hosts/{host.id}/sources/{only.id}/delete")
    assert "last source group" in page.get_data(as_text=True)
    token = form_token(browser, f"/hosts/{host.id}/sources")
    refused = browser.post(f"/hosts/{host.id}/sources/{only.id}/delete", data={"csrf_token": token})
    assert refused.status_code == 302
    assert "last source group" in browser.get(refused.headers["Location"]).get_data(as_text=True)
    extra = SourceGroup(host_id=host.id, name="db", includes=["/srv"])
    db.session.add(extra)
    db.session.commit()
    deleted = browser.post(
        f"/hosts/{host.id}/sources/{extra.id}/delete", data={"csrf_token": token}
    )
    assert deleted.status_code == 302
    assert _count(SourceGroup) == 1


def test_operators_see_no_hook_fields_admins_do(app, login_as):
    host = make_host("web-1")
    group = host.source_groups[0]
    url = f"/hosts/{host.id}/sources/{group.id}/edit"
    assert 'name="pre_hook"' not in login_as(Role.operator).get(url).get_data(as_text=True)
    assert 'name="pre_hook"' in login_as(Role.admin).get(url).get_data(as_text=True)


def test_sources_tab_default_hooks_form_is_for_admins(app, login_as):
    host = make_host("web-hooks")
    operator_page = login_as(Role.operator).get(f"/hosts/{host.id}/sources").get_data(as_text=True)
    assert "Default hooks" in operator_page and "Only an admin can set hooks." in operator_page
    assert 'class="hosthead' in operator_page or "hosthead" in operator_page  # the host header
    admin = login_as(Role.admin)
    token = form_token(admin, f"/hosts/{host.id}/sources")
    saved = admin.post(
        f"/hosts/{host.id}/hooks",
        data={"csrf_token": token, "pre_hook": "echo before", "post_hook": ""},
    )
    assert saved.status_code == 302
    db.session.expire_all()
    stored = db.session.get(Host, host.id)
    assert stored.sealed_pre_hook is not None and stored.sealed_post_hook is None
    page = admin.get(f"/hosts/{host.id}/sources").get_data(as_text=True)
    assert "echo before" not in page and "Remove the pre-hook" in page
    operator = login_as(Role.operator)
    token = form_token(operator, f"/hosts/{host.id}/sources")
    refused = operator.post(f"/hosts/{host.id}/hooks", data={"csrf_token": token, "pre_hook": "id"})
    assert refused.status_code == 403
