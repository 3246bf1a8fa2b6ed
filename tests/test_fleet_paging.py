"""The fleet at scale: the dashboard's host table one page at a time (keyset in SQL), the
refresh's ETag/304, GET /api/v1/hosts limit/cursor/next_cursor, the tag filter in SQL."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import Alert, Host, Role
from app.models.types import utcnow
from app.services import hosts as host_service
from app.web.dashboard import fleet
from app.web.dashboard.fleet import FleetQuery, FleetRow
from tests import fleet_oracle as oracle
from tests.factories import make_host

OFFLINE_AFTER = 90
DASH, LEFT = "\u2013", "\u2039"  # en dash and single angle quote: the pager
HOST_LINK = re.compile(r'class="hostlink" href="/hosts/\d+">([^<]+)</a>')
NEXT = re.compile(r'href="([^"]+)" rel="next"')
PREV = re.compile(r'href="([^"]+)" rel="prev"')
RANGE = re.compile(r'class="fleetpager__range">([^<]+)</span>')


def _cursor_of(payload) -> str:
    """A cursor as the pagers write them (URL-safe base64 of JSON), holding ``payload``."""
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _names(rows) -> list[str]:
    return [row.host.hostname for row in rows]


@pytest.fixture
def mixed_fleet(app):
    """25 hosts with every kind of value, missing ones and ties included."""
    now = utcnow()
    statuses = [None, "succeeded", "failed", "lost", "warning", "cancelled"]
    for number in range(25):
        seen = (None, 5, 3600)[number % 3]
        make_host(
            f"{'Host' if number % 4 == 0 else 'host'}-{number:02}",
            seen_seconds_ago=seen,
            tags=[["db"], ["db2", "web"], [], ["web", "db"]][number % 4],
            os=(None, "debian", "Alpine", "")[number % 4],
            arch=(None, "amd64", None, "arm64")[number % 4] if number % 5 else None,
            repo_status=("ready", "error", "unknown", "init_failed", "ready")[number % 5],
            repo_size_bytes=None if number % 3 == 0 else (number % 7) * 1000,
            snapshot_count=number % 6,
            last_backup_status=statuses[number % 6],
            last_backup_at=None if number % 6 == 0 else now - timedelta(hours=number % 8),
        )
    db.session.commit()


def _all_rows(now) -> list[FleetRow]:
    return [
        FleetRow(host, host.status(now, OFFLINE_AFTER)) for host in db.session.scalars(select(Host))
    ]


def _walk(query: FleetQuery, now) -> list[fleet.Page]:
    """Every page, following next cursors from the first."""
    pages = [fleet.load_page(query, now, OFFLINE_AFTER)]
    while pages[-1].next_cursor:
        pages.append(fleet.load_page(query, now, OFFLINE_AFTER, after=pages[-1].next_cursor))
        assert len(pages) < 50
    return pages


@pytest.mark.parametrize("column", sorted(fleet.SORT_COLUMNS))
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_sql_pages_follow_the_same_order_as_sort_rows(app, mixed_fleet, column, direction):
    now = utcnow()
    query = FleetQuery(sort=column, dir=direction, per_page=4)
    expected = _names(oracle.apply(_all_rows(now), query))
    pages = _walk(query, now)
    assert [name for page in pages for name in _names(page.rows)] == expected
    assert [(page.start, page.end) for page in pages][:2] == [(1, 4), (5, 8)]
    assert all(page.matches == 25 for page in pages)
    assert pages[0].prev_cursor is None and pages[-1].next_cursor is None
    # and back again from the last page through the previous cursors
    back = [pages[-1]]
    while back[-1].prev_cursor:
        back.append(fleet.load_page(query, now, OFFLINE_AFTER, before=back[-1].prev_cursor))
    assert [_names(page.rows) for page in reversed(back)] == [_names(p.rows) for p in pages]


@pytest.mark.parametrize(
    "args",
    [
        {"q": "HOST-1"},
        {"q": "%"},
        {"q": "_"},
        {"status": "online"},
        {"status": "offline"},
        {"status": "never_seen"},
        {"status": "failing"},
        {"repo_status": "error"},
        {"tag": "db"},
        {"tag": "web", "status": "online", "sort": "size", "dir": "desc"},
        {"tag": "nowhere"},
    ],
)
def test_sql_filters_match_the_rules(app, mixed_fleet, args):
    now = utcnow()
    query = FleetQuery.from_args({**args, "per_page": "3"})
    expected = _names(oracle.apply(_all_rows(now), query))
    pages = _walk(query, now)
    assert [name for page in pages for name in _names(page.rows)] == expected
    assert pages[0].matches == len(expected)
    if not expected:
        assert pages[0].start == 0 and pages[0].end == 0


def test_summary_aggregate_equals_summarize(app, mixed_fleet):
    now = utcnow()
    counts = {"succeeded": 3, "failed": 1}
    expected = oracle.summarize(_all_rows(now), counts)
    assert fleet.load_summary(now, OFFLINE_AFTER, counts) == expected


def test_keyset_pages_neither_repeat_nor_skip_across_inserts_and_deletes(app, mixed_fleet):
    now = utcnow()
    query = FleetQuery(per_page=5)
    first = fleet.load_page(query, now, OFFLINE_AFTER)
    assert _names(first.rows) == ["Host-00", "host-01", "host-02", "host-03", "Host-04"]
    # rows appear and go on the page already read, and one at the head of the next page
    make_host("aaa-new")
    make_host("host-00a")
    doomed = db.session.scalar(select(Host).where(Host.hostname == "host-02"))
    db.session.delete(doomed)
    db.session.commit()
    second = fleet.load_page(query, now, OFFLINE_AFTER, after=first.next_cursor)
    assert _names(second.rows) == ["host-05", "host-06", "host-07", "Host-08", "host-09"]
    assert second.start == 7  # the count before it is live: two added, one removed
    make_host("host-04a")  # between the last row read and the next page: shown next
    third = fleet.load_page(query, now, OFFLINE_AFTER, after=first.next_cursor)
    assert _names(third.rows)[0] == "host-04a"


def test_a_cursor_of_another_sort_or_garbage_gives_the_first_page(app, mixed_fleet):
    now = utcnow()
    by_size = fleet.load_page(FleetQuery(sort="size", per_page=5), now, OFFLINE_AFTER)
    by_host = FleetQuery(per_page=5)
    first = _names(fleet.load_page(by_host, now, OFFLINE_AFTER).rows)
    for cursor in (by_size.next_cursor, "!!!", "e30", "x" * 5000, "W1tdXQ"):
        page = fleet.load_page(by_host, now, OFFLINE_AFTER, after=cursor, before=cursor)
        assert _names(page.rows) == first


# No key column holds these: a cursor with one opens the first page. 0, -1 and "x" fit some
# column and move the page instead; either way never an error.
UNFIT = [10**30, -(2**63) - 1, 1.5, True, "a\u0000", "a\ud800", "x" * 256, [], {}]


@pytest.mark.parametrize("column", sorted(fleet.SORT_COLUMNS))
def test_a_tampered_cursor_is_never_an_error(login_as, mixed_fleet, column):
    """Each value of a real cursor replaced, in turn, by one of another type or range."""
    viewer = login_as(Role.viewer)
    base = f"/?per_page=4&sort={column}"
    html = viewer.get(base).get_data(as_text=True)
    first = HOST_LINK.findall(html)
    text = NEXT.search(html).group(1).split("after=")[1]
    payload = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    for forged in [*UNFIT, 0, -1, "x", {"t": "yesterday"}]:
        for position in range(len(payload["k"])):
            key = list(payload["k"])
            key[position] = forged
            cursor = _cursor_of({**payload, "k": key})
            for name in ("after", "before"):
                answer = viewer.get(f"{base}&{name}={cursor}")
                assert answer.status_code == 200, (forged, position, name)
                if forged in UNFIT:
                    assert HOST_LINK.findall(answer.get_data(as_text=True)) == first


@pytest.mark.parametrize("parameter", ["per_page", "q", "tag", "sort", "status", "after"])
def test_a_nul_in_a_dashboard_parameter_is_a_clear_page(login_as, mixed_fleet, parameter):
    answer = login_as(Role.viewer).get(f"/?{parameter}=a%00b")
    assert answer.status_code == 422
    assert f"&#39;{parameter}&#39; must not contain NUL characters" in answer.get_data(as_text=True)


def test_per_page_is_bounded_and_kept_in_links(login_as, mixed_fleet):
    for wrong in ("9" * 30, "ten", "1.5", "", " 7"):
        assert FleetQuery.from_args({"per_page": wrong}).per_page == fleet.DEFAULT_PER_PAGE
    assert FleetQuery.from_args({"per_page": "0"}).per_page == fleet.DEFAULT_PER_PAGE
    assert FleetQuery.from_args({"per_page": "99999"}).per_page == fleet.MAX_PER_PAGE
    assert FleetQuery.from_args({"per_page": "-3"}).per_page == fleet.DEFAULT_PER_PAGE
    assert FleetQuery.from_args({"per_page": "7"}).args() == {"per_page": "7"}
    page = login_as(Role.viewer).get("/?per_page=10&q=host").get_data(as_text=True)
    assert len(HOST_LINK.findall(page)) == 10
    assert '<input type="hidden" name="per_page" value="10">' in page
    assert "per_page=10" in NEXT.search(page).group(1)


def test_pager_pages_through_the_dashboard_without_javascript(login_as, mixed_fleet):
    viewer = login_as(Role.viewer)
    page = viewer.get("/?per_page=10").get_data(as_text=True)
    assert RANGE.search(page).group(1) == f"1{DASH}10 of 25"
    assert not PREV.search(page) and f'aria-disabled="true">{LEFT} Previous' in page
    seen = HOST_LINK.findall(page)
    while NEXT.search(page):
        page = viewer.get(NEXT.search(page).group(1).replace("&amp;", "&")).get_data(as_text=True)
        seen += HOST_LINK.findall(page)
    assert RANGE.search(page).group(1) == f"21{DASH}25 of 25"
    assert len(seen) == len(set(seen)) == 25
    previous = viewer.get(PREV.search(page).group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert RANGE.search(previous).group(1) == f"11{DASH}20 of 25"
    # the bulk tag form and run-now come back to this very page
    admin_page = login_as(Role.admin).get(
        NEXT.search(page and previous).group(1).replace("&amp;", "&")
    )
    html = admin_page.get_data(as_text=True)
    assert re.search(r'name="return_to" value="/\?per_page=10&amp;after=[^"]+"', html)
    assert html.count('form="bulk-tags"') == 5


def test_a_small_fleet_shows_no_pager(login_as, app):
    make_host("only-one")
    page = login_as(Role.viewer).get("/").get_data(as_text=True)
    assert "fleetpager__range" not in page and HOST_LINK.findall(page) == ["only-one"]


# --- the refresh: ETag and 304 -----------------------------------------------------------


def _refresh(client, url="/?per_page=5", etag=None):
    headers = {"X-Refresh-Regions": "fleet"}
    if etag:
        headers["If-None-Match"] = etag
    return client.get(url, headers=headers)


def _host(name) -> Host:
    return db.session.scalar(select(Host).where(Host.hostname == name))


@pytest.fixture
def still_clock(monkeypatch):
    """The dashboard's clock stopped: the ETag holds the minute, which must not turn mid-test."""
    now = utcnow()
    monkeypatch.setattr("app.web.dashboard.routes.utcnow", lambda: now)
    return now


def test_refresh_answers_304_until_something_shown_changes(login_as, mixed_fleet, still_clock):
    viewer = login_as(Role.viewer)
    first = _refresh(viewer)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and first.get_data(as_text=True)
    same = _refresh(viewer, etag=etag)
    assert same.status_code == 304 and same.get_data() == b""
    assert same.headers["ETag"] == etag

    def changed(mutate) -> bool:
        nonlocal etag
        mutate()
        db.session.commit()
        answer = _refresh(viewer, etag=etag)
        if answer.status_code == 200:
            etag = answer.headers["ETag"]
            return True
        assert answer.status_code == 304
        return False

    # a poll moving an online host's last_seen_at changes nothing shown
    assert not changed(lambda: setattr(_host("host-01"), "last_seen_at", utcnow()))
    # a row on the page
    assert changed(lambda: setattr(_host("host-01"), "snapshot_count", 99))
    assert changed(lambda: setattr(_host("host-02"), "tags", ["new"]))
    # a row off the page that moves no tile
    assert not changed(lambda: setattr(_host("Host-20"), "snapshot_count", 77))
    # a row off the page that moves the tiles (failing, size)
    assert changed(lambda: setattr(_host("host-22"), "repo_status", "error"))
    assert changed(lambda: setattr(_host("host-21"), "repo_size_bytes", 123456))
    # an alert on a host of the page
    assert changed(
        lambda: db.session.add(
            Alert(
                rule="backup_failed", host_id=_host("Host-00").id, severity="critical", message="x"
            )
        )
    )
    # a host going offline (its status, and the Online tile)
    assert changed(lambda: setattr(_host("host-01"), "last_seen_at", utcnow() - timedelta(hours=1)))


def test_refresh_etag_depends_on_the_view_and_the_user(login_as, mixed_fleet, still_clock):
    viewer, admin = login_as(Role.viewer), login_as(Role.admin)
    etag = _refresh(viewer).headers["ETag"]
    assert _refresh(admin, etag=etag).status_code == 200  # other buttons
    assert _refresh(viewer, "/?per_page=5&sort=size", etag=etag).status_code == 200
    assert _refresh(viewer, "/?per_page=6", etag=etag).status_code == 200
    # the full page is never answered 304 (flash messages, the alert banner, the forms)
    full = viewer.get("/?per_page=5", headers={"If-None-Match": etag})
    assert full.status_code == 200 and "ETag" not in full.headers


# --- GET /api/v1/hosts -------------------------------------------------------------------


def _api_names(answer) -> list[str]:
    return [item["hostname"] for item in answer["items"]]


def test_api_without_limit_lists_every_host(api, mixed_fleet):
    answer = api(Role.viewer).get("/api/v1/hosts").get_json()
    assert len(answer["items"]) == 25 and answer["next_cursor"] is None
    assert _api_names(answer) == sorted(_api_names(answer))


def test_api_pages_by_cursor_and_keeps_the_tag_filter(api, mixed_fleet):
    client = api(Role.viewer)
    everything = _api_names(client.get("/api/v1/hosts").get_json())
    for suffix, expected in (("", everything), ("&tag=db", None)):
        if expected is None:
            expected = _api_names(client.get("/api/v1/hosts?tag=db").get_json())
            assert 0 < len(expected) < 25
        seen, cursor = [], None
        while True:
            url = f"/api/v1/hosts?limit=4{suffix}" + (f"&cursor={cursor}" if cursor else "")
            answer = client.get(url).get_json()
            assert len(answer["items"]) <= 4
            seen += _api_names(answer)
            cursor = answer["next_cursor"]
            if cursor is None:
                break
            assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
        assert seen == expected
    # exactly one full page: no cursor to an empty page
    assert client.get("/api/v1/hosts?limit=25").get_json()["next_cursor"] is None
    # a cursor alone pages by the largest page
    cursor = client.get("/api/v1/hosts?limit=3").get_json()["next_cursor"]
    assert _api_names(client.get(f"/api/v1/hosts?cursor={cursor}").get_json()) == everything[3:]


def test_api_cursor_survives_inserts(api, mixed_fleet):
    client = api(Role.viewer)
    first = client.get("/api/v1/hosts?limit=3").get_json()
    make_host("AAA-first")  # sorts before the cursor: not shown again nor shifting the page
    second = client.get(f"/api/v1/hosts?limit=3&cursor={first['next_cursor']}").get_json()
    assert _api_names(second) == ["Host-12", "Host-16", "Host-20"]


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ("limit=0", "limit", "from 1 to 1000"),
        ("limit=1001", "limit", "from 1 to 1000"),
        ("limit=ten", "limit", "whole number"),
        ("limit=1.5", "limit", "whole number"),
        ("limit=-1", "limit", "from 1 to 1000"),
        ("limit=" + "9" * 30, "limit", "from 1 to 1000"),
        ("limit=%00", "limit", "NUL"),
        ("cursor=%00", "cursor", "NUL"),
        ("tag=%00", "tag", "NUL"),
        ("tag=no%20such", "tag", "not a tag"),
        ("cursor=" + "9" * 30, "cursor", "not a cursor"),
        ("cursor=%20" + _cursor_of({"s": "hostname", "k": ["a", 1]}), "cursor", "not a cursor"),
        ("cursor=", "cursor", "not a cursor"),
        ("cursor=!!!", "cursor", "not a cursor"),
        ("cursor=abc", "cursor", "not a cursor"),
        ("limit=5&cursor=" + "A" * 401, "cursor", "not a cursor"),
    ],
)
def test_api_refuses_bad_limits_and_cursors(api, mixed_fleet, query, field, words):
    answer = api(Role.viewer).get(f"/api/v1/hosts?{query}")
    assert answer.status_code == 422
    body = answer.get_json()
    assert field in body["fields"] and words in body["fields"][field][0]


FORGED_KEYS = [
    ["x"],
    ["x", True],
    ["x", 0],
    ["x", -1],
    ["x", 10**30],
    ["x", 2**31],
    ["x", 1.5],
    ["x", None],
    [None, 1],
    [1, 2],
    ["x" * 300, 1],
    ["a\ud800", 1],
    ["a\u0000", 1],
    [{"t": "2026-01-01T00:00:00+00:00"}, 1],
]


@pytest.mark.parametrize(
    "payload",
    [
        {"h": 1},
        ["x"],
        ["x", True],
        ["x", 0],
        [1, 2],
        ["x" * 300, 1],
        ["a\ud800", 1],
        None,
        *({"s": "hostname", "k": key} for key in FORGED_KEYS),
        {"s": "host asc", "k": ["x", 1]},  # the dashboard's order, not this list's
        {"k": ["x", 1]},
    ],
)
def test_api_refuses_forged_cursors(api, mixed_fleet, payload):
    cursor = _cursor_of(payload)
    answer = api(Role.viewer).get(f"/api/v1/hosts?limit=2&cursor={cursor}")
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert "cursor" in answer.get_json()["fields"]


# --- the tag filter in SQL ---------------------------------------------------------------


def test_tags_are_matched_by_the_database(app, mixed_fleet):
    tagged = set(host_service.tagged_host_ids("db"))
    expected = {host.id for host in db.session.scalars(select(Host)) if "db" in host.tags}
    assert tagged == expected and len(tagged) > 0
    assert host_service.tagged_host_ids("db2") and host_service.tagged_host_ids("d") == []
    assert host_service.all_tags() == ["db", "db2", "web"]
