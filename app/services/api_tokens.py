"""Personal access tokens for the JSON API."""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app.extensions import db
from app.models import ApiToken, Role, User
from app.security import hash_token, new_token
from app.services import audit
from app.services.audit import Actor
from app.services.errors import NotFound, ValidationFailed

TOKEN_PREFIX = "rmp"  # noqa: S105  (a label, not a secret)
_LAST_USED_RESOLUTION_SECONDS = 60


def issue_token(
    user: User, name: str, *, actor: Actor, client_address: Optional[str], now: datetime
) -> tuple[ApiToken, str]:
    """Mint a token for ``user`` on ``actor``'s behalf and audit it (settings, API, CLI)."""
    token, plain = create_token(user, name, now=now)
    _audit("api_token.created", token, actor, client_address=client_address)
    return token, plain


def create_token(user: User, name: str, *, now: datetime) -> tuple[ApiToken, str]:
    """Mint a token, unaudited (:func:`issue_token` is the doors' way); the plain value is
    returned once and never stored."""
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationFailed(
            "Token name must be 1-100 characters, e.g. the script or tool that will use it.",
            fields={"name": ["Give the token a name of 1-100 characters."]},
        )
    plain = new_token(TOKEN_PREFIX)
    token = ApiToken(
        user=user,
        name=name,
        token_hash=hash_token(plain),
        display_prefix=plain[:10],
        created_at=now,
    )
    db.session.add(token)
    db.session.flush()
    return token, plain


def authenticate_token(plain: str, *, now: datetime) -> Optional[ApiToken]:
    """The live token for this bearer value (owner active), or None."""
    if not plain or not plain.startswith(TOKEN_PREFIX + "_"):
        return None
    token = db.session.scalar(
        select(ApiToken)
        .where(ApiToken.token_hash == hash_token(plain))
        .options(joinedload(ApiToken.user))  # the owner in the same query
    )
    if token is None or token.revoked_at is not None or not token.user.is_active:
        return None
    last = token.last_used_at
    if last is None or (now - last).total_seconds() > _LAST_USED_RESOLUTION_SECONDS:
        token.last_used_at = now
    return token


def tokens_of(user: User) -> list[ApiToken]:
    return list(
        db.session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def visible_tokens(user: User) -> list[ApiToken]:
    """One's own live tokens; an admin also sees (and may revoke) everyone else's."""
    if not user.has_role(Role.admin):
        return tokens_of(user)
    return list(
        db.session.scalars(
            select(ApiToken)
            .where(ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def get_token_of(user: User, token_id: int) -> ApiToken:
    """A live token the user may revoke: their own, or anyone's for an admin."""
    token = db.session.get(ApiToken, token_id)

    if (
        token is None
        or token.revoked_at is not None
        or (token.user_id != user.id and not user.has_role(Role.admin))
    ):
        raise NotFound("No such API token.")
    return token


def revoke_token(
    token: ApiToken, *, actor: Actor, client_address: Optional[str], now: datetime
) -> None:
    token.revoked_at = now
    db.session.flush()
    _audit("api_token.revoked", token, actor, client_address=client_address)


def _audit(action: str, token: ApiToken, actor: Actor, *, client_address=None) -> None:
    """Audit a token mint or revoke (name and owner only; never the secret)."""
    audit.record(
        actor,
        action,
        target_type="api_token",
        target_id=token.id,
        payload={"name": token.name, "owner": token.user.username},
        client_address=client_address,
    )
