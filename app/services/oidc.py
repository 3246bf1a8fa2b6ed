"""Single sign-on with an OpenID Connect provider (authorization code flow with PKCE).

The door keeps the per-attempt secrets (state, nonce, PKCE verifier) in the signed session
cookie; this module talks to the provider (discovery, token exchange, JWKS), validates the
ID token and turns its claims into a user: found by ``users.oidc_subject``, created on the
first sign-in, the role recomputed from the groups claim every time (docs/deployment.md
"Single sign-on (OIDC)").
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional
from urllib.parse import urlencode

import requests
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import Role, User
from app.services import audit
from app.services.audit import Actor
from app.services.errors import Forbidden, ServiceError
from app.services.users import USERNAME_PATTERN, normalize_username

TIMEOUT_SECONDS = 5
DISCOVERY_TTL_SECONDS = 3600
SCOPES = "openid profile email"
_ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]

_discovery_cache: dict[str, tuple[float, dict]] = {}
_discovery_lock = threading.Lock()


class ProviderUnavailable(ServiceError):
    """The identity provider could not be reached or answered nonsense."""

    status = 503
    code = "oidc_unavailable"


class SignInRefused(Forbidden):
    """The provider vouched for someone this server will not let in (the message says why)."""

    code = "oidc_refused"


@dataclass(frozen=True)
class Settings:
    issuer: str
    client_id: str
    client_secret: str
    groups_claim: str
    role_map: dict  # {group: role value}, "*" = anyone else

    @classmethod
    def from_config(cls, config) -> Settings:
        return cls(
            issuer=config["RM_OIDC_ISSUER"],
            client_id=config["RM_OIDC_CLIENT_ID"],
            client_secret=config["RM_OIDC_CLIENT_SECRET"],
            groups_claim=config["RM_OIDC_GROUPS_CLAIM"],
            role_map=config["RM_OIDC_ROLE_MAP"],
        )


@dataclass(frozen=True)
class Attempt:
    """One sign-in attempt's secrets, kept by the browser's session until the callback."""

    state: str
    nonce: str
    code_verifier: str


# --- talking to the provider ---------------------------------------------------------------


def _unreachable(settings: Settings, exc: Exception) -> ProviderUnavailable:
    if isinstance(exc, requests.Timeout):
        why = f"it did not answer within {TIMEOUT_SECONDS} seconds"
    elif isinstance(exc, requests.ConnectionError):
        why = "the connection was refused or the name does not resolve"
    else:
        why = "it gave an unusable answer"
    return ProviderUnavailable(
        f"Single sign-on is unavailable: the identity provider at {settings.issuer} "
        f"cannot be reached ({why}). Try again later."
    )


def _get_json(settings: Settings, url: str, **kwargs) -> dict:
    try:
        response = requests.get(url, timeout=TIMEOUT_SECONDS, **kwargs)
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise _unreachable(settings, exc) from None
    if not isinstance(body, dict):
        raise _unreachable(settings, ValueError("not an object"))
    return body


def discover(settings: Settings) -> dict:
    """The provider's metadata (/.well-known/openid-configuration), cached for an hour."""
    with _discovery_lock:
        cached = _discovery_cache.get(settings.issuer)
        if cached and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
    metadata = _get_json(settings, settings.issuer + "/.well-known/openid-configuration")
    needed = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
    if any(not isinstance(metadata.get(key), str) for key in needed):
        raise ProviderUnavailable(
            f"Single sign-on is unavailable: the identity provider at {settings.issuer} "
            "published incomplete metadata (authorization, token or JWKS endpoint missing)."
        )
    if metadata["issuer"].rstrip("/") != settings.issuer:
        raise ProviderUnavailable(
            f"Single sign-on is unavailable: the provider calls itself {metadata['issuer']!r}, "
            f"not {settings.issuer!r} (check RM_OIDC_ISSUER)."
        )
    with _discovery_lock:
        _discovery_cache[settings.issuer] = (time.monotonic(), metadata)
    return metadata


def forget_discovery() -> None:
    with _discovery_lock:
        _discovery_cache.clear()


def begin(settings: Settings, redirect_uri: str) -> tuple[str, Attempt]:
    """The provider URL to send the browser to, and the secrets to keep until it returns."""
    metadata = discover(settings)
    attempt = Attempt(
        state=generate_token(32), nonce=generate_token(32), code_verifier=generate_token(64)
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": SCOPES,
            "state": attempt.state,
            "nonce": attempt.nonce,
            "code_challenge": create_s256_code_challenge(attempt.code_verifier),
            "code_challenge_method": "S256",
        }
    )
    endpoint = metadata["authorization_endpoint"]
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", attempt


def finish(settings: Settings, attempt: Attempt, *, params: dict, redirect_uri: str) -> dict:
    """Check the callback, exchange the code and return the ID token's validated claims."""
    state_ok = bool(attempt.state) and params.get("state") == attempt.state
    if params.get("error"):
        # Only the error code unless the state matches: a forged link must not be able to
        # put words of its choosing on our sign-in page.
        reason = re.sub(r"[^A-Za-z0-9_.-]", "", str(params["error"]))[:60] or "unknown"
        if state_ok and params.get("error_description"):
            reason += f" ({str(params['error_description'])[:200]})"
        raise SignInRefused(f"The identity provider refused the sign-in: {reason}")
    if not state_ok:
        raise SignInRefused(
            "The sign-in attempt does not match this browser (state mismatch); start again."
        )
    code = params.get("code")
    if not code:
        raise SignInRefused("The identity provider sent no authorization code; start again.")
    metadata = discover(settings)
    try:
        response = requests.post(
            metadata["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": attempt.code_verifier,
            },
            auth=(settings.client_id, settings.client_secret),
            headers={"Accept": "application/json"},
            timeout=TIMEOUT_SECONDS,
        )
    except requests.RequestException as exc:
        raise _unreachable(settings, exc) from None
    try:
        tokens = response.json()
    except ValueError:
        tokens = {}
    if response.status_code != 200 or not isinstance(tokens, dict):
        error = tokens.get("error") if isinstance(tokens, dict) else None
        raise SignInRefused(
            "The identity provider would not exchange the authorization code"
            + (f" ({str(error)[:100]})" if error else f" (HTTP {response.status_code})")
            + "; start again."
        )
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise SignInRefused("The identity provider returned no ID token.")
    claims = _validate_id_token(settings, metadata, id_token, attempt.nonce)
    if settings.groups_claim not in claims and isinstance(metadata.get("userinfo_endpoint"), str):
        access_token = tokens.get("access_token")
        if isinstance(access_token, str):
            extra = _get_json(
                settings,
                metadata["userinfo_endpoint"],
                headers={"Authorization": f"Bearer {access_token}"},
            )
            if extra.get("sub") == claims["sub"] and settings.groups_claim in extra:
                claims[settings.groups_claim] = extra[settings.groups_claim]
    return claims


def _validate_id_token(settings: Settings, metadata: dict, id_token: str, nonce: str) -> dict:
    keys = _get_json(settings, metadata["jwks_uri"])
    try:
        key_set = KeySet.import_key_set(keys)
        token = jwt.decode(id_token, key_set, algorithms=_ID_TOKEN_ALGORITHMS)
        registry = jwt.JWTClaimsRegistry(
            leeway=60,
            iss={"essential": True, "value": metadata["issuer"]},
            aud={"essential": True, "value": settings.client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        registry.validate(token.claims)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise SignInRefused(
            f"The ID token from the identity provider is not valid ({_jose_reason(exc)}); "
            "start again."
        ) from None
    claims = dict(token.claims)
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise SignInRefused("The ID token carries no subject (sub).")
    return claims


def _jose_reason(exc: Exception) -> str:
    text = getattr(exc, "description", None) or getattr(exc, "error", None) or type(exc).__name__
    return str(text)[:120]


# --- claims to a user ----------------------------------------------------------------------


def groups_of(claims: dict, claim: str) -> list[str]:
    value = claims.get(claim)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def role_for(groups: list[str], role_map: dict) -> Optional[Role]:
    """The highest role any group maps to; ``*`` applies to everyone; None when nothing does."""
    roles = [Role(role_map[group]) for group in groups if group in role_map]
    if "*" in role_map:
        roles.append(Role(role_map["*"]))
    return max(roles, key=lambda role: role.rank, default=None)


def _describe(value: Any) -> str:
    if value is None:
        return "no such claim"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _username_candidate(claims: dict) -> str:
    for key in ("preferred_username", "email"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            name = normalize_username(value)
            if USERNAME_PATTERN.match(name):
                return name
            cleaned = re.sub(r"[^a-z0-9._@-]+", "-", name).strip("-._@")[:56]
            if cleaned:
                return cleaned
    return "sso-" + re.sub(r"[^a-z0-9]+", "", claims["sub"].lower())[:20]


CREATE_ATTEMPTS = 5  # concurrent first sign-ins competing for one name each take a try


def _free_username(claims: dict) -> str:
    """The name a new SSO user gets: the claimed one, or the first free ``name-N``."""
    base = _username_candidate(claims)
    existing = db.session.scalar(select(User).where(User.username == base))
    if existing is None:
        return base
    if existing.oidc_subject is None:
        raise SignInRefused(
            f"A local user named {base!r} already exists, so this sign-in cannot take the "
            "name. An administrator can rename or delete the local user, then sign in again."
        )
    for number in range(2, 100):
        name = f"{base[:60]}-{number}"
        if db.session.scalar(select(User.id).where(User.username == name)) is None:
            return name
    raise SignInRefused(f"No free username near {base!r}; ask an administrator.")


def _create_user(claims: dict, role: Role, now: datetime) -> tuple[User, bool]:
    """``(user, True)`` for a new row, or ``(user, False)`` when a concurrent first sign-in
    of the same subject created it meanwhile.

    Each insert runs in a savepoint: a simultaneous sign-in can take the subject or the name
    between our look-up and our insert, and the unique constraint is the only arbiter that
    sees both. Losing to the same subject means that row is ours; losing only the name means
    another person got it first, so we choose again.
    """
    subject = claims["sub"]
    for _ in range(CREATE_ATTEMPTS):
        user = User(
            username=_free_username(claims),
            password_hash=None,
            role=role.value,
            auth_source="oidc",
            oidc_subject=subject,
            created_at=now,
        )
        try:
            with db.session.begin_nested():
                db.session.add(user)
        except IntegrityError:
            existing = db.session.scalar(select(User).where(User.oidc_subject == subject))
            if existing is not None:
                return existing, False
            continue
        return user, True
    raise SignInRefused("Too many simultaneous sign-ins wanted the same name; try again.")


def sign_in(settings: Settings, claims: dict, *, now: datetime, client_address: str) -> User:
    """The user these validated claims belong to, created or updated; refusals are audited.

    The caller commits in both cases: refusals leave an audit row (``user.oidc_refused``).
    """
    subject = claims["sub"]
    user = db.session.scalar(select(User).where(User.oidc_subject == subject))
    try:
        if user is not None and not user.is_active:
            raise SignInRefused("This account is disabled; ask an administrator.")
        received = claims.get(settings.groups_claim)
        role = role_for(groups_of(claims, settings.groups_claim), settings.role_map)
        if role is None:
            raise SignInRefused(
                f"Your account is not allowed here: none of the groups in the "
                f"{settings.groups_claim!r} claim maps to a role (received: "
                f"{_describe(received)}). Ask an administrator to add your group to "
                "RM_OIDC_ROLE_MAP."
            )
        created = False
        if user is None:
            user, created = _create_user(claims, role, now)
            if not user.is_active:  # found, not created: the race's winner may be disabled
                raise SignInRefused("This account is disabled; ask an administrator.")
    except SignInRefused as refused:
        audit.record(
            Actor.system("oidc"),
            "user.oidc_refused",
            target_type="user" if user is not None else None,
            target_id=user.id if user is not None else None,
            payload={"subject": subject[:255], "reason": refused.message[:500]},
            client_address=client_address,
        )
        raise
    if created:
        audit.record(
            Actor.system("oidc"),
            "user.created",
            target_type="user",
            target_id=user.id,
            payload={"username": user.username, "role": user.role, "auth_source": "oidc"},
            client_address=client_address,
        )
    previous = user.role
    user.role = role.value
    user.last_login_at = now
    audit.record(
        Actor.for_user(user),
        "user.oidc_login",
        target_type="user",
        target_id=user.id,
        payload={
            "subject": subject[:255],
            "role": user.role,
            **({"previous_role": previous} if previous != user.role else {}),
        },
        client_address=client_address,
    )
    db.session.flush()
    return user
