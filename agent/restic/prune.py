"""``restic prune``: text only in every version (restic-cli.md §1); an exclusive lock."""

from typing import Tuple


def prune_argv(binary: str = "restic") -> Tuple[str, ...]:
    return (binary, "prune")
