"""Form fields, query strings and path segments that nothing can store (app/web/input.py):
a 422 naming the field, never a 500 on PostgreSQL nor a NUL stored on SQLite (issue 13)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import ApiToken, Role, Schedule, SourceGroup
from app.services import source_groups
from app.services.errors import ValidationFailed
from app.web import input as form_input
from tests.factories import form_token, make_host


@pytest.fixture
def guarded(app):
    """The app as the factory makes it: the input hook is registered."""
    assert "input" in app.blueprints
    assert form_input.refuse_unstorable_input in app.before_request_funcs[None]
    return app


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _refused(response, field: str):
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    page = response.get_data(as_text=True)
    assert field in page and ("NUL" in page or "surrogate" in page), page[:500]


def test_nul_in_a_form_field_is_the_forms_error_not_a_500(guarded, login_as):
    host = make_host("web-1")
    browser = login_as(Role.operator)
    url = f"/hosts/{host.id}/schedules"
    response = browser.post(
        url,
        data={
            "csrf_token": form_token(browser, url),
            "name": "s\x00",
            "cron": "* * * * *",
            "missed_policy": "skip",
            "source_groups": "default",
        },
    )
    _refused(response, "name")
    assert _count(Schedule) == 0


def test_nul_in_a_token_name_and_a_source_group(guarded, login_as):
    host = make_host("web-1")
    browser = login_as(Role.admin)
    response = browser.post(
        "/settings/tokens",
        data={"csrf_token": form_token(browser, "/settings/tokens"), "name": "ci\x00"},
    )
    _refused(response, "name")
    url = f"/hosts/{host.id}/sources/new"
    response = browser.post(
        url,
        data={
            "csrf_token": form_token(browser, url),
            "name": "g",
            "includes": "/etc\x00/x",
        },
    )
    _refused(response, "includes")
    assert _count(ApiToken) == 0 and _count(SourceGroup) == 1


@pytest.mark.parametrize(
    "path",
    ["/jobs?status=%00", "/jobs?host_id=1%00", "/?q%00=1", "/api/agent/v1/rpc/a%00b/data?offset=0"],
)
def test_nul_in_a_query_string_or_path_is_refused(guarded, login_as, path):
    browser = login_as(Role.viewer)
    response = browser.get(path) if "agent" not in path else browser.post(path)
    assert response.status_code == 422, response.get_data(as_text=True)[:300]


def test_invalid_utf_8_in_a_form_is_replaced_not_a_500(guarded, login_as):
    """Werkzeug decodes form bodies with errors="replace": a lone surrogate cannot arrive."""
    host = make_host("web-1")
    browser = login_as(Role.operator)
    url = f"/hosts/{host.id}/schedules"
    token = form_token(browser, url)
    response = browser.post(
        url,
        data=f"csrf_token={token}&name=s%ED%A0%80&cron=x&missed_policy=skip",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 422  # the form's own errors (name, cron)
    assert _count(Schedule) == 0


def test_hook_text_is_checked_by_its_service_so_the_form_keeps_every_message(guarded):
    """Hooks skip the up-front check: their service names NUL and surrogates itself."""
    for text, words in (("echo \x00", "NUL"), ("echo \ud800", "surrogates")):
        with pytest.raises(ValidationFailed) as refused:
            source_groups._hook(text, "pre_hook")
        assert words in refused.value.fields["pre_hook"][0]
