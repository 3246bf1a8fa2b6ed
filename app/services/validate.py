"""Small validators shared by services (messages are shown to people as they are)."""

from __future__ import annotations

import re

from app.services.errors import ValidationFailed

HOSTNAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def fail(field: str, message: str):
    raise ValidationFailed(message, fields={field: [message]})


def hostname(value, field: str = "hostname", *, required: bool = True) -> str | None:
    value = (value or "").strip() if isinstance(value, str) or value is None else value
    if not isinstance(value, str):
        fail(field, "Hostname must be a string.")
    if not value:
        if required:
            fail(field, "Hostname is required.")
        return None
    if not HOSTNAME_PATTERN.match(value):
        fail(
            field,
            "Hostname may contain letters, digits, dots, dashes and underscores "
            "(1-255 characters, starting and ending with a letter or digit).",
        )
    return value


def text(value, field: str, label: str, *, required: bool, max_length: int) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            fail(field, f"{label} is required.")
        return None
    if not isinstance(value, str):
        fail(field, f"{label} must be a string.")
    value = value.strip()
    if len(value) > max_length:
        fail(field, f"{label} must be at most {max_length} characters.")
    if _CONTROL.search(value):
        fail(field, f"{label} must not contain control characters or line breaks.")
    return value


def absolute_paths(value, field: str = "paths") -> list[str]:
    """A list of absolute paths (POSIX `/…` or Windows `C:\\…`), duplicates removed."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [line for line in value.splitlines()]
    if not isinstance(value, list):
        fail(field, "Paths must be a list of absolute paths.")
    paths: list[str] = []
    for item in value:
        if not isinstance(item, str):
            fail(field, "Each path must be a string.")
        item = item.strip()
        if not item:
            continue
        if not (item.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", item)):
            fail(field, f"{item!r} is not an absolute path (start it with / or a drive letter).")
        if len(item) > 4096 or _CONTROL.search(item):
            fail(field, f"{item[:60]!r} is too long or contains control characters.")
        if item not in paths:
            paths.append(item)
    if len(paths) > 100:
        fail(field, "At most 100 paths.")
    return paths


def repository(url, username, password) -> tuple[str, str | None, str]:
    """The repository connection an operator typed: URL, optional user, password."""
    url = text(url, "repo_url", "Repository URL", required=True, max_length=1000)
    username = text(
        username, "repo_username", "Repository username", required=False, max_length=255
    )
    if not isinstance(password, str) or not password:
        fail("repo_password", "Repository password is required.")
    if len(password) > 1024:
        fail("repo_password", "Repository password must be at most 1024 characters.")
    return url, username, password
