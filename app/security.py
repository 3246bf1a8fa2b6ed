"""Passwords (argon2id) and bearer tokens (random, stored as SHA-256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 1024
PASSWORD_RULES = (
    f"At least {PASSWORD_MIN_LENGTH} characters. Spaces and any characters are allowed; "
    "a long passphrase is better than a short complicated word."
)

# A precomputed hash so a login for an unknown user costs as much as one for a known user.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def password_problems(password: str, username: str = "") -> list[str]:
    """Every reason a new password is refused, in words shown next to the field."""
    problems = []
    if len(password) < PASSWORD_MIN_LENGTH:
        problems.append(
            f"Password must be at least {PASSWORD_MIN_LENGTH} characters "
            f"(this one has {len(password)})."
        )
    if len(password) > PASSWORD_MAX_LENGTH:
        problems.append(f"Password must be at most {PASSWORD_MAX_LENGTH} characters.")
    if username and password.strip().lower() == username.strip().lower():
        problems.append("Password must not be the same as the username.")
    return problems


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def new_token(prefix: str) -> str:
    """A bearer token with a readable kind prefix, e.g. ``rmp_...`` for personal tokens."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# Put on every answer (the app's after_request hook; the idle-poll middleware's 204s).
RESPONSE_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
)
