"""Source groups: what a host backs up, with its exclusions, retention, retry and hooks.

A group's name is also the restic tag of its snapshots. Hook bodies are sealed (they run
as the agent's user, usually root) and never leave this module except towards the agent.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select

from app.extensions import db
from app.models import Host, Schedule, SourceGroup
from app.models.schedule import schedule_source_groups
from app.secretbox import SecretBox
from app.services import audit, retention, schedules, validate
from app.services.audit import Actor
from app.services.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.services.repository import snapshots_of

HOOKS = ("pre_hook", "post_hook")
MAX_HOOK_BYTES = 8 * 1024
MAX_EXCLUDES = 100
MAX_EXCLUDE_LENGTH = 4096
RETRY_MAX = (0, 20)
RETRY_BACKOFF_SECONDS = (30, 86_400)
DEFAULT_RETRY_MAX = 3
DEFAULT_RETRY_BACKOFF_SECONDS = 300
HOST_HOOK_TABLE = "hosts"  # a host's default hooks: hosts.pre_hook / hosts.post_hook
HOOKS_NEED_ADMIN = (
    "Hooks run as a shell command on the host (usually as root): only an admin may set, "
    "change or remove them, so that a web operator cannot gain root on every host."
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELDS = ("name", "includes", "excludes", "retention", "retry_max", "retry_backoff_seconds")


# --- reading -------------------------------------------------------------------------------


def groups_of(host: Host) -> list[SourceGroup]:
    return list(
        db.session.scalars(
            select(SourceGroup).where(SourceGroup.host_id == host.id).order_by(SourceGroup.name)
        )
    )


def get_group(host: Host, group_id: int) -> SourceGroup:
    group = db.session.get(SourceGroup, group_id)
    if group is None or group.host_id != host.id:
        raise NotFound(f"{host.hostname} has no source group with id {group_id}.")
    return group


def schedules_using(group: SourceGroup) -> list[Schedule]:
    return list(
        db.session.scalars(
            select(Schedule)
            .join(schedule_source_groups, schedule_source_groups.c.schedule_id == Schedule.id)
            .where(schedule_source_groups.c.source_group_id == group.id)
            .order_by(Schedule.name)
        )
    )


def hook_set(group: SourceGroup, name: str) -> bool:
    return getattr(group, f"sealed_{name}") is not None


def open_hooks(box: SecretBox, group: SourceGroup) -> dict[str, Optional[str]]:
    """The group's hooks for a backup; a group without its own uses the host's default."""
    hooks = {}
    for name in HOOKS:
        sealed = getattr(group, f"sealed_{name}")
        if sealed is not None:
            hooks[name] = box.open(sealed, table="source_groups", column=name, row_id=group.id)
            continue
        default = getattr(group.host, f"sealed_{name}")
        hooks[name] = (
            box.open(default, table=HOST_HOOK_TABLE, column=name, row_id=group.host_id)
            if default is not None
            else None
        )
    return hooks


# --- validation ----------------------------------------------------------------------------

# The words the Sources form uses; messages name fields by them, not by their JSON keys.
LABELS = {
    "name": "Name",
    "includes": "Paths to back up",
    "excludes": "Excludes",
    "retry_max": "Retries when the host is offline",
    "retry_backoff_seconds": "First retry after (seconds)",
    "pre_hook": "Pre-hook",
    "post_hook": "Post-hook",
}


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        validate.fail("name", "Name is required: it becomes the tag of the group's snapshots.")
    value = value.strip()
    if len(value) > 64 or not validate.TAG.match(value):
        validate.fail(
            "name",
            "Name is a restic tag: letters, digits and . _ : @ + - (starting with a letter or "
            "digit), at most 64 characters.",
        )
    return value


def _includes(value: Any) -> list[str]:
    paths = validate.absolute_paths(value, "includes", label=LABELS["includes"])
    if not paths:
        validate.fail("includes", "Give at least one absolute path to back up.")
    return paths


def _excludes(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list):
        validate.fail("excludes", "Excludes must be a list of patterns.")
    patterns: list[str] = []
    for item in value:
        if not isinstance(item, str):
            validate.fail("excludes", "Each exclude pattern must be a string.")
        item = item.strip()
        if not item:
            continue
        if len(item) > MAX_EXCLUDE_LENGTH or _CONTROL.search(item):
            validate.fail("excludes", f"{item[:60]!r} is too long or contains control characters.")
        if item not in patterns:
            patterns.append(item)
    if len(patterns) > MAX_EXCLUDES:
        validate.fail("excludes", f"At most {MAX_EXCLUDES} exclude patterns.")
    return patterns


def _whole(field: str, bounds: tuple[int, int]):
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        low, high = bounds
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            validate.fail(field, f"{LABELS[field]} must be a whole number from {low} to {high}.")
        return value

    return check


def _hook(value: Any, name: str) -> Optional[str]:
    """Shell text, or None to remove the hook."""
    label = LABELS[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        validate.fail(name, f"{label} must be shell text (or null to remove it).")
    value = value.replace("\r\n", "\n").strip()
    if "\x00" in value:
        validate.fail(name, f"{label} must not contain NUL characters.")
    if validate.unstorable(value):
        validate.fail(name, f"{label} must be valid text (no lone surrogates).")
    if len(value.encode()) > MAX_HOOK_BYTES:
        validate.fail(name, f"{label} must be at most {MAX_HOOK_BYTES // 1024} KiB.")
    return value


def clean_retention(value: Any) -> dict:
    """A group's retention policy ({} keeps everything), every bad rule named in the
    form's words ("Keep daily", not keep_daily)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        return retention.retention_policy(value, field="retention", allow_empty=True)
    errors = validate.FieldErrors()
    policy: dict[str, Any] = {}
    for key, item in value.items():
        try:
            policy.update(
                retention.retention_policy({key: item}, field="retention", allow_empty=True)
            )
        except ValidationFailed as refused:
            label = retention.RULE_LABELS.get(key)
            for field, messages in refused.fields.items():
                for message in messages:
                    if label and message.startswith(key):
                        message = label + message[len(key) :]
                    errors.add(field, message)
    errors.raise_any()
    order = list(retention.RULE_LABELS)
    return dict(sorted(policy.items(), key=lambda rule: order.index(rule[0])))


def _unique_name(host: Host, name: str, group: Optional[SourceGroup]) -> None:
    clash = db.session.scalar(
        select(SourceGroup).where(SourceGroup.host_id == host.id, SourceGroup.name == name)
    )
    if clash is not None and clash is not group:
        validate.fail("name", f"{host.hostname} already has a source group named {name!r}.")


_CHECKS = {
    "name": _name,
    "includes": _includes,
    "excludes": _excludes,
    "retention": clean_retention,
    "retry_max": _whole("retry_max", RETRY_MAX),
    "retry_backoff_seconds": _whole("retry_backoff_seconds", RETRY_BACKOFF_SECONDS),
}
_DEFAULTS = {
    "excludes": [],
    "retention": {},
    "retry_max": DEFAULT_RETRY_MAX,
    "retry_backoff_seconds": DEFAULT_RETRY_BACKOFF_SECONDS,
}


def clean(
    data: dict,
    *,
    partial: bool,
    host: Optional[Host] = None,
    group: Optional[SourceGroup] = None,
) -> dict:
    """Validated fields of ``data``; with ``partial`` only those present (hooks apart).

    Every problem is reported at once; with ``host`` the name must be free on it (``group``
    being the one that may keep it)."""
    if not isinstance(data, dict):
        raise ValidationFailed("The source group must be an object.")
    errors = validate.FieldErrors()
    for unknown in sorted(set(data) - {*_FIELDS, *HOOKS}):
        errors.add(unknown, f"Unknown field {unknown!r}.")
    cleaned: dict[str, Any] = {}
    for field, check in _CHECKS.items():
        if field in data:
            cleaned[field] = errors.check(check, data[field])
        elif not partial:
            cleaned[field] = errors.check(check, _DEFAULTS.get(field))
    for name in HOOKS:
        if name in data:
            cleaned[name] = errors.check(_hook, data[name], name)
    if host is not None and cleaned.get("name"):
        errors.check(_unique_name, host, cleaned["name"], group)
    errors.raise_any()
    return cleaned


# --- changes -------------------------------------------------------------------------------


def _apply_hooks(
    box: SecretBox, group: SourceGroup, cleaned: dict, *, may_edit_hooks: bool
) -> list[str]:
    """Seal the hooks that change; the names of the changed ones (never their text)."""
    changed = []
    for name in HOOKS:
        if name not in cleaned:
            continue
        current = getattr(group, f"sealed_{name}")
        wanted = cleaned[name]
        if current is None and wanted is None:
            continue
        if (
            current is not None
            and wanted is not None
            and box.open(current, table="source_groups", column=name, row_id=group.id) == wanted
        ):
            continue
        if not may_edit_hooks:
            raise Forbidden(HOOKS_NEED_ADMIN, code="hooks_need_admin")
        sealed = (
            None
            if wanted is None
            else box.seal(wanted, table="source_groups", column=name, row_id=group.id)
        )
        setattr(group, f"sealed_{name}", sealed)
        changed.append(name)
    return changed


def _summary(group: SourceGroup) -> dict:
    return {
        "host_id": group.host_id,
        "name": group.name,
        "includes": list(group.includes),
        "excludes": list(group.excludes or []),
        "retention": dict(group.retention or {}),
        "retry_max": group.retry_max,
        "retry_backoff_seconds": group.retry_backoff_seconds,
        "pre_hook_set": hook_set(group, "pre_hook"),
        "post_hook_set": hook_set(group, "post_hook"),
    }


def _changed(box: SecretBox, host: Host, now: datetime) -> None:
    schedules.bump_version(box, host, now=now)


def create(
    box: SecretBox,
    host: Host,
    data: dict,
    *,
    actor: Actor,
    now: datetime,
    may_edit_hooks: bool,
    client_address: Optional[str] = None,
) -> SourceGroup:
    cleaned = clean(data, partial=False, host=host)
    if not may_edit_hooks and any(cleaned.get(name) for name in HOOKS):
        raise Forbidden(HOOKS_NEED_ADMIN, code="hooks_need_admin")
    group = SourceGroup(
        host_id=host.id,
        created_at=now,
        updated_at=now,
        **{field: cleaned[field] for field in _FIELDS},
    )
    db.session.add(group)
    db.session.flush()
    hooks = _apply_hooks(box, group, cleaned, may_edit_hooks=may_edit_hooks)
    _changed(box, host, now)
    audit.record(
        actor,
        "source_group.created",
        target_type="source_group",
        target_id=group.id,
        payload={**_summary(group), "hooks_changed": hooks},
        client_address=client_address,
    )
    return group


def update(
    box: SecretBox,
    group: SourceGroup,
    data: dict,
    *,
    actor: Actor,
    now: datetime,
    may_edit_hooks: bool,
    client_address: Optional[str] = None,
) -> SourceGroup:
    """Change the fields given; a hook left out stays, ``null`` or ``""`` removes it."""
    cleaned = clean(data, partial=True, host=group.host, group=group)
    before = _summary(group)
    hooks = _apply_hooks(box, group, cleaned, may_edit_hooks=may_edit_hooks)
    for field in _FIELDS:
        if field in cleaned:
            setattr(group, field, cleaned[field])
    after = _summary(group)
    if after == before and not hooks:
        return group  # nothing changed: no new schedule version for the agent
    group.updated_at = now
    db.session.flush()
    _changed(box, group.host, now)
    changes = {key: after[key] for key in after if after[key] != before[key]}
    audit.record(
        actor,
        "source_group.updated",
        target_type="source_group",
        target_id=group.id,
        payload={
            "host_id": group.host_id,
            "name": group.name,
            "changes": changes,
            "hooks_changed": hooks,
        },
        client_address=client_address,
    )
    return group


def delete(
    box: SecretBox,
    group: SourceGroup,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> None:
    """Refused while a schedule uses the group, and for the host's last group."""
    host = group.host
    using = schedules_using(group)
    if using:
        names = ", ".join(schedule.name for schedule in using)
        raise Conflict(
            f"Source group {group.name!r} is used by "
            f"{'schedule' if len(using) == 1 else 'schedules'} {names}: remove it from "
            f"{'that schedule' if len(using) == 1 else 'those schedules'} first.",
            code="group_in_use",
        )
    if len(groups_of(host)) <= 1:
        raise Conflict(
            f"{group.name!r} is {host.hostname}'s last source group: a host needs at least "
            "one. Create another group first.",
            code="last_group",
        )
    summary = _summary(group)
    group_id = group.id
    db.session.delete(group)
    db.session.flush()
    _changed(box, host, now)
    audit.record(
        actor,
        "source_group.deleted",
        target_type="source_group",
        target_id=group_id,
        payload=summary,
        client_address=client_address,
    )


# --- retention preview ---------------------------------------------------------------------


def preview_retention(host: Host, tag: str, policy: Any) -> dict:
    """Which of the host's stored snapshots tagged ``tag`` the policy keeps and removes."""
    policy = clean_retention(policy)
    decisions = retention.preview(snapshots_of(host, tag=tag), policy) if tag else []
    return {
        "retention": policy,
        "description": retention.describe(policy),
        "keep": [d for d in decisions if d.keep],
        "remove": [d for d in decisions if not d.keep],
    }


# --- the host's default hooks ---------------------------------------------------------------


def host_hooks_set(host: Host) -> dict:
    return {f"{name}_set": getattr(host, f"sealed_{name}") is not None for name in HOOKS}


def save_host_hooks(box: SecretBox, host: Host, data: Any, *, actor: Actor, now: datetime):
    """The hooks of groups without their own (admin only: the caller checks the role).

    A key left out keeps that hook; ``null`` or empty text removes it. Returns the names of
    the hooks that changed (never their text).
    """
    if not isinstance(data, dict) or set(data) - set(HOOKS):
        validate.fail("hooks", "Send pre_hook and/or post_hook (shell text, or null to remove).")
    errors = validate.FieldErrors()
    wanted_hooks = {name: errors.check(_hook, data[name], name) for name in HOOKS if name in data}
    errors.raise_any()
    changed = []
    for name, wanted in wanted_hooks.items():
        current = getattr(host, f"sealed_{name}")
        if current is None and wanted is None:
            continue
        unchanged = (
            current is not None
            and wanted is not None
            and (box.open(current, table=HOST_HOOK_TABLE, column=name, row_id=host.id) == wanted)
        )
        if unchanged:
            continue
        sealed = (
            None
            if wanted is None
            else box.seal(wanted, table=HOST_HOOK_TABLE, column=name, row_id=host.id)
        )
        setattr(host, f"sealed_{name}", sealed)
        changed.append(name)
    if changed:
        _changed(box, host, now)
        audit.record(
            actor,
            "host.hooks_updated",
            target_type="host",
            target_id=host.id,
            payload={"hostname": host.hostname, "changed": changed},
        )
    db.session.flush()
    return changed
