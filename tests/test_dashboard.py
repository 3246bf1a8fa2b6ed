"""Dashboard: fleet tiles, sortable and filterable host table, run-now, refresh fragment."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import delete, event, func, select

from app.extensions import db
from app.formatting import human_bytes, human_duration, plural, relative_time
from app.models import Host, Job, Role, SourceGroup
from app.models.types import utcnow
from app.web.dashboard import fleet
from app.web.dashboard.fleet import FleetQuery, FleetRow
from tests import fleet_oracle as oracle
from tests.factories import form_token, make_host, make_job

NOW = utcnow()
HOST_LINK = re.compile(r'class="hostlink" href="/hosts/\d+">([^<]+)</a>')


def _row(hostname, status="online", **fields) -> FleetRow:
    return FleetRow(Host(hostname=hostname, **fields), status)


def _names(rows) -> list[str]:
    return [row.host.hostname for row in rows]


def _table_order(html: str) -> list[str]:
    return HOST_LINK.findall(html)


# --- pure functions ----------------------------------------------------------------------


def test_query_keeps_known_values_and_drops_junk():
    query = FleetQuery.from_args(
        {"q": "  web ", "status": "failing", "repo_status": "init_failed", "tag": "db"}
        | {"sort": "size", "dir": "asc"}
    )
    assert query == FleetQuery("web", "failing", "init_failed", "db", "size", "asc")
    junk = FleetQuery.from_args(
        {"status": "asleep", "repo_status": "x", "sort": "ram", "dir": "up"}
    )
    assert junk == FleetQuery()
    # A column without a direction starts in its natural order.
    assert FleetQuery.from_args({"sort": "last_backup"}).dir == "desc"
    assert len(FleetQuery.from_args({"q": "x" * 500}).q) == fleet.MAX_QUERY_LENGTH


def test_query_string_round_trips_and_leaves_defaults_out():
    assert FleetQuery().args() == {}
    query = FleetQuery(q="web", status="offline", tag="db", sort="snapshots", dir="asc")
    assert FleetQuery.from_args(query.args()) == query
    assert query.args() == {
        "q": "web",
        "status": "offline",
        "tag": "db",
        "sort": "snapshots",
        "dir": "asc",
    }
    assert query.cleared_args() == {"sort": "snapshots", "dir": "asc"}


def test_clicking_a_header_toggles_the_active_column_only():
    query = FleetQuery(q="web")
    assert query.sort_args("host") == {"q": "web", "sort": "host", "dir": "desc"}
    assert query.sort_args("size") == {"q": "web", "sort": "size", "dir": "desc"}
    by_size = FleetQuery(q="web", sort="size", dir="desc")
    assert by_size.sort_args("size") == {"q": "web", "sort": "size", "dir": "asc"}
    assert by_size.sort_args("os") == {"q": "web", "sort": "os", "dir": "asc"}


def test_sorting_puts_missing_values_last_in_both_directions():
    rows = [
        _row("b", repo_size_bytes=10),
        _row("a", repo_size_bytes=None),
        _row("c", repo_size_bytes=30),
        _row("d", repo_size_bytes=10),
    ]
    assert _names(oracle.sort_rows(rows, "size", "asc")) == ["b", "d", "c", "a"]
    assert _names(oracle.sort_rows(rows, "size", "desc")) == ["c", "b", "d", "a"]


@pytest.mark.parametrize(
    ("column", "direction", "expected"),
    [
        ("host", "asc", ["alpha", "Beta", "gamma"]),
        ("host", "desc", ["gamma", "Beta", "alpha"]),
        ("status", "asc", ["gamma", "Beta", "alpha"]),
        ("os", "asc", ["alpha", "gamma", "Beta"]),
        ("last_backup", "desc", ["Beta", "gamma", "alpha"]),
        ("backup_status", "asc", ["gamma", "Beta", "alpha"]),
        ("snapshots", "desc", ["Beta", "alpha", "gamma"]),
    ],
)
def test_every_sortable_column(column, direction, expected):
    rows = [
        _row("alpha", "never_seen", os="debian", snapshot_count=3),
        _row(
            "Beta",
            "offline",
            os=None,
            last_backup_at=NOW,
            last_backup_status="succeeded",
            snapshot_count=9,
        ),
        _row(
            "gamma",
            "online",
            os="ubuntu",
            arch="arm64",
            last_backup_at=NOW - timedelta(days=1),
            last_backup_status="failed",
            snapshot_count=0,
        ),
    ]
    assert _names(oracle.sort_rows(rows, column, direction)) == expected


def test_filters_combine():
    rows = [
        _row("web-1", "online", tags=["prod", "web"], repo_status="ready"),
        _row("WEB-2", "offline", tags=["web"], repo_status="error"),
        _row("db-1", "online", tags=["prod"], repo_status="ready", last_backup_status="lost"),
        _row("mail", "never_seen", tags=[], repo_status="unknown"),
    ]

    def names(**args):
        return _names(oracle.filter_rows(rows, FleetQuery.from_args(args)))

    assert names(q="web") == ["web-1", "WEB-2"]
    assert names(status="online") == ["web-1", "db-1"]
    assert names(status="never_seen") == ["mail"]
    assert names(status="failing") == ["WEB-2", "db-1"]
    assert names(repo_status="ready", tag="prod") == ["web-1", "db-1"]
    assert names(q="web", tag="prod") == ["web-1"]
    assert names(q="nothing") == []
    assert oracle.all_tags(rows) == ["prod", "web"]


def test_summary_counts_the_whole_fleet():
    rows = [
        _row("a", "online", repo_size_bytes=1000, last_backup_status="failed"),
        _row("b", "online", repo_size_bytes=24, repo_status="init_failed"),
        _row("c", "offline", repo_status="ready", last_backup_status="succeeded"),
        _row("d", "never_seen"),
    ]
    summary = oracle.summarize(
        rows, {"succeeded": 5, "warning": 1, "failed": 2, "lost": 1, "running": 3}
    )
    assert (summary.hosts, summary.online, summary.offline, summary.never_seen) == (4, 2, 1, 1)
    assert summary.failing == 2
    assert (summary.total_size_bytes, summary.measured_hosts) == (1024, 2)
    assert (summary.jobs, summary.jobs_succeeded, summary.jobs_failed) == (12, 5, 3)
    assert (summary.jobs_warning, summary.jobs_active) == (1, 3)


def test_formatting():
    assert human_bytes(None) == "—"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(250 * 1024**3) == "250 GiB"
    assert human_duration(65) == "1 min 5 s"
    assert human_duration(7200) == "2 h"
    assert relative_time(None, NOW) == "never"
    assert relative_time(NOW - timedelta(seconds=10), NOW) == "just now"
    assert relative_time(NOW - timedelta(minutes=5), NOW) == "5 min ago"
    assert relative_time(NOW - timedelta(hours=3, minutes=59), NOW) == "3 h ago"
    assert relative_time(NOW - timedelta(days=2), NOW) == "2 d ago"
    assert plural(1, "line") == "1 line"
    assert plural(0, "snapshot") == "0 snapshots"
    assert plural(12345, "entry", "entries") == "12,345 entries"


# --- through HTTP ------------------------------------------------------------------------


@pytest.fixture
def small_fleet(app):
    web1 = make_host(
        "web-1",
        tags=["prod", "web"],
        os="debian",
        arch="amd64",
        repo_status="ready",
        repo_size_bytes=3 * 1024**3,
        snapshot_count=12,
    )
    make_host(
        "web-2",
        seen_seconds_ago=3600,
        tags=["web"],
        repo_status="error",
        repo_status_reason="Fatal: wrong password",
        repo_size_bytes=1024**3,
        snapshot_count=40,
    )
    db1 = make_host("db-1", tags=["prod"], repo_status="ready", snapshot_count=2)
    make_host("mail", seen_seconds_ago=None)
    backup = make_job(web1, status="succeeded", finished_at=NOW)
    web1.last_backup_job_id, web1.last_backup_status = backup.id, "succeeded"
    web1.last_backup_at = NOW - timedelta(hours=2)
    web1.last_successful_backup_job_id = backup.id
    web1.last_successful_backup_at = web1.last_backup_at
    failed = make_job(db1, status="failed", error="Fatal: unable to open config file")
    db1.last_backup_job_id, db1.last_backup_status = failed.id, "failed"
    db1.last_backup_at = NOW - timedelta(minutes=30)
    make_job(db1, kind="check", status="running")
    make_job(db1, status="failed", age=timedelta(hours=25))  # outside the 24 h window
    db.session.commit()
    return {"web-1": web1, "db-1": db1}


def _tile(html: str, label: str) -> tuple[str, str]:
    match = re.search(
        rf'tile__label">{re.escape(label)}</span>\s*<span class="tile__value">([^<]*)</span>\s*'
        r'<span class="tile__note">(.*?)</span>\n',
        html,
        re.S,
    )
    assert match, label
    return match.group(1), re.sub(r"<[^>]+>", "", match.group(2))


def test_tiles_show_fleet_numbers(login_as, small_fleet):
    html = login_as(Role.viewer).get("/?q=web-1").get_data(as_text=True)
    assert _tile(html, "Hosts") == ("4", "1 never seen")
    assert _tile(html, "Online") == ("2", "1 offline")
    assert _tile(html, "Failing") == ("2", "backup failed or repository error")
    assert _tile(html, "Repository size") == ("4.0 GiB", "2 of 4 measured")
    assert _tile(html, "Jobs, last 24 h") == (
        "3",
        "1 succeeded · 1 failed · 1 active",
    )


def test_zero_failed_jobs_are_not_shown_in_red(login_as):
    host = make_host("calm-1")
    make_job(host, status="succeeded")
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert _tile(html, "Jobs, last 24 h") == ("1", "1 succeeded · 0 failed")
    assert "tile__failed" not in html and 'tile--bad" href="/jobs/' not in html
    make_job(host, status="failed", error="Fatal: nope")
    make_job(host, status="warning")
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert '<span class="tile__failed">1 failed</span>' in html
    assert _tile(html, "Jobs, last 24 h") == ("3", "1 succeeded · 1 failed · 1 warning")


def test_last_backup_shows_the_last_success_next_to_a_later_failure(login_as, small_fleet):
    web1 = small_fleet["web-1"]
    success_id = web1.last_successful_backup_job_id
    cancelled = make_job(web1, status="cancelled", error="Cancelled before it started.")
    web1.last_backup_job_id, web1.last_backup_status = cancelled.id, "cancelled"
    web1.last_backup_at = utcnow() - timedelta(minutes=5)
    web1.last_successful_backup_at = utcnow() - timedelta(days=3)
    db.session.commit()
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    row = re.search(
        r'<tr[^>]*>\s*<td data-label="Host" class="fleet__host"><a class="hostlink" '
        rf'href="/hosts/{web1.id}">.*?</tr>',
        html,
        re.S,
    ).group(0)
    assert 'pill pill--cancelled">cancelled</span>' in row
    assert "5 min ago" in row
    assert f'last success <a href="/jobs/{success_id}">' in row and "3 d ago</time>" in row
    db1_row = html[html.index(">db-1<") :]
    db1_row = db1_row[: db1_row.index("</tr>")]
    assert "no successful backup yet" in db1_row
    # the latest result is the success itself: nothing more to say
    web1.last_backup_job_id = success_id
    web1.last_backup_status = "succeeded"
    db.session.commit()
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert "last success" not in html


def _fleet_row(html: str, host) -> str:
    start = html.index(f'href="/hosts/{host.id}">{host.hostname}<')
    return html[start : html.index("</tr>", start)]


def test_a_backup_in_progress_is_shown_next_to_the_last_result(login_as, small_fleet):
    web1, db1 = small_fleet["web-1"], small_fleet["db-1"]
    running = make_job(web1, status="running")
    db.session.commit()
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    row = _fleet_row(html, web1)
    assert 'pill pill--succeeded">succeeded</span>' in row  # the last result stays
    assert f'<a href="/jobs/{running.id}">backup in progress</a>' in row
    # db-1 runs a check, not a backup: nothing to announce
    assert "backup in progress" not in _fleet_row(html, db1)
    running.status = "succeeded"
    db.session.commit()
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert "backup in progress" not in html


def test_table_columns_links_and_chips(login_as, small_fleet):
    html = login_as(Role.viewer).get("/").get_data(as_text=True)
    web1, db1 = small_fleet["web-1"], small_fleet["db-1"]
    assert _table_order(html) == ["db-1", "mail", "web-1", "web-2"]
    assert f'href="/hosts/{web1.id}"' in html
    assert '<a class="chip" href="/?tag=prod">prod</a>' in html
    assert f'href="/jobs/{db1.last_backup_job_id}"' in html
    assert 'pill pill--failed">failed' in html
    assert "3.0 GiB" in html and "debian" in html
    assert 'title="Fatal: wrong password">error</span>' in html
    assert "hoststate--never_seen" in html and "never seen" in html


def test_sorting_and_filtering_through_http(login_as, small_fleet):
    viewer = login_as(Role.viewer)
    page = viewer.get("/?sort=snapshots&dir=desc").get_data(as_text=True)
    assert _table_order(page) == ["web-2", "web-1", "db-1", "mail"]
    page = viewer.get("/?sort=last_backup&dir=desc").get_data(as_text=True)
    assert _table_order(page) == ["db-1", "web-1", "mail", "web-2"]
    page = viewer.get("/?status=failing").get_data(as_text=True)
    assert _table_order(page) == ["db-1", "web-2"]
    page = viewer.get("/?tag=web&repo_status=ready").get_data(as_text=True)
    assert _table_order(page) == ["web-1"]
    assert "1 of 4 hosts match" in page
    page = viewer.get("/?q=WEB&status=offline").get_data(as_text=True)
    assert _table_order(page) == ["web-2"]


def test_links_keep_the_query_string(login_as, small_fleet):
    page = login_as(Role.operator).get("/?q=web&tag=prod&sort=size&dir=desc").get_data(as_text=True)
    # headers keep the filters; the active one flips its direction
    assert 'href="/?q=web&amp;tag=prod&amp;sort=size&amp;dir=asc"' in page
    assert 'aria-sort="descending"' in page
    assert 'href="/?q=web&amp;tag=prod">Host</a>' in page  # the default order needs no args
    # the filter form carries the sort along and shows the current values
    assert 'name="q" value="web"' in page
    assert '<option value="prod" selected>prod</option>' in page
    assert '<input type="hidden" name="sort" value="size">' in page
    assert 'href="/?sort=size&amp;dir=desc">Clear filters</a>' in page
    # the run-now form comes back here after a refusal
    assert 'name="return_to" value="/?q=web&amp;tag=prod&amp;sort=size&amp;dir=desc"' in page


def test_empty_fleet_points_to_add_host(login_as):
    page = login_as(Role.admin).get("/").get_data(as_text=True)
    assert "Add your first host" in page and 'href="/hosts/new"' in page
    assert 'role="search"' not in page  # no filters over nothing
    viewer_page = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert "Ask an administrator to add hosts" in viewer_page


def test_no_match_offers_to_clear_the_filters(login_as, small_fleet):
    page = login_as(Role.viewer).get("/?q=zzz&sort=size").get_data(as_text=True)
    assert "No host matches these filters." in page
    assert "Add your first host" not in page
    assert 'href="/?sort=size&amp;dir=desc">Clear filters</a>' in page
    assert _tile(page, "Hosts")[0] == "4"


def test_refresh_gets_the_fragment_for_the_same_query(login_as, small_fleet):
    viewer = login_as(Role.viewer)
    response = viewer.get("/?status=failing", headers={"X-Refresh-Regions": "fleet"})
    assert response.status_code == 200
    assert "X-Refresh-Regions" in response.headers["Vary"]
    fragment = response.get_data(as_text=True)
    assert "<html" not in fragment and 'role="search"' not in fragment
    assert '<div id="fleet" data-refresh="5">' in fragment
    assert _table_order(fragment) == ["db-1", "web-2"]
    full = viewer.get("/?status=failing").get_data(as_text=True)
    assert '<div id="fleet" data-refresh="5">' in full and "<html" in full


def test_the_dashboard_makes_the_same_queries_for_4_or_40_hosts(app, login_as, small_fleet):
    viewer = login_as(Role.viewer)
    viewer.get("/")  # warm up: the session and user loads

    def count_queries():
        statements = []

        def record(conn, cursor, statement, *args):
            statements.append(statement)

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert viewer.get("/?sort=size").status_code == 200
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        return statements

    few = count_queries()
    for number in range(36):
        make_host(f"bulk-{number:02}", tags=["bulk"], repo_size_bytes=number)
    many = count_queries()
    assert len(many) == len(few)
    # the page's ids and keys, its rows by id, its count, the summary aggregate and the tag
    # list: none loads the fleet
    assert sum("FROM hosts" in statement for statement in many) == 5
    # the 24 h counts, and the backups in progress inside the hosts query
    assert sum("FROM jobs" in statement for statement in many) == 2


# --- run now -----------------------------------------------------------------------------


def test_run_now_is_for_operators_and_disabled_for_offline_hosts(login_as, small_fleet):
    viewer_page = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert "Run now" not in viewer_page and 'id="run-now"' not in viewer_page
    page = login_as(Role.operator).get("/").get_data(as_text=True)
    web1 = small_fleet["web-1"]
    assert f'formaction="/hosts/{web1.id}/jobs"' in page
    assert page.count("disabled aria-describedby") == 2  # web-2 offline, mail never seen
    assert "agent offline" in page and "agent never seen" in page


def test_run_now_starts_a_backup_and_opens_the_job(login_as, small_fleet):
    operator = login_as(Role.operator)
    web1 = small_fleet["web-1"]
    response = operator.post(
        f"/hosts/{web1.id}/jobs",
        data={"csrf_token": form_token(operator, "/"), "kind": "backup", "return_to": "/?q=web"},
    )
    job = db.session.scalar(select(Job).order_by(Job.id.desc()))
    assert response.status_code == 302
    assert response.headers["Location"] == f"/jobs/{job.id}#job-head"
    assert (job.kind, job.status, job.params["group"]) == ("backup", "queued", "default")
    assert job.actor_label == operator.user.username


def test_run_now_refused_goes_back_to_the_same_dashboard_view(login_as, small_fleet):
    operator = login_as(Role.operator)
    offline = db.session.scalar(select(Host).where(Host.hostname == "web-2"))
    jobs_before = db.session.scalar(select(func.count()).select_from(Job))
    response = operator.post(
        f"/hosts/{offline.id}/jobs",
        data={
            "csrf_token": form_token(operator, "/"),
            "kind": "backup",
            "return_to": "/?q=web&sort=size&dir=desc",
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/?q=web&sort=size&dir=desc"
    page = operator.get(response.headers["Location"]).get_data(as_text=True)
    assert "web-2: web-2 is offline" in page
    assert db.session.scalar(select(func.count()).select_from(Job)) == jobs_before


def test_return_to_never_leaves_the_dashboard(login_as, small_fleet):
    operator = login_as(Role.operator)
    offline = db.session.scalar(select(Host).where(Host.hostname == "web-2"))
    for target in ("https://evil.example/", "//evil.example/", "/settings/tokens"):
        response = operator.post(
            f"/hosts/{offline.id}/jobs",
            data={"csrf_token": form_token(operator, "/"), "kind": "backup", "return_to": target},
        )
        # not a dashboard address: the refusal is shown on the host page instead
        assert response.status_code == 409, target


def test_run_now_without_a_default_group_says_why_on_the_dashboard(login_as, small_fleet):
    operator = login_as(Role.operator)
    web1 = small_fleet["web-1"]
    db.session.execute(delete(SourceGroup).where(SourceGroup.host_id == web1.id))
    db.session.commit()
    response = operator.post(
        f"/hosts/{web1.id}/jobs",
        data={"csrf_token": form_token(operator, "/"), "kind": "backup", "return_to": "/"},
    )
    assert response.headers["Location"] == "/"
    page = operator.get("/").get_data(as_text=True)
    assert "web-1: web-1 has no source group named &#39;default&#39;." in page
