"""The /api/v1 input boundary: odd input is a 4xx with the error shape, never a 500."""

from __future__ import annotations

import io

import pytest

from app.extensions import db
from app.models import Host, Role
from app.models.types import utcnow

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
