"""Every HTML form names all of its problems at once, under their fields, in the form's words,
keeps the host's header and tabs, and a reload of an answer never does anything twice."""

from __future__ import annotations

import html
import re

from flask import current_app
from sqlalchemy import func, select

from app.extensions import db
from app.models import (
    ApiToken,
    EnrollmentToken,
    Host,
    Role,
    Schedule,
    SourceGroup,
    User,
)
from app.models.types import utcnow
from app.services import backends, repository, users
from app.services.errors import Conflict, ValidationFailed
from app.web.forms import place_refusal
from app.web.hosts.forms import RepositoryForm
from tests.factories import form_token

TOKEN = re.compile(r"--token (rme_[A-Za-z0-9_-]+)")
ERRORS = re.compile(r'<ul class="field__errors" id="([^"]+)-errors" role="alert">(.*?)</ul>', re.S)


def field_errors(page: str) -> dict[str, list[str]]:
    """The messages under each field of a page, by the field's id."""
    return {
        field: [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", items, re.S)]
        for field, items in ERRORS.findall(page)
    }


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _host(hostname: str = "web-1") -> Host:
    host = Host(hostname=hostname, last_seen_at=utcnow(), tags=[])
    db.session.add(host)
    db.session.flush()
    db.session.add(SourceGroup(host_id=host.id, name="default", includes=["/etc"]))
    repository.new_credential(
        current_app.extensions["secretbox"],
        host,
        "everyday",
        backends.Settings(url="/srv/restic/web-1", username=None, password="x"),
        now=utcnow(),
    )
    db.session.commit()
    return host


def _keeps_the_host_frame(page: str, host: Host) -> None:
    assert 'class="crumbs"' in page and 'class="hosthead"' in page
    assert 'class="hosttabs"' in page and f">{host.hostname}</a>" in page


# --- Add host and its enrollment -------------------------------------------------------------


def _add_host_form(browser) -> dict:
    page = browser.get("/hosts/new").get_data(as_text=True)
    request_id = re.search(r'name="request_id" type="hidden" value="([^"]+)"', page).group(1)
    return {
        "csrf_token": form_token(browser, "/hosts/new"),
        "request_id": request_id,
        "hostname": "web-1",
        "repo_url": "/srv/restic/web-1",
        "repo_username": "",
        "repo_password": "pw",
        "paths": "/etc",
    }


def _enroll(client, plain: str) -> int:
    response = client.post(
        "/api/agent/v1/enroll",
        json={"token": plain, "hostname": "web-1", "os": "linux", "protocol_version": 1},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["host_id"]


def test_add_host_names_every_field_problem_under_its_field(login_as):
    admin = login_as(Role.admin)
    form = {**_add_host_form(admin), "hostname": "bad name!", "repo_url": " ", "repo_password": ""}
    form["paths"] = "etc\n/home\nvar/log"
    response = admin.post("/hosts/new", data=form)
    assert response.status_code == 422
    errors = field_errors(response.get_data(as_text=True))
    assert set(errors) == {"hostname", "repo_url", "repo_password", "paths"}
    assert errors["paths"] == [
        "'etc' is not an absolute path (start it with / or a drive letter).",
        "'var/log' is not an absolute path (start it with / or a drive letter).",
    ]
    assert _count(EnrollmentToken) == 0


def test_the_page_follows_its_token_until_the_host_enrolls(app, login_as):
    admin = login_as(Role.admin)
    created = admin.post("/hosts/new", data=_add_host_form(admin))
    assert created.status_code == 201
    page = created.get_data(as_text=True)
    token = db.session.scalar(select(EnrollmentToken))
    follow = f"/hosts/enrollment-tokens/{token.id}"
    assert f'data-enrollment-url="/api/v1/enrollment-tokens/{token.id}"' in page
    assert f'data-page-address="{follow}"' in page  # a reload shows the state, not a POST
    assert f'href="{follow}">Check now</a>' in page  # without JavaScript
    waiting = admin.get(f"/api/v1/enrollment-tokens/{token.id}").get_json()
    assert waiting["host"] is None and waiting["used_at"] is None and "token" not in waiting
    assert "Waiting for the agent" in admin.get(follow).get_data(as_text=True)

    host_id = _enroll(app.test_client(), TOKEN.search(page).group(1))
    enrolled = admin.get(f"/api/v1/enrollment-tokens/{token.id}").get_json()
    assert enrolled["host"] == {"id": host_id, "hostname": "web-1"} and enrolled["used_at"]
    state = admin.get(follow).get_data(as_text=True)
    assert "<strong>web-1</strong> enrolled" in state
    assert f'<a href="/hosts/{host_id}">open its page</a>' in state
    assert TOKEN.search(state) is None  # the token itself was shown once


def test_the_token_api_is_for_admins_and_knows_only_real_tokens(login_as):
    admin = login_as(Role.admin)
    admin.post("/hosts/new", data=_add_host_form(admin))
    token_id = db.session.scalar(select(EnrollmentToken.id))
    assert admin.get("/api/v1/enrollment-tokens/999").status_code == 404
    operator = login_as(Role.operator)
    assert operator.get(f"/api/v1/enrollment-tokens/{token_id}").status_code == 403


def test_reloading_the_answer_that_showed_a_token_mints_no_second_one(login_as):
    admin = login_as(Role.admin)
    form = _add_host_form(admin)
    assert admin.post("/hosts/new", data=form).status_code == 201
    again = admin.post("/hosts/new", data=form)
    token = db.session.scalar(select(EnrollmentToken))
    assert again.status_code == 303
    assert again.headers["Location"] == f"/hosts/enrollment-tokens/{token.id}"
    assert _count(EnrollmentToken) == 1
    # A new page load is a new request: that one mints.
    fresh = {**_add_host_form(admin), "hostname": "web-2"}
    assert admin.post("/hosts/new", data=fresh).status_code == 201
    assert _count(EnrollmentToken) == 2


def test_reloading_a_regenerate_does_not_change_the_token_again(login_as):
    admin = login_as(Role.admin)
    admin.post("/hosts/new", data=_add_host_form(admin))
    token = db.session.scalar(select(EnrollmentToken))
    issued = token.created_at.isoformat()
    url = f"/hosts/enrollment-tokens/{token.id}/regenerate"
    data = {"csrf_token": form_token(admin, "/hosts/new"), "issued_at": issued}
    assert admin.post(url, data=data).status_code == 201
    db.session.expire_all()
    hash_after_first = db.session.get(EnrollmentToken, token.id).token_hash
    again = admin.post(url, data=data)  # the same form, posted again
    assert again.status_code == 303
    db.session.expire_all()
    assert db.session.get(EnrollmentToken, token.id).token_hash == hash_after_first


# --- Sources ---------------------------------------------------------------------------------


def test_source_group_form_shows_every_problem_in_the_forms_words(login_as):
    host = _host()
    browser = login_as(Role.admin)
    url = f"/hosts/{host.id}/sources/new"
    page = browser.get(url).get_data(as_text=True)
    assert f'action="{url}"' in page  # the form posts to its own page
    _keeps_the_host_frame(page, host)
    response = browser.post(
        url,
        data={
            "csrf_token": form_token(browser, url),
            "name": "bad name",
            "includes": "relative",
            "keep_daily": "seven",
            "keep_within": "forever",
            "retry_max": "99",
            "retry_backoff_seconds": "1",
            "pre_hook": "echo \x00",
            "action": "save",
        },
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    _keeps_the_host_frame(page, host)
    errors = field_errors(page)
    assert set(errors) == {
        "name",
        "includes",
        "keep_daily",
        "keep_within",
        "retry_max",
        "retry_backoff_seconds",
        "pre_hook",
    }
    assert errors["keep_daily"] == ["Keep daily must be a whole number ≥ 1 (or empty)."]
    assert errors["keep_within"][0].startswith("Keep within is a duration")
    assert errors["retry_max"] == [
        "Retries when the host is offline must be a whole number from 0 to 20."
    ]
    assert errors["pre_hook"] == ["Pre-hook must not contain NUL characters."]
    assert "fix the 7 highlighted fields" in page
    assert "keep_daily must" not in page and 'value="seven"' in page
    assert _count(SourceGroup) == 1


def test_enter_in_a_source_group_field_saves_rather_than_previews(login_as):
    # A browser's implicit submission (Enter in a text field) uses the form's first submit
    # button; Preview sits before Save in the page, so Save must come first in the markup.
    host = _host()
    page = login_as(Role.admin).get(f"/hosts/{host.id}/sources/new").get_data(as_text=True)
    form = page[page.index('<form method="post"') :]
    first_submit = re.search(r'<button type="submit" name="action" value="(\w+)"', form)
    assert first_submit.group(1) == "save"


def test_the_api_names_every_bad_field_of_a_source_group(api):
    host = _host()
    admin = api(Role.admin)
    response = admin.post(
        f"/api/v1/hosts/{host.id}/source-groups",
        json={"name": "", "includes": ["relative"], "retention": {"keep_daily": -1}, "colour": 1},
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "validation_failed"
    assert set(body["fields"]) == {"name", "includes", "retention.keep_daily", "colour"}
    for messages in body["fields"].values():
        assert all(message in body["message"] for message in messages)


def test_bad_default_hooks_come_back_under_their_fields_on_the_sources_tab(login_as):
    host = _host()
    browser = login_as(Role.admin)
    response = browser.post(
        f"/hosts/{host.id}/hooks",
        data={
            "csrf_token": form_token(browser, f"/hosts/{host.id}/sources"),
            "pre_hook": "x" * 9000,
            "post_hook": "echo \x00",
        },
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    _keeps_the_host_frame(page, host)
    assert field_errors(page) == {
        "host-pre_hook": ["Pre-hook must be at most 8 KiB."],
        "host-post_hook": ["Post-hook must not contain NUL characters."],
    }
    assert f'data-page-address="/hosts/{host.id}/sources#host-hooks"' in page


# --- Schedules -------------------------------------------------------------------------------


def test_schedule_form_shows_every_problem_at_once(login_as):
    host = _host()
    browser = login_as(Role.operator)
    url = f"/hosts/{host.id}/schedules"
    response = browser.post(
        url,
        data={
            "csrf_token": form_token(browser, url),
            "name": " ",
            "cron": "every night",
            "missed_policy": "skip",
        },
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    _keeps_the_host_frame(page, host)
    errors = field_errors(page)
    assert set(errors) == {"name", "cron", "source_groups"}
    assert errors["source_groups"] == ["Pick at least one source group."]
    assert 'class="presets"' in page and ">Presets</p>" in page
    assert _count(Schedule) == 0


def test_schedule_edit_posts_to_its_own_page(login_as, api):
    host = _host()
    browser = login_as(Role.operator)
    api = api(Role.operator)
    group_id = db.session.scalar(select(SourceGroup.id))
    created = api.post(
        f"/api/v1/hosts/{host.id}/schedules",
        json={"name": "nightly", "cron": "0 2 * * *", "source_groups": [group_id]},
    )
    schedule_id = created.get_json()["id"]
    edit = f"/hosts/{host.id}/schedules/{schedule_id}/edit"
    assert f'action="{edit}#schedule-form"' in browser.get(edit).get_data(as_text=True)
    refused = browser.post(
        edit,
        data={
            "csrf_token": form_token(browser, edit),
            "name": "",
            "cron": "61 * * * *",
            "missed_policy": "skip",
        },
    )
    assert refused.status_code == 422
    assert set(field_errors(refused.get_data(as_text=True))) == {"name", "cron", "source_groups"}


def test_the_schedules_api_names_every_bad_field(api):
    host = _host()
    response = api(Role.operator).post(
        f"/api/v1/hosts/{host.id}/schedules",
        json={"name": "", "cron": "* * *", "missed_policy": "later"},
    )
    assert response.status_code == 422
    fields = response.get_json()["fields"]
    assert set(fields) == {"name", "cron", "missed_policy", "source_groups"}
    assert fields["missed_policy"] == ["Missed runs (missed_policy) must be run_once or skip."]


# --- Repository tab --------------------------------------------------------------------------


def test_repository_tab_forms_show_every_problem_and_the_tabs_address(login_as):
    host = _host()
    browser = login_as(Role.admin)
    token = form_token(browser, f"/hosts/{host.id}/repo")
    maintenance = browser.post(
        f"/hosts/{host.id}/repo/maintenance",
        data={
            "csrf_token": token,
            "forget_cron": "nope",
            "prune_cron": "0 3 * * *",
            "check_cron": "1 2 3",
            "check_subset_percent": "150",
            "enabled": "y",
        },
    )
    assert maintenance.status_code == 422
    page = maintenance.get_data(as_text=True)
    _keeps_the_host_frame(page, host)
    assert set(field_errors(page)) == {"forget_cron", "check_cron", "check_subset_percent"}
    assert f'data-page-address="/hosts/{host.id}/repo#maintenance"' in page

    bandwidth = browser.post(
        f"/hosts/{host.id}/repo/bandwidth",
        data={"csrf_token": token, "upload_kib": "fast", "download_kib": "-3"},
    )
    errors = field_errors(bandwidth.get_data(as_text=True))
    assert errors == {
        "upload_kib": ["Upload cap is a whole number of KiB/s (at least 1), or empty for none."],
        "download_kib": [
            "Download cap is a whole number of KiB/s (at least 1), or empty for none."
        ],
    }

    admin = browser.post(
        f"/hosts/{host.id}/repo/admin-credential",
        data={"csrf_token": token, "username": "a\tb", "password": ""},
    )
    assert set(field_errors(admin.get_data(as_text=True))) == {"username", "password"}

    connection = browser.post(
        f"/hosts/{host.id}/repository",
        data={"csrf_token": token, "return_to": "repo", "repo_url": "", "repo_password": ""},
    )
    page = connection.get_data(as_text=True)
    assert connection.status_code == 422
    _keeps_the_host_frame(page, host)  # back on the Repository tab, not the Overview
    assert "<title>Repository · web-1" in page
    assert set(field_errors(page)) == {"repo_url", "repo_password"}
    assert 'id="repository-connection" open' in page
    assert f'data-page-address="/hosts/{host.id}/repo#connection"' in page

    # From the Overview, a refused connection or run-now form puts the Overview's address back.
    overview = browser.post(
        f"/hosts/{host.id}/repository",
        data={"csrf_token": token, "repo_url": "", "repo_password": ""},
    )
    page = overview.get_data(as_text=True)
    assert overview.status_code == 422
    assert f'data-page-address="/hosts/{host.id}#repository-connection"' in page
    run = browser.post(
        f"/hosts/{host.id}/jobs",
        data={"csrf_token": token, "kind": "check", "check-read_data_subset": "half"},
    )
    assert run.status_code == 422
    assert f'data-page-address="/hosts/{host.id}#run-check"' in run.get_data(as_text=True)
    assert "data-page-address" not in browser.get(f"/hosts/{host.id}").get_data(as_text=True)


# --- sign-in, setup, API tokens --------------------------------------------------------------


def test_setup_names_every_problem_before_it_spends_the_token(client):
    token = users.issue_setup_token(now=utcnow())
    db.session.commit()
    page = client.get(f"/login?setup_token={token}").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post(
        "/setup",
        data={
            "csrf_token": csrf,
            "token": token,
            "username": "bad name!",
            "password": "short",
            "confirm": "other",
        },
    )
    assert response.status_code == 422
    errors = field_errors(response.get_data(as_text=True))
    assert set(errors) == {"username", "password", "confirm"}
    assert _count(User) == 0
    assert "<code>restic-manager setup-url</code>" in response.get_data(as_text=True)
    assert "`" not in response.get_data(as_text=True)


def test_sign_in_names_both_empty_fields(client, make_user):
    make_user(Role.viewer)
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post("/login", data={"csrf_token": csrf, "username": "", "password": ""})
    assert field_errors(response.get_data(as_text=True)) == {
        "username": ["Give your username."],
        "password": ["Give your password."],
    }


def test_reloading_the_new_api_token_answer_mints_no_second_token(login_as):
    browser = login_as(Role.viewer)
    page = browser.get("/settings/tokens").get_data(as_text=True)
    request_id = re.search(r'name="request_id" type="hidden" value="([^"]+)"', page).group(1)
    data = {
        "csrf_token": form_token(browser, "/settings/tokens"),
        "request_id": request_id,
        "name": "report",
    }
    first = browser.post("/settings/tokens", data=data)
    assert first.status_code == 201
    assert 'data-page-address="/settings/tokens"' in first.get_data(as_text=True)
    again = browser.post("/settings/tokens", data=data)
    assert again.status_code == 303 and again.headers["Location"] == "/settings/tokens"
    assert _count(ApiToken) == 1


def test_a_refusal_is_placed_on_its_fields_or_said_in_the_banner(app):
    with app.test_request_context("/hosts/1/repository", method="POST"):
        form = RepositoryForm(meta={"csrf": False})
        placed = ValidationFailed("bad", fields={"repo_url": ["Repository URL is required."]})
        assert place_refusal(form, placed) is None  # all of it next to the field
        assert form.repo_url.errors == ["Repository URL is required."]
        elsewhere = ValidationFailed("bad", fields={"hostname": ["Not on this form."]})
        assert place_refusal(RepositoryForm(meta={"csrf": False}), elsewhere) == "Not on this form."
        # A refusal that names no field keeps its message (it used to vanish: "").
        refused = Conflict("The agent is offline.", code="host_offline")
        assert place_refusal(RepositoryForm(meta={"csrf": False}), refused) == (
            "The agent is offline."
        )
