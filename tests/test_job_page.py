"""Job pages: the list with filters, one job's page (log, progress, results) and cancel."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.extensions import db
from app.models import AuditLog, Job, Role
from app.models.types import utcnow
from app.services import jobs
from app.web.jobs import routes as job_pages
from tests.factories import AgentCalls, form_token, login, make_enrolled_host, queue_job

LINE = re.compile(r'<div class="log__line log__line--(\w+)" data-seq="(\d+)">')


def test_queued_job_page_without_log_lines(app, login_as):
    operator = login_as(Role.operator)
    host, _ = make_enrolled_host()
    job = queue_job(app, host)
    response = operator.get(f"/jobs/{job.id}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Probe on" in page and "web-1" in page
    assert 'id="job-status">queued</span>' in page
    assert "No log lines yet." in page
    assert "Waiting for the agent to pick it up." in page
    assert '<section class="card" id="job-progress" hidden>' in page  # until progress comes
    assert "Exit code" not in page and "Finished (UTC)" not in page
    # Cancel: a CSRF-protected POST form that asks first.
    assert f'action="/jobs/{job.id}/cancel"' in page
    assert 'name="csrf_token"' in page and "data-confirm=" in page
    # Live updates: the stream URL, resuming after the last rendered line, and no inline script.
    assert f'data-stream="/api/v1/jobs/{job.id}/stream"' in page
    assert 'data-after="0"' in page and 'data-live="true"' in page
    assert "/static/js/job.js" in page
    assert "<script>" not in page
    assert f'href="/api/v1/jobs/{job.id}/log.txt"' in page
    assert f'href="/api/v1/jobs/{job.id}/log.ndjson"' in page


def test_running_job_page_shows_the_log_so_far_and_progress(app, login_as):
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    job = queue_job(app, host, kind="backup")
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    agent.logs(["open repository", "<script>alert(1)</script>"])
    agent.logs(["permission denied: /root/x"], stream="stderr")
    agent.event(
        "job.progress",
        percent=42.5,
        files_done=1200,
        total_files=3000,
        bytes_done=1536,
        total_bytes=3 * 1024 * 1024,
        seconds_remaining=75,
        current_files=["/home/ann/photo.jpg"],
        error_count=1,
    )
    page = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert LINE.findall(page) == [("stdout", "1"), ("stdout", "2"), ("stderr", "3")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # log text is escaped
    assert "<script>alert(1)" not in page
    assert 'data-after="3"' in page
    assert '<progress class="progressbar" id="job-progress-bar" max="100" value="42.5">' in page
    assert "1,200 of 3,000 files" in page
    assert "1.5 KiB of 3.0 MiB" in page
    assert "about 1 min 15 s left" in page
    assert "Now: /home/ann/photo.jpg" in page
    assert "1 file could not be read" in page
    assert "job-cancel" not in page  # viewers get no cancel button
    assert "so far" in page  # duration of a running job
    assert '<section class="card" id="job-progress">' in page


def test_finished_job_page_shows_results_error_and_no_cancel(app, login_as):
    operator = login_as(Role.operator)
    host, token = make_enrolled_host()
    job = queue_job(app, host, kind="backup")
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    agent.logs(["done"])
    agent.finish(
        status="warning",
        exit_code=3,
        error="some source files could not be read",
        stats={
            "snapshot_id": "0123456789abcdef" * 4,
            "files_new": 1234,
            "files_changed": 2,
            "files_unmodified": 40000,
            "data_added": 1536,
            "duration_seconds": 75.2,
            "mystery_bytes": 2048,
        },
    )
    page = operator.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert 'id="job-status">warning</span>' in page
    assert "job-cancel" not in page and "Cancel job" not in page
    assert 'data-live="false"' in page
    assert "some source files could not be read" in page
    assert "Results" in page
    assert '<span title="' + "0123456789abcdef" * 4 + '">01234567</span>' in page
    assert "1,234" in page and "40,000" in page
    assert "1.5 KiB" in page and "1 min 15 s" in page
    assert "Mystery bytes" in page and "2.0 KiB" in page
    assert "<code>3</code>" in page  # exit code
    assert 'id="job-progress"' not in page


def test_long_logs_show_the_last_lines_and_point_to_the_download(app, login_as, monkeypatch):
    monkeypatch.setattr(job_pages, "PAGE_LOG_LINES", 5)
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    AgentCalls(app, token, job).logs([f"line {n}" for n in range(1, 13)])
    page = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert [seq for _, seq in LINE.findall(page)] == ["8", "9", "10", "11", "12"]
    assert "The first 7 lines are not shown here." in page
    assert "Download the full log" in page
    assert 'data-after="12"' in page


def test_truncated_and_dropped_logs_are_explained(app_factory):
    app = app_factory(RM_JOB_LOG_MAX_RECORDS=100)
    with app.app_context():
        from app.services import users

        user = users.create_user("reader", "correct horse battery", Role.viewer)
        db.session.commit()
        browser = app.test_client()
        login(browser, user.username)
        host, token = make_enrolled_host()
        job = queue_job(app, host)
        agent = AgentCalls(app, token, job)
        agent.logs([f"line {n}" for n in range(150)])
        agent.finish(lines_dropped=12)
        page = browser.get(f"/jobs/{job.id}").get_data(as_text=True)
        assert "The log was cut at 100 lines (RM_JOB_LOG_MAX_RECORDS)" in page
        assert "The agent dropped 12 lines" in page


def test_finished_job_without_lines_says_so(app, login_as):
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    AgentCalls(app, token, job).finish(status="failed", exit_code=1, error="Fatal: wrong password")
    page = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "This job wrote no log lines." in page
    assert "What went wrong" in page and "Fatal: wrong password" in page


def test_unknown_job_page_is_a_404_page(login_as):
    response = login_as(Role.viewer).get("/jobs/4242")
    assert response.status_code == 404
    assert "No job with id 4242." in response.get_data(as_text=True)


# --- cancel from the page --------------------------------------------------------------------


def test_operator_cancels_from_the_page(app, login_as):
    operator = login_as(Role.operator)
    host, token = make_enrolled_host()
    job = queue_job(app, host)
    AgentCalls(app, token, job).event("job.started")
    token_value = form_token(operator, f"/jobs/{job.id}")
    response = operator.post(f"/jobs/{job.id}/cancel", data={"csrf_token": token_value})
    assert response.status_code == 302
    assert response.headers["Location"] == f"/jobs/{job.id}"
    page = operator.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "Cancel requested: the agent stops restic" in page
    assert "cancel requested" in page and "Cancel job" not in page
    db.session.expire_all()
    assert db.session.get(Job, job.id).cancel_requested_at is not None
    audit = db.session.scalar(select(AuditLog).where(AuditLog.action == "job.cancel_requested"))
    assert audit.actor_label == operator.user.username

    # Once it ended, a late cancel (an old tab) explains instead of failing.
    AgentCalls(app, token, job).finish(status="cancelled", exit_code=130)
    late = operator.post(f"/jobs/{job.id}/cancel", data={"csrf_token": token_value})
    assert late.status_code == 302
    assert "already ended (cancelled)" in operator.get(f"/jobs/{job.id}").get_data(as_text=True)


def test_cancel_needs_the_operator_role_and_a_csrf_token(app, login_as):
    host, _ = make_enrolled_host()
    job = queue_job(app, host)
    viewer = login_as(Role.viewer)
    token_value = form_token(viewer, f"/jobs/{job.id}")
    assert (
        viewer.post(f"/jobs/{job.id}/cancel", data={"csrf_token": token_value}).status_code == 403
    )
    operator = login_as(Role.operator)
    assert operator.post(f"/jobs/{job.id}/cancel").status_code == 400  # no CSRF token
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "queued"
    token_value = form_token(operator, f"/jobs/{job.id}")
    operator.post(f"/jobs/{job.id}/cancel", data={"csrf_token": token_value})
    db.session.expire_all()
    assert db.session.get(Job, job.id).status == "cancelled"


# --- the list --------------------------------------------------------------------------------


def test_jobs_list_empty_state(login_as):
    page = login_as(Role.viewer).get("/jobs/").get_data(as_text=True)
    assert "No jobs yet" in page
    assert "<table" not in page


def test_jobs_list_filters_by_host_kind_and_status(app, login_as):
    viewer = login_as(Role.viewer)
    web, _ = make_enrolled_host("web-1")
    database, _ = make_enrolled_host("db-1")
    probe = queue_job(app, web)
    backup = queue_job(app, web, kind="backup")
    other = queue_job(app, database, kind="backup")
    jobs.request_cancel(app.extensions["secretbox"], other, database, now=utcnow())
    db.session.commit()

    def listed(query=""):
        page = viewer.get(f"/jobs/{query}").get_data(as_text=True)
        return [int(n) for n in re.findall(r'href="/jobs/(\d+)"', page)], page

    ids, page = listed()
    assert ids == [other.id, backup.id, probe.id]  # newest first
    assert "Clear filters" not in page
    assert listed(f"?host_id={web.id}")[0] == [backup.id, probe.id]
    assert listed("?kind=backup")[0] == [other.id, backup.id]
    assert listed("?status=cancelled")[0] == [other.id]
    ids, page = listed(f"?host_id={database.id}&status=queued")
    assert ids == []
    assert "No jobs match these filters" in page and "Clear filters" in page
    assert f'<option value="{database.id}" selected>db-1</option>' in page
    assert listed("?host_id=abc&kind=&status=")[0] == [other.id, backup.id, probe.id]


# --- live pages: the upload phase, the ticking duration, plurals ------------------------------


def test_a_backup_whose_files_are_all_read_says_it_is_uploading(app, login_as):
    """restic 0.14 prints percent_done 1 (every file read) while it still uploads the last
    packs and saves the snapshot; it reports nothing about the upload itself."""
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    job = queue_job(app, host, kind="backup")
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    agent.logs(["open repository"])
    agent.event(
        "job.progress",
        percent=100.0,
        files_done=6,
        total_files=6,
        bytes_done=150_000_000,
        total_bytes=150_000_000,
        seconds_remaining=None,
        current_files=[],
        error_count=0,
    )
    page = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert '<section class="card progress--uploading" id="job-progress">' in page
    assert 'data-progress="percent_text">uploading</span>' in page
    assert "100.0 %" not in page
    assert "all 6 files read" in page and "143 MiB" in page
    assert "143 MiB of 143 MiB" not in page
    phase = page.split('data-progress="phase"')[1].split("</p>")[0]
    assert " hidden" not in phase.split(">")[0]
    assert "restic is uploading what is left to the repository" in phase
    assert '<span class="muted" id="job-log-count">1 line</span>' in page
    assert 'data-kind="backup"' in page
    assert "css/job.css" in page

    agent.event("job.progress", percent=40.0, files_done=1, total_files=1, bytes_done=10)
    page = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert '<section class="card" id="job-progress">' in page
    assert "1 of 1 file<" in page and "40.0 %" in page
    assert 'data-progress="phase" hidden' in page


def test_the_duration_carries_its_start_while_running_and_is_final_after(app, login_as):
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    job = queue_job(app, host, kind="backup")
    queued = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert 'id="job-duration"' not in queued and "not started" in queued
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    db.session.expire_all()
    started = db.session.get(Job, job.id).started_at
    running = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    ticking = re.search(
        r'<span id="job-duration" data-started-at="([^"]+)" data-now="([^"]+)">([^<]+) so far',
        running,
    )
    assert ticking, running
    assert ticking.group(1) == started.isoformat(timespec="milliseconds")
    assert ticking.group(2) > ticking.group(1)  # the server's clock, for the browser's offset

    agent.logs(["one", "two"])
    agent.finish()
    finished = viewer.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert re.search(r'<span id="job-duration">[^<]+</span>', finished)
    assert "data-started-at" not in finished
    assert '<span class="muted" id="job-log-count">2 lines</span>' in finished
