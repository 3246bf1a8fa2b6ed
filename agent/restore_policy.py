"""Where restores may write on this host: ``restore_paths`` in agent.conf (the owner's veto).

A comma-separated list of absolute paths (``$HOME``, ``${HOME}`` and ``~`` allowed), ``*``
for anywhere, empty for nowhere, and the word ``backup_paths``: in-place restores of what
``backup_paths`` lets the agent back up, except the system directories below. A path is
allowed when it is one of the listed paths or below one, compared after resolving the
symlinks of the part that exists (so a symlink inside an allowed directory cannot lead a
restore out of it). The default, ``$HOME/rm-restore, backup_paths``, never lets a restore
write into ``/etc``.
"""

import os
from typing import Mapping, Optional, Sequence

from agent.backup_policy import BackupPolicy, is_within
from agent.config import DEFAULT_BACKUP_PATHS, ConfigError
from agent.paths import DEFAULT_HOME, normalise_absolute, path_list

ANYWHERE = "*"
BACKED_UP = "backup_paths"
# Never written by an in-place restore that only ``backup_paths`` allows: putting back an
# old /etc/passwd, a sudoers file, a cron job or a library is a way to root, so the owner
# must list these in restore_paths by name.
SYSTEM_DIRECTORIES = (
    "/etc",
    "/root",
    "/boot",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/var/spool/cron",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    DEFAULT_HOME,
)


class RestoreRefused(Exception):
    """The restore would write where ``restore_paths`` does not allow; ``str()`` says why."""


def resolved(path: str) -> str:
    """``path`` with the symlinks of its existing part resolved."""
    return os.path.realpath(path)


class RestorePolicy:
    """The parsed ``restore_paths``; ``check`` raises :class:`RestoreRefused`.

    ``backup`` is the host's :class:`BackupPolicy`, which the word ``backup_paths`` refers to.
    """

    def __init__(
        self,
        spec: str,
        environ: Optional[Mapping[str, str]] = None,
        backup: Optional[BackupPolicy] = None,
    ):
        self.spec = spec
        self.backup = backup
        try:
            self.allowed, named = path_list(spec, (ANYWHERE, BACKED_UP), environ)
        except ValueError as error:
            raise ConfigError(
                f"restore_paths in agent.conf: {error} (use absolute paths, $HOME/…, "
                f"{BACKED_UP} for in-place restores of what may be backed up, "
                "or * for anywhere)"
            ) from None
        self.anywhere = ANYWHERE in named
        self.backed_up = BACKED_UP in named
        if self.backed_up and self.backup is None:
            self.backup = BackupPolicy(DEFAULT_BACKUP_PATHS)

    def allows(self, path: str) -> bool:
        """``path`` is below one of the listed paths (the word ``backup_paths`` aside)."""
        if self.anywhere:
            return True
        real = resolved(path)
        return any(is_within(real, resolved(allowed)) for allowed in self.allowed)

    def in_place_refusal(self, path: str) -> Optional[str]:
        """Why the word ``backup_paths`` does not let an in-place restore write ``path``."""
        assert self.backup is not None
        for form in dict.fromkeys([normalise_absolute(path), resolved(path)]):
            reason = self.backup.refusal(form)
            if reason is not None:
                return reason
            for directory in SYSTEM_DIRECTORIES:
                if is_within(form, directory) or is_within(directory, form):
                    return f"{form} is or holds the system directory {directory}"
            for store in self.backup.secret_stores:
                if store.covers(form) or store.inside(form):
                    return f"{form} is or holds the secret store {store.pattern}"
        return None

    def check(self, paths: Sequence[str], in_place: bool = False) -> None:
        """Raise :class:`RestoreRefused` naming the first path that is not allowed."""
        if not self.anywhere and not self.allowed and not self.backed_up:
            raise RestoreRefused(
                "restore refused by this host: restores are disabled "
                "(restore_paths is empty in agent.conf)"
            )
        for path in paths:
            if self.allows(path):
                continue
            if in_place and self.backed_up:
                reason = self.in_place_refusal(path)
                if reason is None:
                    continue
                raise RestoreRefused(
                    f"restore refused by this host: an in-place restore may not write {path}: "
                    f"{reason}; restore_paths in agent.conf allows {self._listed()}"
                )
            raise RestoreRefused(
                f"restore refused by this host: {path} is outside restore_paths "
                f"({self._listed()}) in agent.conf"
            )

    def _listed(self) -> str:
        entries = list(self.allowed)
        if self.backed_up:
            entries.append(f"{BACKED_UP} (in place)")
        return ", ".join(entries) or "nothing"
