"""``restic version``: text in every version (``restic 0.14.0 compiled with go1.19.8 …``)."""

import re
from typing import Optional, Tuple

_VERSION = re.compile(r"^restic (\d+\.\d+\.\d+\S*) compiled with", re.MULTILINE)


def version_argv(binary: str = "restic") -> Tuple[str, ...]:
    return (binary, "version")


def parse_version(output: str) -> Optional[str]:
    match = _VERSION.search(output)
    return match.group(1) if match else None
