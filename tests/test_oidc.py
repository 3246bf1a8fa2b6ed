"""Single sign-on against a real OpenID provider process on loopback (oidc-provider-mock).

Our side is driven with the Flask test client, the provider with requests: the provider's
authorization form is submitted with the subject, exactly as a person would.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from app.config import ConfigError
from app.extensions import db
from app.models import AuditLog, Role, User, UserSession
from app.models.types import utcnow
from app.services import oidc
from tests.factories import TEST_PASSWORD

PROVIDER_COMMAND = [
    sys.executable,
    "-W",
    "ignore",
    "-m",
    "oidc_provider_mock",
    "--host",
    "127.0.0.1",
]
ROLE_MAP = {"backup-admins": "admin", "ops": "operator"}


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def provider():
    """The provider as its own process (``python -m oidc_provider_mock``), on loopback."""
    port = _closed_port()
    process = subprocess.Popen(
        [*PROVIDER_COMMAND, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(issuer + "/.well-known/openid-configuration", timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None, "the provider exited"
                assert time.monotonic() < deadline, "the provider did not start"
                time.sleep(0.1)
        yield issuer
    finally:
        process.terminate()
        process.wait(10)


def _settings(provider, **extra):
    return {
        "RM_OIDC_ISSUER": provider,
        "RM_OIDC_CLIENT_ID": "restic-manager",
        "RM_OIDC_CLIENT_SECRET": "client-secret-value",
        "RM_OIDC_DISPLAY_NAME": "Mock SSO",
        "RM_OIDC_GROUPS_CLAIM": "groups",
        "RM_OIDC_ROLE_MAP": dict(ROLE_MAP),
        "RM_OIDC_ONLY": False,
        **extra,
    }


@pytest.fixture
def app(app_factory, provider, make_admin_first):
    app = app_factory(**_settings(provider))
    with app.app_context():
        make_admin_first()
        yield app


@pytest.fixture
def make_admin_first():
    """Setup is done (one local admin), so /login shows the sign-in page, not first-run."""

    def make():
        from tests.factories import make_user

        make_user(Role.admin, username="root-admin")

    return make


def _provider_sets(provider, sub, claims):
    requests.put(f"{provider}/users/{sub}", json=claims, timeout=5).raise_for_status()


def _to_provider(client, next_path=None):
    """Start at /login/oidc; returns the provider's authorization URL we were sent to."""
    start = client.get("/login/oidc" + (f"?next={next_path}" if next_path else ""))
    assert start.status_code == 302, start.get_data(as_text=True)
    assert start.location.startswith("http://127.0.0.1:")
    return start.location


def _approve(authorize_url, sub):
    """Submit the provider's form as the user ``sub``; returns our callback path + query."""
    page = requests.get(authorize_url, timeout=5)
    assert page.status_code == 200 and "sub" in page.text
    answer = requests.post(authorize_url, data={"sub": sub}, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    target = urlsplit(answer.headers["Location"])
    assert target.path == "/login/oidc/callback"
    return f"{target.path}?{target.query}"


def _sign_in(client, provider, sub, claims):
    _provider_sets(provider, sub, claims)
    return client.get(_approve(_to_provider(client), sub))


def _user(subject):
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.oidc_subject == subject))


def _actions(action):
    db.session.expire_all()
    return db.session.scalars(select(AuditLog).where(AuditLog.action == action)).all()


def test_login_page_offers_the_provider(client):
    page = client.get("/login").get_data(as_text=True)
    assert "Sign in with Mock SSO" in page
    assert 'name="password"' in page


def test_authorization_request_uses_pkce_state_and_nonce(client):
    query = parse_qs(urlsplit(_to_provider(client)).query)
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"][0]
    assert query["redirect_uri"] == ["http://localhost/login/oidc/callback"]
    assert "openid" in query["scope"][0].split()


def test_first_sign_in_creates_the_user_with_the_mapped_role(app, client, provider):
    response = _sign_in(
        client,
        provider,
        "sub-alice",
        {"preferred_username": "Alice", "email": "alice@example.com", "groups": ["ops"]},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.location == "/"
    user = _user("sub-alice")
    assert (user.username, user.role, user.auth_source) == ("alice", "operator", "oidc")
    assert user.password_hash is None and user.last_login_at is not None
    assert client.get("/").status_code == 200  # the session works
    assert db.session.scalar(select(func.count()).select_from(UserSession)) == 1
    created = _actions("user.created")
    assert [(row.target_id, row.payload["role"]) for row in created] == [(str(user.id), "operator")]
    logins = _actions("user.oidc_login")
    assert [(row.actor_label, row.payload["role"]) for row in logins] == [("alice", "operator")]
    every_row = db.session.scalars(select(AuditLog)).all()
    assert "client-secret-value" not in repr([(row.action, row.payload) for row in every_row])


def test_role_follows_the_groups_at_every_sign_in(app, app_factory, provider):
    first = app.test_client()
    claims = {"preferred_username": "bob", "groups": ["ops"]}
    assert _sign_in(first, provider, "sub-bob", claims).status_code == 302
    assert _user("sub-bob").role == "operator"

    second = app.test_client()
    claims["groups"] = ["ops", "backup-admins"]  # the highest role wins
    assert _sign_in(second, provider, "sub-bob", claims).status_code == 302
    assert _user("sub-bob").role == "admin"

    third = app.test_client()
    claims["groups"] = "ops"  # a single string is one group
    assert _sign_in(third, provider, "sub-bob", claims).status_code == 302
    user = _user("sub-bob")
    assert user.role == "operator"
    assert (
        db.session.scalar(select(func.count()).select_from(User).where(User.auth_source == "oidc"))
        == 1
    )
    last = _actions("user.oidc_login")[-1]
    assert last.payload == {"subject": "sub-bob", "role": "operator", "previous_role": "admin"}


def test_unmapped_groups_are_refused_naming_the_claim(app, client, provider):
    response = _sign_in(client, provider, "sub-carol", {"groups": ["finance", "hr"]})
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "&#39;groups&#39; claim" in page
    assert "[&#39;finance&#39;, &#39;hr&#39;]" in page
    assert _user("sub-carol") is None
    assert client.get("/").status_code == 302  # not signed in
    refused = _actions("user.oidc_refused")
    assert refused and refused[0].payload["subject"] == "sub-carol"

    response = _sign_in(app.test_client(), provider, "sub-dave", {"email": "dave@example.com"})
    assert response.status_code == 403
    assert "received: no such claim" in response.get_data(as_text=True)


def test_wildcard_maps_everyone_else(app_factory, provider):
    app = app_factory(**_settings(provider, RM_OIDC_ROLE_MAP={**ROLE_MAP, "*": "viewer"}))
    with app.app_context():
        from tests.factories import make_user

        make_user(Role.admin, username="root-admin")
        response = _sign_in(app.test_client(), provider, "sub-erin", {"groups": ["finance"]})
        assert response.status_code == 302
        assert _user("sub-erin").role == "viewer"


def test_wrong_state_is_refused(app, client, provider):
    _provider_sets(provider, "sub-frank", {"groups": ["ops"]})
    callback = urlsplit(_approve(_to_provider(client), "sub-frank"))
    query = {key: values[0] for key, values in parse_qs(callback.query).items()}
    query["state"] = "forged-state"
    response = client.get(f"{callback.path}?{urlencode(query)}")
    assert response.status_code == 403
    assert "state mismatch" in response.get_data(as_text=True)
    assert _user("sub-frank") is None


def test_denied_at_the_provider_says_so(app, client, provider):
    authorize_url = _to_provider(client)
    answer = requests.post(authorize_url, data={"action": "deny"}, allow_redirects=False, timeout=5)
    assert answer.status_code == 302
    target = urlsplit(answer.headers["Location"])
    response = client.get(f"{target.path}?{target.query}")
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "The identity provider refused the sign-in: access_denied" in page
    assert client.get("/").status_code == 302


def test_a_forged_error_link_shows_only_the_error_code(app, client, provider):
    _to_provider(client)
    response = client.get(
        "/login/oidc/callback?"
        + urlencode({"error": "x<b>y", "error_description": "Call +1 555 to unlock", "state": "z"})
    )
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "refused the sign-in: xby" in page and "555" not in page


@pytest.mark.parametrize(
    "query",
    ["state=%00&code=%00", "state=" + "s" * 20000 + "&code=c", "code=c&state=a&state=b", ""],
)
def test_odd_callbacks_are_refused_without_a_crash(app, client, provider, query):
    _to_provider(client)
    response = client.get("/login/oidc/callback?" + query)
    assert response.status_code in {403, 422}  # NUL bytes are refused before any view runs
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_callback_without_a_started_attempt_is_refused(app, client, provider):
    response = client.get("/login/oidc/callback?state=x&code=y")
    assert response.status_code == 403
    assert "state mismatch" in response.get_data(as_text=True)


def test_wrong_nonce_is_refused(app, client, provider):
    _provider_sets(provider, "sub-grace", {"groups": ["ops"]})
    callback = _approve(_to_provider(client), "sub-grace")
    with client.session_transaction() as session:  # the ID token carries the old nonce
        attempt = dict(session["oidc_attempt"])
        attempt["nonce"] = "forged-nonce"
        session["oidc_attempt"] = attempt
    response = client.get(callback)
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "ID token" in page and "not valid" in page
    assert _user("sub-grace") is None


def test_local_user_with_the_same_name_is_not_taken_over(app, client, provider):
    from tests.factories import make_user

    make_user(Role.viewer, username="heidi")
    response = _sign_in(
        client, provider, "sub-heidi", {"preferred_username": "heidi", "groups": ["backup-admins"]}
    )
    assert response.status_code == 403
    assert "A local user named &#39;heidi&#39; already exists" in response.get_data(as_text=True)
    assert _user("sub-heidi") is None
    assert db.session.scalar(select(User).where(User.username == "heidi")).role == "viewer"


def test_two_provider_users_with_one_name_get_distinct_usernames(app, provider):
    claims = {"preferred_username": "ivan", "groups": ["ops"]}
    assert _sign_in(app.test_client(), provider, "sub-ivan-1", claims).status_code == 302
    assert _sign_in(app.test_client(), provider, "sub-ivan-2", claims).status_code == 302
    assert (_user("sub-ivan-1").username, _user("sub-ivan-2").username) == ("ivan", "ivan-2")


def test_disabled_user_is_refused(app, client, provider):
    claims = {"preferred_username": "judy", "groups": ["ops"]}
    assert _sign_in(app.test_client(), provider, "sub-judy", claims).status_code == 302
    _user("sub-judy").disabled_at = utcnow()
    db.session.commit()
    response = _sign_in(client, provider, "sub-judy", claims)
    assert response.status_code == 403
    assert "disabled" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_next_survives_the_round_trip(app, client, provider):
    _provider_sets(provider, "sub-kim", {"groups": ["ops"]})
    response = client.get(_approve(_to_provider(client, "/hosts"), "sub-kim"))
    assert response.location == "/hosts"


def test_provider_down_gives_a_clear_message(app_factory):
    issuer = f"http://127.0.0.1:{_closed_port()}"
    app = app_factory(**_settings(issuer))
    with app.app_context():
        from tests.factories import make_user

        make_user(Role.admin, username="root-admin")
        response = app.test_client().get("/login/oidc")
    assert response.status_code == 503
    page = response.get_data(as_text=True)
    assert f"identity provider at {issuer} cannot be reached" in page
    assert "Traceback" not in page
    assert "Sign in with Mock SSO" in page  # the button stays, with the error next to it


def test_oidc_only_hides_and_refuses_the_password_form(app_factory, provider):
    app = app_factory(**_settings(provider, RM_OIDC_ONLY=True))
    with app.app_context():
        from tests.factories import make_user

        make_user(Role.admin, username="root-admin")
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        assert "Sign in with Mock SSO" in page
        assert 'name="password"' not in page
        # The page has no form to take a CSRF token from: mint one as Flask-WTF does.
        with client.session_transaction() as session:
            session["csrf_token"] = "raw-csrf-value"
        token = URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token").dumps(
            "raw-csrf-value"
        )
        response = client.post(
            "/login",
            data={"csrf_token": token, "username": "root-admin", "password": TEST_PASSWORD},
        )
        assert response.status_code == 403
        assert "RM_OIDC_ONLY" in response.get_data(as_text=True)
        assert client.get("/").status_code == 302


def test_without_an_issuer_there_is_no_button_and_no_route(app_factory):
    app = app_factory()
    with app.app_context():
        from tests.factories import make_user

        make_user(Role.admin, username="root-admin")
        client = app.test_client()
        assert "Sign in with" not in client.get("/login").get_data(as_text=True)
        assert client.get("/login/oidc").status_code == 404
        assert client.get("/login/oidc/callback?state=x").status_code == 404


@pytest.mark.parametrize(
    ("environment", "variable"),
    [
        ({"RM_OIDC_ISSUER": "ftp://sso.example.com"}, "RM_OIDC_ISSUER"),
        ({"RM_OIDC_ISSUER": "sso.example.com"}, "RM_OIDC_ISSUER"),
        ({"RM_OIDC_ISSUER": "https://sso.example.com"}, "RM_OIDC_CLIENT_ID"),
        (
            {"RM_OIDC_ISSUER": "https://sso.example.com", "RM_OIDC_CLIENT_ID": "rm"},
            "RM_OIDC_CLIENT_SECRET",
        ),
        (
            {
                "RM_OIDC_ISSUER": "https://sso.example.com",
                "RM_OIDC_CLIENT_ID": "rm",
                "RM_OIDC_CLIENT_SECRET": "s",
            },
            "RM_OIDC_ROLE_MAP",
        ),
        ({"RM_OIDC_ROLE_MAP": "ops=root"}, "RM_OIDC_ROLE_MAP"),
        ({"RM_OIDC_ROLE_MAP": "ops"}, "RM_OIDC_ROLE_MAP"),
        ({"RM_OIDC_ROLE_MAP": "ops=admin,ops=viewer"}, "RM_OIDC_ROLE_MAP"),
        ({"RM_OIDC_ONLY": "yes"}, "RM_OIDC_ONLY"),
        ({"RM_OIDC_ONLY": "maybe"}, "RM_OIDC_ONLY"),
    ],
)
def test_bad_settings_stop_the_server_naming_the_variable(
    app_factory, monkeypatch, environment, variable
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        app_factory()
    assert variable in str(error.value)


def test_settings_parse_the_role_map(app_factory, monkeypatch):
    monkeypatch.setenv("RM_OIDC_ISSUER", "https://sso.example.com/realms/main/")
    monkeypatch.setenv("RM_OIDC_CLIENT_ID", "rm")
    monkeypatch.setenv("RM_OIDC_CLIENT_SECRET", "s")
    monkeypatch.setenv("RM_OIDC_ROLE_MAP", " backup-admins = admin , ops=Operator,*=viewer ")
    app = app_factory()
    assert app.config["RM_OIDC_ISSUER"] == "https://sso.example.com/realms/main"
    assert app.config["RM_OIDC_ROLE_MAP"] == {
        "backup-admins": "admin",
        "ops": "operator",
        "*": "viewer",
    }
    assert app.config["RM_OIDC_DISPLAY_NAME"] == "single sign-on"
    assert app.config["RM_OIDC_GROUPS_CLAIM"] == "groups"


def test_role_for_takes_the_highest_role():
    mapping = {"a": "viewer", "b": "admin", "c": "operator"}
    assert oidc.role_for(["a", "c"], mapping) is Role.operator
    assert oidc.role_for(["c", "b", "a"], mapping) is Role.admin
    assert oidc.role_for(["x"], mapping) is None
    assert oidc.role_for([], {**mapping, "*": "viewer"}) is Role.viewer
    assert oidc.role_for(["b"], {**mapping, "*": "viewer"}) is Role.admin
