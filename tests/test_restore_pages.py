"""Restore wizard, snapshot diff form, and the restore and diff variants of the job page."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import Command, DiffEntry, Host, Job, Role, Snapshot
from app.models.types import utcnow
from tests.factories import form_token, make_host, make_job

DASH = "\N{EN DASH}"  # the pager reads f"1{DASH}100 of 133"
SNAP_OLD = "a" * 8 + "1" * 56
SNAP_NEW = "b" * 8 + "2" * 56


def _add_snapshots(host: Host) -> None:
    now = utcnow()
    for hours_ago, snapshot_id, paths in ((26, SNAP_OLD, ["/srv/data"]), (2, SNAP_NEW, ["/etc"])):
        db.session.add(
            Snapshot(
                host_id=host.id,
                snapshot_id=snapshot_id,
                short_id=snapshot_id[:8],
                time=now - timedelta(hours=hours_ago),
                hostname=host.hostname,
                paths=paths,
                tags=["default"],
            )
        )
    host.snapshot_count = 2
    db.session.commit()


@pytest.fixture
def host(app):
    host = make_host("web-1", repo_status="ready")
    _add_snapshots(host)
    return host


def _jobs() -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(Job))


def _post_restore(browser, host: Host, **fields):
    data = {"csrf_token": form_token(browser, f"/hosts/{host.id}/restore")}
    data.update(fields)
    return browser.post(f"/hosts/{host.id}/restore", data=data)


# --- the wizard ----------------------------------------------------------------------------


def test_wizard_without_snapshots_says_there_is_nothing_to_restore(app, login_as):
    host = make_host("empty-1", repo_status="ready")
    page = login_as(Role.operator).get(f"/hosts/{host.id}/restore")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "empty-1 has no snapshots yet" in html
    assert "Run restore" not in html  # no steps to fill in


def test_wizard_lists_snapshots_newest_first_and_preselects_one(app, login_as, host):
    browser = login_as(Role.operator)
    html = browser.get(f"/hosts/{host.id}/restore").get_data(as_text=True)
    assert html.index(SNAP_NEW[:8]) < html.index(SNAP_OLD[:8])
    assert "checked" not in html.split('name="snapshot_id"')[1].split(">")[0]
    for words in (
        "Pick a snapshot",
        "Paths to restore, one per line",
        "New directory",
        "In place",
        "$HOME/rm-restore/&lt;job id&gt;",
        "Run restore",
    ):
        assert words in html

    html = browser.get(f"/hosts/{host.id}/restore?snapshot={SNAP_OLD[:8]}").get_data(as_text=True)
    radio = html.split(f'value="{SNAP_OLD}"')[1].split(">")[0]
    assert "checked" in radio
    assert f"Snapshot <code>{SNAP_OLD[:8]}</code>" in html


def test_in_place_without_the_host_name_is_refused_and_nothing_is_queued(app, login_as, host):
    browser = login_as(Role.operator)
    before = _jobs()
    for typed in ("", "web-2"):
        response = _post_restore(
            browser,
            host,
            snapshot_id=SNAP_NEW,
            include=["/etc/hosts"],
            paths="/etc/nginx/nginx.conf\n",
            mode="in_place",
            confirm_hostname=typed,
        )
        assert response.status_code == 422
        html = response.get_data(as_text=True)
        assert "Type the host name (web-1) to confirm" in html
        # The operator's choices come back intact.
        assert f'value="{SNAP_NEW}" checked' in html.replace("\n", " ") or (
            "checked" in html.split(f'value="{SNAP_NEW}"')[1].split(">")[0]
        )
        assert 'name="include" value="/etc/hosts" checked' in html
        assert "/etc/nginx/nginx.conf" in html
        assert 'value="in_place" id="mode-in-place" checked' in html
    assert _jobs() == before
    assert db.session.scalar(select(func.count()).select_from(Command)) == 0


def test_a_refused_target_is_shown_next_to_the_field(app, login_as, host):
    browser = login_as(Role.operator)
    response = _post_restore(
        browser, host, snapshot_id=SNAP_NEW, paths="/etc/hosts", mode="new", target="relative/dir"
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="target-errors"' in html
    assert "absolute path" in html
    assert 'value="relative/dir"' in html
    assert _jobs() == 0


def test_an_offline_host_is_refused_with_the_reason(app, login_as):
    host = make_host("gone-1", repo_status="ready", seen_seconds_ago=3600)
    _add_snapshots(host)
    response = _post_restore(login_as(Role.operator), host, snapshot_id=SNAP_NEW, mode="new")
    assert response.status_code == 409
    assert "gone-1 is offline" in response.get_data(as_text=True)
    assert _jobs() == 0


def test_a_good_restore_queues_a_job_and_goes_to_its_page(app, login_as, host):
    browser = login_as(Role.operator)
    response = _post_restore(
        browser,
        host,
        snapshot_id=SNAP_NEW,
        include=["/etc/hosts", "/etc/ssh"],
        paths="/etc/ssh/sshd_config\n/etc/fstab\n\n",
        mode="new",
        target="",
        verify="1",
    )
    assert response.status_code == 302
    job = db.session.scalar(select(Job).order_by(Job.id.desc()))
    assert response.headers["Location"].endswith(f"/jobs/{job.id}#job-head")
    assert job.kind == "restore"
    assert job.params["snapshot_id"] == SNAP_NEW
    # Ticked and typed paths together; one inside a ticked folder adds nothing.
    assert job.params["include"] == ["/etc/hosts", "/etc/ssh", "/etc/fstab"]
    assert job.params["target"] == f"$HOME/rm-restore/{job.id}"
    assert job.params["in_place"] is False
    assert job.params["verify"] is True

    page = browser.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "What is restored" in page
    assert f"$HOME/rm-restore/{job.id}" in page
    assert "<code>/etc/fstab</code>" in page


def test_in_place_with_the_host_name_restores_to_the_root(app, login_as, host):
    response = _post_restore(
        login_as(Role.operator),
        host,
        snapshot_id=SNAP_NEW,
        paths="/etc/hosts",
        mode="in_place",
        confirm_hostname="web-1",
        target="/ignored/when/in/place",
    )
    assert response.status_code == 302
    job = db.session.scalar(select(Job).order_by(Job.id.desc()))
    assert job.params["in_place"] is True
    assert job.params["target"] == "/"


def test_viewers_may_not_restore(app, login_as, host):
    viewer = login_as(Role.viewer)
    assert viewer.get(f"/hosts/{host.id}/restore").status_code == 403
    token = form_token(viewer, f"/hosts/{host.id}")
    response = viewer.post(
        f"/hosts/{host.id}/restore", data={"csrf_token": token, "snapshot_id": SNAP_NEW}
    )
    assert response.status_code == 403
    page = viewer.get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "Restore files…" not in page
    assert "Compare two snapshots" not in page
    assert _jobs() == 0


# --- entry points on the host page ---------------------------------------------------------


def test_host_page_offers_restore_browse_and_compare(app, login_as, host):
    html = login_as(Role.operator).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert f'href="/hosts/{host.id}/restore"' in html
    assert f"/hosts/{host.id}/restore?snapshot={SNAP_NEW}#files" in html
    assert "Compare two snapshots" in html
    compare = html.split('id="compare"')[1]
    older = compare.split('name="snapshot_a"')[1].split("</select>")[0]
    newer = compare.split('name="snapshot_b"')[1].split("</select>")[0]
    assert f'value="{SNAP_OLD}" selected' in older
    assert f'value="{SNAP_NEW}" selected' in newer
    assert "Last restore" not in html


def test_compare_needs_two_snapshots(app, login_as):
    host = make_host("one-1", repo_status="ready")
    db.session.add(
        Snapshot(host_id=host.id, snapshot_id=SNAP_NEW, short_id=SNAP_NEW[:8], time=utcnow())
    )
    db.session.commit()
    html = login_as(Role.operator).get(f"/hosts/{host.id}").get_data(as_text=True)
    assert "Compare two snapshots" not in html


def test_last_restore_line_shows_the_latest_restore(app, login_as, host):
    make_job(host, "restore", "failed", age=timedelta(days=2))
    latest = make_job(
        host,
        "restore",
        "succeeded",
        age=timedelta(hours=2),
        finished_at=utcnow() - timedelta(hours=2),
    )
    make_job(host, "backup", "succeeded")
    html = login_as(Role.viewer).get(f"/hosts/{host.id}").get_data(as_text=True)
    line = html.split('class="hosthead__lastrestore"')[1].split("</p>")[0]
    assert "pill--succeeded" in line
    assert "2 h ago" in line
    assert f"job #{latest.id}" in line
    # The other host tabs carry the same header.
    sources = login_as(Role.viewer).get(f"/hosts/{host.id}/sources").get_data(as_text=True)
    assert f"job #{latest.id}" in sources


# --- diff ----------------------------------------------------------------------------------


def test_compare_form_starts_a_diff_job(app, login_as, host):
    browser = login_as(Role.operator)
    token = form_token(browser, f"/hosts/{host.id}")
    response = browser.post(
        f"/hosts/{host.id}/diff",
        data={"csrf_token": token, "snapshot_a": SNAP_OLD, "snapshot_b": SNAP_NEW},
    )
    assert response.status_code == 302
    job = db.session.scalar(select(Job).order_by(Job.id.desc()))
    assert job.kind == "diff"
    assert job.params == {"snapshot_a": SNAP_OLD, "snapshot_b": SNAP_NEW}
    assert response.headers["Location"].endswith(f"/jobs/{job.id}#job-head")

    page = browser.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "The table of changes appears here when the job has finished" in page


def test_compare_refusals_come_back_next_to_the_form(app, login_as, host):
    browser = login_as(Role.operator)
    token = form_token(browser, f"/hosts/{host.id}")
    response = browser.post(
        f"/hosts/{host.id}/diff",
        data={"csrf_token": token, "snapshot_a": SNAP_NEW, "snapshot_b": SNAP_NEW},
    )
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    compare = html.split('id="compare"')[1].split("</details>")[0]
    assert "two different snapshots" in compare
    assert _jobs() == 0


def _finished_diff(host: Host) -> Job:
    job = make_job(
        host,
        "diff",
        "succeeded",
        params={"snapshot_a": SNAP_OLD, "snapshot_b": SNAP_NEW},
        started_at=utcnow() - timedelta(seconds=5),
        finished_at=utcnow(),
        stats={
            "source_snapshot": SNAP_OLD,
            "target_snapshot": SNAP_NEW,
            "changed_files": 1,
            "added": {"files": 130, "dirs": 1, "bytes": 3531},
            "removed": {"files": 1, "dirs": 0, "bytes": 10},
            "changes": 133,
            "reported": 133,
            "truncated": False,
        },
    )
    rows = [
        ("/srv/data/new/", "+", "dir", None, None),
        ("/srv/data/old.txt", "-", "file", 10, None),
        ("/srv/data/changed.txt", "M", "file", 100, 2048),
    ] + [(f"/srv/data/new/f{index:03}.txt", "+", "file", None, 1000) for index in range(130)]
    for seq, (path, modifier, kind, before, after) in enumerate(rows, start=1):
        db.session.add(
            DiffEntry(
                job_id=job.id,
                seq=seq,
                path=path,
                modifier=modifier,
                type=kind,
                size_before=before,
                size_after=after,
            )
        )
    db.session.commit()
    return job


def test_diff_job_page_shows_a_readable_paged_table(app, login_as, host):
    job = _finished_diff(host)
    browser = login_as(Role.viewer)
    html = browser.get(f"/jobs/{job.id}").get_data(as_text=True)
    tiles = html.split('class="diffsum"')[1].split("</div>\n  </div>")[0]
    # The tiles add up the sizes the table shows; restic's blob bytes are labelled apart.
    assert "130 files, 1 folder" in tiles and "127 KiB" in tiles and "3.4 KiB" not in tiles
    assert "1 file</span>" in tiles and "10 B" in tiles  # removed
    assert "100 B → 2.0 KiB" in tiles  # modified, before and after
    assert "In the repository: 3.4 KiB of data only the newer snapshot uses, 10 B" in html
    assert "change--modified" in html and ">modified</span>" in html
    assert "/srv/data/changed.txt" in html
    assert "2.0 KiB" in html  # size after, in words people read
    assert f"1{DASH}100 of 133" in html
    assert f"/jobs/{job.id}?offset=100#diff" in html
    assert "Snapshots removed" not in html  # restic's removed counts are not forget's

    second = browser.get(f"/jobs/{job.id}?offset=100").get_data(as_text=True)
    assert f"101{DASH}133 of 133" in second
    assert "Previous" in second

    removed = browser.get(f"/jobs/{job.id}?modifier=-").get_data(as_text=True)
    table = removed.split('class="table table--compact difftable"')[1]
    assert "/srv/data/old.txt" in table
    assert "/srv/data/changed.txt" not in table
    assert ">removed</span>" in table
    assert f"1{DASH}1 of 1" in removed

    nothing = browser.get(f"/jobs/{job.id}?modifier=T").get_data(as_text=True)
    assert "No changes of this kind" in nothing
    assert browser.get(f"/jobs/{job.id}?modifier=bogus&offset=-3").status_code == 200


def test_finished_restore_shows_where_the_files_are(app, login_as, host):
    job = make_job(
        host,
        "restore",
        "succeeded",
        params={
            "snapshot_id": SNAP_NEW,
            "include": ["/etc/hosts"],
            "target": "$HOME/rm-restore/9",
            "in_place": False,
            "verify": False,
        },
        started_at=utcnow() - timedelta(seconds=3),
        finished_at=utcnow(),
        stats={
            "target": "/root/rm-restore/9",
            "in_place": False,
            "files_restored": 1,
            "bytes_restored": 2048,
            "total_files": 1,
            "total_bytes": 2048,
        },
    )
    html = login_as(Role.viewer).get(f"/jobs/{job.id}").get_data(as_text=True)
    assert "/root/rm-restore/9/etc/hosts" in html
    assert "Files restored" in html
    assert "Data restored" in html and "2.0 KiB" in html


def test_job_summaries_of_restores_and_diffs():
    from types import SimpleNamespace

    from app.formatting import job_summary

    def job(kind, params, stats):
        return SimpleNamespace(
            kind=kind, status="succeeded", error=None, progress={}, params=params, stats=stats
        )

    restored = job(
        "restore",
        {"target": "$HOME/rm-restore/7", "in_place": False},
        {"target": "/root/rm-restore/7", "files_restored": 2, "bytes_restored": 2048},
    )
    assert job_summary(restored) == "2 files (2.0 KiB) to /root/rm-restore/7"
    in_place = job("restore", {"target": "/", "in_place": True}, {"files_restored": 1})
    assert job_summary(in_place) == "1 file (0 B) in place"
    assert job_summary(job("diff", {}, {"changes": 3})) == "3 changes"


def test_a_ticked_file_whose_name_holds_a_newline_is_restored_by_that_name(app, login_as, host):
    """Ticked paths travel percent-encoded: a form would send a newline in a value as CRLF."""
    browser = login_as(Role.operator)
    name = "/srv/data/two\nlines.txt"
    response = _post_restore(
        browser, host, snapshot_id=SNAP_NEW, include=[quote(name)], mode="new", target=""
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:400]
    job = db.session.scalar(select(Job).order_by(Job.id.desc()))
    assert job.params["include"] == [name]

    refused = _post_restore(
        browser, host, snapshot_id=SNAP_NEW, include=[quote(name)], mode="new", target="relative"
    )
    assert refused.status_code == 422
    assert f'name="include" value="{quote(name)}" checked' in refused.get_data(as_text=True)
