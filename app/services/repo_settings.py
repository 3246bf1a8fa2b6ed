"""A host's repository settings: maintenance cadences, bandwidth caps, admin credential."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Optional

from app.extensions import db
from app.models import Host, HostCredential, RepoMaintenance
from app.secretbox import SecretBox
from app.services import audit, commands, maintenance, repository, schedules, validate
from app.services.audit import Actor
from app.services.errors import Conflict, ValidationFailed

MAX_KIB_PER_SECOND = 10_000_000  # 10 GB/s: anything above is a typo


def _refuse(field: str, message: str):
    raise ValidationFailed(message, fields={field: [message]})


def _bump(box: SecretBox, host: Host, now: datetime) -> None:
    """The agent gets the host-wide settings with its schedule set (when that exists)."""
    if hasattr(schedules, "bump_version"):
        schedules.bump_version(box, host, now=now)


# --- maintenance cadences ------------------------------------------------------------------


def maintenance_of(host: Host) -> RepoMaintenance:
    """The host's settings; a host without a row gets an unsaved one with nothing scheduled."""
    settings = maintenance.settings_of(host)
    if settings is None:
        settings = RepoMaintenance(host_id=host.id, enabled=True)
    return settings


def _cron(value: Any, field: str) -> Optional[str]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return schedules.validate_cron(value)
    except ValidationFailed as refused:
        _refuse(field, refused.message)


def _percent(value: Any) -> Optional[float]:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            _refuse("check_subset_percent", "The check subset is a percentage such as 5 or 2.5.")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        _refuse("check_subset_percent", "The check subset must be above 0 and at most 100 %.")
    return float(value)


def save_maintenance(host: Host, data: dict, *, now: datetime) -> RepoMaintenance:
    """Replace the cadences (a null cron turns that task off); every problem at once."""
    errors = validate.FieldErrors()
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.add("enabled", "Maintenance enabled (enabled) must be true or false.")
    values = {
        f"{task}_cron": errors.check(_cron, data.get(f"{task}_cron"), f"{task}_cron")
        for task in maintenance.TASKS
    }
    percent = errors.check(_percent, data.get("check_subset_percent"))
    errors.raise_any()
    settings = maintenance.settings_of(host)
    if settings is None:
        settings = RepoMaintenance(host_id=host.id)
        db.session.add(settings)
    for key, value in values.items():
        setattr(settings, key, value)
    settings.check_subset_percent = percent
    settings.enabled = enabled
    settings.updated_at = now
    db.session.flush()
    return settings


# --- bandwidth -----------------------------------------------------------------------------


def _kib(value: Any, field: str, label: str) -> Optional[int]:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _refuse(field, f"{label} is a whole number of KiB/s (at least 1), or empty for none.")
    if value > MAX_KIB_PER_SECOND:
        _refuse(field, f"{label} is at most {MAX_KIB_PER_SECOND:,} KiB/s.")
    return value


def save_bandwidth(box: SecretBox, host: Host, upload_kib, download_kib, *, now: datetime) -> None:
    """Host-wide caps for restic's --limit-upload / --limit-download (None: unlimited)."""
    errors = validate.FieldErrors()
    upload = errors.check(_kib, upload_kib, "upload_kib", "Upload cap")
    download = errors.check(_kib, download_kib, "download_kib", "Download cap")
    errors.raise_any()
    if (upload, download) == (host.limit_upload_kib, host.limit_download_kib):
        return
    host.limit_upload_kib, host.limit_download_kib = upload, download
    db.session.flush()
    _bump(box, host, now)


# --- admin credential ----------------------------------------------------------------------


def save_admin_credential(
    box: SecretBox, host: Host, username, password, *, now: datetime
) -> HostCredential:
    """The credential forget and prune use (the everyday one may be append-only).

    It reaches the same repository URL as the everyday credential; sealed like it and
    pushed to the agent in a ``config.update`` carrying ``admin_repository``.
    """
    everyday = repository.credential_of(host)
    if everyday is None:
        raise Conflict(
            f"{host.hostname} has no repository connection yet: save that first.",
            code="no_repository",
        )
    errors = validate.FieldErrors()
    username = errors.check(
        validate.text, username, "username", "Admin username", required=False, max_length=255
    )
    password = errors.check(validate.password, password, "password", "Admin password")
    everyday_connection = repository.connection_of(box, everyday)
    if username and everyday_connection.backend.key != "rest":
        errors.add(
            "username",
            "The admin username is the REST server's user: only a REST repository has one.",
        )
    errors.raise_any()
    # The same repository and backend settings; restic's password (and the REST user) are
    # the admin credential's own.
    env = dict(everyday_connection.env)
    if username:
        env.pop("RESTIC_REST_USERNAME", None)  # the admin's own REST user wins
    connection = replace(everyday_connection, username=username, password=password, env=env)
    credential = repository.credential_of(host, "admin")
    if credential is None:
        credential = repository.new_credential(box, host, "admin", connection, now=now)
    else:
        credential.updated_at = now
        repository.set_secrets(box, credential, connection)
    payload, secret = repository.config_update("admin", connection)
    commands.enqueue(box, host, "config.update", payload=payload, secret_payload=secret, now=now)
    db.session.flush()
    _bump(box, host, now)
    return credential


def remove_admin_credential(box: SecretBox, host: Host, *, now: datetime) -> bool:
    """Forget the admin credential here and on the agent; False when there was none."""
    credential = repository.credential_of(host, "admin")
    if credential is None:
        return False
    db.session.delete(credential)
    commands.enqueue(box, host, "config.update", payload={"admin_repository": None}, now=now)
    db.session.flush()
    _bump(box, host, now)
    return True


# --- the use cases the doors call: change, then audit (the caller commits and wakes) ------


def _audit(host: Host, action: str, payload: dict, actor: Actor, client_address) -> None:
    audit.record(
        actor,
        action,
        target_type="host",
        target_id=host.id,
        payload={"host": host.hostname, **payload},
        client_address=client_address,
    )


def bandwidth_of(host: Host) -> dict:
    return {"upload_kib": host.limit_upload_kib, "download_kib": host.limit_download_kib}


def update_maintenance(
    host: Host, data: dict, *, actor: Actor, client_address: Optional[str], now: datetime
) -> RepoMaintenance:
    settings = save_maintenance(host, data, now=now)
    payload = {
        "enabled": settings.enabled,
        "forget_cron": settings.forget_cron,
        "prune_cron": settings.prune_cron,
        "check_cron": settings.check_cron,
        "check_subset_percent": settings.check_subset_percent,
    }
    _audit(host, "host.maintenance_updated", payload, actor, client_address)
    return settings


def update_bandwidth(
    box: SecretBox,
    host: Host,
    upload_kib,
    download_kib,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
) -> None:
    save_bandwidth(box, host, upload_kib, download_kib, now=now)
    _audit(host, "host.bandwidth_updated", bandwidth_of(host), actor, client_address)


def set_admin_credential(
    box: SecretBox,
    host: Host,
    username,
    password,
    *,
    actor: Actor,
    client_address: Optional[str],
    now: datetime,
) -> HostCredential:
    credential = save_admin_credential(box, host, username, password, now=now)
    payload = {"username": credential.username}
    _audit(host, "host.admin_credential_set", payload, actor, client_address)
    return credential


def unset_admin_credential(
    box: SecretBox, host: Host, *, actor: Actor, client_address: Optional[str], now: datetime
) -> bool:
    """Remove the admin credential, audited; False (nothing done) when there was none."""
    if not remove_admin_credential(box, host, now=now):
        return False
    _audit(host, "host.admin_credential_removed", {}, actor, client_address)
    return True
