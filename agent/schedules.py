"""The schedule set a ``schedule.set`` command carries (docs/protocol.md, "Schedules on the
agent"): its validation, the backup params it yields, and its sealed copy on disk.

The set holds hook bodies (shell commands that run as root), so it is sealed like the
repository credentials and shown without them.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from croniter import croniter

from agent.config import ConfigError, SecretStore
from agent.jobparams import InvalidParams, backup_params, bandwidth_limit, hook

SCHEDULES_ASSOCIATED_DATA = b"restic-manager-agent:schedules"
MISSED_POLICIES = ("run_once", "skip")


class InvalidScheduleSet(ValueError):
    """The command's payload is not a usable schedule set; ``str()`` says why."""


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    paths: List[str]
    excludes: List[str] = field(default_factory=list)
    pre_hook: Optional[str] = None
    post_hook: Optional[str] = None
    retry_max: int = 0  # a failed scheduled backup is tried again this many times
    retry_backoff_seconds: int = 300


@dataclass(frozen=True)
class Schedule:
    id: int
    name: str
    cron: str
    enabled: bool
    missed_policy: str
    group_ids: List[int]


@dataclass(frozen=True)
class ScheduleSet:
    version: int
    groups: Dict[int, Group]
    schedules: List[Schedule]
    limit_upload_kib: Optional[int] = None
    limit_download_kib: Optional[int] = None
    hooks_allowed_by_server: bool = True

    def backup_params(self, group: Group) -> Dict[str, Any]:
        """The params of the backup a schedule starts for ``group`` (hooks included)."""
        params: Dict[str, Any] = {
            "group": group.name,
            "paths": list(group.paths),
            "excludes": list(group.excludes),
            "tags": [group.name],
            "limit_upload_kib": self.limit_upload_kib,
            "limit_download_kib": self.limit_download_kib,
        }
        if self.hooks_allowed_by_server:
            params["pre_hook"] = group.pre_hook
            params["post_hook"] = group.post_hook
        return params

    def summary(self) -> Dict[str, Any]:
        """What ``restic-manager-agent status`` shows: everything but the hook bodies."""
        return {
            "version": self.version,
            "limits": {
                "upload_kib": self.limit_upload_kib,
                "download_kib": self.limit_download_kib,
            },
            "groups": [
                {
                    "id": group.id,
                    "name": group.name,
                    "paths": group.paths,
                    "excludes": group.excludes,
                    "pre_hook": bool(group.pre_hook),
                    "post_hook": bool(group.post_hook),
                }
                for group in self.groups.values()
            ],
            "schedules": [
                {
                    "id": schedule.id,
                    "name": schedule.name,
                    "cron": schedule.cron,
                    "enabled": schedule.enabled,
                    "missed_policy": schedule.missed_policy,
                    "groups": [self.groups[group_id].name for group_id in schedule.group_ids],
                }
                for schedule in self.schedules
            ],
        }


def parse_schedule_set(payload: Any) -> ScheduleSet:
    """Validate a ``schedule.set`` payload; raises :class:`InvalidScheduleSet`."""
    if not isinstance(payload, Mapping):
        raise InvalidScheduleSet("the payload must be an object")
    version = payload.get("version")
    if not _whole(version):
        raise InvalidScheduleSet("version: must be a non-negative integer")
    limits = payload.get("limits") or {}
    if not isinstance(limits, Mapping):
        raise InvalidScheduleSet("limits: must be an object")
    try:  # the host's caps, resolved by the server: guarded like a backup's own
        upload = bandwidth_limit(limits.get("upload_kib"), "limits.upload_kib")
        download = bandwidth_limit(limits.get("download_kib"), "limits.download_kib")
    except InvalidParams as error:
        raise InvalidScheduleSet(str(error)) from None
    groups: Dict[int, Group] = {}
    for item in _list(payload, "groups"):
        group = _group(item)
        if group.id in groups:
            raise InvalidScheduleSet(f"groups: id {group.id} appears twice")
        groups[group.id] = group
    schedules = [_schedule(item, groups) for item in _list(payload, "schedules")]
    return ScheduleSet(
        version=version,
        groups=groups,
        schedules=schedules,
        limit_upload_kib=upload,
        limit_download_kib=download,
        hooks_allowed_by_server=payload.get("hooks_allowed_by_server", True) is not False,
    )


def _group(item: Any) -> Group:
    if not isinstance(item, Mapping) or not _whole(item.get("id")):
        raise InvalidScheduleSet("groups: each needs an integer id")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidScheduleSet(f"group {item['id']}: name must be a non-empty string")
    try:
        params = backup_params({"paths": item.get("paths"), "excludes": item.get("excludes")})
        pre_hook, post_hook = hook(item, "pre_hook"), hook(item, "post_hook")
        backup_params({"paths": params.paths, "tags": [name]})  # a name restic can tag with
    except InvalidParams as error:
        raise InvalidScheduleSet(f"group {name!r}: {error}") from None
    retry_max = item.get("retry_max", 0)
    backoff = item.get("retry_backoff_seconds", 300)
    if not _whole(retry_max) or retry_max > 20 or not _whole(backoff) or not 1 <= backoff <= 86400:
        raise InvalidScheduleSet(f"group {name!r}: retry_max 0-20, retry_backoff_seconds 1-86400")
    return Group(
        item["id"], name, params.paths, params.excludes, pre_hook, post_hook, retry_max, backoff
    )


def _schedule(item: Any, groups: Mapping[int, Group]) -> Schedule:
    if not isinstance(item, Mapping) or not _whole(item.get("id")):
        raise InvalidScheduleSet("schedules: each needs an integer id")
    label = f"schedule {item['id']}"
    cron = item.get("cron")
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidScheduleSet(f"{label}: cron {cron!r} is not a five-field cron expression")
    policy = item.get("missed_policy", "run_once")
    if policy not in MISSED_POLICIES:
        raise InvalidScheduleSet(f"{label}: missed_policy must be run_once or skip")
    group_ids = item.get("groups")
    if not isinstance(group_ids, list) or not all(_whole(group_id) for group_id in group_ids):
        raise InvalidScheduleSet(f"{label}: groups must be a list of group ids")
    unknown = [group_id for group_id in group_ids if group_id not in groups]
    if unknown:
        raise InvalidScheduleSet(f"{label}: unknown groups {unknown}")
    return Schedule(
        id=item["id"],
        name=str(item.get("name") or label),
        cron=cron,
        enabled=item.get("enabled", True) is not False,
        missed_policy=policy,
        group_ids=list(group_ids),
    )


def _list(payload: Mapping[str, Any], key: str) -> List[Any]:
    value = payload.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidScheduleSet(f"{key}: must be a list")
    return value


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ScheduleStore:
    """``schedules.sealed``: the applied set, sealed under the agent's local key."""

    def __init__(self, path: Path, key: bytes):
        self._sealed = SecretStore(path, key, SCHEDULES_ASSOCIATED_DATA)

    def save(self, payload: Mapping[str, Any]) -> None:
        self._sealed.save(dict(payload))

    def load(self) -> Optional[ScheduleSet]:
        """The applied set; ``None`` when none was received (or it cannot be read)."""
        try:
            payload = self._sealed.load()
        except (ConfigError, ValueError):
            return None
        if payload is None:
            return None
        try:
            return parse_schedule_set(payload)
        except InvalidScheduleSet:
            return None

    def exists(self) -> bool:
        return os.path.exists(self._sealed.path)
