"""``restic version``: text in every version (``restic 0.14.0 compiled with go1.19.8 …``).

The agent asks once (agent/facts.py) and gates version-dependent flags on the answer; an
unknown version is treated as the oldest supported one (0.14), whose output every later
version still understands.
"""

import re
from typing import Optional, Tuple

_VERSION = re.compile(r"^restic (\d+\.\d+\.\d+\S*) compiled with", re.MULTILINE)
_NUMBERS = re.compile(r"^(\d+)\.(\d+)\.(\d+)")

Version = Tuple[int, int, int]
INIT_JSON: Version = (0, 15, 0)  # restic-cli.md §1: init prints text before 0.15.0
REST_ENV: Version = (0, 17, 0)  # RESTIC_REST_USERNAME / RESTIC_REST_PASSWORD
RETRY_LOCK: Version = (0, 16, 0)  # restic-cli.md §5.2: 0.14 says "unknown flag: --retry-lock"


def version_argv(binary: str = "restic") -> Tuple[str, ...]:
    return (binary, "version")


def parse_version(output: str) -> Optional[str]:
    match = _VERSION.search(output)
    return match.group(1) if match else None


def version_tuple(version: Optional[str]) -> Optional[Version]:
    """``"0.17.3-dev"`` → ``(0, 17, 3)``; ``None`` when unknown."""
    match = _NUMBERS.match(version or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def at_least(version: Optional[str], minimum: Version) -> bool:
    """True when ``version`` is known and not older than ``minimum``."""
    numbers = version_tuple(version)
    return numbers is not None and numbers >= minimum
