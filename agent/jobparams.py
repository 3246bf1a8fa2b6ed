"""The agent's guard on ``job.run`` params (docs/protocol.md, "Job kinds").

The server is authoritative: it validates and resolves the params (a backup's bandwidth
caps included) before it queues a job. The agent checks again what arrives, because a
mistake here becomes a restic argument; the vocabulary and ranges are the server's
(app/services/job_params.py), which a contract test proves. Unknown keys are ignored, so a
newer server can add optional params without breaking older agents.

:func:`parse_params` is the one entry point: a kind's raw params in, its typed params out.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from agent.restic.forget import KEEP_FLAGS

# The server's limits (app/services/job_params.py): anything beyond is a typo.
MAX_KIB_PER_SECOND = 10_000_000
MAX_KEEP = 100_000
MAX_DURATION_LENGTH = 32  # keep_within: restic parses each number as a 64-bit integer
MAX_DURATION_NUMBER = 100_000  # each number of keep_within (Go's Duration wraps past 2.5M h)
_KEEP_WITHIN = re.compile(r"^(?:[0-9]+y)?(?:[0-9]+m)?(?:[0-9]+d)?(?:[0-9]+h)?$")
_GROUP_BY_FIELDS = frozenset({"host", "paths", "tags"})
_SUBSET = re.compile(
    r"^(?:(?P<n>\d+)/(?P<t>\d+)|(?P<pct>\d+(?:\.\d+)?)%|(?P<size>\d+[KMGTkmgt]?))$"
)
_SNAPSHOT_ID = re.compile(r"^[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}$")  # the server's TAG_PATTERN
_TARGET_PREFIXES = ("/", "$HOME", "${HOME}", "~")


class InvalidParams(ValueError):
    """The params cannot be used; ``str()`` says which one and why."""


@dataclass
class BackupParams:
    paths: List[str]
    excludes: List[str] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)
    limit_upload_kib: Optional[int] = None
    limit_download_kib: Optional[int] = None
    group: Optional[str] = None
    pre_hook: Optional[str] = None
    post_hook: Optional[str] = None

    @property
    def has_hooks(self) -> bool:
        return bool(self.pre_hook or self.post_hook)


@dataclass
class ForgetParams:
    policy: Dict[str, Any]
    tags: List[str] = field(default_factory=list)
    group_by: Optional[str] = None
    dry_run: bool = False


@dataclass
class RestoreParams:
    snapshot_id: str
    target: str  # as sent: absolute, or starting with $HOME, ${HOME} or ~ (expanded later)
    includes: List[str] = field(default_factory=list)
    in_place: bool = False
    verify: bool = False


@dataclass
class DiffParams:
    snapshot_a: str
    snapshot_b: str


@dataclass
class CheckParams:
    read_data_subset: Optional[str] = None


@dataclass
class UnlockParams:
    remove_all: bool = False


@dataclass
class NoParams:
    """The kinds that take none (probe, init, snapshots, prune, stats)."""


def parse_params(kind: str, params: Mapping[str, Any]) -> Any:
    """The typed params of a ``job.run`` of ``kind``; raises :class:`InvalidParams`.

    Returns :class:`BackupParams`, a list of :class:`ForgetParams` (one restic forget
    each), :class:`CheckParams`, :class:`UnlockParams`, :class:`RestoreParams`,
    :class:`DiffParams` or :class:`NoParams`.
    """
    parser = _PARSERS.get(kind)
    if parser is None:
        raise InvalidParams(f"{kind!r} is not a job kind")
    if not isinstance(params, Mapping):
        raise InvalidParams("params: must be an object")
    return parser(params)


def backup_params(params: Mapping[str, Any]) -> BackupParams:
    paths = _strings(params, "paths")
    if not paths:
        raise InvalidParams("paths: at least one path to back up is needed")
    for path in paths:
        if not os.path.isabs(path):
            raise InvalidParams(f"paths: {path!r} is not an absolute path")
    tags = _tags(params)
    group = params.get("group")
    if group is not None and not isinstance(group, str):
        raise InvalidParams("group: must be a string")
    return BackupParams(
        paths=paths,
        excludes=_strings(params, "excludes"),
        tags=tags,
        limit_upload_kib=bandwidth_limit(params.get("limit_upload_kib"), "limit_upload_kib"),
        limit_download_kib=bandwidth_limit(params.get("limit_download_kib"), "limit_download_kib"),
        group=group,
        pre_hook=hook(params, "pre_hook"),
        post_hook=hook(params, "post_hook"),
    )


def hook(params: Mapping[str, Any], key: str) -> Optional[str]:
    """A shell hook: ``None`` (or blank) for none, else the command for ``/bin/sh -c``."""
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParams(f"{key}: must be null or a shell command")
    if "\0" in value:
        raise InvalidParams(f"{key}: contains a NUL character")
    return value if value.strip() else None


def forget_params(params: Mapping[str, Any]) -> List[ForgetParams]:
    """One restic forget per entry: ``policy`` (+ ``tags``), or ``groups`` — each tag with
    its own policy (the maintenance ticker's forget)."""
    group_by = params.get("group_by")
    if group_by is not None and not _valid_group_by(group_by):
        raise InvalidParams("group_by: a comma-separated list of host, paths, tags")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidParams("dry_run: must be true or false")
    groups = params.get("groups")
    if groups is None:
        policy = _policy(params.get("policy"), "policy")
        return [ForgetParams(policy, _tags(params), group_by, dry_run)]
    if not isinstance(groups, list) or not groups:
        raise InvalidParams("groups: must be a non-empty list of {tag, policy}")
    runs = []
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        tag = group.get("tag") if isinstance(group, dict) else None
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise InvalidParams(f"{where}.tag: must be a tag name")
        policy = _policy(group.get("policy"), f"{where}.policy")
        runs.append(ForgetParams(policy, [tag], group_by, dry_run))
    return runs


def _policy(policy: Any, where: str) -> Dict[str, Any]:
    if not isinstance(policy, dict):
        raise InvalidParams(f"{where}: must be an object with at least one keep rule")
    rules: Dict[str, Any] = {}
    for key, _flag in KEEP_FLAGS:
        value = policy.get(key)
        if value is None:
            continue
        if key == "keep_within":
            value = keep_within(value, where)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParams(f"{where}.{key}: must be an integer of at least 1")
        elif value > MAX_KEEP:
            raise InvalidParams(f"{where}.{key}: must be at most {MAX_KEEP}")
        rules[key] = value
    if not rules:
        raise InvalidParams(f"{where}: at least one keep rule is needed (nothing would be kept)")
    return rules


def keep_within(value: Any, where: str) -> str:
    """A duration such as ``1y6m``, ``30d`` or ``12h`` (the server's form, at most 32 long)."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(text) > MAX_DURATION_LENGTH or not _KEEP_WITHIN.match(text):
        raise InvalidParams(f"{where}.keep_within: {value!r:.40} is not like 1y2m3d4h")
    if any(int(number) > MAX_DURATION_NUMBER for number in re.findall(r"[0-9]+", text)):
        raise InvalidParams(
            f"{where}.keep_within: each number must be at most {MAX_DURATION_NUMBER}"
        )
    return text


def check_params(params: Mapping[str, Any]) -> CheckParams:
    """``check``'s ``read_data_subset``: ``None``, ``n/t``, ``x%`` or a size like ``500M``."""
    value = params.get("read_data_subset")
    if value is None:
        return CheckParams()
    match = _SUBSET.match(value) if isinstance(value, str) else None
    size = match.group("size") if match is not None else None
    if match is None or (size is not None and size.startswith("0")):  # the server's rule
        raise InvalidParams(
            f"read_data_subset: {value!r} is not n/t, a percentage (10%) or a size (500M)"
        )
    if match.group("t") is not None and not 1 <= int(match.group("n")) <= int(match.group("t")):
        raise InvalidParams(f"read_data_subset: {value!r} needs 1 <= n <= t")
    if match.group("pct") is not None and not 0 < float(match.group("pct")) <= 100:
        raise InvalidParams(f"read_data_subset: {value!r} must be above 0% and at most 100%")
    return CheckParams(value)


def unlock_params(params: Mapping[str, Any]) -> UnlockParams:
    """``unlock``'s ``remove_all`` (default false)."""
    value = params.get("remove_all", False)
    if not isinstance(value, bool):
        raise InvalidParams("remove_all: must be true or false")
    return UnlockParams(value)


def restore_params(params: Mapping[str, Any]) -> RestoreParams:
    """``restore``: a snapshot, literal absolute include paths, a target or ``in_place``."""
    snapshot_id = snapshot_id_param(params, "snapshot_id")
    includes = _strings(params, "include")
    for path in includes:
        if not path.startswith("/"):
            raise InvalidParams(f"include: {path!r} is not an absolute path")
    in_place, verify = _flag(params, "in_place"), _flag(params, "verify")
    target = params.get("target")
    if in_place:
        if target not in (None, "", "/"):
            raise InvalidParams(f"target: an in-place restore writes to /, not {target!r}")
        target = "/"
    if not isinstance(target, str) or not target:
        raise InvalidParams("target: a directory to restore into is needed")
    if "\0" in target:
        raise InvalidParams("target: contains a NUL character")
    if not any(_has_prefix(target, prefix) for prefix in _TARGET_PREFIXES):
        raise InvalidParams(f"target: {target!r} must be absolute or start with $HOME or ~/")
    if ".." in target.split("/"):
        raise InvalidParams(f"target: {target!r} must not contain .. components")
    if not in_place and target.rstrip("/") == "":
        raise InvalidParams("target: restoring into / is an in-place restore (in_place: true)")
    return RestoreParams(snapshot_id, target, includes, in_place, verify)


def diff_params(params: Mapping[str, Any]) -> DiffParams:
    """``diff``: two snapshots, a (older, the source) and b (newer, the target)."""
    chosen = DiffParams(
        snapshot_id_param(params, "snapshot_a"), snapshot_id_param(params, "snapshot_b")
    )
    if chosen.snapshot_a == chosen.snapshot_b:
        raise InvalidParams("snapshot_b: the two snapshots to compare must differ")
    return chosen


def snapshot_id_param(params: Mapping[str, Any], key: str) -> str:
    """A full snapshot id: 64 lowercase hex digits."""
    value = params.get(key)
    if not isinstance(value, str) or not _SNAPSHOT_ID.match(value):
        raise InvalidParams(f"{key}: must be a full snapshot id (64 hex digits)")
    return value


def _has_prefix(target: str, prefix: str) -> bool:
    if prefix == "/":
        return target.startswith("/")
    rest = target[len(prefix) :]
    return target.startswith(prefix) and (rest == "" or rest.startswith("/"))


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParams(f"{key}: must be true or false")
    return value


def _valid_group_by(value: Any) -> bool:
    """``host,paths`` and the like; empty means one group for everything."""
    return isinstance(value, str) and set(filter(None, value.split(","))) <= _GROUP_BY_FIELDS


def _strings(params: Mapping[str, Any], key: str) -> List[str]:
    value = params.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidParams(f"{key}: must be a list of non-empty strings")
    if any("\0" in item for item in value):
        raise InvalidParams(f"{key}: contains a NUL character")
    return list(value)


def _tags(params: Mapping[str, Any]) -> List[str]:
    """restic tags as the server writes them (no commas: restic would split them)."""
    tags = _strings(params, "tags")
    for tag in tags:
        if "," in tag:
            raise InvalidParams(f"tags: {tag!r} contains a comma (restic would split it)")
        if not _TAG.match(tag):
            raise InvalidParams(f"tags: {tag!r} is not a tag (letters, digits, . _ : @ + -)")
    return tags


def bandwidth_limit(value: Any, key: str) -> Optional[int]:
    """A bandwidth cap as the server resolved it: ``None`` (or 0) for none, else KiB/s.

    Only guarded here, never resolved: the server sends the effective cap of every backup
    (its own override, else the host's) and the host caps of scheduled ones.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParams(f"{key}: must be null or a whole number of KiB/s (0 = unlimited)")
    if value > MAX_KIB_PER_SECOND:
        raise InvalidParams(f"{key}: must be at most {MAX_KIB_PER_SECOND} KiB/s")
    return value or None


def _no_params(params: Mapping[str, Any]) -> NoParams:
    return NoParams()


_PARSERS: Dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "probe": _no_params,
    "init": _no_params,
    "backup": backup_params,
    "forget": forget_params,
    "prune": _no_params,
    "check": check_params,
    "unlock": unlock_params,
    "stats": _no_params,
    "snapshots": _no_params,
    "restore": restore_params,
    "diff": diff_params,
}
