"""Small validators shared by services (messages are shown to people as they are)."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional

from app.services.errors import ValidationFailed

HOSTNAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}$"  # a restic tag (and a source group's name)
TAG = re.compile(TAG_PATTERN)


# What no stored string or number may hold, whoever sent it (docs/api.md, docs/protocol.md):
# PostgreSQL refuses NUL in text and JSON; a lone surrogate cannot be encoded as UTF-8 (the
# database driver, restic's argv and every page would fail on it); the id and counter
# columns are 64-bit; JSON has no NaN or Infinity; deep nests only cost stack.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_JSON_DEPTH = 32
MAX_KEY_LENGTH = 128  # no field of either protocol is named by more; longer is an attack
ECHO_LENGTH = 40  # how much of a refused value (or field name) an error message repeats
_SURROGATE = re.compile("[\ud800-\udfff]")


def echo(value: Any, limit: int = ECHO_LENGTH) -> str:
    """``value`` as an error message may repeat it: at most ``limit`` characters, printable
    (a 10 MB refused value is not sent back, nor a lone surrogate that breaks the page)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored (a NUL or a lone surrogate), or None."""
    if "\x00" in text:
        return "must not contain NUL characters (\\u0000)"
    if _SURROGATE.search(text):
        return "must not contain lone surrogates (\\ud800-\\udfff): send valid Unicode"
    return None


def json_problem(
    value: Any,
    where: str = "",
    depth: int = 0,
    *,
    nul_allowed: Callable[[str], bool] = lambda where: False,
) -> tuple[str, str] | None:
    """The first ``(field, reason)`` that no JSON field may hold, or None.

    ``field`` is a path such as ``events[3].data.reason``; ``nul_allowed(field)`` exempts
    a field whose NUL characters the caller strips itself (agent log text)."""
    if depth > MAX_JSON_DEPTH:
        return where, f"is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
    if isinstance(value, str):
        reason = unstorable(value.replace("\x00", "") if nul_allowed(where) else value)
        return (where, reason) if reason else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return where, "is out of range (a 64-bit integer)"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, "must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            if len(key) > MAX_KEY_LENGTH:
                return where, f"has a key longer than {MAX_KEY_LENGTH} characters"
            reason = unstorable(key)
            if reason:
                return where, f"has a key that {reason}"
            found = json_problem(item, _join(where, key), depth + 1, nul_allowed=nul_allowed)
            if found:
                return found
        return None
    for index, item in enumerate(value):  # a list: json.loads makes nothing else
        found = json_problem(item, f"{where}[{index}]", depth + 1, nul_allowed=nul_allowed)
        if found:
            return found
    return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def fail(field: str, message: str):
    raise ValidationFailed(message, fields={field: [message]})


class FieldErrors:
    """Every field's problem of one input, so a form shows them all at once.

    ``check`` runs one field's validator and notes its refusal instead of stopping;
    ``raise_any`` then raises one :class:`ValidationFailed` carrying all of them (its
    message is every problem in order, so the JSON API's ``message`` says it all too).
    """

    def __init__(self):
        self.fields: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        messages = self.fields.setdefault(field, [])
        if message not in messages:
            messages.append(message)

    def check(self, validator: Callable[..., Any], *args, **kwargs) -> Optional[Any]:
        """``validator(*args, **kwargs)``, or None once its refusal is noted."""
        try:
            return validator(*args, **kwargs)
        except ValidationFailed as refused:
            self.merge(refused)
            return None

    def merge(self, refused: ValidationFailed) -> None:
        if not refused.fields:
            self.add("", refused.message)
        for field, messages in refused.fields.items():
            for message in messages or [refused.message]:
                self.add(field, message)

    def has(self, field: str) -> bool:
        return field in self.fields

    def raise_any(self) -> None:
        if self.fields:
            messages = [message for found in self.fields.values() for message in found]
            raise ValidationFailed(" ".join(messages), fields=self.fields)


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


def text(
    value, field: str, label: str, *, required: bool, max_length: int, missing: str | None = None
) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            fail(field, missing or f"{label} is required.")
        return None
    if not isinstance(value, str):
        fail(field, f"{label} must be a string.")
    value = value.strip()
    if len(value) > max_length:
        fail(field, f"{label} must be at most {max_length} characters.")
    if _CONTROL.search(value):
        fail(field, f"{label} must not contain control characters or line breaks.")
    return value


MAX_PATHS = 100  # per list (a source group's includes, an enrollment's initial paths)
MAX_PATH_LENGTH = 4096


def absolute_paths(value, field: str = "paths", *, label: str = "Paths") -> list[str]:
    """A list of absolute paths (POSIX `/…` or Windows `C:\\…`), duplicates removed.

    Every bad line is named, not only the first."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [line for line in value.splitlines()]
    if not isinstance(value, list):
        fail(field, f"{label} must be a list of absolute paths.")
    paths: list[str] = []
    problems: list[str] = []
    for item in value:
        if not isinstance(item, str):
            problems.append("Each path must be a string.")
            continue
        item = item.strip()
        if not item:
            continue
        if not (item.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", item)):
            problems.append(
                f"{item[:60]!r} is not an absolute path (start it with / or a drive letter)."
            )
        elif len(item) > MAX_PATH_LENGTH or _CONTROL.search(item):
            problems.append(f"{item[:60]!r} is too long or contains control characters.")
        elif item not in paths:
            paths.append(item)
    if len(paths) > MAX_PATHS:
        problems.append(f"At most {MAX_PATHS} paths.")
    if problems:
        problems = list(dict.fromkeys(problems))
        raise ValidationFailed(" ".join(problems), fields={field: problems})
    return paths


def password(value, field: str, label: str, *, missing: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        fail(field, missing or f"{label} is required.")
    if len(value) > 1024:
        fail(field, f"{label} must be at most 1024 characters.")
    return value


def repository(
    url, username, secret, errors: Optional[FieldErrors] = None
) -> tuple[str, str | None, str]:
    """The repository connection an operator typed: URL, optional user, password.

    Every problem is noted in ``errors`` (raised at once when none is given)."""
    own = errors is None
    errors = errors or FieldErrors()
    url = errors.check(
        text,
        url,
        "repo_url",
        "Repository URL",
        required=True,
        max_length=1000,
        missing="Give the repository URL: where should the backups go?",
    )
    username = errors.check(
        text, username, "repo_username", "Repository username", required=False, max_length=255
    )
    secret = errors.check(
        password,
        secret,
        "repo_password",
        "Repository password",
        missing="Give the repository password. restic encrypts every repository with a password.",
    )
    if own:
        errors.raise_any()
    return url, username, secret
