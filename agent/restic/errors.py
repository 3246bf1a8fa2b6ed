"""Sorting restic failures into classes: exit codes where restic has them (0.17+),
stderr text on older versions (restic-cli.md §4, captured 0.14 samples E01 to E21)."""

import re
from typing import List, Optional, Sequence

from agent.restic.messages import clean, stderr_text

EXIT_PARTIAL = 3  # backup: some source files could not be read; the snapshot exists
EXIT_REPOSITORY_MISSING = 10  # 0.17.0+
EXIT_LOCKED = 11  # 0.17.0+
EXIT_WRONG_PASSWORD = 12  # 0.17.1+
EXIT_INTERRUPTED = 130

_MISSING_CONFIG = re.compile(r"unable to open config file", re.IGNORECASE)
_NOT_THERE = re.compile(r"no such file|does not exist|not found", re.IGNORECASE)
_WRONG_PASSWORD = re.compile(r"wrong password or no key found", re.IGNORECASE)
_LOCKED = re.compile(r"repository is already locked", re.IGNORECASE)
_ALREADY_INITIALISED = re.compile(r"config (file )?already exists|already initialized")
_MAX_MESSAGE = 1000


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


class Killed(ResticError):
    """restic died of a signal (SIGKILL after the grace, the OOM killer, …)."""


class PartialBackup(ResticError):
    """``backup`` exit 3: the snapshot was saved without the files restic could not read."""


class AlreadyInitialised(ResticError):
    """``init`` found a repository at the location: for us, the goal is reached."""


class UnexpectedOutput(ResticError):
    """restic succeeded but printed something the agent cannot read."""


class ResticFailed(ResticError):
    pass


class ResticNotInstalled(ResticError):
    pass


def error_message(stderr_tail: Sequence[str], exit_code: Optional[int]) -> str:
    """The meaningful stderr lines (``Fatal:``, the lock holder), or the exit status."""
    lines = [text for text in (stderr_text(line) for line in stderr_tail) if text]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    locked = [index for index, line in enumerate(lines) if _LOCKED.search(line)]
    chosen: List[str]
    if fatal:
        chosen = fatal[-1:]
    elif locked:
        chosen = lines[locked[0] : locked[0] + 2]  # who holds it, and since when
    else:
        chosen = lines[-3:]
    if not chosen:
        return f"restic exited with status {exit_code}"
    text = " / ".join(chosen)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


def classify(
    exit_code: Optional[int], stderr_tail: Sequence[str], command: Optional[str] = None
) -> Optional[ResticError]:
    """``None`` for success, else the matching :class:`ResticError` (not raised).

    ``command`` enables the per-command meanings: exit 3 of ``backup``, "already exists"
    of ``init``.
    """
    if exit_code == 0:
        return None
    if exit_code is not None and exit_code < 0:
        return Killed(f"restic was killed by signal {-exit_code}", exit_code)
    text = "\n".join(clean(line) for line in stderr_tail)
    message = error_message(stderr_tail, exit_code)
    if command == "backup" and exit_code == EXIT_PARTIAL:
        return PartialBackup("some source files could not be read", exit_code)
    if command == "init" and _ALREADY_INITIALISED.search(text):
        return AlreadyInitialised(message, exit_code)
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


def describe(failure: ResticError) -> str:
    """The job's ``error`` text: the class in words, then restic's own reason."""
    if isinstance(failure, WrongPassword):
        return "wrong repository password (or no matching key)"
    if isinstance(failure, RepositoryNotFound):
        return f"no repository at this location (run init first): {failure}"
    if isinstance(failure, RepositoryLocked):
        return f"the repository is locked by another restic: {failure}"
    if isinstance(failure, Interrupted):
        return "restic was interrupted by a signal the agent did not send"
    return str(failure)
