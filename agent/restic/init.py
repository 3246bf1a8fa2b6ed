"""``restic init``: one JSON ``initialized`` line from 0.15.0, text before (sample 01)."""

import re
from typing import Iterable, Optional, Tuple

from agent.restic.messages import json_object
from agent.restic.version import INIT_JSON, at_least

_CREATED = re.compile(r"^created restic repository (\S+) at ")


def init_argv(binary: str = "restic", restic_version: Optional[str] = None) -> Tuple[str, ...]:
    """``--json`` only where restic honours it; 0.14 would print text anyway."""
    if at_least(restic_version, INIT_JSON):
        return (binary, "init", "--json")
    return (binary, "init")


def repository_id(stdout_lines: Iterable[str]) -> Optional[str]:
    """The new repository's id (short in 0.14's text, full in JSON), if restic printed it."""
    for line in stdout_lines:
        message = json_object(line)
        if message is not None and message.get("message_type") == "initialized":
            return str(message.get("id") or "") or None
        match = _CREATED.match(line.strip())
        if match:
            return match.group(1)
    return None
