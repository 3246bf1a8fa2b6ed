"""The alert pages: the list and its filters, one alert, acknowledge / resolve, silences,
the rule settings, a host's alert settings, the banner, the nav badge and the dashboard's
alerts column."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.extensions import db
from app.models import (
    Alert,
    AlertOverride,
    AlertRuleSetting,
    AuditLog,
    Notification,
    NotificationChannel,
    Role,
    Silence,
    SourceGroup,
)
from app.models.types import utcnow
from app.services import alerts
from app.services.audit import Actor
from tests.factories import form_token, make_host, make_job


def _fire(host, rule="backup_failed", subject="default", message=None, **kwargs):
    context = alerts.Context(utcnow(), host_ids=[host.id])
    alert = alerts.fire(
        context,
        host,
        rule,
        subject,
        message or f"{rule} on {host.hostname}: something went wrong",
        **kwargs,
    )
    db.session.commit()
    return alert


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _snapshot() -> dict:
    db.session.expire_all()
    return {
        model: _count(model)
        for model in (Alert, Silence, AuditLog, AlertRuleSetting, AlertOverride, Notification)
    } | {"states": sorted((a.id, a.state, a.ack_note) for a in db.session.scalars(select(Alert)))}


def _actions(prefix: str) -> list[str]:
    db.session.expire_all()
    return [
        action
        for action in db.session.scalars(select(AuditLog.action).order_by(AuditLog.id))
        if action.startswith(prefix)
    ]


def _post(browser, path, page, **fields):
    data = {"csrf_token": form_token(browser, page)}
    data.update(fields)
    return browser.post(path, data=data)


def _text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def fleet(app):
    """Three hosts with alerts of every state and severity."""
    web = make_host("web-1", tags=["prod"])
    db_host = make_host("db-1", tags=["prod", "db"])
    lab = make_host("lab-1", tags=["staging"])
    job = make_job(web, status="failed", error="restic exited with 1")
    failed = _fire(web, "backup_failed", "default", details={"job_id": job.id}, job_id=job.id)
    offline = _fire(db_host, "agent_offline", "", "The agent on db-1 has not polled for 3 hours.")
    warning = _fire(lab, "backup_warning", "home", "Backup of home saved a snapshot, but 3 files")
    acknowledged = _fire(lab, "maintenance_failed", "prune", "prune on lab-1 failed")
    acknowledged.state = "acknowledged"
    acknowledged.acknowledged_by = "alice"
    acknowledged.acknowledged_at = utcnow()
    resolved = _fire(web, "check_failed", "", "restic check failed")
    resolved.state = "resolved"
    resolved.open_key = None
    resolved.resolved_at = utcnow()
    resolved.resolved_by = "automatic"
    db.session.commit()
    return {
        "web": web,
        "db": db_host,
        "lab": lab,
        "failed": failed,
        "offline": offline,
        "warning": warning,
        "acknowledged": acknowledged,
        "resolved": resolved,
    }


def _rows(page: str) -> list[str]:
    """The alert ids the list shows, in order."""
    return re.findall(r'href="/alerts/(\d+)"', page.split("<tbody>", 1)[-1])


# --- reading -------------------------------------------------------------------------------


def test_empty_pages_say_all_is_well(login_as):
    browser = login_as(Role.viewer)
    page = _text(browser.get("/alerts"))
    assert "No alerts firing — every host is fine" in page
    assert "critical alert" not in page  # no banner
    assert "Nothing acknowledged" in _text(browser.get("/alerts?state=acknowledged"))
    assert "No resolved alerts yet" in _text(browser.get("/alerts?state=resolved"))
    silences = _text(browser.get("/alerts/silences"))
    assert "Nothing is silenced" in silences
    assert 'action="/alerts/silences"' not in silences  # viewers get no form
    assert "Backup overdue" in _text(browser.get("/settings/alert-rules"))


def test_firing_tab_lists_firing_alerts_with_counts_on_tabs(login_as, fleet):
    browser = login_as(Role.operator)
    page = _text(browser.get("/alerts"))
    shown = _rows(page)
    assert set(shown) == {str(fleet[name].id) for name in ("failed", "offline", "warning")}
    assert re.search(r"Firing <span class=\"statetabs__count\">3</span>", page)
    assert re.search(r"Acknowledged <span class=\"statetabs__count\">1</span>", page)
    assert re.search(r"Resolved <span class=\"statetabs__count\">1</span>", page)
    assert "The agent on db-1 has not polled for 3 hours." in page
    assert f'href="/hosts/{fleet["web"].id}"' in page
    assert f"/alerts/{fleet['failed'].id}/acknowledge" in page  # operators get actions
    assert "/alerts/silences?host_id=" in page


def test_other_tabs(login_as, fleet):
    browser = login_as(Role.viewer)
    firing = _text(browser.get("/alerts"))
    assert len(_rows(firing)) == 3
    assert "/acknowledge" not in firing and "/resolve" not in firing  # viewers read only
    assert _rows(_text(browser.get("/alerts?state=acknowledged"))) == [
        str(fleet["acknowledged"].id)
    ]
    resolved = _text(browser.get("/alerts?state=resolved"))
    assert _rows(resolved) == [str(fleet["resolved"].id)]
    assert "cleared" in resolved


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("host_id={web}", ["failed"]),
        ("tag=prod", ["failed", "offline"]),
        ("tag=staging", ["warning"]),
        ("rule=agent_offline", ["offline"]),
        ("severity=critical", ["failed"]),
        ("severity=warning&tag=prod", ["offline"]),
    ],
)
def test_filters(login_as, fleet, query, expected):
    browser = login_as(Role.viewer)
    page = _text(browser.get("/alerts?" + query.format(web=fleet["web"].id)))
    assert sorted(_rows(page)) == sorted(str(fleet[name].id) for name in expected)


def test_filters_narrow_the_tab_counts_and_say_when_nothing_matches(login_as, fleet):
    browser = login_as(Role.viewer)
    page = _text(browser.get(f"/alerts?host_id={fleet['lab'].id}&rule=check_failed"))
    assert "No firing alerts match these filters" in page
    assert re.search(r"Firing <span class=\"statetabs__count\">0</span>", page)


@pytest.mark.parametrize(
    "query",
    [
        "rule=nope",
        "severity=loud",
        "state=exploded",
        "host_id=99999999999999999999999",
        "before=-1",
        "tag=%20bad%20tag",
        "host_id=abc",
    ],
)
def test_unusable_filters_are_dropped(login_as, fleet, query):
    response = login_as(Role.viewer).get("/alerts?" + query)
    assert response.status_code == 200
    assert len(_rows(_text(response))) == 3


def test_keyset_paging(login_as, app):
    host = make_host("many-1")
    context = alerts.Context(utcnow(), host_ids=[host.id])
    for number in range(55):
        alerts.fire(context, host, "backup_failed", f"group-{number:02d}", f"failure {number}")
    db.session.commit()
    browser = login_as(Role.viewer)
    first = _text(browser.get("/alerts"))
    assert len(_rows(first)) == 50
    older = re.search(r'href="(/alerts\?before=\d+)">Older', first)
    assert older
    second = _text(browser.get(older.group(1)))
    assert len(_rows(second)) == 5
    assert not set(_rows(first)) & set(_rows(second))
    assert "Newest" in second and "Older" not in second


def test_alert_page_shows_details_timeline_and_delivery_log(login_as, fleet):
    channel = NotificationChannel(name="ops-mail", kind="email", min_severity="warning")
    db.session.add(channel)
    db.session.flush()
    alert = fleet["failed"]
    db.session.add(
        Notification(
            idempotency_key="k" * 32,
            alert_id=alert.id,
            channel_id=channel.id,
            event="firing",
            state="failed",
            attempts=7,
            last_result="SMTP 554: relay refused",
            created_at=utcnow(),
        )
    )
    db.session.commit()
    page = _text(login_as(Role.viewer).get(f"/alerts/{alert.id}"))
    assert "Backup failed" in page and "default" in page
    assert alert.message in page
    assert f'href="/jobs/{alert.job_id}"' in page
    assert "ops-mail" in page and "SMTP 554: relay refused" in page and ">7<" in page
    assert "Fired" in page
    assert "/acknowledge" not in page  # a viewer gets no buttons


def test_alert_page_says_why_nobody_was_notified(login_as, fleet):
    browser = login_as(Role.viewer)
    alert = fleet["failed"]
    assert "No notification channel is set up" in _text(browser.get(f"/alerts/{alert.id}"))
    db.session.add(NotificationChannel(name="pager", kind="ntfy", min_severity="critical"))
    db.session.commit()
    assert "No channel wanted this alert" in _text(browser.get(f"/alerts/{alert.id}"))
    db.session.add(
        Silence(
            host_id=fleet["web"].id,
            reason="disk swap",
            ends_at=utcnow() + timedelta(hours=2),
            created_by="alice",
        )
    )
    db.session.commit()
    page = _text(browser.get(f"/alerts/{alert.id}"))
    assert "Muted: nobody was notified" in page
    assert "muted until" in page and "disk swap" in page
    assert "muted until" in _text(browser.get("/alerts"))


def test_unknown_alert_is_404(login_as):
    assert login_as(Role.viewer).get("/alerts/12345").status_code == 404


# --- acknowledge and resolve ---------------------------------------------------------------


def test_acknowledge_with_a_note_through_the_list(login_as, fleet):
    browser = login_as(Role.operator)
    alert = fleet["failed"]
    response = _post(
        browser,
        f"/alerts/{alert.id}/acknowledge",
        "/alerts",
        **{"ack-note": "looking at the disk", "return_to": "/alerts?severity=critical"},
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/alerts?severity=critical")
    db.session.expire_all()
    alert = db.session.get(Alert, alert.id)
    assert alert.state == "acknowledged"
    assert alert.ack_note == "looking at the disk"
    assert alert.acknowledged_by == browser.user.username
    row = db.session.scalar(select(AuditLog).where(AuditLog.action == "alert.acknowledged"))
    assert row.target_id == str(alert.id) and row.payload["note"] == "looking at the disk"
    assert "acknowledged" in _text(browser.get(f"/alerts/{alert.id}"))


def test_resolve_by_hand(login_as, fleet):
    browser = login_as(Role.operator)
    alert = fleet["acknowledged"]
    response = _post(
        browser, f"/alerts/{alert.id}/resolve", f"/alerts/{alert.id}", **{"resolve-note": "fixed"}
    )
    assert response.status_code == 303
    db.session.expire_all()
    alert = db.session.get(Alert, alert.id)
    assert (alert.state, alert.resolve_note, alert.resolved_by) == (
        "resolved",
        "fixed",
        browser.user.username,
    )
    assert _actions("alert.") == ["alert.resolved"]
    page = _text(browser.get(f"/alerts/{alert.id}"))
    assert "Resolved" in page and "fixed" in page


def test_resolving_twice_says_so_and_changes_nothing(login_as, fleet):
    browser = login_as(Role.operator)
    alert = fleet["resolved"]
    before = _snapshot()
    response = _post(browser, f"/alerts/{alert.id}/resolve", f"/alerts/{alert.id}")
    assert response.status_code == 303
    assert "already resolved" in _text(browser.get(response.headers["Location"]))
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("note", "status"),
    [("x" * 1001, 422), ("bad\x00note", 422)],
)
def test_bad_note_is_refused_and_changes_nothing(login_as, fleet, note, status):
    browser = login_as(Role.operator)
    alert = fleet["failed"]
    before = _snapshot()
    response = _post(browser, f"/alerts/{alert.id}/acknowledge", "/alerts", **{"ack-note": note})
    assert response.status_code == status
    assert _snapshot() == before
    if "\x00" not in note:
        assert 'class="field__errors"' in _text(response)


def test_foreign_return_to_is_ignored(login_as, fleet):
    browser = login_as(Role.operator)
    alert = fleet["failed"]
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = _post(browser, f"/alerts/{alert.id}/acknowledge", "/alerts", return_to=target)
        assert response.headers["Location"].endswith(f"/alerts/{alert.id}")


def test_viewer_cannot_post(login_as, fleet):
    viewer = login_as(Role.viewer)
    token = form_token(viewer, "/settings/tokens")
    alert = fleet["failed"]
    before = _snapshot()
    for path in (
        f"/alerts/{alert.id}/acknowledge",
        f"/alerts/{alert.id}/resolve",
        "/alerts/silences",
        "/settings/alert-rules/agent_offline",
        f"/hosts/{fleet['web'].id}/alerts",
    ):
        response = viewer.post(path, data={"csrf_token": token, "reason": "x", "ends": "1h"})
        assert response.status_code == 403, path
    assert _snapshot() == before


# --- silences ------------------------------------------------------------------------------


def test_silence_form_is_prefilled_from_an_alert(login_as, fleet):
    page = _text(
        login_as(Role.operator).get(
            f"/alerts/silences?host_id={fleet['web'].id}&rule=backup_failed"
        )
    )
    assert re.search(rf'<option selected value="{fleet["web"].id}">web-1</option>', page)
    assert '<option selected value="backup_failed">' in page


def test_create_and_end_a_silence(login_as, fleet):
    browser = login_as(Role.operator)
    response = _post(
        browser,
        "/alerts/silences",
        "/alerts/silences",
        host_id=str(fleet["web"].id),
        tag="",
        rule="backup_failed",
        reason="planned disk swap",
        ends="4h",
    )
    assert response.status_code == 303
    silence = db.session.scalar(select(Silence))
    assert (silence.host_id, silence.rule, silence.reason) == (
        fleet["web"].id,
        "backup_failed",
        "planned disk swap",
    )
    assert timedelta(hours=3, minutes=59) < silence.ends_at - utcnow() <= timedelta(hours=4)
    assert _actions("silence.") == ["silence.created"]
    page = _text(browser.get("/alerts/silences"))
    assert "planned disk swap" in page and "End now" in page
    assert "muted until" in _text(browser.get("/alerts"))

    response = _post(browser, f"/alerts/silences/{silence.id}/end", "/alerts/silences")
    assert response.status_code == 303
    db.session.expire_all()
    assert _count(Silence) == 0
    assert "silence.deleted" in db.session.scalars(select(AuditLog.action)).all()
    assert "Nothing is silenced" in _text(browser.get("/alerts/silences"))


def test_silence_until_a_date(login_as, fleet):
    browser = login_as(Role.admin)
    until = (utcnow() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    response = _post(
        browser,
        "/alerts/silences",
        "/alerts/silences",
        tag="staging",
        reason="lab rebuild",
        ends="until",
        until=until,
    )
    assert response.status_code == 303
    silence = db.session.scalar(select(Silence))
    assert silence.tag == "staging" and silence.ends_at.strftime("%Y-%m-%dT%H:%M") == until


@pytest.mark.parametrize(
    ("fields", "field_id", "words"),
    [
        ({"rule": "no_such_rule", "reason": "r", "ends": "1h"}, "rule", "Rule must be one of"),
        ({"host_id": "4", "reason": "r", "ends": "1h"}, "host_id", "does not exist"),
        (
            {"host_id": "99999999999999999999", "reason": "r", "ends": "1h"},
            "host_id",
            "Choose a host",
        ),
        ({"tag": "bad tag!", "reason": "r", "ends": "1h"}, "tag", "Tag may contain"),
        ({"rule": "backup_failed", "reason": "", "ends": "1h"}, "reason", "Reason"),
        (
            {"rule": "backup_failed", "reason": "r", "ends": "until", "until": "2020-01-01T10:00"},
            "until",
            "in the future",
        ),
        (
            {"rule": "backup_failed", "reason": "r", "ends": "until", "until": "soon"},
            "until",
            "ISO-8601",
        ),
        (
            {"rule": "backup_failed", "reason": "r", "ends": "until", "until": ""},
            "until",
            "Give the date",
        ),
        ({"rule": "backup_failed", "reason": "r", "ends": "forever"}, "ends", "Choose when"),
        (
            {"rule": "backup_failed", "reason": "r", "ends": "until", "until": "2999-01-01T00:00"},
            "until",
            "at most a year",
        ),
        ({"rule": "backup_failed", "reason": "r" * 501, "ends": "1h"}, "reason", "500"),
    ],
)
def test_bad_silence_input_gives_field_errors(login_as, fleet, fields, field_id, words):
    browser = login_as(Role.operator)
    before = _snapshot()
    response = _post(browser, "/alerts/silences", "/alerts/silences", **fields)
    assert response.status_code == 422
    page = _text(response)
    errors = re.search(rf'id="{field_id}-errors" role="alert">(.*?)</ul>', page, re.S)
    assert errors, page
    assert words in errors.group(1)
    assert "Nothing was saved" in page
    assert _snapshot() == before


def test_silence_needs_something_to_silence(login_as, fleet):
    browser = login_as(Role.operator)
    before = _snapshot()
    response = _post(browser, "/alerts/silences", "/alerts/silences", reason="r", ends="1h")
    assert response.status_code == 422
    assert "Choose what to silence" in _text(response)
    assert _snapshot() == before


def test_nul_in_a_silence_is_refused(login_as, fleet):
    browser = login_as(Role.operator)
    before = _snapshot()
    response = _post(
        browser,
        "/alerts/silences",
        "/alerts/silences",
        rule="backup_failed",
        reason="a\x00b",
        ends="1h",
    )
    assert response.status_code == 422
    assert _snapshot() == before


# --- rule settings -------------------------------------------------------------------------


def test_admin_changes_a_rule(login_as):
    browser = login_as(Role.admin)
    page = "/settings/alert-rules"
    response = _post(
        browser,
        "/settings/alert-rules/agent_offline",
        page,
        **{"agent_offline-severity": "critical", "agent_offline-threshold": "30"},
    )
    assert response.status_code == 303
    view = alerts.rule_view("agent_offline")
    assert (view["enabled"], view["severity"], view["threshold_seconds"]) == (
        False,
        "critical",
        1800,
    )
    assert _actions("alert_rule.") == ["alert_rule.updated"]
    response = _post(
        browser,
        "/settings/alert-rules/backup_size_anomaly",
        page,
        **{
            "backup_size_anomaly-enabled": "y",
            "backup_size_anomaly-severity": "warning",
            "backup_size_anomaly-factor": "25",
            "backup_size_anomaly-drop_percent": "50",
        },
    )
    assert response.status_code == 303
    view = alerts.rule_view("backup_size_anomaly")
    assert (view["factor"], view["drop_percent"], view["severity"]) == (25.0, 50.0, "warning")


@pytest.mark.parametrize(
    ("fields", "field_id", "words"),
    [
        ({"threshold": "99999999999999999999"}, "agent_offline-threshold", "whole number"),
        ({"threshold": "1000000"}, "agent_offline-threshold", "between 1 minute"),
        ({"threshold": "-5"}, "agent_offline-threshold", "whole number"),
        ({"threshold": "ten"}, "agent_offline-threshold", "whole number"),
        ({"severity": "loud"}, "agent_offline-severity", "Severity must be one of"),
    ],
)
def test_bad_rule_input_gives_field_errors(login_as, fields, field_id, words):
    browser = login_as(Role.admin)
    before = _snapshot()
    data = {"agent_offline-enabled": "y", "agent_offline-severity": "warning"}
    data.update({f"agent_offline-{name}": value for name, value in fields.items()})
    response = _post(
        browser, "/settings/alert-rules/agent_offline", "/settings/alert-rules", **data
    )
    assert response.status_code == 422
    errors = re.search(rf'id="{field_id}-errors" role="alert">(.*?)</ul>', _text(response), re.S)
    assert errors and words in errors.group(1)
    assert _snapshot() == before


@pytest.mark.parametrize("value", ["1e999", "nan", "1", "5000"])
def test_bad_anomaly_numbers(login_as, value):
    browser = login_as(Role.admin)
    before = _snapshot()
    response = _post(
        browser,
        "/settings/alert-rules/backup_size_anomaly",
        "/settings/alert-rules",
        **{"backup_size_anomaly-severity": "critical", "backup_size_anomaly-factor": value},
    )
    assert response.status_code == 422
    assert 'id="backup_size_anomaly-factor-errors"' in _text(response)
    assert _snapshot() == before


def test_unknown_rule_is_404(login_as):
    browser = login_as(Role.admin)
    response = _post(browser, "/settings/alert-rules/no_such_rule", "/settings/alert-rules")
    assert response.status_code == 404


def test_operator_reads_rules_without_forms(login_as):
    page = _text(login_as(Role.operator).get("/settings/alert-rules"))
    assert "Agent offline" in page and 'action="/settings/alert-rules/' not in page


# --- a host's alert settings ----------------------------------------------------------------


def test_host_alerts_tab_and_settings(login_as, fleet):
    browser = login_as(Role.admin)
    host = fleet["web"]
    page = _text(browser.get(f"/hosts/{host.id}/alerts"))
    assert fleet["failed"].message in page
    assert "Recently resolved" in page
    path = f"/hosts/{host.id}/alerts"
    response = _post(
        browser,
        path,
        path,
        agent_offline_threshold="45",
        backup_overdue_threshold="",
        backup_overdue_max_age="1560",
        schedule_not_applied_threshold="",
        backup_size_anomaly_enabled="off",
    )
    assert response.status_code == 303
    overrides = alerts.host_overrides(host)
    assert overrides == {
        "agent_offline": {"threshold_seconds": 2700},
        "backup_overdue": {"max_age_seconds": 93600},
        "backup_size_anomaly": {"enabled": False},
    }
    assert len(_actions("alert_override.")) == 3  # one row per changed rule
    page = _text(browser.get(path))
    assert 'value="45"' in page and 'value="1560"' in page
    # Saving the same values again writes nothing.
    response = _post(
        browser,
        path,
        path,
        agent_offline_threshold="45",
        backup_overdue_max_age="1560",
        backup_size_anomaly_enabled="off",
    )
    assert "Nothing changed" in _text(browser.get(response.headers["Location"]))
    assert len(_actions("alert_override.")) == 3
    # Blank again: back to the fleet's setting, the override rows go.
    _post(browser, path, path, backup_size_anomaly_enabled="off")
    assert alerts.host_overrides(host) == {"backup_size_anomaly": {"enabled": False}}


@pytest.mark.parametrize(
    ("fields", "field_id"),
    [
        ({"agent_offline_threshold": "99999999999999999999"}, "agent_offline_threshold"),
        ({"backup_overdue_max_age": "0"}, "backup_overdue_max_age"),
        ({"schedule_not_applied_threshold": "1.5"}, "schedule_not_applied_threshold"),
        ({"agent_offline_enabled": "maybe"}, "agent_offline_enabled"),
    ],
)
def test_bad_host_settings_change_nothing(login_as, fleet, fields, field_id):
    browser = login_as(Role.admin)
    path = f"/hosts/{fleet['web'].id}/alerts"
    before = _snapshot()
    response = _post(browser, path, path, **fields)
    assert response.status_code == 422
    assert f'id="{field_id}-errors"' in _text(response)
    assert _snapshot() == before


def test_host_overview_lists_open_alerts(login_as, fleet):
    page = _text(login_as(Role.viewer).get(f"/hosts/{fleet['web'].id}"))
    assert "Open alerts" in page and fleet["failed"].message in page
    assert fleet["resolved"].message not in page
    quiet = make_host("quiet-1")
    assert "Open alerts" not in _text(login_as(Role.viewer).get(f"/hosts/{quiet.id}"))


# --- banner, nav badge, dashboard ----------------------------------------------------------


def test_banner_and_badge_follow_the_firing_alerts(login_as, fleet):
    browser = login_as(Role.viewer)
    page = _text(browser.get("/jobs/"))
    assert "1 critical alert firing" in page
    assert 'href="/alerts?severity=critical"' in page
    assert re.search(r'class="navbadge navbadge--critical"[^>]*>3<', page)
    alert = fleet["failed"]
    alert.state = "acknowledged"
    db.session.commit()
    page = _text(browser.get("/jobs/"))
    assert "critical alert" not in page
    assert re.search(r'class="navbadge"[^>]*>2<', page)


def test_banner_shows_on_every_page_kind(login_as, fleet):
    browser = login_as(Role.viewer)
    web = fleet["web"].id
    for path in ("/", "/alerts", f"/hosts/{web}", "/settings/tokens", "/alerts/silences"):
        assert "1 critical alert firing" in _text(browser.get(path)), path
    assert "critical alert" not in _text(browser.get("/login"))


def test_dashboard_alerts_column(login_as, fleet):
    make_host("quiet-1")
    page = _text(login_as(Role.viewer).get("/"))
    assert '<th scope="col">Alerts</th>' in page
    assert re.search(
        rf'class="alertcount alertcount--critical" href="/alerts\?host_id={fleet["web"].id}"[^>]*>'
        r'<span class="alertcount__dot" aria-hidden="true"></span>1<',
        page,
    )
    lab = re.search(
        rf'alertcount--(\w+)" href="/alerts\?host_id={fleet["lab"].id}"[^>]*>.*?</span>(\d+)<', page
    )
    assert lab.groups() == ("warning", "2")  # the firing warning and the acknowledged one
    assert page.count('title="No open alerts"') == 1


# --- a host's source groups' alert settings ------------------------------------------------


SYSTEM = Actor.system("group settings test")


def _groups(host) -> dict[str, SourceGroup]:
    """The host's "default" group and two more: name → group."""
    for name in ("db", "home"):
        db.session.add(
            SourceGroup(host_id=host.id, name=name, includes=[f"/{name}"], created_at=utcnow())
        )
    db.session.commit()
    return {
        group.name: group
        for group in db.session.scalars(select(SourceGroup).where(SourceGroup.host_id == host.id))
    }


def _group_fields(groups: dict, **rows) -> dict:
    """The whole form as the page submits it (every row, blank unless ``rows`` fills it):
    ``rows`` maps a group name to its fields (factor=…, overdue_enabled=…)."""
    data = {}
    for name, group in groups.items():
        for field in ("anomaly_enabled", "factor", "drop_percent", "overdue_enabled"):
            data[f"group-{group.id}-{field}"] = ""
        data[f"group-{group.id}-overdue_grace"] = ""
        for field, value in rows.get(name, {}).items():
            data[f"group-{group.id}-{field}"] = value
    return data


def test_group_settings_on_the_host_alerts_tab(login_as, fleet):
    browser = login_as(Role.admin)
    host = fleet["web"]
    groups = _groups(host)
    alerts.set_override(
        host,
        "backup_overdue",
        {"threshold_seconds": 7200},
        actor=SYSTEM,
        now=utcnow(),
    )
    db.session.commit()
    path = f"/hosts/{host.id}/alerts"
    page = _text(browser.get(path))
    assert "Per source group" in page
    for group in groups.values():
        assert f'name="group-{group.id}-factor"' in page
    # A blank field shows what it stands for: the host's grace, the fleet's factor.
    assert 'placeholder="120 (inherited)"' in page and 'placeholder="10 (inherited)"' in page
    assert "As the host (on)" in page

    response = browser.post(
        f"{path}/groups",
        data={
            "csrf_token": form_token(browser, path),
            **_group_fields(
                groups,
                db={"factor": "20", "drop_percent": "60"},
                home={"overdue_enabled": "off", "overdue_grace": "30"},
            ),
        },
    )
    assert response.status_code == 303, _text(response)
    assert response.headers["Location"].endswith("#group-alert-settings")
    assert alerts.group_overrides(groups["db"]) == {
        "backup_size_anomaly": {"factor": 20.0, "drop_percent": 60.0}
    }
    assert alerts.group_overrides(groups["home"]) == {
        "backup_overdue": {"enabled": False, "threshold_seconds": 1800}
    }
    assert alerts.group_overrides(groups["default"]) == {}
    assert alerts.host_overrides(host) == {"backup_overdue": {"threshold_seconds": 7200}}
    settings = alerts.Settings(host_ids=[host.id])
    assert settings.of("backup_size_anomaly", host.id, groups["db"].id).factor == 20
    assert settings.of("backup_size_anomaly", host.id, groups["home"].id).factor == 10
    audit = [
        row.payload
        for row in db.session.scalars(
            select(AuditLog).where(AuditLog.action == "alert_override.updated")
        )
    ]
    assert [row["group"] for row in audit] == [None, "db", "home"]  # one row per changed rule
    page = _text(browser.get(response.headers["Location"]))
    assert "Source group alert settings of web-1 saved: db (backup size anomaly)" in page
    factor = re.search(rf'<input[^>]*name="group-{groups["db"].id}-factor"[^>]*>', page)[0]
    assert 'value="20"' in factor

    # The same values again write nothing; blanks return a group to the host's settings.
    again = _group_fields(
        groups,
        db={"factor": "20", "drop_percent": "60"},
        home={"overdue_enabled": "off", "overdue_grace": "30"},
    )
    response = _post(browser, f"{path}/groups", path, **again)
    assert "Nothing changed" in _text(browser.get(response.headers["Location"]))
    assert len(_actions("alert_override.")) == 3
    _post(browser, f"{path}/groups", path, **_group_fields(groups, db={"factor": "20"}))
    assert alerts.group_overrides(groups["db"]) == {"backup_size_anomaly": {"factor": 20.0}}
    assert alerts.group_overrides(groups["home"]) == {}
    # The host's own form is untouched by all this.
    assert alerts.host_overrides(host) == {"backup_overdue": {"threshold_seconds": 7200}}


def test_a_group_missing_from_the_submitted_page_keeps_its_settings(login_as, fleet):
    browser = login_as(Role.admin)
    host = fleet["web"]
    groups = _groups(host)
    alerts.set_override(
        host,
        "backup_size_anomaly",
        {"factor": 50},
        actor=SYSTEM,
        now=utcnow(),
        group=groups["home"],
    )
    db.session.commit()
    # A page rendered before "home" existed: its row is not in the form.
    fields = _group_fields({"db": groups["db"]}, db={"overdue_enabled": "off"})
    path = f"/hosts/{host.id}/alerts"
    assert _post(browser, f"{path}/groups", path, **fields).status_code == 303
    assert alerts.group_overrides(groups["home"]) == {"backup_size_anomaly": {"factor": 50.0}}
    assert alerts.group_overrides(groups["db"]) == {"backup_overdue": {"enabled": False}}


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"factor": "lots"}, "factor", "Size factor must be a number."),
        ({"factor": "1"}, "factor", "Factor must be between 2 and 1000."),  # the service's
        ({"factor": "1e999"}, "factor", "Size factor must be a number."),
        ({"drop_percent": "120"}, "drop_percent", "Drop percentage must be between 1 and 100."),
        ({"overdue_grace": "0"}, "overdue_grace", "Overdue grace must be between 1 minute"),
        ({"overdue_grace": "99999999999999"}, "overdue_grace", "whole number of minutes"),
        ({"anomaly_enabled": "maybe"}, "anomaly_enabled", "Choose one of the listed values."),
    ],
)
def test_bad_group_settings_are_shown_on_their_row_and_save_nothing(
    login_as, fleet, row, field, words
):
    browser = login_as(Role.admin)
    host = fleet["web"]
    groups = _groups(host)
    before = _snapshot()
    path = f"/hosts/{host.id}/alerts"
    # A good change on another row is not saved either.
    fields = _group_fields(groups, db=row, home={"overdue_enabled": "off"})
    response = _post(browser, f"{path}/groups", path, **fields)
    assert response.status_code == 422
    page = _text(response)
    errors = page.split(f'id="group-{groups["db"].id}-{field}-errors"', 1)[1].split("</ul>")[0]
    assert words in errors
    assert page.count('class="field__errors"') == 1
    assert "Nothing was saved: fix the highlighted field below." in page
    assert f'name="group-{groups["home"].id}-overdue_enabled"' in page
    assert _snapshot() == before


def test_a_nul_in_a_group_field_is_refused(login_as, fleet):
    browser = login_as(Role.admin)
    groups = _groups(fleet["web"])
    before = _snapshot()
    path = f"/hosts/{fleet['web'].id}/alerts"
    fields = _group_fields(groups, db={"overdue_grace": "1\x00"})
    assert _post(browser, f"{path}/groups", path, **fields).status_code == 422
    assert _snapshot() == before


def test_refusals_on_two_rows_are_each_shown_on_their_own_row(login_as, fleet):
    browser = login_as(Role.admin)
    host = fleet["web"]
    groups = _groups(host)
    before = _snapshot()
    path = f"/hosts/{host.id}/alerts"
    fields = _group_fields(groups, db={"factor": "1"}, home={"drop_percent": "0.5"})
    response = _post(browser, f"{path}/groups", path, **fields)
    assert response.status_code == 422
    page = _text(response)
    assert f'id="group-{groups["db"].id}-factor-errors"' in page
    assert f'id="group-{groups["home"].id}-drop_percent-errors"' in page
    assert 'value="0.5"' in page  # what was typed stays, to be corrected
    assert "fix the 2 highlighted fields" in page
    assert _snapshot() == before


def test_viewers_read_group_settings_and_cannot_change_them(login_as, fleet):
    host = fleet["web"]
    groups = _groups(host)
    alerts.set_override(
        host,
        "backup_size_anomaly",
        {"factor": 25},
        actor=SYSTEM,
        now=utcnow(),
        group=groups["db"],
    )
    db.session.commit()
    path = f"/hosts/{host.id}/alerts"
    for role in (Role.viewer, Role.operator):
        browser = login_as(role)
        page = _text(browser.get(path))
        assert "Per source group" in page and 'name="group-' not in page
        assert "above 25\u00d7 the median" in page and "above 10\u00d7 the median" in page
        before = _snapshot()
        token = form_token(browser, path)
        fields = _group_fields(groups, db={"factor": "50"})
        response = browser.post(f"{path}/groups", data={"csrf_token": token, **fields})
        assert response.status_code == 403
        assert _snapshot() == before
    admin = login_as(Role.admin)
    before = _snapshot()
    assert admin.post(f"{path}/groups", data=_group_fields(groups)).status_code == 400  # no CSRF
    assert _snapshot() == before
