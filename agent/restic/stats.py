"""``restic stats --json --mode raw-data``: the repository's stored size (samples 60 to 64).

0.14 prints ``total_size``, ``total_file_count``, ``total_blob_count``, ``snapshots_count``;
0.15 adds the compression fields, and every field is left out when it is zero.
"""

import json
from typing import Any, Dict, Optional, Tuple

from agent.restic.errors import UnexpectedOutput
from agent.restic.units import format_bytes

_COUNTS = ("total_size", "total_blob_count", "snapshots_count")
_OPTIONAL = ("total_uncompressed_size", "compression_ratio")  # absent before 0.15


def stats_argv(binary: str = "restic") -> Tuple[str, ...]:
    return (binary, "--no-lock", "stats", "--json", "--mode", "raw-data")


def parse_raw_data_stats(stdout: str) -> Dict[str, Any]:
    """The ``repo.stats`` event data; raises :class:`UnexpectedOutput`."""
    try:
        document = json.loads(stdout)
    except ValueError:
        raise UnexpectedOutput("restic stats printed something that is not JSON") from None
    if not isinstance(document, dict):
        raise UnexpectedOutput("restic stats printed JSON that is not an object")
    stats: Dict[str, Any] = {"mode": "raw-data"}
    for key in _COUNTS:
        stats[key] = _number(document.get(key)) or 0
    for key in _OPTIONAL:
        stats[key] = _number(document.get(key))
    return stats


def stats_line(stats: Dict[str, Any]) -> str:
    """``repository: 575.1 MiB stored in 490 blobs, 10 snapshots``."""
    line = (
        f"repository: {format_bytes(stats['total_size'])} stored in "
        f"{stats['total_blob_count']} blobs, {stats['snapshots_count']} snapshots"
    )
    if stats.get("compression_ratio"):
        line += f" (compression ratio {stats['compression_ratio']:.2f})"
    return line


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value
