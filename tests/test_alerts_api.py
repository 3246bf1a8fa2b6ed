"""/api/v1 alerts, silences, alert rules and per-host rule settings, over real alerts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.api.openapi import build_document
from app.extensions import db
from app.models import (
    Alert,
    AlertOverride,
    AlertRuleSetting,
    AuditLog,
    Host,
    Notification,
    NotificationChannel,
    Role,
    Silence,
    SourceGroup,
)
from app.models.types import utcnow
from app.services import alerts, jobs
from app.services.audit import Actor
from app.services.errors import NotFound
from tests.factories import AgentCalls, make_enrolled_host, make_host
from tests.test_openapi import Conformance

API = "/api/v1"
BIG = 2**64 + 1


@pytest.fixture
def hosts(app):
    web = make_host("web-1", tags=["prod"], enrolled_at=utcnow())
    db_host = make_host("db-1", tags=["staging"], enrolled_at=utcnow())
    return web, db_host


def _fire(host: Host, rule="backup_failed", subject="default", message=None, now=None) -> int:
    """An alert fired by the real engine; its id."""
    context = alerts.Context(now or utcnow(), host_ids=[host.id])
    alert = alerts.fire(
        context,
        host,
        rule,
        subject,
        message or f"{rule} on {host.hostname} ({subject})",
        details={"why": "a test"},
    )
    db.session.commit()
    return alert.id


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) >= {"error", "message"}, body
    if code:
        assert body["error"] == code, body
    return body


def _counts():
    db.session.expire_all()
    return tuple(
        db.session.scalar(select(func.count()).select_from(model))
        for model in (Alert, Silence, AlertRuleSetting, AlertOverride, AuditLog, Notification)
    )


def _audit(action: str) -> list[AuditLog]:
    db.session.expire_all()
    return list(
        db.session.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id))
    )


def _channel(name="ops", min_severity="warning") -> NotificationChannel:
    channel = NotificationChannel(
        name=name, kind="webhook", config={"url": "http://127.0.0.1:9/hook"}, tags=[]
    )
    channel.min_severity = min_severity
    db.session.add(channel)
    db.session.commit()
    return channel


# --- alerts ----------------------------------------------------------------------------------


def test_alerts_list_with_every_field_and_filters(api, hosts):
    web, db_host = hosts
    failed = _fire(web, "backup_failed", "default")
    offline = _fire(db_host, "agent_offline", "")
    anomaly = _fire(web, "backup_size_anomaly", "default")
    viewer = api(Role.viewer)

    body = viewer.get(f"{API}/alerts").get_json()
    assert [item["id"] for item in body["items"]] == [anomaly, offline, failed]
    assert body["next_before"] is None
    item = body["items"][2]
    assert set(item) >= {
        "id",
        "rule",
        "severity",
        "state",
        "host_id",
        "hostname",
        "subject",
        "message",
        "details",
        "job_id",
        "occurrences",
        "fired_at",
        "last_fired_at",
        "acknowledged_at",
        "acknowledged_by",
        "ack_note",
        "resolved_at",
        "resolved_by",
        "muted",
        "muted_until",
    }
    assert item["rule"] == "backup_failed" and item["severity"] == "critical"
    assert item["state"] == "firing" and item["hostname"] == "web-1"
    assert item["subject"] == "default" and item["details"] == {"why": "a test"}
    assert item["occurrences"] == 1 and item["muted"] is False and item["muted_until"] is None
    assert item["fired_at"].endswith("Z") and item["resolved_at"] is None

    def ids(query):
        response = viewer.get(f"{API}/alerts?{query}")
        assert response.status_code == 200, response.get_json()
        return [entry["id"] for entry in response.get_json()["items"]]

    assert ids(f"host_id={db_host.id}") == [offline]
    assert ids("rule=agent_offline") == [offline]
    assert ids("severity=warning") == [offline]
    assert ids("severity=critical") == [anomaly, failed]
    assert ids("tag=prod") == [anomaly, failed]
    assert ids("tag=nobody") == []
    assert ids("state=firing") == [anomaly, offline, failed]
    assert ids("state=resolved") == []
    assert ids("state=open&host_id=&rule=") == [anomaly, offline, failed]  # empty: no filter

    first = viewer.get(f"{API}/alerts?limit=2").get_json()
    assert [entry["id"] for entry in first["items"]] == [anomaly, offline]
    assert first["next_before"] == offline
    second = viewer.get(f"{API}/alerts?limit=2&before={first['next_before']}").get_json()
    assert [entry["id"] for entry in second["items"]] == [failed]
    assert second["next_before"] is None


def test_a_repeat_updates_the_open_alert(api, hosts):
    web, _ = hosts
    first = _fire(web, "backup_failed", "default", "first failure")
    again = _fire(web, "backup_failed", "default", "second failure")
    assert first == again
    item = api(Role.viewer).get(f"{API}/alerts/{first}").get_json()
    assert item["occurrences"] == 2 and item["message"] == "second failure"


@pytest.mark.parametrize(
    "query, field",
    [
        ("host_id=abc", "host_id"),
        (f"host_id={BIG}", "host_id"),
        (f"host_id={2**31}", "host_id"),
        ("host_id=-1", "host_id"),
        ("before=1.5", "before"),
        (f"before={BIG}", "before"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        (f"limit={BIG}", "limit"),
        ("rule=no_such_rule", "rule"),
        ("state=burning", "state"),
        ("severity=apocalyptic", "severity"),
        ("tag=not%20a%20tag", "tag"),
        ("tag=a%00b", "tag"),
        ("rule=%ud800", "rule"),
    ],
)
def test_bad_alert_queries_are_422_naming_the_parameter(api, hosts, query, field):
    body = _error(api(Role.viewer).get(f"{API}/alerts?{query}"), 422, "validation_failed")
    assert list(body["fields"]) == [field], body


def test_one_alert_carries_its_delivery_log(api, hosts):
    web, _ = hosts
    _channel("ops")
    _channel("pager", min_severity="critical")
    _channel("quiet", min_severity="critical")
    db.session.execute(
        NotificationChannel.__table__.update()
        .where(NotificationChannel.name == "quiet")
        .values(enabled=False)
    )
    db.session.commit()
    alert_id = _fire(web, "backup_failed")
    warning_id = _fire(web, "agent_offline", "")
    viewer = api(Role.viewer)

    body = viewer.get(f"{API}/alerts/{alert_id}").get_json()
    assert body["id"] == alert_id
    deliveries = body["deliveries"]
    assert [(row["channel_name"], row["event"], row["state"]) for row in deliveries] == [
        ("ops", "firing", "pending"),
        ("pager", "firing", "pending"),
    ]
    assert set(deliveries[0]) >= {
        "id",
        "channel_id",
        "channel_name",
        "event",
        "state",
        "attempts",
        "last_result",
        "created_at",
        "sent_at",
        "next_attempt_at",
    }
    assert deliveries[0]["attempts"] == 0 and deliveries[0]["next_attempt_at"].endswith("Z")
    warning = viewer.get(f"{API}/alerts/{warning_id}").get_json()
    assert [row["channel_name"] for row in warning["deliveries"]] == ["ops"]  # min severity
    _error(viewer.get(f"{API}/alerts/999999"), 404, "not_found")
    _error(viewer.get(f"{API}/alerts/{BIG}"), 404, "not_found")


def test_acknowledge_then_resolve(api, hosts):
    web, _ = hosts
    _channel("ops")
    alert_id = _fire(web)
    operator = api(Role.operator)
    viewer = api(Role.viewer)

    before = _counts()
    _error(viewer.post(f"{API}/alerts/{alert_id}/acknowledge"), 403, "forbidden")
    _error(viewer.post(f"{API}/alerts/{alert_id}/resolve", json={}), 403, "forbidden")
    assert _counts() == before

    acked = operator.post(f"{API}/alerts/{alert_id}/acknowledge", json={"note": "on it"})
    assert acked.status_code == 200, acked.get_json()
    body = acked.get_json()
    assert body["state"] == "acknowledged" and body["ack_note"] == "on it"
    assert body["acknowledged_by"] == operator_name(operator)
    assert body["acknowledged_at"].endswith("Z") and body["resolved_at"] is None
    assert api(Role.viewer).get(f"{API}/alerts?state=acknowledged").get_json()["items"][0][
        "id"
    ] == (alert_id)
    (row,) = _audit("alert.acknowledged")
    assert row.target_id == str(alert_id) and row.payload["note"] == "on it"

    again = operator.post(f"{API}/alerts/{alert_id}/acknowledge")  # no body at all
    assert again.status_code == 200 and again.get_json()["ack_note"] == "on it"

    resolved = operator.post(f"{API}/alerts/{alert_id}/resolve", json={"note": "fixed disk"})
    assert resolved.status_code == 200, resolved.get_json()
    body = resolved.get_json()
    assert body["state"] == "resolved" and body["resolve_note"] == "fixed disk"
    assert body["resolved_by"] == operator_name(operator) and body["resolved_at"].endswith("Z")
    assert [row["event"] for row in body["deliveries"]] == ["firing", "resolved"]
    assert _audit("alert.resolved")[0].payload["note"] == "fixed disk"

    before = _counts()
    _error(operator.post(f"{API}/alerts/{alert_id}/resolve"), 409, "alert_resolved")
    _error(operator.post(f"{API}/alerts/{alert_id}/acknowledge"), 409, "alert_resolved")
    _error(operator.post(f"{API}/alerts/999999/resolve"), 404, "not_found")
    assert _counts() == before
    # The condition returns: a new alert, the history stays.
    assert _fire(web) != alert_id
    assert len(api(Role.viewer).get(f"{API}/alerts?host_id={web.id}").get_json()["items"]) == 2


def operator_name(client) -> str:
    return client.get(f"{API}/me").get_json()["username"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"note": 12}, "note"),
        ({"note": ["a"]}, "note"),
        ({"note": "x" * 1001}, "note"),
        ({"note": "a\x00b"}, "note"),
        ({"notes": "typo"}, "notes"),
        ({"note": "ok", "state": "resolved"}, "state"),
        ({"note": {"a": {"b": {}}}}, "note"),
    ],
)
def test_bad_action_bodies_are_422_and_change_nothing(api, hosts, body, field):
    web, _ = hosts
    alert_id = _fire(web)
    operator = api(Role.operator)
    for action in ("acknowledge", "resolve"):
        before = _counts()
        refused = _error(operator.post(f"{API}/alerts/{alert_id}/{action}", json=body), 422)
        assert list(refused["fields"]) == [field], refused
        assert _counts() == before
    db.session.expire_all()
    assert db.session.get(Alert, alert_id).state == "firing"


def test_action_bodies_of_the_wrong_kind(api, hosts):
    web, _ = hosts
    alert_id = _fire(web)
    operator = api(Role.operator)
    path = f"{API}/alerts/{alert_id}/acknowledge"
    _error(operator.post(path, data="note=x"), 415, "unsupported_media_type")
    _error(operator.post(path, json=["note"]), 400, "invalid_json")
    nested = "[" * 100_000 + "]" * 100_000
    _error(operator.post(path, data=nested, content_type="application/json"), 400, "invalid_json")
    db.session.expire_all()
    assert db.session.get(Alert, alert_id).state == "firing"


# --- silences --------------------------------------------------------------------------------


def _in(hours: float) -> str:
    return (utcnow() + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_silences_mute_alerts_and_are_audited(api, hosts):
    web, db_host = hosts
    _channel("ops")
    operator = api(Role.operator)
    viewer = api(Role.viewer)
    _error(
        viewer.post(f"{API}/silences", json={"tag": "prod", "reason": "x", "ends_at": _in(2)}),
        403,
        "forbidden",
    )

    created = operator.post(
        f"{API}/silences",
        json={"tag": "prod", "reason": "planned maintenance", "ends_at": _in(2)},
    )
    assert created.status_code == 201, created.get_json()
    silence = created.get_json()
    assert silence["tag"] == "prod" and silence["host_id"] is None and silence["rule"] is None
    assert silence["reason"] == "planned maintenance" and silence["active"] is True
    assert silence["created_by"] == operator_name(operator)
    (row,) = _audit("silence.created")
    assert row.target_id == str(silence["id"]) and row.payload["tag"] == "prod"

    on_host = operator.post(
        f"{API}/silences",
        json={
            "host_id": db_host.id,
            "rule": "agent_offline",
            "reason": "moving racks",
            "starts_at": _in(1),
            "ends_at": _in(3),
        },
    ).get_json()
    assert on_host["hostname"] == "db-1" and on_host["active"] is False  # starts later

    muted_id = _fire(web, "backup_failed")
    loud_id = _fire(db_host, "agent_offline", "")
    items = {item["id"]: item for item in viewer.get(f"{API}/alerts").get_json()["items"]}
    assert items[muted_id]["muted"] is True and items[muted_id]["silence_id"] == silence["id"]
    assert items[muted_id]["muted_until"] == silence["ends_at"]
    assert items[loud_id]["muted"] is False
    # Muted: shown, but no outbox row; the other one notifies.
    assert viewer.get(f"{API}/alerts/{muted_id}").get_json()["deliveries"] == []
    assert len(viewer.get(f"{API}/alerts/{loud_id}").get_json()["deliveries"]) == 1

    listing = viewer.get(f"{API}/silences").get_json()["items"]
    assert [item["id"] for item in listing] == [on_host["id"], silence["id"]]
    assert viewer.get(f"{API}/silences/{silence['id']}").get_json() == silence

    _error(viewer.delete(f"{API}/silences/{silence['id']}"), 403, "forbidden")
    deleted = operator.delete(f"{API}/silences/{silence['id']}")
    assert deleted.status_code == 204 and deleted.get_data() == b""
    assert _audit("silence.deleted")[0].target_id == str(silence["id"])
    _error(viewer.get(f"{API}/silences/{silence['id']}"), 404, "not_found")
    _error(operator.delete(f"{API}/silences/{silence['id']}"), 404, "not_found")
    assert viewer.get(f"{API}/alerts/{muted_id}").get_json()["muted"] is False


def test_expired_silences_on_request(api, hosts):
    web, _ = hosts
    db.session.add(
        Silence(
            host_id=web.id,
            reason="last week",
            starts_at=utcnow() - timedelta(days=8),
            ends_at=utcnow() - timedelta(days=7),
            created_by="alice",
        )
    )
    db.session.commit()
    viewer = api(Role.viewer)
    assert viewer.get(f"{API}/silences").get_json()["items"] == []
    assert viewer.get(f"{API}/silences?include_expired=false").get_json()["items"] == []
    (old,) = viewer.get(f"{API}/silences?include_expired=true").get_json()["items"]
    assert old["reason"] == "last week" and old["active"] is False
    body = _error(viewer.get(f"{API}/silences?include_expired=maybe"), 422)
    assert list(body["fields"]) == ["include_expired"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"reason": "r", "ends_at": "+2h"}, ""),  # nothing chosen to silence
        ({"tag": "prod", "reason": "r", "ends_at": "tomorrow"}, "ends_at"),
        ({"tag": "prod", "reason": "r", "ends_at": "2001-01-01T00:00:00Z"}, "ends_at"),
        ({"tag": "prod", "reason": "r", "ends_at": "+800d"}, "ends_at"),
        ({"tag": "prod", "reason": "r"}, "ends_at"),
        ({"tag": "prod", "ends_at": "+2h"}, "reason"),
        ({"tag": "prod", "reason": "", "ends_at": "+2h"}, "reason"),
        ({"tag": "prod", "reason": "a\x00b", "ends_at": "+2h"}, "reason"),
        ({"tag": "prod", "reason": "x" * 501, "ends_at": "+2h"}, "reason"),
        ({"tag": "not a tag", "reason": "r", "ends_at": "+2h"}, "tag"),
        ({"tag": 5, "reason": "r", "ends_at": "+2h"}, "tag"),
        ({"rule": "no_such_rule", "reason": "r", "ends_at": "+2h"}, "rule"),
        ({"host_id": 999999, "reason": "r", "ends_at": "+2h"}, "host_id"),
        ({"host_id": 2**31, "reason": "r", "ends_at": "+2h"}, "host_id"),
        ({"host_id": -1, "reason": "r", "ends_at": "+2h"}, "host_id"),
        ({"host_id": "1", "reason": "r", "ends_at": "+2h"}, "host_id"),
        ({"host_id": BIG, "reason": "r", "ends_at": "+2h"}, "host_id"),
        ({"host_id": True, "reason": "r", "ends_at": "+2h"}, "host_id"),
        ({"tag": "prod", "reason": "r", "ends_at": 1767225600}, "ends_at"),
        ({"tag": "prod", "reason": "r", "ends_at": "+2h", "until": "x"}, "until"),
        ({"tag": "prod", "reason": "r", "ends_at": "+2h", "starts_at": "+3h"}, "ends_at"),
        ({"tag": "prod", "reason": {"a": [[[{}]]]}, "ends_at": "+2h"}, "reason"),
    ],
)
def test_bad_silences_are_422_and_change_nothing(api, hosts, body, field):
    for key in ("ends_at", "starts_at"):
        if isinstance(body.get(key), str) and body[key].startswith("+"):
            amount = body[key][1:]
            hours = int(amount[:-1]) * (24 if amount.endswith("d") else 1)
            body = {**body, key: _in(hours)}
    before = _counts()
    refused = _error(api(Role.operator).post(f"{API}/silences", json=body), 422)
    assert list(refused["fields"]) == [field], refused
    assert _counts() == before


def test_silence_bodies_of_the_wrong_kind(api, hosts):
    operator = api(Role.operator)
    before = _counts()
    _error(operator.post(f"{API}/silences", data="tag=prod"), 415)
    _error(operator.post(f"{API}/silences", json=[1, 2]), 400, "invalid_json")
    _error(operator.post(f"{API}/silences"), 415)
    assert _counts() == before


# --- rules -----------------------------------------------------------------------------------


def test_rules_are_listed_read_and_changed_by_admins(api, hosts):
    viewer = api(Role.viewer)
    admin = api(Role.admin)
    listing = viewer.get(f"{API}/alert-rules").get_json()["items"]
    assert [item["rule"] for item in listing] == list(alerts.RULES)
    offline = viewer.get(f"{API}/alert-rules/agent_offline").get_json()
    assert offline["threshold_seconds"] == 600 and offline["enabled"] is True
    assert offline["has_threshold"] is True and offline["severity"] == "warning"
    anomaly = viewer.get(f"{API}/alert-rules/backup_size_anomaly").get_json()
    assert anomaly["factor"] == 10.0 and anomaly["has_threshold"] is False
    _error(viewer.get(f"{API}/alert-rules/no_such_rule"), 404, "unknown_rule")

    before = _counts()
    for role in (Role.viewer, Role.operator):
        _error(
            api(role).put(f"{API}/alert-rules/agent_offline", json={"threshold_seconds": 900}),
            403,
            "forbidden",
        )
    assert _counts() == before

    changed = admin.put(
        f"{API}/alert-rules/agent_offline",
        json={"enabled": True, "threshold_seconds": 900, "severity": "critical"},
    )
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["threshold_seconds"] == 900
    assert changed.get_json()["severity"] == "critical"
    assert viewer.get(f"{API}/alert-rules/agent_offline").get_json()["threshold_seconds"] == 900
    (row,) = _audit("alert_rule.updated")
    assert row.target_id == "agent_offline" and row.payload["threshold_seconds"] == 900

    off = admin.put(f"{API}/alert-rules/backup_warning", json={"enabled": False}).get_json()
    assert off["enabled"] is False
    web, _ = hosts
    context = alerts.Context(utcnow(), host_ids=[web.id])
    assert alerts.fire(context, web, "backup_warning", "default", "x") is None  # disabled

    back = admin.put(f"{API}/alert-rules/agent_offline", json={"threshold_seconds": None})
    assert back.get_json()["threshold_seconds"] == 600
    tuned = admin.put(
        f"{API}/alert-rules/backup_size_anomaly", json={"factor": 4, "drop_percent": 50.5}
    ).get_json()
    assert (tuned["factor"], tuned["drop_percent"]) == (4.0, 50.5)


@pytest.mark.parametrize(
    "rule, body, field",
    [
        ("agent_offline", {"threshold_seconds": 10}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": BIG}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": "600"}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": 600.5}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": 10**9}, "threshold_seconds"),
        ("agent_offline", {"enabled": "yes"}, "enabled"),
        ("agent_offline", {"enabled": None}, "enabled"),
        ("agent_offline", {"severity": "apocalyptic"}, "severity"),
        ("agent_offline", {"threshold": 600}, "threshold"),
        ("agent_offline", {"factor": 3}, "factor"),
        ("backup_failed", {"threshold_seconds": 600}, "threshold_seconds"),
        ("backup_size_anomaly", {"factor": 1}, "factor"),
        ("backup_size_anomaly", {"drop_percent": 0}, "drop_percent"),
        ("agent_offline", {"severity": "a\x00"}, "severity"),
        ("agent_offline", {"enabled": {"a": {"b": {"c": {}}}}}, "enabled"),
    ],
)
def test_bad_rule_changes_are_422_and_change_nothing(api, rule, body, field):
    before = _counts()
    refused = _error(api(Role.admin).put(f"{API}/alert-rules/{rule}", json=body), 422)
    assert list(refused["fields"]) == [field], refused
    assert _counts() == before


def test_an_unknown_rule_is_404_whatever_the_body(api):
    admin = api(Role.admin)
    before = _counts()
    _error(admin.put(f"{API}/alert-rules/nope", json={"enabled": True}), 404, "unknown_rule")
    _error(admin.put(f"{API}/alert-rules/nope", json={"bad": 1}), 404, "unknown_rule")
    assert _counts() == before


# --- per-host rule settings ------------------------------------------------------------------


def test_host_overrides(api, hosts):
    web, db_host = hosts
    viewer = api(Role.viewer)
    admin = api(Role.admin)
    path = f"{API}/hosts/{web.id}/alert-rules"
    body = viewer.get(path).get_json()
    assert body["host_id"] == web.id and body["overrides"] == {}
    assert body["effective"]["agent_offline"]["threshold_seconds"] == 600
    assert body["effective"]["backup_overdue"]["max_age_seconds"] is None

    for role in (Role.viewer, Role.operator):
        _error(
            api(role).put(f"{path}/agent_offline", json={"threshold_seconds": 3600}),
            403,
            "forbidden",
        )
    changed = admin.put(f"{path}/agent_offline", json={"threshold_seconds": 3600})
    assert changed.status_code == 200, changed.get_json()
    body = changed.get_json()
    assert body["overrides"] == {"agent_offline": {"threshold_seconds": 3600}}
    assert body["effective"]["agent_offline"]["threshold_seconds"] == 3600
    other = viewer.get(f"{API}/hosts/{db_host.id}/alert-rules").get_json()
    assert other["effective"]["agent_offline"]["threshold_seconds"] == 600
    (row,) = _audit("alert_override.updated")
    assert row.target_id == str(web.id) and row.payload["rule"] == "agent_offline"

    admin.put(f"{path}/backup_overdue", json={"max_age_seconds": 86400, "enabled": False})
    body = viewer.get(path).get_json()
    assert body["overrides"]["backup_overdue"] == {"enabled": False, "max_age_seconds": 86400}
    assert body["effective"]["backup_overdue"]["enabled"] is False

    cleared = admin.put(f"{path}/agent_offline", json={"threshold_seconds": None}).get_json()
    assert "agent_offline" not in cleared["overrides"]
    assert cleared["effective"]["agent_offline"]["threshold_seconds"] == 600
    # Only nulls for a rule the host has no setting of: nothing to store, nothing stored.
    nothing = admin.put(f"{path}/backup_warning", json={"enabled": None})
    assert nothing.status_code == 200, nothing.get_data(as_text=True)
    assert "backup_warning" not in nothing.get_json()["overrides"]
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(AlertOverride)) == 1


@pytest.mark.parametrize(
    "rule, body, field",
    [
        ("agent_offline", {"max_age_seconds": 86400}, "max_age_seconds"),
        ("backup_failed", {"threshold_seconds": 600}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": 5}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": BIG}, "threshold_seconds"),
        ("agent_offline", {"threshold_seconds": "60"}, "threshold_seconds"),
        ("agent_offline", {"enabled": "no"}, "enabled"),
        ("agent_offline", {"severity": "info"}, "severity"),
        ("backup_size_anomaly", {"factor": 10**6}, "factor"),
        ("agent_offline", {"enabled": "\x00"}, "enabled"),
        ("agent_offline", {}, "body"),
    ],
)
def test_bad_host_overrides_are_422_and_change_nothing(api, hosts, rule, body, field):
    web, _ = hosts
    before = _counts()
    refused = _error(
        api(Role.admin).put(f"{API}/hosts/{web.id}/alert-rules/{rule}", json=body), 422
    )
    assert list(refused["fields"]) == [field], refused
    assert _counts() == before


def test_host_overrides_of_unknown_things_are_404(api, hosts):
    web, _ = hosts
    admin = api(Role.admin)
    before = _counts()
    _error(admin.get(f"{API}/hosts/999999/alert-rules"), 404)
    _error(admin.put(f"{API}/hosts/999999/alert-rules/agent_offline", json={"enabled": True}), 404)
    _error(
        admin.put(f"{API}/hosts/{web.id}/alert-rules/nope", json={"enabled": True}),
        404,
        "unknown_rule",
    )
    assert _counts() == before


# --- the answers match the OpenAPI document --------------------------------------------------


def test_alert_answers_match_the_document(app, api, hosts):
    web, _ = hosts
    conform = Conformance(build_document(app))
    _channel("ops")
    alert_id = _fire(web)
    admin = api(Role.admin)

    def call(method, template, path, **kwargs):
        return conform.check(admin.open(path, method=method, **kwargs), method, template)

    call("GET", "/api/v1/alerts", f"{API}/alerts?state=open&limit=1")
    call("GET", "/api/v1/alerts", f"{API}/alerts?rule=nope")  # 422
    call("GET", "/api/v1/alerts/{alert_id}", f"{API}/alerts/{alert_id}")
    call("GET", "/api/v1/alerts/{alert_id}", f"{API}/alerts/999999")  # 404
    ack = f"{API}/alerts/{alert_id}/acknowledge"
    call("POST", "/api/v1/alerts/{alert_id}/acknowledge", ack, json={"note": "on it"})
    call("POST", "/api/v1/alerts/{alert_id}/resolve", f"{API}/alerts/{alert_id}/resolve")
    call("POST", "/api/v1/alerts/{alert_id}/acknowledge", ack)  # 409
    silence = call(
        "POST",
        "/api/v1/silences",
        f"{API}/silences",
        json={"host_id": web.id, "reason": "maintenance", "ends_at": _in(1)},
    ).get_json()
    call("POST", "/api/v1/silences", f"{API}/silences", json={"reason": "x"})  # 422
    call("GET", "/api/v1/silences", f"{API}/silences?include_expired=true")
    call("GET", "/api/v1/silences/{silence_id}", f"{API}/silences/{silence['id']}")
    call("DELETE", "/api/v1/silences/{silence_id}", f"{API}/silences/{silence['id']}")
    call("GET", "/api/v1/alert-rules", f"{API}/alert-rules")
    call("GET", "/api/v1/alert-rules/{rule}", f"{API}/alert-rules/backup_size_anomaly")
    call("PUT", "/api/v1/alert-rules/{rule}", f"{API}/alert-rules/agent_offline", json={})
    h = f"{API}/hosts/{web.id}/alert-rules"
    call("GET", "/api/v1/hosts/{host_id}/alert-rules", h)
    call(
        "PUT",
        "/api/v1/hosts/{host_id}/alert-rules/{rule}",
        f"{h}/backup_overdue",
        json={"max_age_seconds": 7200, "enabled": True},
    )
    assert len(conform.checked) == 17


# --- per-source-group rule settings ----------------------------------------------------------

ADMIN = Actor.system("group alerts test")
MIB = 1024**2


def _add_group(host: Host, name: str) -> SourceGroup:
    group = SourceGroup(host_id=host.id, name=name, includes=[f"/{name}"], created_at=utcnow())
    db.session.add(group)
    db.session.commit()
    return group


def _group_path(host: Host, group: SourceGroup, rule: str | None = None) -> str:
    path = f"{API}/hosts/{host.id}/source-groups/{group.id}/alert-rules"
    return f"{path}/{rule}" if rule else path


def test_group_overrides_layer_over_the_host_and_the_fleet(api, hosts):
    web, _ = hosts
    db_group = _add_group(web, "db")
    viewer, admin = api(Role.viewer), api(Role.admin)
    body = viewer.get(_group_path(web, db_group)).get_json()
    assert body == {
        "host_id": web.id,
        "source_group_id": db_group.id,
        "group": "db",
        "overrides": {},
        "effective": body["effective"],
    }
    assert set(body["effective"]) == set(alerts.GROUP_RULES)
    assert body["effective"]["backup_size_anomaly"] == {
        "enabled": True,
        "severity": "critical",
        "threshold_seconds": None,
        "factor": 10.0,
        "drop_percent": 30.0,
    }
    assert body["effective"]["backup_overdue"]["threshold_seconds"] == 3600

    for role in (Role.viewer, Role.operator):
        _error(
            api(role).put(_group_path(web, db_group, "backup_size_anomaly"), json={"factor": 20}),
            403,
            "forbidden",
        )
    changed = admin.put(
        _group_path(web, db_group, "backup_size_anomaly"), json={"factor": 20, "drop_percent": 60}
    )
    assert changed.status_code == 200, changed.get_json()
    body = changed.get_json()
    assert body["overrides"] == {"backup_size_anomaly": {"factor": 20.0, "drop_percent": 60.0}}
    assert body["effective"]["backup_size_anomaly"]["factor"] == 20.0
    assert body["effective"]["backup_size_anomaly"]["drop_percent"] == 60.0
    (row,) = _audit("alert_override.updated")
    assert row.target_id == str(web.id)
    assert row.payload == {
        "rule": "backup_size_anomaly",
        "group": "db",
        "factor": 20,
        "drop_percent": 60,
    }
    # The host's own settings and its other group are untouched.
    assert viewer.get(f"{API}/hosts/{web.id}/alert-rules").get_json()["overrides"] == {}
    default = db.session.scalar(
        select(SourceGroup).where(SourceGroup.host_id == web.id, SourceGroup.name == "default")
    )
    other = viewer.get(_group_path(web, default)).get_json()
    assert other["overrides"] == {} and other["effective"]["backup_size_anomaly"]["factor"] == 10

    # fleet → host → group: the host's grace reaches the group until the group sets its own.
    admin.put(f"{API}/hosts/{web.id}/alert-rules/backup_overdue", json={"threshold_seconds": 7200})
    body = viewer.get(_group_path(web, db_group)).get_json()
    assert body["effective"]["backup_overdue"]["threshold_seconds"] == 7200
    body = admin.put(
        _group_path(web, db_group, "backup_overdue"),
        json={"threshold_seconds": 600, "enabled": False},
    ).get_json()
    assert body["overrides"]["backup_overdue"] == {"enabled": False, "threshold_seconds": 600}
    assert body["effective"]["backup_overdue"]["threshold_seconds"] == 600
    assert body["effective"]["backup_overdue"]["enabled"] is False
    host_view = viewer.get(f"{API}/hosts/{web.id}/alert-rules").get_json()
    assert host_view["effective"]["backup_overdue"] == {
        "enabled": True,
        "severity": "critical",
        "threshold_seconds": 7200,
        "max_age_seconds": None,
    }

    # null inherits again; an override left empty is removed.
    body = admin.put(
        _group_path(web, db_group, "backup_overdue"),
        json={"threshold_seconds": None, "enabled": None},
    ).get_json()
    assert "backup_overdue" not in body["overrides"]
    assert body["effective"]["backup_overdue"]["threshold_seconds"] == 7200
    db.session.expire_all()
    assert (
        db.session.scalar(
            select(func.count())
            .select_from(AlertOverride)
            .where(AlertOverride.source_group_id == db_group.id)
        )
        == 1
    )


@pytest.mark.parametrize(
    "rule, body, field",
    [
        ("agent_offline", {"enabled": False}, "rule"),
        ("schedule_not_applied", {"threshold_seconds": 600}, "rule"),
        ("repository_error", {"enabled": None}, "rule"),
        ("backup_overdue", {"max_age_seconds": 86400}, "max_age_seconds"),
        ("backup_failed", {"threshold_seconds": 600}, "threshold_seconds"),
        ("backup_warning", {"factor": 20}, "factor"),
        ("backup_size_anomaly", {"factor": 1}, "factor"),
        ("backup_size_anomaly", {"factor": BIG}, "factor"),
        ("backup_size_anomaly", {"factor": "20"}, "factor"),
        ("backup_size_anomaly", {"drop_percent": 101}, "drop_percent"),
        ("backup_overdue", {"threshold_seconds": 59}, "threshold_seconds"),
        ("backup_overdue", {"threshold_seconds": 2**63}, "threshold_seconds"),
        ("backup_failed", {"enabled": "\x00"}, "enabled"),
        ("backup_failed", {"severity": "info"}, "severity"),
        ("backup_failed", {}, "body"),
    ],
)
def test_bad_group_overrides_are_422_and_change_nothing(api, hosts, rule, body, field):
    web, _ = hosts
    group = _add_group(web, "db")
    before = _counts()
    refused = _error(api(Role.admin).put(_group_path(web, group, rule), json=body), 422)
    assert list(refused["fields"]) == [field], refused
    if field == "rule":
        assert refused["message"] == f"{rule} is a host-wide rule; it has no per-group setting."
    assert _counts() == before


def test_group_overrides_of_unknown_or_foreign_groups_are_404(api, hosts):
    web, db_host = hosts
    theirs = _add_group(db_host, "db")
    admin = api(Role.admin)
    before = _counts()
    foreign = f"{API}/hosts/{web.id}/source-groups/{theirs.id}/alert-rules"
    _error(admin.get(foreign), 404)
    _error(admin.put(f"{foreign}/backup_failed", json={"enabled": False}), 404)
    _error(admin.get(f"{API}/hosts/{web.id}/source-groups/999999/alert-rules"), 404)
    _error(admin.get(f"{API}/hosts/999999/source-groups/{theirs.id}/alert-rules"), 404)
    _error(
        admin.put(_group_path(db_host, theirs, "nope"), json={"enabled": True}),
        404,
        "unknown_rule",
    )
    assert _counts() == before
    # The service refuses another host's group too, whoever calls it.
    with pytest.raises(NotFound):
        alerts.set_override(
            web, "backup_failed", {"enabled": False}, actor=ADMIN, now=utcnow(), group=theirs
        )
    db.session.rollback()
    assert _counts() == before


def _backup(app, host: Host, token: str, group: str, changed: int) -> None:
    """A backup of ``group`` queued by the server and finished by the agent over the agent
    API, so the alert hooks run as in production."""
    job = jobs.create_job(
        app.extensions["secretbox"],
        host,
        "backup",
        params={"group": group},
        actor=ADMIN,
        now=utcnow(),
    )
    db.session.commit()
    calls = AgentCalls(app, token, job)
    calls.event("job.started")
    stats = {
        "files_new": changed // 2,
        "files_changed": changed - changed // 2,
        "data_added": 200 * MIB,
        "total_files_processed": 10_000,
        "error_count": 0,
    }
    calls.finish(status="succeeded", stats=stats)
    db.session.expire_all()


def test_a_groups_anomaly_factor_set_over_the_api_changes_when_it_fires(app, api):
    host, token = make_enrolled_host()
    db_group = _add_group(host, "db")
    admin = api(Role.admin)
    response = admin.put(_group_path(host, db_group, "backup_size_anomaly"), json={"factor": 20})
    assert response.status_code == 200, response.get_json()

    def anomalies() -> set[str]:
        db.session.expire_all()
        return set(
            db.session.scalars(
                select(Alert.subject).where(
                    Alert.rule == "backup_size_anomaly", Alert.host_id == host.id
                )
            )
        )

    for group in ("default", "db"):
        for _ in range(3):
            _backup(app, host, token, group, 500)
        _backup(app, host, token, group, 6_000)  # 12x the median: above 10, under 20
    assert anomalies() == {"default"}
    _backup(app, host, token, "db", 10_001)  # above 20x the median of 500
    assert anomalies() == {"default", "db"}
    alert = db.session.scalar(select(Alert).where(Alert.subject == "db"))
    assert "alert above 20x the median" in alert.message

    # Switched off for the group: a further mass change there opens nothing new.
    admin.put(_group_path(host, db_group, "backup_size_anomaly"), json={"enabled": False})
    alerts.resolve(alert, note=None, actor=ADMIN, now=utcnow())
    db.session.commit()
    _backup(app, host, token, "db", 50_000)
    db.session.expire_all()
    assert [
        state
        for (state,) in db.session.execute(
            select(Alert.state).where(Alert.subject == "db", Alert.rule == "backup_size_anomaly")
        )
    ] == ["resolved"]


def test_group_alert_answers_match_the_document(app, api, hosts):
    web, db_host = hosts
    group = _add_group(web, "db")
    theirs = _add_group(db_host, "db")
    conform = Conformance(build_document(app))
    admin = api(Role.admin)
    template = "/api/v1/hosts/{host_id}/source-groups/{group_id}/alert-rules"

    def call(method, suffix, path, **kwargs):
        return conform.check(admin.open(path, method=method, **kwargs), method, template + suffix)

    call("GET", "", _group_path(web, group))
    call("GET", "", _group_path(web, theirs))  # 404
    rule = "/{rule}"
    call("PUT", rule, _group_path(web, group, "backup_size_anomaly"), json={"factor": 12.5})
    call("PUT", rule, _group_path(web, group, "backup_overdue"), json={"threshold_seconds": 900})
    call("PUT", rule, _group_path(web, group, "agent_offline"), json={"enabled": False})  # 422
    call("PUT", rule, _group_path(web, group, "nope"), json={"enabled": False})  # 404
    assert len(conform.checked) == 5
    document = build_document(app)
    schema = document["components"]["schemas"]["GroupAlertOverrideInput"]
    assert "max_age_seconds" not in schema["properties"]
