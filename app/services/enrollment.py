"""Adding hosts: one-time enrollment tokens and the enrollment itself."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import select, update

from app.extensions import db
from app.models import (
    AgentToken,
    EnrollmentToken,
    Host,
    RepoMaintenance,
    SourceGroup,
    User,
)
from app.secretbox import SecretBox
from app.security import hash_token, new_token
from app.services import audit, backends, commands, repository, validate
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ServiceError

TOKEN_TTL = timedelta(hours=1)
ENROLLMENT_PREFIX = "rme"
AGENT_PREFIX = "rma"
DEFAULT_GROUP = "default"
# Every host starts with maintenance on (UTC): forget applies each group's own retention
# (groups without one keep everything), prune weekly, check 5 % of the data weekly.
DEFAULT_MAINTENANCE = {
    "enabled": True,
    "forget_cron": "0 3 * * *",
    "prune_cron": "0 4 * * 0",
    "check_cron": "0 5 * * 0",
    "check_subset_percent": 5.0,
}


class TokenRefused(ServiceError):
    status = 401
    code = "invalid_token"


def _seal_credentials(box: SecretBox, token: EnrollmentToken, credentials: dict) -> None:
    token.sealed_credentials = box.seal(
        json.dumps(credentials), table="enrollment_tokens", column="credentials", row_id=token.id
    )


def create_token(
    box: SecretBox,
    *,
    actor: Actor,
    client_address: Optional[str],
    hostname,
    repo_url,
    repo_username,
    repo_password,
    paths,
    now: datetime,
    backend: Optional[dict] = None,
) -> tuple[EnrollmentToken, str]:
    """Add host: validate, mint a one-time token (1 h) on ``actor``'s behalf and audit it."""
    token, plain = _mint(
        box,
        created_by_user_id=actor.id if actor.type == "user" else None,
        hostname=hostname,
        repo_url=repo_url,
        repo_username=repo_username,
        repo_password=repo_password,
        paths=paths,
        now=now,
        backend=backend,
    )
    _audit(
        "enrollment_token.created", token, actor, client_address=client_address, paths=token.paths
    )
    return token, plain


def mint_token(
    box: SecretBox,
    *,
    created_by: Optional[User],
    hostname,
    repo_url,
    repo_username,
    repo_password,
    paths,
    now: datetime,
    backend: Optional[dict] = None,
) -> tuple[EnrollmentToken, str]:
    """Mint a token, unaudited (:func:`create_token` is the doors' way; fixtures use this)."""
    return _mint(
        box,
        created_by_user_id=created_by.id if created_by else None,
        hostname=hostname,
        repo_url=repo_url,
        repo_username=repo_username,
        repo_password=repo_password,
        paths=paths,
        now=now,
        backend=backend,
    )


def _mint(
    box: SecretBox,
    *,
    created_by_user_id: Optional[int],
    hostname,
    repo_url,
    repo_username,
    repo_password,
    paths,
    now: datetime,
    backend: Optional[dict] = None,
) -> tuple[EnrollmentToken, str]:
    """Validate the Add-host input (every problem at once) and mint a one-time token (1 h)."""
    errors = validate.FieldErrors()
    hostname = errors.check(validate.hostname, hostname, required=False)
    connection = backends.settings_from(
        repo_url, repo_username, repo_password, backend, errors=errors
    )
    paths = errors.check(validate.absolute_paths, paths, "paths", label="Paths to back up")
    if hostname and db.session.scalar(select(Host.id).where(Host.hostname == hostname)):
        errors.add("hostname", f"A host named {hostname} already exists.")
    errors.raise_any()
    plain = new_token(ENROLLMENT_PREFIX)
    token = EnrollmentToken(
        token_hash=hash_token(plain),
        hostname=hostname,
        repo_url_redacted=repository.redact_url(connection.url),
        paths=paths,
        created_by_user_id=created_by_user_id,
        created_at=now,
        expires_at=now + TOKEN_TTL,
    )
    db.session.add(token)
    db.session.flush()  # the row id is part of the sealing's associated data
    _seal_credentials(box, token, asdict(connection))
    db.session.flush()
    return token, plain


def outstanding_tokens(now: datetime) -> list[EnrollmentToken]:
    """Unused, unrevoked tokens, including those expired in the last week (regenerable)."""
    return list(
        db.session.scalars(
            select(EnrollmentToken)
            .where(
                EnrollmentToken.used_at.is_(None),
                EnrollmentToken.revoked_at.is_(None),
                EnrollmentToken.expires_at > now - timedelta(days=7),
            )
            .order_by(EnrollmentToken.created_at.desc(), EnrollmentToken.id.desc())
        )
    )


def get_token(token_id: int) -> EnrollmentToken:
    """Any token, used, revoked or expired (the Add host page follows it until it enrolls)."""
    token = db.session.get(EnrollmentToken, token_id)
    if token is None:
        raise NotFound(f"There is no enrollment token with id {token_id}.")
    return token


def get_outstanding(token_id: int, now: datetime) -> EnrollmentToken:
    token = db.session.get(EnrollmentToken, token_id)
    if token is None or token.used_at or token.revoked_at:
        raise NotFound("No such outstanding enrollment token.")
    return token


def regenerate_token(
    token: EnrollmentToken, *, actor: Actor, client_address: Optional[str], now: datetime
) -> str:
    """:func:`regenerate`, audited (the doors' way)."""
    plain = regenerate(token, now=now)
    _audit("enrollment_token.regenerated", token, actor, client_address=client_address)
    return plain


def revoke_token(
    token: EnrollmentToken, *, actor: Actor, client_address: Optional[str], now: datetime
) -> None:
    """The token stops working at once (audited)."""
    revoke(token, now=now)
    _audit("enrollment_token.revoked", token, actor, client_address=client_address)


def _audit(action: str, token: EnrollmentToken, actor: Actor, *, client_address, **extra) -> None:
    """Which host and repository (URL without password); never the token or credentials."""
    audit.record(
        actor,
        action,
        target_type="enrollment_token",
        target_id=token.id,
        payload={"hostname": token.hostname, "repo_url": token.repo_url_redacted, **extra},
        client_address=client_address,
    )


def regenerate(token: EnrollmentToken, *, now: datetime) -> str:
    """A fresh secret and a fresh hour for the same host details; the old value stops working."""
    plain = new_token(ENROLLMENT_PREFIX)
    token.token_hash = hash_token(plain)
    token.created_at = now
    token.expires_at = now + TOKEN_TTL
    db.session.flush()
    return plain


def revoke(token: EnrollmentToken, *, now: datetime) -> None:
    token.revoked_at = now
    db.session.flush()


def enroll(
    box: SecretBox,
    plain: str,
    *,
    hostname: str,
    facts: dict,
    client_address: Optional[str],
    now: datetime,
) -> tuple[Host, str]:
    """Consume the token once: create the host, its default group, an agent token and the
    config.update command that carries the repository credentials to the agent; audited
    as ``host.enrolled`` by the new host's agent."""
    token = db.session.scalar(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(plain or ""))
    )
    if token is None or token.revoked_at is not None:
        raise TokenRefused(
            "This enrollment token is not valid. Mint a new one on the Add host page."
        )
    if token.used_at is not None:
        host = token.used_by_host
        raise Conflict(
            "This enrollment token was already used"
            + (
                f" (host {host.hostname} enrolled at {host.enrolled_at:%Y-%m-%d %H:%M} UTC)"
                if host
                else ""
            )
            + ". Mint a new one on the Add host page.",
            code="token_used",
        )
    if token.expires_at <= now:
        error = ServiceError(
            "This enrollment token expired (tokens are valid for one hour). "
            "Regenerate it on the Add host page.",
            code="token_expired",
        )
        error.status = 410
        raise error
    hostname = validate.hostname(token.hostname or hostname)
    if db.session.scalar(select(Host.id).where(Host.hostname == hostname)):
        raise Conflict(
            f"A host named {hostname} is already enrolled. Delete it first (its host page, "
            "Delete host, or DELETE /api/v1/hosts/{id}) or enroll under another name.",
            code="hostname_taken",
        )
    # Claim the token with a conditional UPDATE so two racing enrollments cannot both win.
    claimed = db.session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if claimed != 1:
        raise Conflict("This enrollment token was already used.", code="token_used")
    credentials = json.loads(
        box.open(
            token.sealed_credentials,
            table="enrollment_tokens",
            column="credentials",
            row_id=token.id,
        )
    )
    host = Host(
        hostname=hostname,
        os=facts.get("os"),
        arch=facts.get("arch"),
        agent_version=facts.get("agent_version"),
        restic_version=facts.get("restic_version"),
        protocol_version=facts.get("protocol_version"),
        enrolled_at=now,
        created_at=now,
        repo_status="unknown",
        tags=[],
    )
    db.session.add(host)
    db.session.flush()
    token.used_by_host_id = host.id
    token.sealed_credentials = None  # the host's own credential row holds them from now on
    db.session.add(SourceGroup(host=host, name=DEFAULT_GROUP, includes=list(token.paths or [])))
    db.session.add(RepoMaintenance(host_id=host.id, updated_at=now, **DEFAULT_MAINTENANCE))
    connection = backends.Settings(**credentials)
    repository.new_credential(box, host, "everyday", connection, now=now)
    agent_plain = new_token(AGENT_PREFIX)
    db.session.add(AgentToken(host_id=host.id, token_hash=hash_token(agent_plain), created_at=now))
    payload, secret = repository.config_update("everyday", connection)
    commands.enqueue(box, host, "config.update", payload=payload, secret_payload=secret, now=now)
    audit.record(
        Actor.for_agent(host),
        "host.enrolled",
        target_type="host",
        target_id=host.id,
        payload={"hostname": host.hostname, "os": host.os, "arch": host.arch},
        client_address=client_address,
    )
    return host, agent_plain
