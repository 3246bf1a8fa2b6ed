"""Backup results on the pages: the Jobs list's summary column, the job page's missing
paths, the host page's latest-backup line (issue 11: honest job results)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from app.extensions import db
from app.formatting import job_summary
from app.models import Host, Role
from tests.factories import AgentCalls, make_enrolled_host, queue_job

MIB = 1024**2
WARNING_STATS = {
    "snapshot_id": "1a2b3c4d" * 8,
    "files_new": 3,
    "total_files_processed": 1204,
    "data_added": int(4.2 * MIB),
    "error_count": 0,
    "missing_paths": ["/srv/a", "/srv/b"],
}
WARNING_ERROR = "2 source paths do not exist: /srv/a, /srv/b; the snapshot holds the other paths"


def finished_backup(app, host, token, status, **data):
    job = queue_job(app, host, kind="backup")
    agent = AgentCalls(app, token, job)
    agent.event("job.started")
    agent.finish(status=status, **data)
    db.session.expire_all()
    return job


def _job(status="succeeded", kind="backup", stats=None, error=None, params=None):
    return SimpleNamespace(
        status=status, kind=kind, stats=stats, error=error, params=params or {}, progress={}
    )


@pytest.mark.parametrize(
    ("job", "summary"),
    [
        (
            _job(stats={"snapshot_id": "abcdef0123", "total_files_processed": 1, "data_added": 0}),
            "snapshot abcdef01, 1 file, 0 B added",
        ),
        (
            _job("warning", stats=WARNING_STATS, error=WARNING_ERROR),
            "snapshot 1a2b3c4d, 1,204 files, 4.2 MiB added; 2 paths missing: /srv/a, /srv/b",
        ),
        (
            _job("warning", stats=dict(WARNING_STATS, error_count=1, missing_paths=["/a"])),
            "snapshot 1a2b3c4d, 1,204 files, 4.2 MiB added; 1 file could not be read; "
            "1 path missing: /a",
        ),
        (
            _job("warning", stats={"missing_paths": ["/1", "/2", "/3", "/4", "/5"]}),
            "5 paths missing: /1, /2, /3 and 2 more",
        ),
        # a warning stored before the agent counted anything
        (_job("warning", stats={"data_added": 10}), "10 B added; some files could not be read"),
        (
            _job("failed", stats={"missing_paths": ["/x"]}, error="nothing was backed up: …"),
            "nothing was backed up: …",
        ),
        # what an agent sent is not trusted to be well formed
        (_job(stats={"missing_paths": "/x", "data_added": "lots"}), ""),
        (_job(stats={"missing_paths": [3, None, "/ok"]}), "1 path missing: /ok"),
        (_job(kind="snapshots", stats={"count": 1}), "1 snapshot"),
    ],
)
def test_job_summary(job, summary):
    assert job_summary(job) == summary


def test_jobs_list_has_a_summary_column(app, login_as):
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    warned = finished_backup(
        app, host, token, "warning", exit_code=0, error=WARNING_ERROR, stats=WARNING_STATS
    )
    failed = finished_backup(
        app,
        host,
        token,
        "failed",
        exit_code=1,
        error="nothing was backed up: source path /srv/gone does not exist",
        stats={"missing_paths": ["/srv/gone"]},
    )
    queued = queue_job(app, host, kind="check")
    page = viewer.get("/jobs/").get_data(as_text=True)
    assert '<th scope="col">Summary</th>' in page
    cells = re.findall(
        r'<td data-label="Summary" class="([^"]*)"><span class="jobsummary__text">([^<]*)</span>',
        page,
    )
    assert cells == [
        ("jobsummary", "waiting for the agent"),
        (
            "jobsummary jobsummary--error",
            "nothing was backed up: source path /srv/gone does not exist",
        ),
        (
            "jobsummary jobsummary--warning",
            "snapshot 1a2b3c4d, 1,204 files, 4.2 MiB added; 2 paths missing: /srv/a, /srv/b",
        ),
    ]
    assert [int(n) for n in re.findall(r'href="/jobs/(\d+)"><strong>', page)] == [
        queued.id,
        failed.id,
        warned.id,
    ]


def test_job_page_names_the_missing_paths(app, login_as):
    host, token = make_enrolled_host()
    job = finished_backup(
        app, host, token, "warning", exit_code=0, error=WARNING_ERROR, stats=WARNING_STATS
    )
    page = login_as(Role.viewer).get(f"/jobs/{job.id}").get_data(as_text=True)
    assert WARNING_ERROR in page
    assert "Source paths that do not exist" in page and "/srv/a, /srv/b" in page
    assert "the snapshot was saved, but not everything is in it" in page


def test_host_page_shows_the_latest_backup_with_its_missing_paths(app, login_as):
    viewer = login_as(Role.viewer)
    host, token = make_enrolled_host()
    warned = finished_backup(
        app, host, token, "warning", exit_code=0, error=WARNING_ERROR, stats=WARNING_STATS
    )
    page = viewer.get(f"/hosts/{host.id}").get_data(as_text=True)
    block = page[page.index('id="latest-backup"') :]
    block = block[: block.index("</div>")]
    assert 'pill pill--warning">warning</span>' in block
    assert f'href="/jobs/{warned.id}"' in block
    assert "2 paths missing: /srv/a, /srv/b" in block
    assert "2 source paths did not exist on the host and are not backed up" in block
    assert "<li><code>/srv/a</code></li><li><code>/srv/b</code></li>" in block
    assert f'href="/hosts/{host.id}/sources"' in block
    assert "Last successful backup" not in block  # the warning saved a snapshot

    cancelled = finished_backup(app, host, token, "cancelled", error="restic was stopped")
    page = viewer.get(f"/hosts/{host.id}").get_data(as_text=True)
    block = page[page.index('id="latest-backup"') :]
    block = block[: block.index("</div>")]
    assert 'pill pill--cancelled">cancelled</span>' in block
    assert f'href="/jobs/{cancelled.id}"' in block
    assert f'Last successful backup: <a href="/jobs/{warned.id}">' in block
    assert "/srv/a" not in block
    # the header's Last backup vital says it too, on every tab
    for tab in ("", "/sources", "/schedules", "/repo"):
        page = viewer.get(f"/hosts/{host.id}{tab}").get_data(as_text=True)
        vital = page[page.index('vital__label">Last backup') :]
        vital = vital[: vital.index('<div class="vital">')]
        assert f'last success <a href="/jobs/{warned.id}">' in vital, tab


def test_host_page_without_backups_has_no_latest_backup_line(login_as):
    host = Host(hostname="fresh-1")
    db.session.add(host)
    db.session.commit()
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert 'id="latest-backup"' not in page


def test_a_host_whose_backups_never_succeeded_says_so(app, login_as):
    host, token = make_enrolled_host()
    finished_backup(
        app,
        host,
        token,
        "failed",
        exit_code=1,
        error="nothing was backed up: source path /srv/gone does not exist",
        stats={"missing_paths": ["/srv/gone"]},
    )
    page = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "No backup of this host has succeeded yet." in page
    assert '<span class="vital__note">no successful backup yet</span>' in page
    assert "1 source path did not exist on the host and is not backed up" in page
