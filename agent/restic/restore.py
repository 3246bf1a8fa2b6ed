"""``restic restore <id> --target T [--include p]… [--verify]`` (samples 70 to 76, E61).

0.14 and 0.15 print one text line (``restoring <Snapshot …> to T``), ``--verify`` two more;
``--json`` is ignored there and honoured from 0.16 (status and summary lines, restic-cli.md
§2.2). A file restic cannot restore: ``ignoring error for <path>: <reason>`` on stderr, then
``Fatal: There were N errors`` and exit 1 (0.17.1+: a JSON ``error`` line instead).
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from agent.restic.messages import clean, json_object
from agent.restic.version import Version, at_least

RESTORE_JSON: Version = (0, 16, 0)
_PATTERN_CHARACTERS = re.compile(r"([*?\[\\])")
_IGNORED_ERROR = re.compile(r"^ignoring error for (?P<path>.+?): (?P<reason>.*)$")
_FILE_COUNTS = (
    ("files_done", "files_restored"),
    ("total_files", "total_files"),
    ("bytes_done", "bytes_restored"),
    ("total_bytes", "total_bytes"),
)

# What a stdout line is: ("progress", data) | ("summary", counts) | ("text", line) | ("skip", None)
Line = Tuple[str, Any]


def escape_pattern(path: str) -> str:
    """A literal path as an ``--include`` pattern: ``/srv/a*b.txt`` → ``/srv/a\\*b.txt``."""
    return _PATTERN_CHARACTERS.sub(r"\\\1", path)


def restore_argv(
    binary: str,
    snapshot_id: str,
    target: str,
    includes: Sequence[str] = (),
    verify: bool = False,
    version: Optional[str] = None,
) -> Tuple[str, ...]:
    argv: List[str] = [binary, "restore"]
    if at_least(version, RESTORE_JSON):
        argv.append("--json")
    argv += [snapshot_id, "--target", target]
    for path in includes:
        argv += ["--include", escape_pattern(path)]
    if verify:
        argv.append("--verify")
    return tuple(argv)


def read_stdout_line(line: str) -> Line:
    """Sort one stdout line of ``restore`` (JSON from 0.16, text before)."""
    message = json_object(line)
    if message is None:
        if line.lstrip().startswith('{"message_type"'):
            return ("skip", None)  # cut short when restic was stopped
        return ("text", clean(line))
    kind = message.get("message_type")
    if kind == "status":
        return ("progress", progress(message))
    if kind == "summary":
        return ("summary", counts(message))
    if kind == "verbose_status":
        return ("skip", None)
    return ("text", line)


def progress(status: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``job.progress`` data of a 0.16+ ``status`` line."""
    percent = min(max(_number(status.get("percent_done")) * 100, 0.0), 100.0)
    data: Dict[str, Any] = {"percent": round(percent, 2)}
    data.update(counts(status, progress_names=True))
    data["seconds_elapsed"] = int(_number(status.get("seconds_elapsed")))
    return data


def counts(message: Mapping[str, Any], progress_names: bool = False) -> Dict[str, int]:
    """``files_restored``, ``bytes_restored``, ``total_files``, ``total_bytes`` (absent: 0)."""
    return {
        (ours if progress_names else theirs): int(_number(message.get(theirs)))
        for ours, theirs in _FILE_COUNTS
    }


def ignored_error(line: str) -> Optional[str]:
    """``<path>: <reason>`` of an ``ignoring error for …`` line (or a 0.17.1+ JSON error)."""
    message = json_object(line)
    if message is not None and message.get("message_type") == "error":
        error = message.get("error")
        reason = error.get("message") if isinstance(error, dict) else error
        return f"{message.get('item') or '(unknown item)'}: {reason or 'unknown error'}"
    match = _IGNORED_ERROR.match(clean(line))
    return f"{match.group('path')}: {match.group('reason')}" if match else None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)
