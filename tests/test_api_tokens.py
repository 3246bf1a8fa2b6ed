"""Personal access tokens: mint (page and CLI), use with curl-style requests, revoke."""

import re

from sqlalchemy import event, select

from app.extensions import db
from app.models import ApiToken, AuditLog, Role
from app.models.types import utcnow
from app.services import api_tokens, users
from tests.factories import form_token, make_host

TOKEN_IN_PAGE = re.compile(r'<code id="new-token" class="secret__value">(rmp_[^<]+)</code>')


def _mint(browser, name="ci"):
    token = form_token(browser, "/settings/tokens")
    response = browser.post("/settings/tokens", data={"csrf_token": token, "name": name})
    assert response.status_code == 201
    match = TOKEN_IN_PAGE.search(response.get_data(as_text=True))
    assert match, "new token not shown"
    return match.group(1)


def test_mint_use_and_revoke_through_the_page(app, login_as):
    browser = login_as(Role.viewer)
    plain = _mint(browser, "grafana")
    stored = db.session.scalar(select(ApiToken))
    assert stored.token_hash != plain and plain not in stored.token_hash
    assert stored.last_used_at is None

    api = app.test_client()
    response = api.get("/api/v1/hosts", headers={"Authorization": f"Bearer {plain}"})
    assert response.status_code == 200
    assert response.get_json() == {"items": [], "next_cursor": None}
    assert "Set-Cookie" not in response.headers  # no session for token requests
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {plain}"}).get_json()
    assert me["username"] == browser.user.username
    assert me["auth"] == "token"

    listing = browser.get("/settings/tokens").get_data(as_text=True)
    assert "grafana" in listing
    assert plain not in listing  # shown once only
    db.session.expire_all()
    assert db.session.scalar(select(ApiToken)).last_used_at is not None

    revoke = browser.post(
        f"/settings/tokens/{stored.id}/revoke",
        data={"csrf_token": form_token(browser, "/settings/tokens")},
    )
    assert revoke.status_code == 302
    refused = api.get("/api/v1/hosts", headers={"Authorization": f"Bearer {plain}"})
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "unauthenticated"
    actions = list(db.session.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert actions[-2:] == ["api_token.created", "api_token.revoked"]
    assert all(plain not in str(row.payload) for row in db.session.scalars(select(AuditLog)))


def test_token_name_is_required_with_a_message(login_as):
    browser = login_as(Role.viewer)
    token = form_token(browser, "/settings/tokens")
    response = browser.post("/settings/tokens", data={"csrf_token": token, "name": ""})
    assert response.status_code == 422
    assert "Give the token a name." in response.get_data(as_text=True)
    assert db.session.scalar(select(ApiToken)) is None


def test_api_mint_and_revoke_with_bearer_needs_no_csrf(app, make_user):
    user = make_user(Role.viewer)
    _, plain = api_tokens.create_token(user, "bootstrap", now=utcnow())
    db.session.commit()
    api = app.test_client()
    auth = {"Authorization": f"Bearer {plain}"}
    created = api.post("/api/v1/tokens", json={"name": "rotated"}, headers=auth)
    assert created.status_code == 201
    body = created.get_json()
    assert body["name"] == "rotated" and body["token"].startswith("rmp_")
    assert "Set-Cookie" not in created.headers
    listed = api.get("/api/v1/tokens", headers=auth).get_json()["items"]
    assert {item["name"] for item in listed} == {"bootstrap", "rotated"}
    assert all("token" not in item for item in listed)
    assert api.delete(f"/api/v1/tokens/{body['id']}", headers=auth).status_code == 204
    new_auth = {"Authorization": f"Bearer {body['token']}"}
    assert api.get("/api/v1/tokens", headers=new_auth).status_code == 401


def test_api_validation_errors_are_precise_and_change_nothing(app, make_user):
    user = make_user(Role.viewer)
    _, plain = api_tokens.create_token(user, "bootstrap", now=utcnow())
    db.session.commit()
    api = app.test_client()
    auth = {"Authorization": f"Bearer {plain}"}
    cases = [
        ({"data": "name=x"}, 415, "unsupported_media_type"),
        ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": ["name"]}, 400, "invalid_json"),
        ({"json": {}}, 422, "validation_failed"),
        ({"json": {"name": 5}}, 422, "validation_failed"),
        ({"json": {"name": "x" * 101}}, 422, "validation_failed"),
        ({"json": {"name": "   "}}, 422, "validation_failed"),
    ]
    for kwargs, status, code in cases:
        response = api.post("/api/v1/tokens", headers=auth, **kwargs)
        assert response.status_code == status, (kwargs, response.get_json())
        assert response.get_json()["error"] == code
        assert response.get_json()["message"]
    assert len(api_tokens.tokens_of(user)) == 1
    assert api.delete("/api/v1/tokens/999", headers=auth).get_json()["error"] == "not_found"


def test_session_api_write_needs_csrf_header(login_as):
    browser = login_as(Role.viewer)
    refused = browser.post("/api/v1/tokens", json={"name": "from-js"})
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "csrf_failed"
    token = form_token(browser, "/settings/tokens")
    accepted = browser.post(
        "/api/v1/tokens", json={"name": "from-js"}, headers={"X-CSRFToken": token}
    )
    assert accepted.status_code == 201


def test_others_cannot_revoke_my_token_but_admin_can(app, login_as):
    owner = login_as(Role.operator)
    _mint(owner, "mine")
    token_id = db.session.scalar(select(ApiToken.id))
    other = login_as(Role.operator)
    response = other.post(
        f"/settings/tokens/{token_id}/revoke",
        data={"csrf_token": form_token(other, "/settings/tokens")},
    )
    assert response.status_code == 404
    assert "mine" not in other.get("/settings/tokens").get_data(as_text=True)
    admin = login_as(Role.admin)
    assert "mine" in admin.get("/settings/tokens").get_data(as_text=True)
    response = admin.post(
        f"/settings/tokens/{token_id}/revoke",
        data={"csrf_token": form_token(admin, "/settings/tokens")},
    )
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(ApiToken, token_id).revoked_at is not None


def test_wrong_and_malformed_bearer_tokens_get_json_401(client, make_user):
    make_user()
    for header in ("Bearer rmp_nope", "Bearer ", "Basic abc", "Bearer rma_agent-token"):
        response = client.get("/api/v1/hosts", headers={"Authorization": header})
        assert response.status_code == 401
        body = response.get_json()
        assert body["error"] == "unauthenticated"
        assert "Bearer" in body["message"]


def test_token_of_disabled_user_stops_working(app, make_user):
    user = make_user(Role.operator)
    _, plain = api_tokens.create_token(user, "x", now=utcnow())
    db.session.commit()
    client = app.test_client()
    assert (
        client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {plain}"}).status_code == 200
    )
    users.disable_user(user, now=utcnow())
    db.session.commit()
    assert (
        client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {plain}"}).status_code == 401
    )


def test_create_token_command_prints_a_working_token(app, make_user):
    user = make_user(Role.admin)
    result = app.test_cli_runner().invoke(
        args=["create-token", "--user", user.username, "--name", "backup-report"]
    )
    assert result.exit_code == 0, result.output
    plain = result.output.strip()
    assert plain.startswith("rmp_")
    response = app.test_client().get("/api/v1/hosts", headers={"Authorization": f"Bearer {plain}"})
    assert response.get_json() == {"items": [], "next_cursor": None}
    missing = app.test_cli_runner().invoke(args=["create-token", "--user", "ghost", "--name", "x"])
    assert missing.exit_code == 1
    assert "no active user" in missing.output


def test_unknown_api_path_is_json_404_and_pages_are_html(client, login_as):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    browser = login_as(Role.viewer)
    page = browser.get("/no-such-page")
    assert page.status_code == 404
    assert page.mimetype == "text/html"
    assert "Page not found" in page.get_data(as_text=True)
    wrong_method = browser.delete("/api/v1/hosts")
    assert wrong_method.status_code in (403, 405)
    assert wrong_method.is_json


def test_a_token_and_its_owner_are_read_in_one_query_and_a_job_start_reads_nothing_back(
    app, make_user
):
    """The API's hot path (automation starting jobs): the token and its user in one read;
    the new job is answered from what was written, not read again after the commit."""
    user = make_user(Role.operator)
    token, plain = api_tokens.create_token(user, "ci", now=utcnow())
    token.last_used_at = utcnow()  # in use: its last use is not written again for a while
    host_id = make_host("web-1", repo_status="ready").id
    db.session.commit()
    seen = []

    def record(conn, cursor, statement, *args):
        seen.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        response = app.test_client().post(
            f"/api/v1/hosts/{host_id}/jobs",
            json={"kind": "probe"},
            headers={"Authorization": f"Bearer {plain}"},
        )
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["status"] == "queued"
    (auth,) = [s for s in seen if " users" in s]
    assert auth.startswith("SELECT api_tokens.") and "JOIN users" in auth
    inserted = next(i for i, s in enumerate(seen) if s.startswith("INSERT INTO jobs"))
    assert not any(s.startswith("SELECT jobs.") for s in seen[inserted:]), seen
    assert sum(s.startswith("SELECT jobs.") for s in seen) == 1, seen  # one bring-up check
