"""``restic dump <id> <file>``: the file's bytes on stdout, nothing else.

``--no-lock`` like every browsing call. A directory would come out as a tar archive, so
the agent looks the path up with ``ls`` first and dumps regular files only. A path that is
not in the snapshot: ``cannot dump file: path "…" not found in snapshot`` (0.14, exit 2).
"""

from typing import Tuple


def dump_argv(binary: str, snapshot_id: str, path: str) -> Tuple[str, ...]:
    return (binary, "--no-lock", "dump", snapshot_id, path)
