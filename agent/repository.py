"""The one place that binds the repository credentials to their secret masking and to the
environment restic runs with (jobs, rpc calls and the host facts all come here).

The stored credentials are what ``config.update`` sealed: the everyday repository
(``url``, ``username``, ``password``) and, beside it, an optional ``admin_repository``
(for forget and prune on an append-only everyday credential). Every secret of both is
masked in whatever restic prints, whichever of them a command runs with.
"""

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from agent.restic.environment import Masker, restic_environment, secrets_of

Credentials = Dict[str, Any]
CREDENTIAL_KEYS = ("url", "username", "password")


class Repository:
    """The repository as this agent reaches it: credentials, masker, restic environment."""

    def __init__(self, stored: Optional[Mapping[str, Any]], cache_dir: Optional[Path] = None):
        stored = stored or {}
        admin = stored.get("admin_repository")
        self._everyday = only_credentials(stored)
        self._admin = only_credentials(admin) if isinstance(admin, Mapping) else None
        self.cache_dir = cache_dir
        self.masker = Masker(secrets_of(stored) + secrets_of(self._admin))

    @property
    def everyday(self) -> Optional[Credentials]:
        """The everyday credentials, if the server sent them."""
        return dict(self._everyday) if self._everyday.get("url") else None

    @property
    def admin(self) -> Optional[Credentials]:
        """The admin credentials, if the server sent them."""
        return dict(self._admin) if self._admin and self._admin.get("url") else None

    def environment(
        self, credentials: Optional[Mapping[str, Any]], progress_fps: float = 1
    ) -> Dict[str, str]:
        """A fresh environment for one restic run with ``credentials`` (``None``: none)."""
        return restic_environment(credentials, self.cache_dir, progress_fps=progress_fps)


def only_credentials(source: Mapping[str, Any]) -> Credentials:
    """``url``, ``username`` and ``password`` of ``source``, where they are strings."""
    return {key: source[key] for key in CREDENTIAL_KEYS if isinstance(source.get(key), str)}
