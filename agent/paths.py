"""Where the agent keeps its files, and how it writes them (atomically, 0600)."""

import contextlib
import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any, List, Mapping, Optional, Set, Tuple, Union

DEFAULT_HOME = "/var/lib/restic-manager-agent"
HOME_ENV = "RM_AGENT_HOME"
FILE_MODE = 0o600
DIR_MODE = 0o700
_HOME_PREFIXES = ("${HOME}", "$HOME", "~")

PathLike = Union[str, "os.PathLike[str]"]


def resolve_home(home: Optional[PathLike] = None) -> Path:
    """``--home`` wins over ``RM_AGENT_HOME``, which wins over the default."""
    chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(chosen).expanduser().absolute()


def expand_home(path: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """A leading ``$HOME``, ``${HOME}`` or ``~`` replaced by the agent's ``HOME``.

    ``~user`` is not expanded (it stays relative, and is refused as such). ``ValueError``
    when the path needs ``HOME`` and the agent has none.
    """
    environ = os.environ if environ is None else environ
    for prefix in _HOME_PREFIXES:
        rest = path[len(prefix) :]
        if path.startswith(prefix) and (rest == "" or rest.startswith("/")):
            home = environ.get("HOME") or ""
            if not home.startswith("/"):
                raise ValueError(f"{path} needs HOME, but the agent's HOME is not set")
            return home.rstrip("/") + rest if rest else home
    return path


def normalise_absolute(path: str) -> str:
    """Absolute, without ``..``, ``.`` and doubled slashes; ``ValueError`` when relative."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    return "/" + posixpath.normpath(path).lstrip("/")


def path_list(
    spec: str, keywords: Tuple[str, ...], environ: Optional[Mapping[str, str]] = None
) -> Tuple[List[str], Set[str]]:
    """An agent.conf path list (``backup_paths``, ``restore_paths``): its absolute paths
    (``$HOME`` expanded, normalised) and which of ``keywords`` (``*``, ...) it names.
    ``ValueError`` for an entry that is neither."""
    paths: List[str] = []
    named: Set[str] = set()
    for entry in (part.strip() for part in spec.split(",")):
        if entry in keywords:
            named.add(entry)
        elif entry:
            paths.append(normalise_absolute(expand_home(entry, environ)))
    return paths, named


class AgentPaths:
    """The files inside the agent's home directory."""

    def __init__(self, home: PathLike):
        self.home = Path(home)
        self.config = self.home / "agent.conf"
        self.state = self.home / "state.json"
        self.secrets = self.home / "secrets.sealed"
        self.schedules = self.home / "schedules.sealed"
        self.queued_runs = self.home / "queued-runs.sealed"
        self.schedule_state = self.home / "schedule_state.json"
        self.seen_commands = self.home / "seen_commands.json"
        self.status = self.home / "status.json"
        self.spool = self.home / "spool"
        self.cache = self.home / "cache"

    def ensure(self) -> None:
        """Create the home directory (0700) if it is missing."""
        make_private_dir(self.home)

    def __repr__(self) -> str:
        return f"AgentPaths({str(self.home)!r})"


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    descriptor = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` so that a reader sees the old or the new file, never a torn one."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any, mode: int = FILE_MODE) -> None:
    data = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(path, data, mode)


def read_json(path: Path, default: Any = None) -> Any:
    """The parsed file, or ``default`` when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default
