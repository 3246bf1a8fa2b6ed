"""What this host lets the server read: ``backup_paths`` in agent.conf (the owner's veto).

A comma-separated list of absolute paths that may be backed up (``$HOME``, ``${HOME}`` and
``~`` allowed), ``*`` for everything, empty for nothing. The default, ``/``, is everything
except the secret stores below: they stay out of every backup, every download and every
in-place restore unless the owner names them (or a path inside them) in ``backup_paths``,
or writes ``*``. A backup of a directory that holds one (``/etc``) runs with an
``--exclude`` for it, so the secret never reaches the repository.
"""

import fnmatch
import os
import posixpath
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from agent.config import ConfigError
from agent.paths import DEFAULT_HOME, normalise_absolute, path_list, resolve_home

ANYWHERE = "*"
# Where this host keeps what would make whoever reads it root (or the host itself). Globs
# match within one path component. /etc/sudoers is not here: it holds no secret (it is
# policy, and a full restore needs it); writing it back is what restore_paths guards.
SECRET_STORES: Tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh/*_key",  # the host's SSH private keys (ssh_host_*_key)
    "/root/.ssh",
    DEFAULT_HOME,  # the agent's token, its secrets key and the sealed credentials
)


class BackupRefused(Exception):
    """The path may not be read; ``str()`` says why and which agent.conf setting decides."""


def parts(path: str) -> List[str]:
    """``/etc/ssh`` → ``["etc", "ssh"]``; ``/`` → ``[]``."""
    return [part for part in path.split("/") if part]


def is_within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both normalised)."""
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def restic_literal(path: str) -> str:
    """A path as a restic ``--exclude``/``--include`` pattern that matches only itself."""
    return "".join("\\" + char if char in "*?[\\" else char for char in path)


class SecretStore:
    """One deny-list entry: a path whose components may be globs (``literal``: none are)."""

    def __init__(self, pattern: str, literal: bool = False):
        self.pattern = pattern
        self.literal = literal
        self.components = parts(pattern)

    def _matches(self, names: Sequence[str]) -> bool:
        if self.literal:
            return list(names) == self.components[: len(names)]
        return all(
            fnmatch.fnmatchcase(name, component) for name, component in zip(names, self.components)
        )

    def covers(self, path: str) -> bool:
        """``path`` is this store or inside it."""
        names = parts(path)
        return len(names) >= len(self.components) and self._matches(names[: len(self.components)])

    def inside(self, path: str) -> bool:
        """This store lies strictly below ``path``."""
        names = parts(path)
        return len(names) < len(self.components) and self._matches(names)

    def restic_pattern(self, below: str, shown_as: str) -> str:
        """The ``--exclude`` for this store under ``below`` (a directory above it), named
        as the backup names it (``shown_as``: a symlinked parent keeps its own name)."""
        tail = self.components[len(parts(below)) :]
        if self.literal:
            tail = [restic_literal(name) for name in tail]  # deny-list globs are restic's too
        return restic_literal(shown_as.rstrip("/")) + "/" + "/".join(tail)


class BackupPolicy:
    """The parsed ``backup_paths``; ``check`` raises :class:`BackupRefused`."""

    def __init__(
        self,
        spec: str,
        agent_home: Optional[Path] = None,
        environ: Optional[Mapping[str, str]] = None,
    ):
        self.spec = spec
        try:
            self.allowed, named = path_list(spec, (ANYWHERE,), environ)
        except ValueError as error:
            raise ConfigError(
                f"backup_paths in agent.conf: {error} "
                "(use absolute paths, $HOME/…, or * for everything)"
            ) from None
        self.anywhere = ANYWHERE in named
        homes = {str(resolve_home()), str(agent_home or DEFAULT_HOME)} - {DEFAULT_HOME}
        self.secret_stores = [SecretStore(pattern) for pattern in SECRET_STORES] + [
            SecretStore(home, literal=True) for home in sorted(homes)
        ]

    # -- reading -----------------------------------------------------------------------

    def refusal(self, path: str) -> Optional[str]:
        """Why ``path`` may not be read (``None``: it may)."""
        if self.anywhere:
            return None
        if not self.allowed:
            return "backups are disabled (backup_paths is empty in agent.conf)"
        if not any(is_within(path, root) for root in self.allowed):
            return f"{path} is outside backup_paths ({', '.join(self.allowed)}) in agent.conf"
        store = self.secret_store_of(path)
        if store is not None:
            return (
                f"{path} is a secret store ({store.pattern}) that this host keeps out of "
                "backups and downloads (name it in backup_paths in agent.conf to allow it)"
            )
        return None

    def secret_store_of(self, path: str) -> Optional[SecretStore]:
        """The deny-list entry ``path`` is in, unless the owner named it in backup_paths."""
        if self.anywhere:
            return None
        for store in self.secret_stores:
            if store.covers(path) and not self._lifted(store, path):
                return store
        return None

    def _lifted(self, store: SecretStore, path: str) -> bool:
        """The owner listed this store, or a path inside it that holds ``path``."""
        return any(store.covers(root) and is_within(path, root) for root in self.allowed)

    def check(self, paths: Sequence[str], what: str = "backup") -> None:
        """Raise :class:`BackupRefused` naming the first path that may not be read.

        A path is checked as written and with its parent's symlinks resolved (restic
        follows those), so ``/srv/link/shadow`` cannot reach ``/etc/shadow``.
        """
        for path in paths:
            for form in dict.fromkeys([normalise_absolute(path), resolved_parent(path)]):
                reason = self.refusal(form)
                if reason is not None:
                    raise BackupRefused(f"{what} refused by this host: {reason}")

    # -- excluding ---------------------------------------------------------------------

    def excludes(self, path: str) -> List[Tuple[str, str]]:
        """``(secret store, restic --exclude pattern)`` for each store inside ``path``."""
        if self.anywhere:
            return []
        shown, real = normalise_absolute(path), resolved_parent(path)
        found: List[Tuple[str, str]] = []
        for store in self.secret_stores:
            for below in dict.fromkeys([shown, real]):
                if store.inside(below) and not any(store.covers(root) for root in self.allowed):
                    pattern = store.restic_pattern(below, shown)
                    if (store.pattern, pattern) not in found:
                        found.append((store.pattern, pattern))
        return found


def resolved_parent(path: str) -> str:
    """``path`` with the symlinks of its parent directories resolved (not of its last name:
    restic stores a symlink as a link)."""
    path = normalise_absolute(path)
    if path == "/":
        return path
    return normalise_absolute(
        posixpath.join(os.path.realpath(posixpath.dirname(path)), posixpath.basename(path))
    )


def policy_of(setup: Any) -> BackupPolicy:
    """The policy a job or an rpc runs under (``setup``: a ``ResticSetup`` or ``RpcRunner``)."""
    return BackupPolicy(setup.backup_paths, agent_home=setup.agent_home)
