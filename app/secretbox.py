"""Sealing secrets at rest (repository passwords, hook bodies, channel credentials).

AES-256-GCM with associated data that names the table, column and row the ciphertext
belongs to, so a sealed value copied into another row or column fails to open.
Format: version byte (1) | 12-byte nonce | ciphertext+tag.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12


class SecretKeyError(RuntimeError):
    """The key file is missing, unreadable or malformed; the message says how to fix it."""


class SecretOpenError(ValueError):
    """A sealed value failed to open: tampered, moved to another row, or another key."""


def _associated_data(table: str, column: str, row_id) -> bytes:
    if row_id is None:
        raise ValueError("seal/open needs the row id: flush the row before sealing")
    return f"restic-manager:{table}:{column}:{row_id}".encode()


class SecretBox:
    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"secret key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, table: str, column: str, row_id) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        associated = _associated_data(table, column, row_id)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), associated)

    def open(self, sealed: bytes, *, table: str, column: str, row_id) -> str:
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            raise SecretOpenError(f"{table}.{column} of row {row_id} is not a sealed value")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, _associated_data(table, column, row_id)).decode()
        except InvalidTag:
            raise SecretOpenError(
                f"{table}.{column} of row {row_id} failed its integrity check "
                "(tampered, copied from another row, or sealed under another key)"
            ) from None

    def __repr__(self) -> str:  # never show key material
        return "<SecretBox>"


def load_or_create_key(path: Path) -> bytes:
    """Read the base64 key file, creating it (mode 0600) when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        encoded = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker created it first: read theirs
            pass
        except OSError as exc:
            raise SecretKeyError(f"cannot create secret key file {path}: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded)
                handle.flush()
                os.fsync(handle.fileno())
    try:
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise SecretKeyError(
            f"cannot read secret key file {path}: {exc.strerror}. "
            "Check RM_SECRET_KEY_FILE and that the server user may read it."
        ) from None
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"secret key file {path} must hold {KEY_BYTES} random bytes in base64 "
            f"(44 characters); it holds {len(raw)} characters. Restore the original key "
            "from backup: without it, sealed repository passwords cannot be opened."
        )
    return key
