"""Backup hooks: a shell command from the server, run with ``/bin/sh -c`` through the one
subprocess seam (docs/protocol.md, "Hooks").

A hook gets stdin closed, a fresh environment of a few safe variables plus its ``RM_*``
ones (never a ``RESTIC_*`` one: the repository credentials are not the hook's business),
``/`` as its working directory, and a process group of its own, so a cancel or a timeout
stops the shell's children with it.
"""

import os
import threading
from typing import Dict, Mapping, Optional

from agent.restic import execute
from agent.restic.environment import DEFAULT_PATH, Masker
from agent.restic.errors import ResticNotInstalled

HOOK_TIMEOUT_SECONDS = 3600.0
HOOK_SHELL = "/bin/sh"
_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def hook_environment(
    variables: Mapping[str, str], base: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """A fresh environment for a hook: a few safe variables plus ``RM_*`` ones."""
    base = os.environ if base is None else base
    env = {name: base[name] for name in _PASS_THROUGH if name in base}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({name: str(value) for name, value in variables.items()})
    return env


def run_hook(
    command: str,
    variables: Mapping[str, str],
    on_line: Optional[execute.LineHandler] = None,
    cancel: Optional[threading.Event] = None,
    masker: Optional[Masker] = None,
    timeout: float = HOOK_TIMEOUT_SECONDS,
    grace_seconds: float = execute.GRACE_SECONDS,
) -> execute.Outcome:
    """Run a hook to completion; cancel or ``timeout``: SIGINT to its process group, SIGKILL
    after the grace."""
    try:
        return execute.run(
            (HOOK_SHELL, "-c", command),
            hook_environment(variables),
            on_line=on_line,
            cancel=cancel,
            masker=masker,
            grace_seconds=grace_seconds,
            cwd="/",
            timeout=timeout,
            process_group=True,
        )
    except ResticNotInstalled:
        raise ResticNotInstalled(f"{HOOK_SHELL} cannot run the hook") from None
