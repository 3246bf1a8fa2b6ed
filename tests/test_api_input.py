"""The /api/v1 input boundary: odd input is a 4xx with the error shape, never a 500."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ApiToken, AuditLog, Command, Host, Role, Schedule, Snapshot, SourceGroup
from app.models.types import utcnow
from app.services import retention
from tests.factories import make_job

API = "/api/v1"
BIG = 2**64 + 1


@pytest.fixture
def admin(api):
    return api(Role.admin)


@pytest.fixture
def host(app):
    host = Host(hostname="web-1", enrolled_at=utcnow(), last_seen_at=utcnow())
    db.session.add(host)
    db.session.commit()
    return host


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= {"error", "message"}, body
    if code:
        assert body["error"] == code, body
    return body


@pytest.mark.parametrize(
    "path",
    [f"/hosts/{BIG}", f"/jobs/{BIG}", f"/hosts/{2**31}/schedules", f"/jobs/{2**63}/log.txt"],
)
def test_ids_beyond_the_id_columns_are_not_found(admin, path):
    _error(admin.get(API + path), 404, "not_found")


def test_the_largest_id_is_an_ordinary_miss(admin):
    body = _error(admin.get(f"{API}/hosts/{2**31 - 1}"), 404, "not_found")
    assert "No host" in body["message"]


@pytest.mark.parametrize(
    "query",
    [f"host_id={2**31}", "host_id=-1", "host_id=x", "kind=a%00b", "status=%00"],
)
def test_query_parameters_are_bounded_and_clean(admin, query):
    _error(admin.get(f"{API}/jobs?{query}"), 422, "validation_failed")


def test_diff_paging_is_bounded(admin):
    _error(admin.get(f"{API}/jobs/1/diff?offset={BIG}"), 422, "validation_failed")
    _error(admin.get(f"{API}/jobs/1/stream", headers={"Last-Event-ID": str(BIG)}), 422)


def test_nul_characters_are_refused_with_the_field_named(admin, host):
    body = _error(
        admin.post(
            f"{API}/hosts/{host.id}/source-groups", json={"name": "a\x00b", "includes": ["/"]}
        ),
        422,
        "validation_failed",
    )
    assert body["fields"] == {"name": [body["message"]]} and "NUL" in body["message"]
    body = _error(admin.post(f"{API}/tokens", json={"name": "x\x00"}), 422)
    assert "name" in body["fields"]
    body = _error(admin.put(f"{API}/hosts/{host.id}/hooks", json={"pre\x00": None}), 422)


def test_a_chunked_body_passes_the_same_checks(admin, host):
    # Without Content-Length (Transfer-Encoding: chunked, as gunicorn hands it on) the body
    # is still read, so it must still be checked.
    body = b'{"name": "token\\u0000"}'
    response = admin.post(
        f"{API}/tokens",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert "NUL" in _error(response, 422)["message"]
    nested = b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = admin.post(
        f"{API}/tokens",
        input_stream=io.BytesIO(nested),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code in (400, 422), response.get_data(as_text=True)


def test_strings_are_not_integers_and_integers_stay_64_bit(admin, host):
    body = _error(admin.put(f"{API}/hosts/{host.id}/bandwidth", json={"upload_kib": "12"}), 422)
    assert body["fields"] == {
        "upload_kib": ["'upload_kib' must be a JSON integer or null, not string."]
    }
    body = _error(
        admin.post(
            f"{API}/hosts/{host.id}/source-groups",
            json={"name": "g", "includes": ["/etc", 5]},
        ),
        422,
    )
    assert list(body["fields"]) == ["includes"] and "includes[1]" in body["message"]
    body = _error(
        admin.post(f"{API}/hosts/{host.id}/jobs", json={"kind": "x", "params": {"n": BIG}}), 422
    )
    assert "64-bit" in body["message"]
    assert admin.put(f"{API}/hosts/{host.id}/bandwidth", json={"upload_kib": 12}).status_code == 200


def test_deep_nesting_and_wrong_shapes_are_client_errors(admin, host):
    deep = {"kind": "backup", "params": {}}
    cursor = deep["params"]
    for _ in range(40):
        cursor["a"] = {}
        cursor = cursor["a"]
    _error(admin.post(f"{API}/hosts/{host.id}/jobs", json=deep), 422, "validation_failed")
    very_deep = "[" * 100_000 + "]" * 100_000
    _error(
        admin.post(f"{API}/tokens", data=very_deep, content_type="application/json"),
        400,
        "invalid_json",
    )
    _error(admin.post(f"{API}/tokens", json=["not", "an", "object"]), 400, "invalid_json")
    _error(admin.post(f"{API}/tokens", data="name=x"), 415, "unsupported_media_type")


def test_giant_bodies_are_413_json(app, admin):
    assert app.config["MAX_CONTENT_LENGTH"] == 16 * 1024 * 1024
    giant = '{"name": "' + "x" * (2 * 1024 * 1024) + '"}'
    _error(
        admin.post(f"{API}/tokens", data=giant, content_type="application/json"),
        413,
        "payload_too_large",
    )


# --- issue 13 D2: lone surrogates, NaN, strict integers, bounded echoes, durations --------


def _raw(client, method: str, path: str, text: str):
    """A JSON body as the bytes a client sends (lone surrogates survive only this way)."""
    return client.open(API + path, method=method, data=text, content_type="application/json")


def _counts():
    return tuple(
        db.session.scalar(select(func.count()).select_from(model))
        for model in (SourceGroup, Schedule, ApiToken, AuditLog, Command)
    )


@pytest.mark.parametrize(
    "path, text, field",
    [
        ("/tokens", '{"name": "\\udfff"}', "name"),
        ("/hosts/{id}/source-groups", '{"name": "g", "includes": ["/etc/\\ud800"]}', "includes"),
        (
            "/hosts/{id}/source-groups",
            '{"name": "g", "includes": ["/x"], "excludes": ["\\udc80"]}',
            "excludes",
        ),
        ("/hosts/{id}/schedules", '{"name": "s\\ud83d", "cron": "0 1 * * *"}', "name"),
        ("/hosts/{id}/jobs", '{"kind": "forget", "params": {"tags": ["\\ud800"]}}', "params.tags"),
        ("/hosts/{id}/source-groups", '{"name": "g", "includes": ["/x"], "\\ud800": 1}', "body"),
    ],
)
def test_lone_surrogates_are_refused_with_the_field_named(admin, host, path, text, field):
    before = _counts()
    body = _error(_raw(admin, "POST", path.format(id=host.id), text), 422, "validation_failed")
    assert list(body["fields"]) == [field] and "surrogate" in body["message"], body
    db.session.expire_all()
    assert _counts() == before


def test_a_valid_surrogate_pair_is_an_ordinary_character(admin, host):
    response = _raw(
        admin,
        "POST",
        f"/hosts/{host.id}/source-groups",
        '{"name": "g", "includes": ["/\\ud83d\\ude00"]}',
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["includes"] == ["/\U0001f600"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_json_numbers_are_finite(admin, host, number):
    body = _error(
        _raw(
            admin,
            "PUT",
            f"/hosts/{host.id}/repo-maintenance",
            f'{{"check_subset_percent": {number}}}',
        ),
        422,
    )
    assert body["fields"] == {"check_subset_percent": [body["message"]]}


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/hosts/{id}/bandwidth", {"download_kib": "2048"}, "download_kib"),
        (
            "/hosts/{id}/source-groups",
            {"name": "g", "includes": ["/x"], "retry_max": "3"},
            "retry_max",
        ),
        (
            "/hosts/{id}/source-groups",
            {"name": "g", "includes": ["/x"], "retention": {"keep_daily": "7"}},
            "retention.keep_daily",
        ),
        ("/hosts/{id}/repo-maintenance", {"check_subset_percent": "5"}, "check_subset_percent"),
        (
            "/hosts/{id}/jobs",
            {"kind": "forget", "params": {"policy": {"keep_daily": "7"}}},
            "params.policy.keep_daily",
        ),
        (
            "/hosts/{id}/jobs",
            {"kind": "backup", "params": {"limit_upload_kib": "512"}},
            "params.limit_upload_kib",
        ),
    ],
)
def test_the_api_refuses_strings_for_integers(admin, host, path, body, field):
    before = _counts()
    refused = _error(
        admin.open(
            API + path.format(id=host.id),
            method="POST" if "source" in path or "jobs" in path else "PUT",
            json=body,
        ),
        422,
    )
    assert list(refused["fields"]) == [field], refused
    db.session.expire_all()
    assert _counts() == before


@pytest.mark.parametrize(
    "path, body",
    [
        ("/hosts/{id}/bandwidth", {"upload_kib": "x" * 500_000}),
        (
            "/hosts/{id}/schedules",
            {"name": "s", "cron": "x" * 500_000, "source_groups": ["default"]},
        ),
        ("/hosts/{id}/schedules", {"name": "n" * 500_000, "cron": "0 1 * * *"}),
        ("/hosts/{id}/source-groups", {"name": "g", "includes": ["/x"], "k" * 500_000: 1}),
        ("/hosts/{id}/jobs", {"kind": "forget", "params": {"tags": ["t" * 500_000]}}),
        ("/hosts/{id}/jobs", {"kind": "k" * 500_000}),
        ("/tokens", {"name": "t" * 500_000}),
    ],
)
def test_a_huge_value_is_not_echoed_back(admin, host, path, body):
    method = "PUT" if path.endswith("bandwidth") else "POST"
    response = admin.open(API + path.format(id=host.id), method=method, json=body)
    assert 400 <= response.status_code < 500, response.status_code
    assert len(response.get_data()) < 2000, response.get_data()[:300]


def test_query_strings_are_bounded_everywhere(admin, host):
    job = make_job(host)
    for query in (
        "host_id=99999999999999999999999",
        "host_id=%EF%BC%91",
        "status=%00",
        "kind=a%00",
    ):
        _error(admin.get(f"{API}/jobs?{query}"), 422, "validation_failed")
    assert admin.get(f"{API}/jobs?status=%ED%A0%80").status_code == 200  # decoded as U+FFFD
    for name, value in (("Last-Event-ID", str(2**64)), ("Last-Event-ID", "-1"), ("after", "1e3")):
        if name == "after":
            response = admin.get(f"{API}/jobs/{job.id}/stream?after={value}")
        else:
            response = admin.get(f"{API}/jobs/{job.id}/stream", headers={name: value})
        assert list(_error(response, 422)["fields"]) == [name]


def test_a_path_segment_with_nul_is_refused(admin, host):
    response = admin.get(f"{API}/hosts/{host.id}/snapshots/abc%00def/tree?path=/")
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize("within", ["100000y", "9999y", "100000y100000m100000d100000h"])
def test_a_long_keep_within_previews_everything_kept(admin, host, within):
    group = _raw(
        admin,
        "POST",
        f"/hosts/{host.id}/source-groups",
        f'{{"name": "g", "includes": ["/x"], "retention": {{"keep_within": "{within}"}}}}',
    )
    assert group.status_code == 201, group.get_json()
    for age in (1, 400, 4000):
        db.session.add(
            Snapshot(
                host_id=host.id,
                snapshot_id=f"{age:064x}",
                short_id=f"{age:08x}",
                time=utcnow() - timedelta(days=age),
                paths=["/x"],
                tags=["g"],
            )
        )
    db.session.commit()
    preview = admin.post(
        f"{API}/hosts/{host.id}/source-groups/{group.get_json()['id']}/retention-preview",
        json={"retention": {"keep_within": within}},
    )
    assert preview.status_code == 200, preview.get_data(as_text=True)
    assert len(preview.get_json()["keep"]) == 3 and preview.get_json()["remove"] == []


def test_keep_within_numbers_are_bounded(admin, host):
    body = _error(
        admin.post(
            f"{API}/hosts/{host.id}/source-groups",
            json={"name": "g", "includes": ["/x"], "retention": {"keep_within": "100001d"}},
        ),
        422,
    )
    assert list(body["fields"]) == ["retention.keep_within"] and "100000" in body["message"]


def test_a_stored_policy_from_before_the_bound_still_previews(app, host):
    """subtract() is Go's AddDate; reaching before year 1 means everything is within."""
    newest = datetime(2026, 3, 31, tzinfo=timezone.utc)
    assert retention.subtract(newest, 999_999, 0, 0, 0) == datetime.min.replace(tzinfo=timezone.utc)
    assert retention.subtract(newest, 0, 1, 0, 0) == datetime(2026, 3, 3, tzinfo=timezone.utc)
