"""``restic ls --json``: the snapshot line, then one line per node (samples 40, 41).

Each line is keyed on ``message_type`` (0.17+) or ``struct_type`` (every version). With
directories given, restic prints each directory itself and its direct children (0.14:
``ls <id> /`` prints only the top level, no node for ``/``); ``--recursive`` goes all the
way down. A snapshot id that matches nothing prints no snapshot line at all and, on 0.14,
still exits 0 (``Ignoring "…": no matching ID found``).
"""

import posixpath
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent.restic.messages import json_object

NODE_TYPES = ("file", "dir", "symlink", "dev", "chardev", "fifo", "socket")


def ls_argv(
    binary: str, snapshot_id: str, paths: Sequence[str] = (), recursive: bool = False
) -> Tuple[str, ...]:
    """``--no-lock``: browsing never waits for, nor blocks, a backup."""
    argv: List[str] = [binary, "--no-lock", "ls", "--json"]
    if recursive:
        argv.append("--recursive")
    return (*argv, snapshot_id, *paths)


def normalise_path(path: str) -> str:
    """``/srv//data/`` → ``/srv/data`` (POSIX keeps a leading ``//``; restic does not)."""
    normalised = posixpath.normpath(path)
    return "/" + normalised.lstrip("/") if normalised.startswith("//") else normalised


def read_ls_line(line: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``("snapshot", …)`` or ``("node", …)``; ``None`` for anything else."""
    message = json_object(line)
    if message is None:
        return None
    kind = message.get("message_type") or message.get("struct_type")
    if kind == "snapshot" or (kind == "node" and isinstance(message.get("path"), str)):
        return kind, message
    return None


def node_item(node: Dict[str, Any]) -> Dict[str, Any]:
    """The ``rpc.ls`` item of a node: ``size`` for files only."""
    node_type = node.get("type") if node.get("type") in NODE_TYPES else None
    size = node.get("size") if node_type == "file" else None
    return {
        "name": str(node.get("name") or posixpath.basename(node["path"])),
        "type": node_type,
        "path": node["path"],
        "size": int(size) if isinstance(size, int) else (0 if node_type == "file" else None),
        "mtime": node.get("mtime"),
        "mode": node.get("mode"),
        "permissions": node.get("permissions"),
    }


class LsReader:
    """Fed ``ls --json`` line by line: keeps the snapshot line, hands each node to ``take``."""

    def __init__(self):
        self.snapshot: Optional[Dict[str, Any]] = None

    def feed(self, line: str) -> None:
        read = read_ls_line(line)
        if read is None:
            return
        kind, message = read
        if kind == "snapshot":
            self.snapshot = message
        else:
            self.take(message)

    def take(self, node: Dict[str, Any]) -> None:
        raise NotImplementedError


class DirectoryListing(LsReader):
    """``ls --json <id> <path>``: keeps the direct children of ``path``."""

    def __init__(self, path: str, max_entries: int):
        super().__init__()
        self.path = normalise_path(path)
        self.max_entries = max_entries
        self.node: Optional[Dict[str, Any]] = None  # the directory itself (never for "/")
        self.items: List[Dict[str, Any]] = []
        self.truncated = False

    def take(self, node: Dict[str, Any]) -> None:
        if node["path"] == self.path:
            self.node = node
        elif posixpath.dirname(node["path"]) == self.path and node["path"] != "/":
            if len(self.items) < self.max_entries:
                self.items.append(node_item(node))
            else:
                self.truncated = True

    @property
    def found(self) -> bool:
        return self.path == "/" or self.node is not None

    @property
    def is_directory(self) -> bool:
        return self.path == "/" or (self.node is not None and self.node.get("type") == "dir")


class SelectionSize(LsReader):
    """``ls --json --recursive <id> [path…]``: how many files and bytes a restore has."""

    def __init__(self):
        super().__init__()
        self.files = 0
        self.bytes = 0

    def take(self, node: Dict[str, Any]) -> None:
        if node.get("type") == "file":
            size = node.get("size")
            self.files += 1
            self.bytes += size if isinstance(size, int) and size > 0 else 0


class NodeIndex(LsReader):
    """``ls --json <id> dir…``: the nodes whose path is wanted (sizes for ``diff``)."""

    def __init__(self, wanted: Sequence[str]):
        super().__init__()
        self.wanted = set(wanted)
        self.nodes: Dict[str, Dict[str, Any]] = {}

    def take(self, node: Dict[str, Any]) -> None:
        if node["path"] in self.wanted:
            self.nodes[node["path"]] = node
