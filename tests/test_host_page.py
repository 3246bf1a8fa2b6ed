"""Host page: vitals, repository panel, snapshots, job history, run-now and credentials."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import current_app
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Command, Host, HostCredential, Job, Role, Snapshot
from app.models.types import utcnow
from app.services import job_params, repository
from app.web.hosts.forms import RUN_FORMS
from tests.factories import form_token, make_host, make_job

REPO_PASSWORD = "Sup3r-secret-repo-pw"


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _nothing_changed(before: dict) -> bool:
    db.session.expire_all()
    return {model: _count(model) for model in before} == before


def _counts() -> dict:
    return {model: _count(model) for model in (Job, Command, AuditLog, HostCredential)}


def _add_snapshots(host: Host, number: int) -> None:
    start = utcnow() - timedelta(days=number)
    for index in range(number):
        db.session.add(
            Snapshot(
                host_id=host.id,
                snapshot_id=f"{index + 1:064x}",
                short_id=f"{index + 1:08x}",
                time=start + timedelta(days=index),
                hostname=host.hostname,
                paths=["/etc", "/home"],
                tags=["default"],
            )
        )
    host.snapshot_count = number
    db.session.commit()


def _post(browser, host: Host, path: str = "jobs", **fields):
    data = {"csrf_token": form_token(browser, f"/hosts/{host.id}")}
    data.update(fields)
    return browser.post(f"/hosts/{host.id}/{path}", data=data)


def _latest_job() -> Job | None:
    return db.session.scalar(select(Job).order_by(Job.id.desc()))


# --- reading -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_status", "words"),
    [
        ("ready", "restic can open the repository"),
        ("unknown", "Checking whether restic can open the repository"),
        ("initializing", "the agent is creating it"),
        ("missing", "There is no repository at this address"),
        ("error", "restic could not open the repository"),
        ("init_failed", "restic could not create the repository"),
    ],
)
def test_repository_panel_says_each_state_in_words(login_as, repo_status, words):
    host = make_host("web-1", repo_status=repo_status)
    page = login_as(Role.operator).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert f"repopanel--{repo_status}" in page
    assert words in page
    retry = "Retry" if repo_status in ("error", "init_failed", "missing") else "Check again"
    if repo_status == "initializing":
        assert f"/hosts/{host.id}/repo/probe" not in page
    else:
        assert f">{retry}</button>" in page


def test_restics_reason_is_shown_verbatim_and_escaped(login_as):
    reason = 'Fatal: <script>alert("x")</script> & wrong password'
    host = make_host("web-1", repo_status="error", repo_status_reason=reason)
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "<script>alert" not in page
    assert (
        '<pre class="reason">Fatal: &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; '
        "&amp; wrong password</pre>"
    ) in page


def test_header_and_vitals(login_as):
    host = make_host(
        "web-1",
        tags=["prod"],
        os="debian",
        arch="arm64",
        agent_version="0.1.0",
        restic_version="0.16.4",
        repo_status="ready",
        repo_size_bytes=5 * 1024**2,
        snapshot_count=3,
        latest_snapshot_at=utcnow() - timedelta(hours=5),
    )
    job = make_job(host, status="warning", finished_at=utcnow())
    host.last_backup_job_id, host.last_backup_status = job.id, "warning"
    host.last_backup_at = utcnow() - timedelta(minutes=10)
    db.session.commit()
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    for text in ("web-1", "debian / arm64", "0.1.0", "0.16.4", "5.0 MiB", "5 h ago"):
        assert text in page, text
    assert f'<a href="/jobs/{job.id}">' in page and "pill--warning" in page
    assert "hoststate--online" in page and "last seen" in page
    assert '<a class="chip" href="/?tag=prod">prod</a>' in page


def test_empty_host_page(login_as):
    host = make_host("fresh", seen_seconds_ago=None)
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "No snapshots yet." in page
    assert "No jobs yet." in page
    assert "the agent has not connected yet" in page


def test_snapshots_newest_first_up_to_100(login_as):
    host = make_host("web-1", repo_status="ready")
    _add_snapshots(host, 103)
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert page.count('<td data-label="ID">') == 100
    assert page.index(">00000067</code>") < page.index(">00000066</code>")  # 103 before 102
    assert ">00000003</code>" not in page  # the oldest three are left out
    assert "The newest 100 of 103 snapshots." in page
    assert "/etc, /home" in page


def test_job_history_lists_the_latest_25(login_as):
    host = make_host("web-1")
    started = utcnow() - timedelta(minutes=5)
    for _ in range(26):
        make_job(host, kind="prune", started_at=started, finished_at=started)
    backup = make_job(
        host,
        status="succeeded",
        started_at=started,
        finished_at=started + timedelta(seconds=95),
        stats={"snapshot_id": "0123456789abcdef", "data_added": 3 * 1024**2},
    )
    failed = make_job(host, kind="check", status="failed", error="Fatal: repository is locked")
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert page.count('<td data-label="Job">') == 25
    assert f'<a href="/jobs/{failed.id}">#{failed.id}</a>' in page
    assert page.index(f"#{failed.id}<") < page.index(f"#{backup.id}<")
    assert "snapshot 01234567, 3.0 MiB added" in page
    assert "1 min 35 s" in page
    assert "Fatal: repository is locked" in page
    assert "The latest 25 jobs." in page


def test_unknown_host_is_a_404_page(login_as):
    response = login_as(Role.viewer).get("/hosts/999")
    assert response.status_code == 404
    assert "No host with id 999." in response.get_data(as_text=True)


def test_dashboard_rows_link_to_the_host_page(login_as):
    host = make_host("web-1")
    assert f'href="/hosts/{host.id}"' in login_as(Role.viewer).get("/").get_data(as_text=True)


# --- who sees what -----------------------------------------------------------------------


def test_viewers_see_no_forms_and_cannot_post(login_as):
    host = make_host("web-1", repo_status="error")
    viewer = login_as(Role.viewer)
    page = viewer.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "<form" not in page.split("<main", 1)[1]  # only the sign-out form in the top bar
    assert "Run now" not in page and "Retry" not in page
    before = _counts()
    token = form_token(viewer, "/")
    for path, data in (
        ("jobs", {"kind": "stats"}),
        ("repo/probe", {}),
        ("repository", {"repo_url": "/srv/r", "repo_password": "x"}),
    ):
        response = viewer.post(f"/hosts/{host.id}/{path}", data={"csrf_token": token, **data})
        assert response.status_code == 403, path
    assert _nothing_changed(before)


def test_operators_run_jobs_but_do_not_edit_credentials(login_as):
    host = make_host("web-1")
    operator = login_as(Role.operator)
    page = operator.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "Run now" in page
    assert "Repository connection" not in page and 'name="repo_password"' not in page
    response = _post(operator, host, "repository", repo_url="/srv/r", repo_password="pw")
    assert response.status_code == 403


def test_every_runnable_kind_but_probe_has_a_form(login_as):
    # diff has its own form beside the snapshots (two snapshots to pick): test_restore_pages
    assert set(RUN_FORMS) == set(job_params.RUNNABLE_KINDS) - {"probe", "diff"}
    host = make_host("web-1")
    page = login_as(Role.operator).get(f"/hosts/{host.id}").get_data(as_text=True)
    for kind in RUN_FORMS:
        assert f'<input type="hidden" name="kind" value="{kind}">' in page, kind


# --- retry -------------------------------------------------------------------------------


def test_retry_queues_a_probe(login_as):
    host = make_host("web-1", repo_status="init_failed", repo_status_reason="Fatal: denied")
    operator = login_as(Role.operator)
    response = _post(operator, host, "repo/probe")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/hosts/{host.id}"
    job = _latest_job()
    assert (job.kind, job.params, job.status) == ("probe", {}, "queued")
    db.session.expire_all()
    assert db.session.get(Host, host.id).repo_status == "unknown"
    page = operator.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert f"Checking the repository again (job {job.id})." in page
    assert "repopanel--unknown" in page


def test_retry_on_an_offline_host_says_why(login_as):
    host = make_host("web-1", seen_seconds_ago=3600, repo_status="error")
    operator = login_as(Role.operator)
    before = _counts()
    response = _post(operator, host, "repo/probe")
    assert response.status_code == 302
    page = operator.get(response.headers["Location"]).get_data(as_text=True)
    assert "web-1 is offline" in page
    assert _nothing_changed(before)
    assert db.session.get(Host, host.id).repo_status == "error"


# --- run now -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "params"),
    [
        (
            "backup",
            {"backup-group": "default", "backup-limit_upload_kib": "512"},
            {
                "group": "default",
                "paths": ["/etc"],
                "excludes": [],
                "tags": ["default"],
                "limit_upload_kib": 512,
                "limit_download_kib": None,
            },
        ),
        (
            "forget",
            {
                "forget-keep_daily": "7",
                "forget-keep_weekly": "4",
                "forget-keep_within": "30d",
                "forget-tags": "default, db",
                "forget-dry_run": "y",
            },
            {
                "policy": {"keep_daily": 7, "keep_weekly": 4, "keep_within": "30d"},
                "tags": ["default", "db"],
                "group_by": "host,paths",
                "dry_run": True,
            },
        ),
        (
            "forget",
            {"forget-keep_last": "3"},
            {"policy": {"keep_last": 3}, "tags": [], "group_by": "host,paths", "dry_run": False},
        ),
        ("prune", {}, {}),
        ("check", {"check-read_data_subset": "10%"}, {"read_data_subset": "10%"}),
        ("check", {}, {"read_data_subset": None}),
        ("unlock", {"unlock-remove_all": "y"}, {"remove_all": True}),
        ("unlock", {}, {"remove_all": False}),
        ("stats", {}, {}),
        ("snapshots", {}, {}),
    ],
)
def test_run_now_creates_the_job_and_opens_it(login_as, kind, fields, params):
    host = make_host("web-1")
    operator = login_as(Role.operator)
    response = _post(operator, host, kind=kind, **fields)
    assert response.status_code == 302, response.get_data(as_text=True)
    job = _latest_job()
    assert response.headers["Location"] == f"/jobs/{job.id}#job-head"
    assert (job.host_id, job.kind, job.params) == (host.id, kind, params)
    assert job.actor_label == operator.user.username
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "job.started"))
    assert audit.payload["kind"] == kind


@pytest.mark.parametrize(
    ("kind", "fields", "message", "kept"),
    [
        (
            "forget",
            {"forget-keep_within": "", "forget-tags": "db"},
            "Give at least one retention rule",
            'name="forget-tags" placeholder="default" type="text" value="db"',
        ),
        (
            "forget",
            {"forget-keep_within": "fortnight"},
            # the service's words, with the form's name for the field
            "Keep within is a duration such as 1y6m, 30d or 12h.",
            'value="fortnight"',
        ),
        (
            "forget",
            {"forget-keep_daily": "seven"},
            "Not a valid integer value.",
            'value="seven"',
        ),
        (
            "check",
            {"check-read_data_subset": "half"},
            "Read data subset must look like 10%, 1/5 or 500M.",
            'value="half"',
        ),
        (
            "backup",
            {"backup-group": "nope", "backup-limit_download_kib": "77"},
            "web-1 has no source group named &#39;nope&#39;.",
            'value="77"',
        ),
    ],
)
def test_validation_errors_keep_the_input_and_change_nothing(login_as, kind, fields, message, kept):
    host = make_host("web-1")
    operator = login_as(Role.operator)
    before = _counts()
    response = _post(operator, host, kind=kind, **fields)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert message in page
    assert kept in page
    assert f'<details class="runkind runkind--{kind}" id="run-{kind}" open>' in page
    assert _nothing_changed(before)


def test_offline_host_is_refused_with_the_reason(login_as):
    host = make_host("web-1", seen_seconds_ago=3600)
    operator = login_as(Role.operator)
    page = operator.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "The agent is offline: a job started now is refused" in page
    before = _counts()
    response = _post(operator, host, kind="check", **{"check-read_data_subset": "1/5"})
    assert response.status_code == 409
    page = response.get_data(as_text=True)
    assert "web-1 is offline: its agent has not polled the server recently" in page
    assert 'value="1/5"' in page
    assert _nothing_changed(before)


def test_an_unknown_kind_is_refused(login_as):
    host = make_host("web-1")
    operator = login_as(Role.operator)
    before = _counts()
    response = _post(operator, host, kind="probe")
    assert response.status_code == 422
    assert "There is no job kind &#39;probe&#39; to run from this page." in response.get_data(
        as_text=True
    )
    assert _nothing_changed(before)


def test_forget_defaults_to_a_dry_run(login_as):
    host = make_host("web-1")
    page = login_as(Role.operator).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert '<input checked id="forget-dry_run"' in page
    assert 'id="unlock-remove_all" name="unlock-remove_all" type="checkbox"' in page
    assert 'checked id="unlock-remove_all"' not in page  # remove-all is never preselected


# --- repository connection ---------------------------------------------------------------


def test_admin_saves_the_connection_and_the_password_never_comes_back(login_as):
    host = make_host("web-1", repo_status="error", repo_status_reason="wrong password")
    admin = login_as(Role.admin)
    url = "rest:https://backup:urlsecret@backup.example.com/web-1"
    response = _post(
        admin,
        host,
        "repository",
        repo_url=url,
        repo_username="restic",
        repo_password=REPO_PASSWORD,
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/hosts/{host.id}"
    page = admin.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "Repository connection saved. The repository is being checked again." in page
    assert REPO_PASSWORD not in page and "urlsecret" not in page
    assert "rest:https://backup:***@backup.example.com/web-1" in page
    assert 'name="repo_url" placeholder' in page and f'value="{url}"' not in page
    assert 'name="repo_username" type="text" value="restic"' in page
    credential = db.session.scalar(select(HostCredential))
    assert credential.repo_url_redacted == "rest:https://backup:***@backup.example.com/web-1"
    assert repository.repo_url_of(current_app.extensions["secretbox"], credential) == url
    assert b"urlsecret" not in credential.sealed_repo_url
    assert REPO_PASSWORD.encode() not in credential.sealed_password
    assert _latest_job().kind == "probe"
    db.session.expire_all()
    assert db.session.get(Host, host.id).repo_status == "unknown"


def test_saving_for_an_offline_host_checks_on_the_next_connect(login_as):
    host = make_host("web-1", seen_seconds_ago=3600, repo_status="error")
    admin = login_as(Role.admin)
    response = _post(admin, host, "repository", repo_url="/srv/restic", repo_password="pw")
    assert response.status_code == 302
    page = admin.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "checked again as soon as the agent connects" in page
    assert 'value="/srv/restic"' in page  # nothing to redact: prefilled
    assert _count(Job) == 0


def test_connection_errors_keep_the_url_but_not_the_password(login_as):
    host = make_host("web-1", repo_status="ready")
    admin = login_as(Role.admin)
    before = _counts()
    response = _post(
        admin, host, "repository", repo_url="/srv/typed", repo_username="", repo_password=""
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Give the repository password." in page
    assert 'value="/srv/typed"' in page
    assert '<details class="details repoform" open' in page
    response = _post(
        admin, host, "repository", repo_url=" ", repo_username="", repo_password=REPO_PASSWORD
    )
    assert response.status_code == 422
    assert REPO_PASSWORD not in response.get_data(as_text=True)
    assert _nothing_changed(before)
