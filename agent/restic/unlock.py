"""``restic unlock`` and restic's locks: which commands take one, and ``--retry-lock``.

``unlock`` removes stale locks only (or every lock with ``--remove-all``). Stale means
older than 30 minutes, or made on this host by a process that no longer exists: exactly
what a restic killed by a signal leaves behind (samples E40 to E52). A live lock, even
another host's, is left alone (E23), so running it is always safe.
"""

from typing import Optional, Sequence, Tuple

from agent.restic.version import RETRY_LOCK, at_least

# Subcommands that never lock the repository; ``--no-lock`` opts the others out.
_LOCK_FREE = frozenset({"init", "unlock", "version"})
RETRY_LOCK_DURATION = "2m"


def unlock_argv(binary: str = "restic", remove_all: bool = False) -> Tuple[str, ...]:
    if remove_all:
        return (binary, "unlock", "--remove-all")
    return (binary, "unlock")


def takes_lock(argv: Sequence[str]) -> bool:
    """Would this restic command leave a lock behind if it were killed?"""
    if "--no-lock" in argv:
        return False
    subcommand = next((word for word in argv[1:] if not word.startswith("-")), "")
    return subcommand not in _LOCK_FREE


def with_retry_lock(argv: Sequence[str], restic_version: Optional[str]) -> Tuple[str, ...]:
    """``argv`` with ``--retry-lock=2m`` where restic has it (0.16+) and the command locks:
    restic then waits for another process's lock instead of failing at once.

    Written with ``=`` so the duration is never mistaken for the subcommand.
    """
    if not takes_lock(argv) or not at_least(restic_version, RETRY_LOCK):
        return tuple(argv)
    return (argv[0], f"--retry-lock={RETRY_LOCK_DURATION}", *argv[1:])
