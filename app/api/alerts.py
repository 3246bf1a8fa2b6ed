"""/api/v1 alerts, silences, alert rules and a host's (or a source group's) own rule settings."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from flask import jsonify, request
from sqlalchemy import select

from app import MAX_ID
from app.access import Role, require_role
from app.api import bp
from app.api.serialize import alert_json, delivery_json, silence_json
from app.api.validation import json_body, query_integer
from app.authn import client_address, current_actor
from app.extensions import db
from app.models import Alert, Host, NotificationChannel, SourceGroup
from app.models.types import utcnow
from app.services import alerts, source_groups, validate
from app.services.errors import ValidationFailed
from app.services.hosts import get_host
from app.transaction import commit_and_wake

DEFAULT_PAGE = 100
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def _hostnames(host_ids: Iterable[int]) -> dict[int, Host]:
    wanted = {host_id for host_id in host_ids if host_id is not None}
    if not wanted:
        return {}
    return {host.id: host for host in db.session.scalars(select(Host).where(Host.id.in_(wanted)))}


def alerts_json(items: list[Alert], now: datetime) -> list[dict]:
    hosts = _hostnames(alert.host_id for alert in items)
    muted = alerts.muted_by(items, hosts, now)
    return [
        alert_json(
            alert,
            hosts[alert.host_id].hostname if alert.host_id in hosts else None,
            muted.get(alert.id),
        )
        for alert in items
    ]


def alert_detail_json(alert: Alert, now: datetime) -> dict:
    body = alerts_json([alert], now)[0]
    log = alerts.deliveries(alert)
    names = dict(
        db.session.execute(
            select(NotificationChannel.id, NotificationChannel.name).where(
                NotificationChannel.id.in_({row.channel_id for row in log})
            )
        ).all()
    )
    body["deliveries"] = [delivery_json(row, names.get(row.channel_id)) for row in log]
    return body


def silences_json(items: list, now: datetime) -> list[dict]:
    hosts = _hostnames(silence.host_id for silence in items)
    return [
        silence_json(
            silence, hosts[silence.host_id].hostname if silence.host_id in hosts else None, now
        )
        for silence in items
    ]


def _by_caller() -> dict:
    return {"actor": current_actor(), "client_address": client_address(), "now": utcnow()}


def _text_parameter(name: str) -> str | None:
    """A query parameter's text, or None when absent or empty."""
    value = request.args.get(name, "").strip()
    return value or None


def _integer_parameter(name: str, low: int, high: int) -> int | None:
    raw = request.args.get(name, "")
    return query_integer(name, raw, low, high) if raw.strip() else None


def _flag_parameter(name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    validate.fail(name, f"'{name}' must be true or false.")


def _only_keys(body: dict, allowed: tuple[str, ...], what: str) -> None:
    errors = validate.FieldErrors()
    for key in body:
        if key not in allowed:
            errors.add(str(key)[:64], f"{what} has no field {validate.echo(key)}.")
    errors.raise_any()


def _note_of_body() -> object:
    """The optional ``{"note": …}`` of acknowledge and resolve (no body: no note)."""
    if not request.get_data():
        return None
    body = json_body()
    _only_keys(body, ("note",), "This request")
    return body.get("note")


# --- alerts ----------------------------------------------------------------------------------


@bp.get("/alerts")
@require_role(Role.viewer)
def list_alerts():
    """Newest first; ``next_before`` is the ``before`` of the next page (null: the last)."""
    tag = _text_parameter("tag")
    if tag is not None and not validate.TAG.match(tag):
        validate.fail("tag", "'tag' may contain letters, digits and . _ : @ + - (up to 64).")
    limit = _integer_parameter("limit", 1, alerts.MAX_PAGE) or DEFAULT_PAGE
    items = alerts.list_alerts(
        state=_text_parameter("state"),
        host_id=_integer_parameter("host_id", 1, MAX_ID),
        rule=_text_parameter("rule"),
        severity=_text_parameter("severity"),
        tag=tag,
        before_id=_integer_parameter("before", 1, MAX_ID),
        limit=limit,
    )
    return jsonify(
        {
            "items": alerts_json(items, utcnow()),
            "next_before": items[-1].id if len(items) == limit else None,
        }
    )


@bp.get("/alerts/<int:alert_id>")
@require_role(Role.viewer)
def get_alert(alert_id: int):
    return jsonify(alert_detail_json(alerts.get_alert(alert_id), utcnow()))


@bp.post("/alerts/<int:alert_id>/acknowledge")
@require_role(Role.operator)
def acknowledge_alert(alert_id: int):
    alert = alerts.get_alert(alert_id)
    alerts.acknowledge(alert, note=_note_of_body(), **_by_caller())
    commit_and_wake()
    return jsonify(alert_detail_json(alert, utcnow()))


@bp.post("/alerts/<int:alert_id>/resolve")
@require_role(Role.operator)
def resolve_alert(alert_id: int):
    alert = alerts.get_alert(alert_id)
    alerts.resolve(alert, note=_note_of_body(), **_by_caller())
    commit_and_wake()
    return jsonify(alert_detail_json(alert, utcnow()))


# --- silences --------------------------------------------------------------------------------


@bp.get("/silences")
@require_role(Role.viewer)
def list_silences():
    now = utcnow()
    items = alerts.list_silences(now, include_expired=_flag_parameter("include_expired"))
    return jsonify({"items": silences_json(items, now)})


@bp.post("/silences")
@require_role(Role.operator)
def create_silence():
    body = json_body()
    host_id = body.get("host_id")
    if isinstance(host_id, int) and not isinstance(host_id, bool) and not 1 <= host_id <= MAX_ID:
        validate.fail("host_id", f"Host {host_id} does not exist.")  # past the id column
    silence = alerts.create_silence(body, **_by_caller())
    commit_and_wake()
    return jsonify(silences_json([silence], utcnow())[0]), 201


@bp.get("/silences/<int:silence_id>")
@require_role(Role.viewer)
def get_silence(silence_id: int):
    return jsonify(silences_json([alerts.get_silence(silence_id)], utcnow())[0])


@bp.delete("/silences/<int:silence_id>")
@require_role(Role.operator)
def delete_silence(silence_id: int):
    alerts.end_silence(alerts.get_silence(silence_id), **_by_caller())
    commit_and_wake()
    return "", 204


# --- rules -----------------------------------------------------------------------------------


@bp.get("/alert-rules")
@require_role(Role.viewer)
def list_alert_rules():
    return jsonify({"items": alerts.list_rules()})


@bp.get("/alert-rules/<rule>")
@require_role(Role.viewer)
def get_alert_rule(rule: str):
    alerts.get_rule(rule)
    return jsonify(alerts.rule_view(rule))


@bp.put("/alert-rules/<rule>")
@require_role(Role.admin)
def update_alert_rule(rule: str):
    alerts.get_rule(rule)  # an unknown rule is a 404 whatever the body
    view = alerts.update_rule(rule, json_body(), **_by_caller())
    commit_and_wake()
    return jsonify(view)


def _effective_json(setting: alerts.Effective, rule: str) -> dict:
    body = {
        "enabled": setting.enabled,
        "severity": setting.severity,
        "threshold_seconds": setting.threshold_seconds,
    }
    if rule == "backup_overdue":
        body["max_age_seconds"] = setting.max_age_seconds
    if rule == "backup_size_anomaly":
        body["factor"] = setting.factor
        body["drop_percent"] = setting.drop_percent
    return body


def host_rules_json(host: Host) -> dict:
    settings = alerts.Settings(host_ids=[host.id])
    effective = {rule: _effective_json(settings.of(rule, host.id), rule) for rule in alerts.RULES}
    return {"host_id": host.id, "overrides": alerts.host_overrides(host), "effective": effective}


def group_rules_json(group: SourceGroup) -> dict:
    settings = alerts.Settings(host_ids=[group.host_id])
    effective = {
        rule: _effective_json(settings.of(rule, group.host_id, group.id), rule)
        for rule in alerts.GROUP_RULES
    }
    return {
        "host_id": group.host_id,
        "source_group_id": group.id,
        "group": group.name,
        "overrides": alerts.group_overrides(group),
        "effective": effective,
    }


def _override_body() -> dict:
    body = json_body()
    if not body:
        raise ValidationFailed(
            "Send at least one setting (null returns a setting to the fleet's).",
            fields={"body": ["empty"]},
        )
    return body


@bp.get("/hosts/<int:host_id>/alert-rules")
@require_role(Role.viewer)
def get_host_alert_rules(host_id: int):
    return jsonify(host_rules_json(get_host(host_id)))


@bp.put("/hosts/<int:host_id>/alert-rules/<rule>")
@require_role(Role.admin)
def put_host_alert_rule(host_id: int, rule: str):
    host = get_host(host_id)
    alerts.get_rule(rule)
    alerts.set_override(host, rule, _override_body(), **_by_caller())
    commit_and_wake()
    return jsonify(host_rules_json(host))


@bp.get("/hosts/<int:host_id>/source-groups/<int:group_id>/alert-rules")
@require_role(Role.viewer)
def get_group_alert_rules(host_id: int, group_id: int):
    return jsonify(group_rules_json(source_groups.get_group(get_host(host_id), group_id)))


@bp.put("/hosts/<int:host_id>/source-groups/<int:group_id>/alert-rules/<rule>")
@require_role(Role.admin)
def put_group_alert_rule(host_id: int, group_id: int, rule: str):
    """A source group's own setting of one of alerts.GROUP_RULES (null: as the host)."""
    host = get_host(host_id)
    group = source_groups.get_group(host, group_id)
    alerts.get_rule(rule)
    alerts.set_override(host, rule, _override_body(), group=group, **_by_caller())
    commit_and_wake()
    return jsonify(group_rules_json(group))
