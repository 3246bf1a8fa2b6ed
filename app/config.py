"""Settings from ``RM_*`` environment variables, with defaults.

Every setting is documented in the configuration table in README.md; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """A setting is present but unusable; the message says which and why."""


def _int(environ, name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(environ, name: str, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _allowed_hosts(raw: str) -> list[str]:
    """Host names (optionally with :port) the server answers to when RM_BASE_URL is unset."""
    hosts = []
    for part in filter(None, (p.strip().lower() for p in raw.split(","))):
        if "/" in part or any(char.isspace() for char in part):
            raise ConfigError(
                f"RM_ALLOWED_HOSTS: {part!r} is not a host name (expected e.g. "
                "backup.example.com or backup.example.com:8443, comma-separated)"
            )
        hosts.append(part)
    return hosts


def _trusted_proxies(raw: str) -> list:
    """Addresses/networks of reverse proxies whose X-Forwarded-* headers we believe."""
    networks = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(
                f"RM_TRUSTED_PROXIES: {part!r} is not an IP address or network "
                f"(expected e.g. 127.0.0.1 or 10.0.0.0/8, comma-separated)"
            ) from None
    return networks


OIDC_ROLES = ("viewer", "operator", "admin")


def _oidc_role_map(raw: str) -> dict[str, str]:
    """``group=role,...`` (``*`` = everyone else) as {group: role}; order does not matter."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        group, sep, role = (piece.strip() for piece in part.partition("="))
        if not sep or not group or role.lower() not in OIDC_ROLES:
            raise ConfigError(
                f"RM_OIDC_ROLE_MAP: {part!r} is not group=role with role viewer, operator or "
                "admin (expected e.g. backup-admins=admin,ops=operator,*=viewer)"
            )
        if group in mapping:
            raise ConfigError(f"RM_OIDC_ROLE_MAP: the group {group!r} is listed twice")
        mapping[group] = role.lower()
    return mapping


def _oidc(environ) -> dict:
    """Single sign-on settings; with RM_OIDC_ISSUER unset, OIDC is off and the rest ignored."""
    issuer = (environ.get("RM_OIDC_ISSUER") or "").strip().rstrip("/")
    only = _bool(environ, "RM_OIDC_ONLY", False)
    settings = {
        "RM_OIDC_ISSUER": issuer,
        "RM_OIDC_CLIENT_ID": (environ.get("RM_OIDC_CLIENT_ID") or "").strip(),
        "RM_OIDC_CLIENT_SECRET": environ.get("RM_OIDC_CLIENT_SECRET") or "",
        "RM_OIDC_DISPLAY_NAME": (environ.get("RM_OIDC_DISPLAY_NAME") or "").strip()
        or "single sign-on",
        "RM_OIDC_GROUPS_CLAIM": (environ.get("RM_OIDC_GROUPS_CLAIM") or "").strip() or "groups",
        "RM_OIDC_ROLE_MAP": _oidc_role_map(environ.get("RM_OIDC_ROLE_MAP", "")),
        "RM_OIDC_ONLY": only,
    }
    if not issuer:
        if only:
            raise ConfigError("RM_OIDC_ONLY needs RM_OIDC_ISSUER (single sign-on is not set up)")
        return settings
    parts = urlsplit(issuer)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"RM_OIDC_ISSUER must be an http(s) URL such as "
            f"https://sso.example.com/realms/main, got {issuer!r}"
        )
    for name in ("RM_OIDC_CLIENT_ID", "RM_OIDC_CLIENT_SECRET"):
        if not settings[name]:
            raise ConfigError(f"{name} must be set when RM_OIDC_ISSUER is set")
    if not settings["RM_OIDC_ROLE_MAP"]:
        raise ConfigError(
            "RM_OIDC_ROLE_MAP must map at least one group to a role when RM_OIDC_ISSUER is set "
            "(e.g. backup-admins=admin,ops=operator,*=viewer)"
        )
    return settings


def load_config(environ=None) -> dict:
    """Build the Flask config mapping from environment variables."""
    environ = os.environ if environ is None else environ
    data_dir = Path(environ.get("RM_DATA_DIR") or PROJECT_ROOT / "data").resolve()
    database_url = environ.get("RM_DATABASE_URL") or f"sqlite:///{data_dir / 'restic-manager.db'}"
    if database_url.startswith("postgresql://") or database_url.startswith("postgres://"):
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        database_url = "postgresql+psycopg://" + database_url.split("://", 1)[1]
    log_level = (environ.get("RM_LOG_LEVEL") or "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"RM_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    return {
        "RM_DATA_DIR": data_dir,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "RM_SECRET_KEY_FILE": Path(
            environ.get("RM_SECRET_KEY_FILE") or data_dir / "secret.key"
        ).resolve(),
        "RM_BASE_URL": (environ.get("RM_BASE_URL") or "").rstrip("/"),
        "RM_TRUSTED_PROXIES": _trusted_proxies(environ.get("RM_TRUSTED_PROXIES", "")),
        "RM_LOG_LEVEL": log_level,
        "RM_SESSION_HOURS": _int(environ, "RM_SESSION_HOURS", 12, minimum=1),
        "RM_LOGIN_MAX_FAILURES_PER_USER": _int(environ, "RM_LOGIN_MAX_FAILURES_PER_USER", 5, 1),
        "RM_LOGIN_MAX_FAILURES_PER_ADDRESS": _int(
            environ, "RM_LOGIN_MAX_FAILURES_PER_ADDRESS", 20, 1
        ),
        "RM_LOGIN_WINDOW_SECONDS": _int(environ, "RM_LOGIN_WINDOW_SECONDS", 900, 1),
        "RM_OFFLINE_AFTER_SECONDS": _int(environ, "RM_OFFLINE_AFTER_SECONDS", 90, 1),
        "RM_POLL_WAIT_SECONDS": _int(environ, "RM_POLL_WAIT_SECONDS", 25, 1),
        "RM_LOG_FLUSH_SECONDS": _int(environ, "RM_LOG_FLUSH_SECONDS", 10, 1),
        "RM_JOB_LOG_MAX_RECORDS": _int(environ, "RM_JOB_LOG_MAX_RECORDS", 200_000, 100),
        # Logs of jobs finished longer ago are removed by housekeeping (0 = kept forever).
        "RM_JOB_LOG_RETENTION_DAYS": _int(environ, "RM_JOB_LOG_RETENTION_DAYS", 90, 0),
        # Alerts resolved longer ago are removed with their deliveries (0 = kept forever).
        "RM_ALERT_RETENTION_DAYS": _int(environ, "RM_ALERT_RETENTION_DAYS", 365, 0),
        "RM_MIN_AGENT_PROTOCOL": _int(environ, "RM_MIN_AGENT_PROTOCOL", 1, 1),
        "RM_SQLITE_BUSY_TIMEOUT_MS": _int(environ, "RM_SQLITE_BUSY_TIMEOUT_MS", 5000, 0),
        "RM_TICKER_SECONDS": _int(environ, "RM_TICKER_SECONDS", 30, 1),
        "RM_TICKER_ENABLED": _bool(environ, "RM_TICKER_ENABLED", True),
        # How often the leader sends due notifications (alerts' outbox).
        "RM_NOTIFY_SECONDS": _int(environ, "RM_NOTIFY_SECONDS", 2, 1),
        # How long a browser waits for an agent's answer (snapshot browser, downloads).
        "RM_RPC_WAIT_SECONDS": _int(environ, "RM_RPC_WAIT_SECONDS", 8, 1),
        # How long a directory listing of a snapshot is reused (snapshots never change).
        "RM_TREE_CACHE_SECONDS": _int(environ, "RM_TREE_CACHE_SECONDS", 1800, 0),
        "RM_DOWNLOAD_MAX_MB": _int(environ, "RM_DOWNLOAD_MAX_MB", 1024, 1),
        # The largest request body anyone may send (agents' log batches and file chunks).
        "RM_MAX_BODY_MB": _int(environ, "RM_MAX_BODY_MB", 16, 1),
        # A running or queued job whose host stays offline this long ends "lost".
        "RM_LOST_JOB_AFTER_SECONDS": _int(environ, "RM_LOST_JOB_AFTER_SECONDS", 900, 60),
        # Without RM_BASE_URL, install commands use the request's host only if listed here.
        "RM_ALLOWED_HOSTS": _allowed_hosts(environ.get("RM_ALLOWED_HOSTS", "")),
        **_oidc(environ),
    }
