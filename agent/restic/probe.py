"""``restic cat config``: the cheapest call that proves the repository exists and opens.

``--no-lock``: the probe reads one file and must not fail because a backup or prune holds
the lock.
"""

from typing import Tuple


def probe_argv(binary: str = "restic") -> Tuple[str, ...]:
    return (binary, "--no-lock", "cat", "config")


def repo_test_argv(binary: str = "restic") -> Tuple[str, ...]:
    """The probe for settings that are not saved yet: no cache is made for them."""
    return (binary, "--no-cache", "--no-lock", "cat", "config")
