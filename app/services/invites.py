"""One-time links to choose a password: invitations of new users and password resets.

Only the SHA-256 of a link's token is stored; the link is shown once to whoever created
it. A link is valid for :data:`LINK_HOURS`, works once, and a newer link of the same user
revokes the older ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import select, update

from app.extensions import db
from app.models import User, UserInvite
from app.security import hash_password, hash_token, new_token, password_problems
from app.services import audit, users
from app.services.audit import Actor
from app.services.errors import Conflict, ValidationFailed
from app.services.validate import FieldErrors

LINK_HOURS = 24
TOKEN_PREFIX = "rminv"  # noqa: S105  (a label, not a secret)
INVALID_LINK = (
    "This link is not valid: it was already used, replaced by a newer one, or it expired "
    "(links work for 24 hours). Ask an administrator for a new one."
)


def invite_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/invite/{token}"


def _new_link(user: User, purpose: str, *, actor: Actor, now: datetime) -> tuple[UserInvite, str]:
    db.session.execute(
        update(UserInvite)
        .where(
            UserInvite.user_id == user.id,
            UserInvite.used_at.is_(None),
            UserInvite.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    token = new_token(TOKEN_PREFIX)
    link = UserInvite(
        user_id=user.id,
        token_hash=hash_token(token),
        purpose=purpose,
        created_by=actor.label[:255],
        created_at=now,
        expires_at=now + timedelta(hours=LINK_HOURS),
    )
    db.session.add(link)
    db.session.flush()
    return link, token


def invite_user(
    username: str, role, *, actor: Actor, client_address: Optional[str], now: datetime
) -> tuple[User, UserInvite, str]:
    """Create a user without a password and a one-time link for them to choose one."""
    fields = FieldErrors()
    name = users.normalize_username(username if isinstance(username, str) else "")
    for problem in users.username_problems(name):
        fields.add("username", problem)
    chosen = fields.check(users.parse_role, role)
    fields.raise_any()
    if users.find_user(name) is not None:
        raise Conflict(
            f"A user named {name!r} already exists.",
            fields={"username": [f"A user named {name!r} already exists."]},
        )
    user = User(username=name, password_hash=None, role=chosen.value, created_at=now)
    db.session.add(user)
    db.session.flush()
    link, token = _new_link(user, "invite", actor=actor, now=now)
    audit.record(
        actor,
        "user.invited",
        target_type="user",
        target_id=user.id,
        payload={
            "username": user.username,
            "role": user.role,
            "link_expires_at": link.expires_at.isoformat(),
        },
        client_address=client_address,
    )
    return user, link, token


def reset_link(
    user: User, *, actor: Actor, client_address: Optional[str], now: datetime
) -> tuple[UserInvite, str]:
    """A fresh link to choose a new password; older open links of the user stop working."""
    if user.auth_source != "local":
        raise Conflict(
            f"{user.username} signs in through the identity provider (OIDC): their password "
            "is managed there.",
            code="not_local",
        )
    purpose = "invite" if user.password_hash is None else "reset"
    link, token = _new_link(user, purpose, actor=actor, now=now)
    audit.record(
        actor,
        "user.reset_link_created",
        target_type="user",
        target_id=user.id,
        payload={
            "username": user.username,
            "purpose": purpose,
            "link_expires_at": link.expires_at.isoformat(),
        },
        client_address=client_address,
    )
    return link, token


def pending_link(user: User, *, now: datetime) -> Optional[UserInvite]:
    """The user's open link (unused, not revoked, not expired), if any."""
    return db.session.scalar(
        select(UserInvite)
        .where(
            UserInvite.user_id == user.id,
            UserInvite.used_at.is_(None),
            UserInvite.revoked_at.is_(None),
            UserInvite.expires_at > now,
        )
        .order_by(UserInvite.created_at.desc(), UserInvite.id.desc())
        .limit(1)
    )


def find_link(token: str, *, now: datetime) -> Optional[UserInvite]:
    """The open link for this token (its user active), or None."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX + "_") or len(token) > 128:
        return None
    link = db.session.scalar(select(UserInvite).where(UserInvite.token_hash == hash_token(token)))
    if (
        link is None
        or link.used_at is not None
        or link.revoked_at is not None
        or link.expires_at <= now
    ):
        return None
    user = db.session.get(User, link.user_id)
    if user is None or not user.is_active:
        return None
    return link


def accept(token: str, password: str, *, client_address: Optional[str], now: datetime) -> User:
    """Set the password through a valid link; the link is used up and other sessions end."""
    link = find_link(token, now=now)
    if link is None:
        raise ValidationFailed(INVALID_LINK, fields={"token": [INVALID_LINK]}, code="invalid_link")
    user = db.session.get(User, link.user_id)
    problems = password_problems(password or "", user.username)
    if problems:
        raise ValidationFailed(" ".join(problems), fields={"password": problems})
    # Claim the link with one conditional UPDATE, so two racing submissions cannot both win.
    claimed = db.session.execute(
        update(UserInvite)
        .where(
            UserInvite.id == link.id,
            UserInvite.used_at.is_(None),
            UserInvite.revoked_at.is_(None),
        )
        .values(used_at=now)
    ).rowcount
    if claimed != 1:
        raise ValidationFailed(INVALID_LINK, fields={"token": [INVALID_LINK]}, code="invalid_link")
    user.password_hash = hash_password(password)
    users.revoke_sessions(user, now=now)
    user.last_login_at = now
    db.session.flush()
    audit.record(
        Actor.for_user(user),
        "user.password_set",
        target_type="user",
        target_id=user.id,
        payload={"username": user.username, "purpose": link.purpose},
        client_address=client_address,
    )
    return user
