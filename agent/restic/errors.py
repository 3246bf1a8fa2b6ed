"""Sorting restic failures into classes: exit codes where restic has them (0.17+),
stderr text on older versions (restic-cli.md §4, captured 0.14 samples E01 to E21), and
stderr text for what the storage behind the repository answered (captured from restic 0.14
against closed ports, unknown hosts, self-signed TLS, REST, S3 and SFTP servers:
tests/agent/test_restic_real_backend_env.py)."""

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
# What the storage said, most specific first (the first match names the class).
_BUCKET_MISSING = re.compile(r"NoSuchBucket|bucket does not exist|ContainerNotFound")
_AUTHENTICATION = re.compile(
    r"\((401|403)\)|\b(401|403) (Unauthorized|Forbidden)\b|InvalidAccessKeyId|"
    r"SignatureDoesNotMatch|AccessDenied|Access Denied|AuthenticationFailed|"
    r"InvalidAccessKey|bad_auth_token|unauthorized|Permission denied \(",
    re.IGNORECASE,
)
_HOST_KEY = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED")
_TLS = re.compile(
    r"x509:|tls: |certificate (signed by unknown authority|is not valid|has expired|"
    r"is valid for)|remote error: tls",
    re.IGNORECASE,
)
_HOST_NOT_FOUND = re.compile(
    r"no such host|server misbehaving|Could not resolve hostname|"
    r"Name or service not known|Temporary failure in name resolution"
)
# ssh ended before the sftp session started, and its own words were lost (restic may exit
# before it printed them): the key, the host key or the address.
_SSH_SESSION = re.compile(r"unable to start the sftp session")
_CONNECTION_REFUSED = re.compile(r"connection refused", re.IGNORECASE)
_TIMEOUT = re.compile(
    r"i/o timeout|deadline exceeded|Client\.Timeout|handshake timeout|timed out",
    re.IGNORECASE,
)


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


class BackendError(ResticError):
    """The storage behind the repository refused or could not be reached; ``label`` names
    the class for people (the repository test's answer starts with it)."""

    label = "backend error"


class AuthenticationRefused(BackendError):
    label = "authentication refused"


class CertificateError(BackendError):
    label = "TLS certificate error"


class HostKeyRejected(BackendError):
    label = "SSH host key not trusted"


class HostNotFound(BackendError):
    label = "host not found"


class ConnectionRefused(BackendError):
    label = "connection refused"


class BackendTimeout(BackendError):
    label = "timeout"


class SshSessionFailed(BackendError):
    label = "SSH login failed (check the key, the host key and the address)"


_BACKEND_CLASSES = (
    (_AUTHENTICATION, AuthenticationRefused),
    (_HOST_KEY, HostKeyRejected),
    (_TLS, CertificateError),
    (_HOST_NOT_FOUND, HostNotFound),
    (_CONNECTION_REFUSED, ConnectionRefused),
    (_TIMEOUT, BackendTimeout),
    (_SSH_SESSION, SshSessionFailed),
)


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
    # ssh's own reason (restic prefixes it) says more than restic's "error: EOF".
    ssh = [line for line in lines if line.startswith("subprocess ssh:")]
    if fatal:
        chosen = ssh[-1:] + fatal[-1:]
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
    if _BUCKET_MISSING.search(text):
        return RepositoryNotFound(message, exit_code)
    for pattern, backend_class in _BACKEND_CLASSES:
        if pattern.search(text):
            return backend_class(message, exit_code)
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
    if isinstance(failure, BackendError):
        return f"{failure.label}: {failure}"
    if isinstance(failure, Interrupted):
        return "restic was interrupted by a signal the agent did not send"
    return str(failure)
