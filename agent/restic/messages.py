"""Reading what restic prints: JSON lines, JSON documents, stderr rendered for people.

restic's stderr is a mix (restic-cli.md §0.1): plain text everywhere, JSON ``error`` lines
from ``backup``, and from 0.18 one JSON ``exit_error`` line when a ``--json`` command fails.
"""

import json
import os
import re
from typing import Any, Dict, Optional

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FATAL_PREFIX = "Fatal: "


def clean(line: str) -> str:
    """A line without terminal escapes (0.14 prints ``\\x1b[2K`` even to a pipe)."""
    return _ANSI.sub("", line).strip()


def json_object(line: str) -> Optional[Dict[str, Any]]:
    """The JSON object on this line; ``None`` for text or a line cut short by a signal."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def error_detail(error: Any) -> str:
    """restic's per-file ``error`` value, whatever the version made of it (§0.7)."""
    if isinstance(error, str) and error:
        return error
    if not isinstance(error, dict) or not error:
        return "no details (restic before 0.17.1 does not report them)"
    if error.get("message"):  # 0.17.1+
        return str(error["message"])
    errno, operation = error.get("Err"), error.get("Op")
    # 0.14 to 0.17.0 marshal the Go error struct: {"Op": "open", "Path": …, "Err": 13}.
    reason = os.strerror(errno) if isinstance(errno, int) and errno > 0 else str(errno or "")
    return f"{operation}: {reason}" if operation else reason or json.dumps(error)


def file_error_text(message: Dict[str, Any]) -> str:
    """``error: /etc/shadow: open: Permission denied (during archival)``."""
    item = message.get("item") or "(unknown item)"
    text = f"error: {item}: {error_detail(message.get('error'))}"
    during = message.get("during")
    return f"{text} (during {during})" if during else text


def exit_error_text(message: Dict[str, Any]) -> str:
    """0.18's ``exit_error`` line as the ``Fatal: …`` text older versions print."""
    text = str(message.get("message") or f"restic exited with status {message.get('code')}")
    return text if text.startswith(_FATAL_PREFIX) else _FATAL_PREFIX + text


def stderr_text(line: str) -> str:
    """One stderr line for people: JSON error lines rendered, escapes removed."""
    message = json_object(line)
    if message is not None:
        if message.get("message_type") == "error":
            return file_error_text(message)
        if message.get("message_type") == "exit_error":
            return exit_error_text(message)
    return clean(line)
