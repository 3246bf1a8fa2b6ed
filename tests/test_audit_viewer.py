"""The audit log viewer: filters, keyset pages stable under inserts, CSV and NDJSON exports,
admins only, precise refusals, and no secret in any row any action writes."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest

from app.extensions import db
from app.models import Role
from app.models.types import utcnow
from app.services import audit
from app.services.audit import Actor
from tests.factories import make_host, make_job

API = "/api/v1/audit"


def _row(action, *, actor="alice", target_type=None, target_id=None, payload=None):
    return audit.record(
        Actor("user", 1, actor),
        action,
        target_type=target_type,
        target_id=target_id,
        payload=payload,
        client_address="192.0.2.7",
    )


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


@pytest.fixture
def admin(api):
    return api(Role.admin)


@pytest.fixture
def log(app):
    """A small log: two hosts, a job on the first, rows by three actors."""
    web, db_host = make_host("web-1"), make_host("db-1")
    job = make_job(web, kind="restore")
    rows = {
        "login": _row("user.login", actor="alice", target_type="user", target_id=1),
        "restore": _row(
            "host.restore",
            actor="bob",
            target_type="job",
            target_id=job.id,
            payload={"host": "web-1", "snapshot": "abcd1234", "include": ["/etc/hosts"]},
        ),
        "started": _row(
            "job.started",
            actor="bob",
            target_type="job",
            target_id=job.id,
            payload={"host": "web-1", "kind": "restore"},
        ),
        "repo": _row(
            "host.repository_updated",
            actor="alicia",
            target_type="host",
            target_id=web.id,
            payload={"url": "rest:https://backup.example/web-1", "username": "backup"},
        ),
        "silence": _row(
            "silence.created",
            actor="carol",
            target_type="silence",
            target_id=3,
            payload={"host_id": db_host.id, "tag": None, "rule": None},
        ),
        "cancel": _row(
            "job.cancel_requested",
            actor="carol",
            target_type="job",
            target_id=99999,
            payload={"host": "gone", "note": "Quarterly CHECK 50%_done"},
        ),
    }
    db.session.commit()
    return {"host": web, "db": db_host, "job": job, **{key: row.id for key, row in rows.items()}}


def test_each_filter(admin, log):
    def ids(**args):
        return _ids(admin.get(API, query_string=args))

    assert ids() == sorted(ids(), reverse=True) and len(ids()) == 6
    assert ids(actor="bob") == [log["started"], log["restore"]]
    assert ids(actor="ALICE") == [log["login"]]  # exact, case-insensitive
    assert ids(actor="ali*") == [log["repo"], log["login"]]  # prefix
    assert ids(action="host.restore") == [log["restore"]]
    assert ids(action="job.") == [log["cancel"], log["started"]]
    assert ids(action="job*") == [log["cancel"], log["started"]]
    assert ids(action="job") == []  # exact: no action is called just "job"
    assert ids(target_type="job") == [log["cancel"], log["started"], log["restore"]]
    assert ids(target_type="job", target_id=str(log["job"].id)) == [
        log["started"],
        log["restore"],
    ]
    # A host: its own rows, its jobs' rows, rows whose payload names it.
    assert ids(host_id=log["host"].id) == [log["repo"], log["started"], log["restore"]]
    assert ids(host_id=log["db"].id) == [log["silence"]]
    assert ids(q="abcd1234") == [log["restore"]]  # in the payload
    assert ids(q="CAROL") == [log["cancel"], log["silence"]]  # the actor, any case
    assert ids(q="50%_") == [log["cancel"]]  # % and _ are literal
    assert ids(q="%") == [log["cancel"]]
    assert ids(q="repository_upd") == [log["repo"]]  # the action


def test_combined_filters_and_time_range(admin, log):
    now = utcnow()

    def ids(**args):
        return _ids(admin.get(API, query_string=args))

    assert ids(actor="bob", action="job.", host_id=log["host"].id) == [log["started"]]
    assert ids(actor="carol", q="quarterly") == [log["cancel"]]
    earlier = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert len(ids(since=earlier, until=later)) == 6
    assert ids(until=earlier) == []
    assert ids(since=later) == []
    today = now.date().isoformat()
    assert len(ids(since=today, until=today)) == 6  # a date alone is the whole day
    tomorrow = (now + timedelta(days=1)).date().isoformat()
    assert ids(since=tomorrow) == []


def test_pages_continue_before_the_cursor_and_ignore_rows_written_meanwhile(admin, app):
    first = [_row("test.event", payload={"n": n}).id for n in range(7)]
    db.session.commit()
    page = admin.get(API, query_string={"limit": 3}).get_json()
    assert [item["id"] for item in page["items"]] == first[::-1][:3]
    seen = [item["id"] for item in page["items"]]
    while page["next_cursor"]:
        # New rows arrive between page fetches: they never shift what the next page shows.
        _row("test.event", payload={"late": True})
        db.session.commit()
        page = admin.get(API, query_string={"limit": 3, "cursor": page["next_cursor"]}).get_json()
        seen += [item["id"] for item in page["items"]]
    assert seen == first[::-1]
    # and the two rows written between pages are there on a fresh first page
    assert len(_ids(admin.get(API, query_string={"limit": 500}))) == 7 + 2


def test_a_page_has_the_contract_shape(admin, log):
    body = admin.get(API, query_string={"action": "host.restore"}).get_json()
    assert body["next_cursor"] is None
    (item,) = body["items"]
    assert set(item) >= {"id", "at", "actor", "action", "target_type", "target_id", "payload"}
    assert item["actor"] == "bob" and item["address"] == "192.0.2.7"
    assert item["target_type"] == "job" and item["target_id"] == str(log["job"].id)
    assert item["payload"]["snapshot"] == "abcd1234"
    assert item["at"].endswith("Z")


def test_who_started_a_restore_exported_as_csv(admin, log):
    """The issue's 'done when': find who started a given restore, export it as CSV."""
    job_id = str(log["job"].id)
    query = {"action": "host.restore", "target_type": "job", "target_id": job_id}
    response = admin.get(f"{API}.csv", query_string=query)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1
    assert rows[0]["actor"] == "bob" and rows[0]["action"] == "host.restore"
    assert rows[0]["target_id"] == job_id and rows[0]["address"] == "192.0.2.7"
    assert json.loads(rows[0]["payload"])["include"] == ["/etc/hosts"]


def test_exports_hold_the_whole_filtered_set_past_one_batch(admin, app, monkeypatch):
    monkeypatch.setattr("app.api.audit.EXPORT_BATCH", 4)
    made = [_row("test.event", actor=f"user{n}", payload={"n": n}).id for n in range(11)]
    _row("other.event")
    db.session.commit()
    text = admin.get(f"{API}.ndjson", query_string={"action": "test."}).get_data(as_text=True)
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["id"] for line in lines] == made[::-1]
    assert lines[0]["payload"] == {"n": 10} and lines[0]["actor"] == "user10"
    response = admin.get(f"{API}.csv", query_string={"action": "test."})
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == made[::-1]
    assert admin.get(f"{API}.ndjson", query_string={"actor": "nobody"}).get_data() == b""


def test_csv_cells_never_start_a_formula(admin, app):
    _row("test.event", actor='=HYPERLINK("http://x")', payload={"note": "-2+3"})
    _row("test.event", actor="@SUM(A1)", target_type="host", target_id="+1")
    db.session.commit()
    text = admin.get(f"{API}.csv").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), row
    assert rows[0]["actor"] == "'@SUM(A1)" and rows[0]["target_id"] == "'+1"
    assert rows[1]["actor"] == '\'=HYPERLINK("http://x")'


@pytest.mark.parametrize("role", [Role.operator, Role.viewer])
def test_only_admins_read_the_log(api, login_as, role):
    client = api(role)
    for path in (API, f"{API}.csv", f"{API}.ndjson"):
        assert client.get(path).status_code == 403
    assert login_as(role).get("/audit").status_code == 403


@pytest.mark.parametrize(
    "name, value",
    [
        ("limit", "0"),
        ("limit", "501"),
        ("limit", "ten"),
        ("limit", "99999999999999999999999"),
        ("cursor", "not-a-cursor"),
        ("cursor", "YjA"),  # b0
        ("cursor", "x" * 200),
        ("host_id", "web-1"),
        ("host_id", "99999999999999999999"),
        ("since", "yesterday"),
        ("since", "2026-13-01"),
        ("until", "99999-01-01T00:00"),
        ("action", "Job Started"),
        ("actor", "a\x00b"),
        ("q", "x" * 300),
    ],
)
def test_bad_values_are_422_naming_the_parameter(admin, name, value):
    for path in (API, f"{API}.csv", f"{API}.ndjson"):
        if name in ("limit", "cursor") and path != API:
            continue
        response = admin.get(path, query_string={name: value})
        assert response.status_code == 422, (path, name, value, response.get_data())
        assert name in response.get_json()["fields"]


def test_until_before_since_is_refused(admin):
    response = admin.get(API, query_string={"since": "2026-12-03", "until": "2026-12-01"})
    assert response.status_code == 422 and "until" in response.get_json()["fields"]


# --- the page --------------------------------------------------------------------------------


def test_the_page_lists_links_pages_and_exports(app, login_as, log):
    browser = login_as(Role.admin)
    page = browser.get("/audit").get_data(as_text=True)
    assert 'href="/audit"' in page  # the nav link for admins
    assert "host.restore" in page and "bob" in page
    assert f'href="/jobs/{log["job"].id}"' in page  # the job still exists
    assert f'href="/hosts/{log["host"].id}"' in page
    assert 'href="/jobs/99999"' not in page  # a gone target is plain text
    assert "/api/v1/audit.csv" in page and "/api/v1/audit.ndjson" in page
    assert "&#34;snapshot&#34;: &#34;abcd1234&#34;" in page  # the pretty payload
    filtered = browser.get("/audit", query_string={"actor": "bob"}).get_data(as_text=True)
    assert "/api/v1/audit.csv?actor=bob" in filtered
    assert "user.login" not in filtered.split("<tbody>")[1]


def test_the_page_pages_with_older_links(app, login_as):
    ids = [_row("test.event", payload={"n": n}).id for n in range(55)]
    db.session.commit()
    browser = login_as(Role.admin)
    page = browser.get("/audit").get_data(as_text=True)
    assert "Older →" in page
    older = page.split('aria-label="Pages"')[1].split('href="')[1].split('"')[0]
    second = browser.get(older.replace("&amp;", "&")).get_data(as_text=True)
    assert "test.event" in second and "← Newest" in second and "Older →" not in second
    assert second.count("<tr>") == 1 + (55 + 1 - 50)  # header + the rest (login included)
    assert ids


def test_the_page_shows_bad_filters_next_to_their_field(login_as):
    response = login_as(Role.admin).get("/audit", query_string={"since": "soon"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="since-errors"' in page and "ISO-8601" in page


def test_the_page_says_when_nothing_matches(login_as):
    browser = login_as(Role.admin)
    page = browser.get("/audit", query_string={"actor": "nobody"}).get_data(as_text=True)
    assert "No entries match these filters" in page


def test_non_admins_see_no_audit_link(login_as):
    page = login_as(Role.operator).get("/").get_data(as_text=True)
    assert 'href="/audit"' not in page
