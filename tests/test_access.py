"""Walk the whole URL map: nothing anonymous gets through, and viewers cannot change state.

Any new route is covered automatically; a route that forgets to declare its role is
refused for everyone and named by ``test_every_route_declares_its_access``.
"""

import pytest
from werkzeug.routing import IntegerConverter

from app.access import (
    AGENT,
    PUBLIC,
    SAFE_METHODS,
    declared_access,
    require_role,
)
from app.errors import HTML_PAGES_UNDER_API
from app.models import Role
from tests.factories import form_token, login

# Reachable without a user session or personal token (agent endpoints check their own token).
ANONYMOUS_ALLOWED = {
    "static",
    "auth.login",
    "auth.setup",
    "auth.invite",  # a one-time link to choose a password (invitation or reset)
    "auth.oidc_start",  # single sign-on: redirects to the identity provider
    "auth.oidc_callback",
    "web.healthz",
    "web.readyz",
    # The API description holds no data (docs/security.md).
    "api.openapi",
    # A host downloads these with curl before it has any credential; they hold no secret.
    "distribution.agent_pyz",
    "distribution.agent_pyz_sha256",
    "distribution.agent_version",
    "distribution.install_script",
}
# State-changing routes a viewer may use because they touch only the viewer's own things.
SELF_SERVICE = {
    "auth.logout",
    "settings.create_token",
    "settings.revoke_token",
    "api.create_token",
    "api.revoke_token",
    # Users change their own password and end their own sessions (issue 15).
    "api.change_password",
    "api.end_my_session",
    "settings.change_password",
    "settings.end_session",
    "settings.end_other_sessions",
    # A POST that only reads: viewers may preview a retention policy.
    "api.preview_source_group_retention",
}


def _routes(app):
    for rule in app.url_map.iter_rules():
        arguments = {
            name: 1 if isinstance(converter, IntegerConverter) else "x"
            for name, converter in rule._converters.items()
        }
        with app.test_request_context():
            from flask import url_for

            path = url_for(rule.endpoint, **arguments)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, path


def _is_agent(app, endpoint):
    return declared_access(app.view_functions[endpoint]) == AGENT


def test_every_route_declares_its_access(app):
    undeclared = [
        endpoint
        for endpoint, view in app.view_functions.items()
        if endpoint != "static" and declared_access(view) is None
    ]
    assert undeclared == []


def test_public_routes_are_exactly_the_allow_list(app):
    public = {
        endpoint for endpoint, view in app.view_functions.items() if declared_access(view) == PUBLIC
    } | {"static"}
    assert public == ANONYMOUS_ALLOWED


def test_self_service_routes_are_exactly_the_known_list(app):
    marked = {
        endpoint
        for endpoint, view in app.view_functions.items()
        if getattr(view, "_rm_self_service", False)
    }
    assert marked == SELF_SERVICE


def test_anonymous_is_refused_everywhere_else(app, client, make_user):
    make_user()  # a user exists: /login is a login page, not first-run setup
    checked = 0
    for endpoint, method, path in _routes(app):
        if endpoint in ANONYMOUS_ALLOWED or _is_agent(app, endpoint):
            continue
        response = client.open(path, method=method)
        checked += 1
        if path.startswith("/api/") and path not in HTML_PAGES_UNDER_API:
            assert response.status_code == 401, (method, path)
            assert response.get_json()["error"] == "unauthenticated"
        else:
            assert response.status_code == 302, (method, path, response.status_code)
            assert response.headers["Location"].startswith("/login"), (method, path)
    assert checked >= 8


def test_viewer_cannot_change_state_anywhere(guarded_app):
    """Every write route of the real app, plus a write route that declares only viewer."""
    from app.extensions import db
    from app.services import users

    with guarded_app.app_context():
        viewer = users.create_user("walker", "correct horse battery", Role.viewer)
        db.session.commit()
        browser = guarded_app.test_client()
        assert login(browser, viewer.username).status_code == 302
        token = form_token(browser, "/")
        checked = []
        for endpoint, method, path in _routes(guarded_app):
            if method in SAFE_METHODS or endpoint in ANONYMOUS_ALLOWED | SELF_SERVICE:
                continue
            if _is_agent(guarded_app, endpoint):
                continue
            response = browser.open(path, method=method, headers={"X-CSRFToken": token})
            assert response.status_code == 403, (method, path, response.status_code)
            checked.append(path)
        assert "/_t/write" in checked


def test_viewer_reads_what_viewers_may_read_and_nothing_more(app, login_as):
    viewer = login_as(Role.viewer)
    for endpoint, method, path in _routes(app):
        if method != "GET" or endpoint in ANONYMOUS_ALLOWED or _is_agent(app, endpoint):
            continue
        response = viewer.get(path)
        if declared_access(app.view_functions[endpoint]) == Role.viewer:
            assert response.status_code in (200, 302, 404), (path, response.status_code)
        else:
            assert response.status_code == 403, (path, response.status_code)


@pytest.fixture
def guarded_app(app_factory):
    """An app with one route per role, one undeclared route, and one write route."""
    app = app_factory()
    app.add_url_rule("/_t/viewer", "t_viewer", require_role(Role.viewer)(lambda: "ok"))
    app.add_url_rule("/_t/operator", "t_operator", require_role(Role.operator)(lambda: "ok"))
    app.add_url_rule("/_t/admin", "t_admin", require_role(Role.admin)(lambda: "ok"))
    app.add_url_rule("/_t/undeclared", "t_undeclared", lambda: "ok")
    app.add_url_rule(
        "/_t/write", "t_write", require_role(Role.viewer)(lambda: "ok"), methods=["POST"]
    )
    return app


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (Role.viewer, {"viewer": 200, "operator": 403, "admin": 403, "write": 403}),
        (Role.operator, {"viewer": 200, "operator": 200, "admin": 403, "write": 200}),
        (Role.admin, {"viewer": 200, "operator": 200, "admin": 200, "write": 200}),
    ],
)
def test_roles_are_ordered_and_writes_need_operator(guarded_app, role, expected):
    from app.extensions import db
    from app.services import users

    with guarded_app.app_context():
        user = users.create_user(f"u-{role.value}", "correct horse battery", role)
        db.session.commit()
        browser = guarded_app.test_client()
        assert login(browser, user.username).status_code == 302
        got = {
            name: browser.get(f"/_t/{name}").status_code for name in ("viewer", "operator", "admin")
        }
        token = form_token(browser, "/")
        got["write"] = browser.post("/_t/write", headers={"X-CSRFToken": token}).status_code
        assert got == expected
        # A route without a declaration is refused even for an admin: fail closed.
        assert browser.get("/_t/undeclared").status_code == 403
