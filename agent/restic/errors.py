"""Sorting restic failures into classes: exit codes where restic has them (0.17+),
stderr text on older versions (restic-cli.md §4, captured 0.14 samples E01 to E21)."""

import re
from typing import List, Optional, Sequence

EXIT_REPOSITORY_MISSING = 10  # 0.17.0+
EXIT_LOCKED = 11  # 0.17.0+
EXIT_WRONG_PASSWORD = 12  # 0.17.1+
EXIT_INTERRUPTED = 130

_MISSING_CONFIG = re.compile(r"unable to open config file", re.IGNORECASE)
_NOT_THERE = re.compile(r"no such file|does not exist|not found", re.IGNORECASE)
_WRONG_PASSWORD = re.compile(r"wrong password or no key found", re.IGNORECASE)
_LOCKED = re.compile(r"repository is already locked", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ResticError(Exception):
    """restic failed; ``str()`` is the (masked) reason for people to read."""

    def __init__(self, message: str, exit_code: Optional[int] = None):
        super().__init__(message)
        self.exit_code = exit_code


class RepositoryNotFound(ResticError):
    pass


class WrongPassword(ResticError):
    pass


class RepositoryLocked(ResticError):
    pass


class Interrupted(ResticError):
    pass


class ResticFailed(ResticError):
    pass


class ResticNotInstalled(ResticError):
    pass


def clean(line: str) -> str:
    """A stderr line without terminal escapes (0.14 prints ``\\x1b[2K`` even to a pipe)."""
    return _ANSI.sub("", line).strip()


def error_message(stderr_tail: Sequence[str], exit_code: Optional[int]) -> str:
    """The last meaningful stderr lines, or the exit status when restic said nothing."""
    lines = [clean(line) for line in stderr_tail if clean(line)]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    chosen: List[str] = fatal[-1:] or lines[-3:]
    if not chosen:
        return f"restic exited with status {exit_code}"
    text = " / ".join(chosen)
    return text if len(text) <= 1000 else text[:1000] + "…"


def classify(exit_code: Optional[int], stderr_tail: Sequence[str]) -> Optional[ResticError]:
    """``None`` for success, else the matching :class:`ResticError` (not raised)."""
    if exit_code == 0:
        return None
    text = "\n".join(stderr_tail)
    message = error_message(stderr_tail, exit_code)
    if exit_code == EXIT_WRONG_PASSWORD or _WRONG_PASSWORD.search(text):
        return WrongPassword(message, exit_code)
    if exit_code == EXIT_REPOSITORY_MISSING or (
        _MISSING_CONFIG.search(text) and _NOT_THERE.search(text)
    ):
        return RepositoryNotFound(message, exit_code)
    if exit_code == EXIT_LOCKED or _LOCKED.search(text):
        return RepositoryLocked(message, exit_code)
    if exit_code == EXIT_INTERRUPTED:
        return Interrupted(message, exit_code)
    return ResticFailed(message, exit_code)
