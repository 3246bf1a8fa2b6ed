"""The commands shown to an admin for installing an agent with an enrollment token.

They name the server the agent will enroll with (and send its token to), so that address
must come from configuration, never from whatever ``Host`` header a request carried:
``RM_BASE_URL`` first; otherwise the request's own address when it is listed in
``RM_ALLOWED_HOSTS`` or is this machine's loopback (the trial run on 127.0.0.1:8080, where
a forged name could only point an agent back at its own machine). Anything else gets a
``SERVER_URL`` placeholder and the page says what to configure.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

from flask import current_app, request

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PLACEHOLDER = "SERVER_URL"


def _host_and_name(host: str) -> tuple[str, str | None]:
    """``backup.example.com:8443`` → (the whole, lower case; the bare name, or None if odd)."""
    host = host.lower()
    try:
        parts = urlsplit(f"//{host}")
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        return host, None
    return host, parts.hostname


def request_host_trusted() -> bool:
    """The request's host may name this server in what we hand out."""
    host, name = _host_and_name(request.host)
    if name is None:
        return False
    if name in LOOPBACK_NAMES:
        return True
    allowed = current_app.config["RM_ALLOWED_HOSTS"]
    # An entry without a port allows the name on any port; with one, exactly that.
    return host in allowed or name in allowed


def server_url() -> str | None:
    """The server's public URL for agents, or None when configuration does not say it."""
    configured = current_app.config["RM_BASE_URL"]
    if configured:
        return configured
    if request_host_trusted():
        return request.host_url.rstrip("/")
    return None


def server_url_problem() -> str | None:
    """What to configure when :func:`server_url` cannot name the server (for the pages)."""
    if server_url() is not None:
        return None
    host = request.host
    return (
        f"This server does not know its public address: RM_BASE_URL is not set and "
        f"{host!r} (the address this page was opened with) is not in RM_ALLOWED_HOSTS. "
        f"Set RM_BASE_URL=https://{host} (or add {host} to RM_ALLOWED_HOSTS) and restart "
        f"the server; until then, replace {PLACEHOLDER} in the commands with the server's URL."
    )


def install_command(token: str) -> str:
    base = server_url() or PLACEHOLDER
    return (
        f"curl -fsSL {shlex.quote(base + '/install/install.sh')} | sudo sh -s -- "
        f"--server {shlex.quote(base)} --token {shlex.quote(token)}"
    )


def agent_command(token: str) -> str:
    """Enroll and run by hand (from a checkout or the downloaded pyz)."""
    base = server_url() or PLACEHOLDER
    return (
        f"restic-manager-agent enroll --server {shlex.quote(base)} --token {shlex.quote(token)}"
        " && restic-manager-agent run"
    )
