"""Users, sign-in, server-side sessions, login rate limiting and first-run setup."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import delete, func, select, update

from app.extensions import db
from app.models import ApiToken, LoginFailure, Role, SetupToken, User, UserInvite, UserSession
from app.security import (
    hash_password,
    hash_token,
    new_token,
    password_problems,
    verify_password,
)
from app.services import audit
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, RateLimited, ValidationFailed
from app.services.validate import FieldErrors

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
USERNAME_RULES = "1-64 characters: letters, digits and . _ @ - (stored in lower case)."
_SESSION_TOUCH_SECONDS = 60


def normalize_username(username: str) -> str:
    return (username or "").strip().lower()


def username_problems(username: str) -> list[str]:
    if not USERNAME_PATTERN.match(username):
        return [f"Username: {USERNAME_RULES}"]
    return []


def find_user(username: str) -> Optional[User]:
    return db.session.scalar(select(User).where(User.username == normalize_username(username)))


def create_user(username: str, password: str, role: Role) -> User:
    username = normalize_username(username)
    fields = {}
    if problems := username_problems(username):
        fields["username"] = problems
    if problems := password_problems(password, username):
        fields["password"] = problems
    if fields:
        raise ValidationFailed(
            " ".join(message for messages in fields.values() for message in messages),
            fields=fields,
        )
    if find_user(username) is not None:
        raise Conflict(f"A user named {username!r} already exists.", fields={"username": []})
    user = User(username=username, password_hash=hash_password(password), role=role.value)
    db.session.add(user)
    db.session.flush()
    return user


def add_user(
    username: str, password: str, role: Role, *, actor: Actor, client_address: Optional[str]
) -> User:
    """Create a user on ``actor``'s behalf and audit it (``create-admin``, later the UI)."""
    user = create_user(username, password, role)
    audit.record(
        actor,
        "user.created",
        target_type="user",
        target_id=user.id,
        payload={"username": user.username, "role": user.role},
        client_address=client_address,
    )
    return user


def user_count() -> int:
    return db.session.scalar(select(func.count()).select_from(User))


# --- rate limiting -------------------------------------------------------------------------


def _check_rate_limit(
    scope: str, key: str, limit: int, window: timedelta, now: datetime, what: str
) -> None:
    since = now - window
    count, oldest = db.session.execute(
        select(func.count(), func.min(LoginFailure.attempted_at)).where(
            LoginFailure.scope == scope,
            LoginFailure.key == key,
            LoginFailure.attempted_at > since,
        )
    ).one()
    if count >= limit:
        if oldest.tzinfo is None:  # func.min bypasses the column type on SQLite
            oldest = oldest.replace(tzinfo=now.tzinfo)
        retry_after = max(1, math.ceil((oldest + window - now).total_seconds()))
        minutes = max(1, math.ceil(retry_after / 60))
        raise RateLimited(
            f"Too many failed sign-in attempts {what}. "
            f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            retry_after=retry_after,
        )


def authenticate(
    username: str,
    password: str,
    *,
    client_address: str,
    now: datetime,
    max_per_user: int,
    max_per_address: int,
    window_seconds: int,
) -> Optional[User]:
    """The user these credentials belong to, or None. Raises RateLimited when locked out.

    The limits are checked before the password so a locked-out guesser learns nothing.
    Both outcomes are audited (``user.login`` / ``user.login_failed``); failures are
    recorded for the limits too (the caller commits them even when sign-in fails).
    """
    username = normalize_username(username)
    window = timedelta(seconds=window_seconds)
    _check_rate_limit("address", client_address, max_per_address, window, now, "from your address")
    _check_rate_limit("username", username, max_per_user, window, now, "for this account")
    user = find_user(username) if username else None
    if user is not None and user.is_active and verify_password(user.password_hash, password):
        db.session.execute(
            delete(LoginFailure).where(
                LoginFailure.scope == "username", LoginFailure.key == username
            )
        )
        user.last_login_at = now
        audit.record(
            Actor.for_user(user),
            "user.login",
            target_type="user",
            target_id=user.id,
            client_address=client_address,
        )
        return user
    if user is None:
        verify_password(None, password)  # same cost as a real check
    audit.record(
        Actor.system("login"),
        "user.login_failed",
        payload={"username": username[:64]},
        client_address=client_address,
    )
    db.session.add_all(
        [
            LoginFailure(scope="address", key=client_address, attempted_at=now),
            LoginFailure(scope="username", key=username[:128], attempted_at=now),
        ]
    )
    db.session.execute(delete(LoginFailure).where(LoginFailure.attempted_at < now - window))
    db.session.flush()
    return None


# --- sessions ------------------------------------------------------------------------------


def start_session(
    user: User, *, now: datetime, hours: int, client_address: str, user_agent: str
) -> str:
    """Create a session row and return the random id the cookie will carry."""
    token = new_token("rms")
    db.session.add(
        UserSession(
            token_hash=hash_token(token),
            user=user,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=hours),
            client_address=client_address,
            user_agent=(user_agent or "")[:255],
        )
    )
    db.session.flush()
    return token


def load_session(token: str, *, now: datetime) -> Optional[UserSession]:
    """The live session for this cookie value, or None when revoked, expired or disabled."""
    if not token:
        return None
    row = db.session.scalar(select(UserSession).where(UserSession.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    if not row.user.is_active:
        return None
    if (now - row.last_seen_at).total_seconds() > _SESSION_TOUCH_SECONDS:
        row.last_seen_at = now
    return row


def end_session(token: str, *, actor: Actor, client_address: Optional[str], now: datetime) -> None:
    """Sign out: the session row is revoked and the sign-out audited."""
    db.session.execute(
        update(UserSession)
        .where(UserSession.token_hash == hash_token(token), UserSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    audit.record(
        actor, "user.logout", target_type="user", target_id=actor.id, client_address=client_address
    )


def revoke_sessions(user: User, *, now: datetime) -> None:
    db.session.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def disable_user(user: User, *, now: datetime) -> None:
    """Disable at once: sessions end and API tokens stop working on the next request."""
    user.disabled_at = now
    revoke_sessions(user, now=now)
    db.session.flush()


# --- first-run setup -----------------------------------------------------------------------


def issue_setup_token(*, now: datetime) -> Optional[str]:
    """A fresh one-time setup token (older ones stop working), or None once a user exists."""
    if user_count() > 0:
        return None
    db.session.execute(delete(SetupToken))
    token = new_token("rmsetup")
    db.session.add(SetupToken(token_hash=hash_token(token), created_at=now))
    db.session.flush()
    return token


def complete_setup(
    token: str, username: str, password: str, *, client_address: Optional[str], now: datetime
) -> User:
    """Create the first admin with a valid setup token; the token is used up (audited)."""
    if user_count() > 0:
        raise Conflict("Setup is already complete. Sign in instead.", code="setup_complete")
    # Claim the token with one conditional UPDATE, so two racing submissions cannot both win.
    claimed = db.session.execute(
        update(SetupToken)
        .where(
            SetupToken.token_hash == hash_token((token or "").strip()),
            SetupToken.used_at.is_(None),
        )
        .values(used_at=now)
    ).rowcount
    if claimed != 1:
        raise ValidationFailed(
            "That setup token is not valid. Use the setup URL from the server log, or run "
            "`restic-manager setup-url` for a new one.",
            fields={"token": ["Setup token not valid."]},
        )
    user = create_user(username, password, Role.admin)
    audit.record(
        Actor.for_user(user),
        "setup.completed",
        target_type="user",
        target_id=user.id,
        payload={"username": user.username, "role": Role.admin.value},
        client_address=client_address,
    )
    return user


# --- user management (Settings → Users, /api/v1/users) -----------------------------------


LAST_ADMIN_MESSAGE = (
    "{username} is the last active administrator: make another user an administrator first, "
    "so someone can still manage this server."
)
AUTH_SOURCES = ("local", "oidc")


def parse_role(value, field: str = "role") -> Role:
    """A role name from a form or JSON body, or a 422 naming the choices."""
    choices = ", ".join(role.value for role in Role)
    if not isinstance(value, str) or value not in {role.value for role in Role}:
        raise ValidationFailed(
            f"Role must be one of {choices}.", fields={field: [f"Choose one of {choices}."]}
        )
    return Role(value)


def list_users() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.username)))


def get_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def _is_active_admin(user: User) -> bool:
    return user.is_active and user.role == Role.admin.value


def _guard_last_admin(user: User) -> None:
    """Refuse when ``user`` is the only active administrator left (demote, disable, delete)."""
    if not _is_active_admin(user):
        return
    # FOR UPDATE (PostgreSQL): two admins disabling each other at once cannot both pass.
    admins = db.session.scalars(
        select(User.id)
        .where(User.role == Role.admin.value, User.disabled_at.is_(None))
        .order_by(User.id)
        .with_for_update()
    ).all()
    if not [admin_id for admin_id in admins if admin_id != user.id]:
        raise Conflict(LAST_ADMIN_MESSAGE.format(username=user.username), code="last_admin")


def _audit_user(
    actor: Actor, action: str, user: User, client_address: Optional[str], **payload
) -> None:
    audit.record(
        actor,
        action,
        target_type="user",
        target_id=user.id,
        payload={"username": user.username, **payload},
        client_address=client_address,
    )


def change_role(user: User, role: Role, *, actor: Actor, client_address: Optional[str]) -> User:
    if user.role == role.value:
        return user
    if role != Role.admin:
        _guard_last_admin(user)
    before = user.role
    user.role = role.value
    db.session.flush()
    _audit_user(actor, "user.role_changed", user, client_address, old=before, new=role.value)
    return user


def set_disabled(
    user: User, disabled: bool, *, actor: Actor, client_address: Optional[str], now: datetime
) -> User:
    """Disable (sessions and API tokens stop working at once) or enable again."""
    if disabled == (not user.is_active):
        return user
    if disabled:
        _guard_last_admin(user)
        disable_user(user, now=now)
        _audit_user(actor, "user.disabled", user, client_address)
    else:
        user.disabled_at = None
        db.session.flush()
        _audit_user(actor, "user.enabled", user, client_address)
    return user


def delete_user(user: User, *, actor: Actor, client_address: Optional[str]) -> None:
    """Delete a user with their sessions, tokens and links; audit rows keep the name."""
    _guard_last_admin(user)
    _audit_user(actor, "user.deleted", user, client_address, role=user.role)
    db.session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    db.session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    db.session.execute(delete(UserInvite).where(UserInvite.user_id == user.id))
    db.session.delete(user)
    db.session.flush()


def change_password(
    user: User,
    current_password: str,
    new_password: str,
    *,
    keep_session_id: Optional[int],
    client_address: Optional[str],
    now: datetime,
) -> None:
    """Change one's own password: the current one is required; other sessions end."""
    fields = FieldErrors()
    if not verify_password(user.password_hash, current_password or ""):
        fields.add("current_password", "The current password is not correct.")
    for problem in password_problems(new_password or "", user.username):
        fields.add("new_password", problem)
    fields.raise_any()
    user.password_hash = hash_password(new_password)
    query = update(UserSession).where(
        UserSession.user_id == user.id, UserSession.revoked_at.is_(None)
    )
    if keep_session_id is not None:
        query = query.where(UserSession.id != keep_session_id)
    db.session.execute(query.values(revoked_at=now))
    db.session.flush()
    _audit_user(Actor.for_user(user), "user.password_changed", user, client_address)


def active_sessions(user: User, *, now: datetime) -> list[UserSession]:
    return list(
        db.session.scalars(
            select(UserSession)
            .where(
                UserSession.user_id == user.id,
                UserSession.revoked_at.is_(None),
                UserSession.expires_at > now,
            )
            .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())
        )
    )


def end_own_session(
    user: User, session_id: int, *, client_address: Optional[str], now: datetime
) -> UserSession:
    row = db.session.get(UserSession, session_id)
    if row is None or row.user_id != user.id or row.revoked_at is not None or row.expires_at <= now:
        raise NotFound("No such active session.")
    row.revoked_at = now
    db.session.flush()
    audit.record(
        Actor.for_user(user),
        "user.session_ended",
        target_type="user",
        target_id=user.id,
        payload={"username": user.username, "session_id": row.id},
        client_address=client_address,
    )
    return row


def end_other_sessions(
    user: User, keep_session_id: Optional[int], *, client_address: Optional[str], now: datetime
) -> int:
    query = update(UserSession).where(
        UserSession.user_id == user.id,
        UserSession.revoked_at.is_(None),
        UserSession.expires_at > now,
    )
    if keep_session_id is not None:
        query = query.where(UserSession.id != keep_session_id)
    ended = db.session.execute(query.values(revoked_at=now)).rowcount
    audit.record(
        Actor.for_user(user),
        "user.sessions_ended",
        target_type="user",
        target_id=user.id,
        payload={"username": user.username, "count": ended},
        client_address=client_address,
    )
    return ended
