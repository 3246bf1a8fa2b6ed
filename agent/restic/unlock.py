"""``restic unlock``: removes stale locks only (or every lock with ``--remove-all``).

Stale means older than 30 minutes, or made on this host by a process that no longer
exists: exactly what a restic killed by a signal leaves behind (samples E40 to E52).
"""

from typing import Sequence, Tuple

# Subcommands that never lock the repository; ``--no-lock`` opts the others out.
_LOCK_FREE = frozenset({"init", "unlock", "version"})


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
