"""The commands shown to an admin for installing an agent with an enrollment token."""

from __future__ import annotations

import shlex

from flask import current_app, request


def server_url() -> str:
    return current_app.config["RM_BASE_URL"] or request.host_url.rstrip("/")


def install_command(token: str) -> str:
    base = server_url()
    return (
        f"curl -fsSL {shlex.quote(base + '/install/install.sh')} | sudo sh -s -- "
        f"--server {shlex.quote(base)} --token {shlex.quote(token)}"
    )


def agent_command(token: str) -> str:
    """Enroll and run by hand (from a checkout or the downloaded pyz)."""
    base = server_url()
    return (
        f"restic-manager-agent enroll --server {shlex.quote(base)} --token {shlex.quote(token)}"
        " && restic-manager-agent run"
    )
