"""The operator-editable ``agent.conf``, the private ``state.json`` and the sealed secrets."""

import base64
import configparser
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.paths import AgentPaths, atomic_write_bytes, atomic_write_json, read_json

DEFAULT_SETTINGS: Dict[str, float] = {
    "poll_wait_seconds": 25,
    "offline_after_seconds": 90,
    "log_flush_seconds": 10,
    "log_flush_watched_seconds": 1,
    "max_log_batch_records": 500,
    "command_lease_seconds": 60,
}
# Bounds keep a misconfigured (or hostile) server from stalling or flooding the agent.
_SETTING_BOUNDS = {
    "poll_wait_seconds": (1, 120),
    "offline_after_seconds": (1, 86400),
    "log_flush_seconds": (0.2, 300),
    "log_flush_watched_seconds": (0.2, 300),
    "max_log_batch_records": (1, 500),
    "command_lease_seconds": (1, 86400),
}
SECRETS_ASSOCIATED_DATA = b"restic-manager-agent:secrets"
_SEALED_VERSION = b"\x01"
_NONCE_BYTES = 12
_PIN = re.compile(r"^[0-9a-f]{64}$")
# The host owner's defaults (agent.backup_policy and agent.restore_policy explain them).
DEFAULT_BACKUP_PATHS = "/"
DEFAULT_RESTORE_PATHS = "$HOME/rm-restore, backup_paths"

CONFIG_TEMPLATE = """\
# restic-manager agent configuration, written by `restic-manager-agent enroll`.
# You may edit it; restart the agent afterwards. Secrets are not kept here.

[server]
# Base URL of the restic-manager server.
url = {url}
# PEM bundle of the CA(s) that signed the server's certificate. Empty: the system CAs.
ca_file = {ca_file}
# SHA-256 (hex) of the server's leaf certificate in DER form. When set, any other
# certificate is refused. A pin without ca_file trusts the pinned certificate alone.
pin_sha256 = {pin}

[agent]
# Disk space (MiB) for events and job logs kept while the server is unreachable.
# When it is full, new log lines are counted as dropped and reported, never lost silently.
spool_max_mb = 256
# false: refuse pre/post backup hooks sent by the server (the host owner's veto): a backup
# that has hooks then fails with "hooks are disabled on this host".
allow_hooks = true
# A hook still running after this many seconds is stopped (SIGINT, then SIGKILL).
hook_timeout_seconds = 3600
# What the server may read on this host (backups, downloads): comma-separated absolute
# paths, * for everything, empty for nothing. The secret stores (/etc/shadow, /etc/gshadow
# and their - backups, /etc/ssh/*_key, /root/.ssh, the agent's home) are left out of
# backups and downloads unless you name them here (or write *); a backup of a directory
# that holds one (/etc) skips it. Example: backup_paths = /srv, /home, /etc
backup_paths = {backup_paths}
# Where restores may write (the host owner's veto): comma-separated absolute paths, $HOME
# allowed (the agent's HOME: /var/lib/restic-manager-agent under the packaged unit), * for
# anywhere, empty to refuse every restore. A restore into a new directory must target one
# of them or a directory below one; an in-place restore must only touch paths below them.
# The word backup_paths also allows in-place restores of what backup_paths allows, except
# system directories (/etc, /root, /usr, /boot, ...) and the secret stores.
# Example: restore_paths = $HOME/rm-restore, backup_paths, /srv/restore
restore_paths = {restore_paths}
"""


class ConfigError(Exception):
    """The agent's files are missing or malformed; the message says what to do."""


class NotEnrolled(ConfigError):
    pass


def normalise_pin(pin: Optional[str]) -> Optional[str]:
    """``AB:CD:…`` or ``abcd…`` → 64 lowercase hex digits; ``None``/empty → ``None``."""
    if not pin:
        return None
    value = pin.strip().lower().replace(":", "")
    if value.startswith("sha256/") or value.startswith("sha256:"):
        value = value[7:]
    if not _PIN.match(value):
        raise ConfigError(
            "the certificate pin must be the SHA-256 of the certificate: 64 hex digits"
        )
    return value


@dataclass(frozen=True)
class AgentConfig:
    server_url: str
    ca_file: Optional[str] = None
    pin_sha256: Optional[str] = None
    spool_max_mb: int = 256
    allow_hooks: bool = True
    backup_paths: str = DEFAULT_BACKUP_PATHS
    restore_paths: str = DEFAULT_RESTORE_PATHS
    hook_timeout_seconds: float = 3600.0


def write_config(path: Path, server_url: str, ca_file: Optional[str], pin: Optional[str]) -> None:
    text = CONFIG_TEMPLATE.format(
        url=server_url,
        ca_file=ca_file or "",
        pin=pin or "",
        backup_paths=DEFAULT_BACKUP_PATHS,
        restore_paths=DEFAULT_RESTORE_PATHS,
    )
    atomic_write_bytes(path, text.encode())


def load_config(path: Path) -> AgentConfig:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise NotEnrolled(
            f"{path} does not exist: enroll this host first "
            "(restic-manager-agent enroll --server URL --token TOKEN)"
        ) from None
    except configparser.Error as error:
        raise ConfigError(f"{path} is not a valid configuration file: {error}") from None
    url = parser.get("server", "url", fallback="").strip()
    if not url:
        raise ConfigError(f"{path}: [server] url is empty")
    try:
        return AgentConfig(
            server_url=url,
            ca_file=parser.get("server", "ca_file", fallback="").strip() or None,
            pin_sha256=normalise_pin(parser.get("server", "pin_sha256", fallback="")),
            spool_max_mb=parser.getint("agent", "spool_max_mb", fallback=256),
            allow_hooks=parser.getboolean("agent", "allow_hooks", fallback=True),
            backup_paths=parser.get("agent", "backup_paths", fallback=DEFAULT_BACKUP_PATHS).strip(),
            restore_paths=parser.get(
                "agent", "restore_paths", fallback=DEFAULT_RESTORE_PATHS
            ).strip(),
            hook_timeout_seconds=_positive(
                parser.getfloat("agent", "hook_timeout_seconds", fallback=3600.0),
                "hook_timeout_seconds",
            ),
        )
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise ValueError(f"[agent] {name} must be a positive number of seconds")
    return value


def merge_settings(current: Dict[str, Any], received: Any) -> Dict[str, Any]:
    """Newest server settings over what we had, unknown keys kept, numbers clamped."""
    merged = dict(DEFAULT_SETTINGS)
    merged.update(current or {})
    if isinstance(received, dict):
        for key, value in received.items():
            if key in _SETTING_BOUNDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                low, high = _SETTING_BOUNDS[key]
                merged[key] = min(max(value, low), high)
            else:
                merged[key] = value
    return merged


class State:
    """``state.json`` (0600): identity, agent token, secrets key and the last server settings."""

    def __init__(self, path: Path, data: Optional[Dict[str, Any]] = None):
        self.path = path
        self.data: Dict[str, Any] = data or {}

    @classmethod
    def load(cls, path: Path) -> "State":
        try:
            data = read_json(path, default=None)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path} cannot be read: {error.__class__.__name__}") from None
        if data is None:
            raise NotEnrolled(
                f"{path} does not exist: enroll this host first "
                "(restic-manager-agent enroll --server URL --token TOKEN)"
            )
        if not isinstance(data, dict) or not data.get("agent_token"):
            raise ConfigError(f"{path} has no agent token: re-enroll this host")
        return cls(path, data)

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    @property
    def host_id(self) -> Optional[int]:
        return self.data.get("host_id")

    @property
    def agent_token(self) -> str:
        return self.data["agent_token"]

    @property
    def settings(self) -> Dict[str, Any]:
        return merge_settings(self.data.get("settings") or {}, None)

    def update_settings(self, received: Any) -> bool:
        """Store newer settings; True when something changed (and was saved)."""
        merged = merge_settings(self.data.get("settings") or {}, received)
        if merged == self.data.get("settings"):
            return False
        self.data["settings"] = merged
        self.save()
        return True

    def secrets_key(self) -> bytes:
        """The local 32-byte key that seals ``secrets.sealed`` (made on first use)."""
        encoded = self.data.get("secrets_key")
        if not encoded:
            self.data["secrets_key"] = new_secrets_key()
            self.save()
            encoded = self.data["secrets_key"]
        key = base64.b64decode(encoded)
        if len(key) != 32:
            raise ConfigError(f"{self.path}: secrets_key must be 32 bytes (base64)")
        return key

    def __repr__(self) -> str:  # never show the token or the key
        return f"State(host_id={self.host_id!r})"


def new_secrets_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


class SecretStore:
    """Repository credentials sealed with AES-256-GCM under the key in ``state.json``.

    ``associated_data`` tells sealed files apart (the schedule set has its own), so one
    cannot be swapped for another.
    """

    def __init__(self, path: Path, key: bytes, associated_data: bytes = SECRETS_ASSOCIATED_DATA):
        self.path = path
        self._aead = AESGCM(key)
        self._associated_data = associated_data

    def save(self, credentials: Dict[str, Any]) -> None:
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = json.dumps(credentials, sort_keys=True).encode()
        sealed = self._aead.encrypt(nonce, plaintext, self._associated_data)
        atomic_write_bytes(self.path, _SEALED_VERSION + nonce + sealed)

    def load(self) -> Optional[Dict[str, Any]]:
        """The credentials, or ``None`` when the server has not sent any yet."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _SEALED_VERSION:
            raise ConfigError(f"{self.path} is not a sealed secrets file")
        nonce, body = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            plaintext = self._aead.decrypt(nonce, body, self._associated_data)
        except InvalidTag:
            raise ConfigError(
                f"{self.path} failed its integrity check (tampered, or sealed under another "
                "key): the server resends the credentials after a re-enrollment"
            ) from None
        return json.loads(plaintext.decode())

    def __repr__(self) -> str:
        return f"SecretStore({str(self.path)!r})"


def open_secret_store(paths: AgentPaths, state: State) -> SecretStore:
    return SecretStore(paths.secrets, state.secrets_key())
