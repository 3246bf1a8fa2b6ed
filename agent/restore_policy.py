"""Where restores may write on this host: ``restore_paths`` in agent.conf (the owner's veto).

A comma-separated list of absolute paths (``$HOME``, ``${HOME}`` and ``~`` allowed), ``*``
for anywhere, empty for nowhere. A path is allowed when it is one of them or below one,
compared after resolving the symlinks of the part that exists (so a symlink inside an
allowed directory cannot lead a restore out of it).
"""

import os
import posixpath
from typing import List, Mapping, Optional, Sequence

from agent.config import ConfigError

ANYWHERE = "*"
_HOME_PREFIXES = ("${HOME}", "$HOME", "~")


class RestoreRefused(Exception):
    """The restore would write where ``restore_paths`` does not allow; ``str()`` says why."""


def expand_home(path: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """A leading ``$HOME``, ``${HOME}`` or ``~`` replaced by the agent's ``HOME``.

    ``~user`` is not expanded (it stays relative, and is refused as such).
    """
    environ = os.environ if environ is None else environ
    for prefix in _HOME_PREFIXES:
        rest = path[len(prefix) :]
        if path.startswith(prefix) and (rest == "" or rest.startswith("/")):
            home = environ.get("HOME") or ""
            if not home.startswith("/"):
                raise ConfigError(f"{path} needs HOME, but the agent's HOME is not set")
            return home.rstrip("/") + rest if rest else home
    return path


def normalise(path: str) -> str:
    """Absolute, without ``..``, ``.`` and doubled slashes; ``ValueError`` when relative."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    normalised = posixpath.normpath(path)
    return "/" + normalised.lstrip("/")


def resolved(path: str) -> str:
    """``path`` with the symlinks of its existing part resolved."""
    return os.path.realpath(path)


class RestorePolicy:
    """The parsed ``restore_paths``; ``check`` raises :class:`RestoreRefused`."""

    def __init__(self, spec: str, environ: Optional[Mapping[str, str]] = None):
        self.spec = spec
        self.anywhere = False
        self.allowed: List[str] = []
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                continue
            if entry == ANYWHERE:
                self.anywhere = True
                continue
            try:
                self.allowed.append(normalise(expand_home(entry, environ)))
            except ValueError:
                raise ConfigError(
                    f"restore_paths in agent.conf: {entry!r} is not an absolute path "
                    "(use absolute paths, $HOME/…, or * for anywhere)"
                ) from None

    def allows(self, path: str) -> bool:
        if self.anywhere:
            return True
        real = resolved(path)
        for allowed in self.allowed:
            root = resolved(allowed)
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return True
        return False

    def check(self, paths: Sequence[str]) -> None:
        """Raise :class:`RestoreRefused` naming the first path that is not allowed."""
        if not self.anywhere and not self.allowed:
            raise RestoreRefused(
                "restore refused by this host: restores are disabled "
                "(restore_paths is empty in agent.conf)"
            )
        for path in paths:
            if not self.allows(path):
                raise RestoreRefused(
                    f"restore refused by this host: {path} is outside restore_paths "
                    f"({', '.join(self.allowed)}) in agent.conf"
                )
