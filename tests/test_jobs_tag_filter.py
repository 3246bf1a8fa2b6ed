"""Jobs filtered by host tag: the /jobs page and GET /api/v1/jobs?tag=, keyset paging,
bad tags refused (422), tags shown as chips wherever jobs and alerts list their hosts."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import event

from app.extensions import db
from app.models import Role
from app.models.types import utcnow
from app.services import alerts
from tests.factories import bearer_headers, make_host, make_job, make_user


@pytest.fixture
def fleet(app):
    """db-1 (db, eu), db-2 (db), web-1 (web, eu); jobs alternate over the three."""
    hosts = {
        "db-1": make_host("db-1", tags=["db", "eu"]),
        "db-2": make_host("db-2", tags=["db"]),
        "web-1": make_host("web-1", tags=["web", "eu"]),
    }
    jobs = {name: [] for name in hosts}
    for number in range(9):
        name = ("db-1", "db-2", "web-1")[number % 3]
        jobs[name].append(make_job(hosts[name], kind="backup" if number % 2 else "check").id)
    return hosts, jobs


@pytest.fixture
def api(app):
    return app.test_client(), bearer_headers(make_user(Role.viewer, username="reader"))


def _ids(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    return [item["id"] for item in response.get_json()["items"]]


def _page_ids(text):
    return [int(number) for number in re.findall(r"<strong>#(\d+)</strong>", text)]


# --- the API ---------------------------------------------------------------------------------


def test_the_api_lists_jobs_of_hosts_with_the_tag(api, fleet):
    client, headers = api
    _, jobs = fleet
    db_jobs = sorted(jobs["db-1"] + jobs["db-2"], reverse=True)
    assert _ids(client.get("/api/v1/jobs?tag=db", headers=headers)) == db_jobs
    eu_jobs = sorted(jobs["db-1"] + jobs["web-1"], reverse=True)
    assert _ids(client.get("/api/v1/jobs?tag=eu", headers=headers)) == eu_jobs
    both = client.get("/api/v1/jobs?tag=eu&kind=check", headers=headers)
    assert all(item["kind"] == "check" for item in both.get_json()["items"])
    assert set(_ids(both)) <= set(eu_jobs) and _ids(both)
    assert _ids(client.get("/api/v1/jobs?tag=nobody-has-it", headers=headers)) == []


def test_api_paging_with_a_tag_is_stable_while_new_jobs_arrive(api, fleet):
    client, headers = api
    hosts, jobs = fleet
    expected = sorted(jobs["db-1"] + jobs["db-2"], reverse=True)
    seen, before = [], None
    while True:
        query = "/api/v1/jobs?tag=db&limit=2" + (f"&before={before}" if before else "")
        response = client.get(query, headers=headers)
        seen += _ids(response)
        make_job(hosts["db-1"])  # newer jobs do not shift the pages already handed out
        before = response.get_json()["next_before"]
        if before is None:
            break
        assert before == seen[-1]
    assert seen == expected
    # the last page is short, so it says there is nothing more
    last = client.get(f"/api/v1/jobs?tag=db&limit=2&before={expected[-1]}", headers=headers)
    assert last.get_json() == {"items": [], "next_before": None}


@pytest.mark.parametrize(
    "query, field",
    [
        ("tag=no%20spaces", "tag"),
        ("tag=-leading-dash", "tag"),
        ("tag=" + "x" * 65, "tag"),
        ("tag=a,b", "tag"),
        ("tag=%00", "tag"),
        ("before=0", "before"),
        ("before=x", "before"),
        ("limit=201", "limit"),
        ("limit=0", "limit"),
    ],
)
def test_the_api_refuses_a_bad_tag_or_cursor_with_422_json(api, fleet, query, field):
    client, headers = api
    response = client.get(f"/api/v1/jobs?{query}", headers=headers)
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert field in body["fields"], body


def test_the_api_tag_filter_costs_the_same_queries_for_3_or_30_hosts(api, fleet):
    client, headers = api
    client.get("/api/v1/jobs?tag=db", headers=headers)  # warm up

    def statements():
        seen = []

        def record(conn, cursor, statement, *args):
            seen.append(statement)

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert client.get("/api/v1/jobs?tag=db", headers=headers).status_code == 200
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        return seen

    few = statements()
    for number in range(27):
        make_job(make_host(f"bulk-{number:02}", tags=["db"]))
    many = statements()
    assert len(many) == len(few)
    assert sum("FROM hosts" in statement for statement in many) == 1


# --- the page --------------------------------------------------------------------------------


def test_the_jobs_page_filters_by_tag_and_shows_tag_chips(login_as, fleet):
    _, jobs = fleet
    viewer = login_as(Role.viewer)
    page = viewer.get("/jobs/?tag=db")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert _page_ids(text) == sorted(jobs["db-1"] + jobs["db-2"], reverse=True)
    assert '<option value="db" selected>db</option>' in text
    # every host name in the table carries its tags, each a link that filters by it
    assert 'class="chip" href="/jobs/?tag=eu"' in text
    everything = viewer.get("/jobs/").get_data(as_text=True)
    assert len(_page_ids(everything)) == 9
    assert 'href="/jobs/?tag=web"' in everything
    # other filters are kept when a chip is followed
    kept = viewer.get("/jobs/?kind=check").get_data(as_text=True)
    assert html.escape("/jobs/?kind=check&tag=db") in kept or "/jobs/?tag=db&amp;kind=check" in kept


def test_a_tag_nobody_carries_shows_no_jobs_and_keeps_the_choice(login_as, fleet):
    viewer = login_as(Role.viewer)
    text = viewer.get("/jobs/?tag=retired").get_data(as_text=True)
    assert "No jobs match these filters" in text
    assert '<option value="retired" selected>retired</option>' in text


def test_a_bad_tag_on_the_page_is_a_field_error_not_everything(login_as, fleet):
    viewer = login_as(Role.viewer)
    page = viewer.get("/jobs/?tag=no%20spaces")
    assert page.status_code == 422
    text = page.get_data(as_text=True)
    assert "field--error" in text and "is not a tag" in text
    assert _page_ids(text) == []
    assert "Fix the filter to see jobs" in text


def test_the_jobs_page_pages_by_keyset_with_the_tag_kept(app, login_as, fleet, monkeypatch):
    hosts, jobs = fleet
    monkeypatch.setattr("app.web.jobs.routes.LIST_LIMIT", 2)
    viewer = login_as(Role.viewer)
    expected = sorted(jobs["db-1"] + jobs["db-2"], reverse=True)
    seen, path = [], "/jobs/?tag=db"
    while path:
        text = viewer.get(path).get_data(as_text=True)
        seen += _page_ids(text)
        make_job(hosts["db-2"])
        older = re.search(r'href="([^"]+)" rel="next"', text)
        path = html.unescape(older.group(1)) if older else None
        if path:
            assert "tag=db" in path
    assert seen == expected


def test_the_jobs_page_costs_the_same_queries_for_3_or_30_tagged_hosts(login_as, fleet):
    viewer = login_as(Role.viewer)
    viewer.get("/jobs/?tag=db")

    def statements():
        seen = []

        def record(conn, cursor, statement, *args):
            seen.append(statement)

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert viewer.get("/jobs/?tag=db").status_code == 200
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        return seen

    few = statements()
    for number in range(27):
        make_job(make_host(f"bulk-{number:02}", tags=["db", f"t{number}"]))
    many = statements()
    assert len(many) == len(few)


def test_the_job_page_and_the_alerts_list_show_the_host_tags(app, login_as, fleet):
    hosts, jobs = fleet
    viewer = login_as(Role.viewer)
    job_page = viewer.get(f"/jobs/{jobs['web-1'][0]}").get_data(as_text=True)
    assert 'class="chip" href="/jobs/?tag=web"' in job_page
    fired = alerts.fire(
        alerts.Context(utcnow()), hosts["db-2"], "backup_failed", "default", "The backup failed."
    )
    db.session.commit()
    assert fired is not None
    listing = viewer.get("/alerts").get_data(as_text=True)
    assert "The backup failed." in listing or "db-2" in listing
    assert 'class="chip" href="/alerts?tag=db"' in listing
