"""What each job kind accepts, checked before a job is queued (docs/protocol.md "Job kinds")."""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

from sqlalchemy import select

from app.extensions import db
from app.models import Host, SourceGroup
from app.services import retention, rpc, source_groups
from app.services.errors import ValidationFailed
from app.services.validate import TAG

RUNNABLE_KINDS = (
    "backup",
    "forget",
    "prune",
    "check",
    "unlock",
    "stats",
    "snapshots",
    "probe",
    "diff",
)
SYSTEM_KINDS = ("init",)  # queued by the server itself (repository bring-up)
OWN_ENDPOINT_KINDS = ("restore",)  # POST /hosts/{id}/restores (it needs a confirmation)
GROUP_BY = ("host", "paths", "tags")
MAX_KIB_PER_SECOND = 10_000_000  # 10 GB/s: anything above is a typo
_SUBSET_FRACTION = re.compile(r"^(\d+)/(\d+)$")
_SUBSET_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_SUBSET_SIZE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


def _fail(field: str, message: str):
    raise ValidationFailed(message, fields={f"params.{field}": [message]})


def _only(params: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        _fail(unknown[0], f"Unknown parameter {unknown[0]!r} (accepted: {accepted}).")


def _flag(params: dict, key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        _fail(key, f"{key} must be true or false.")
    return value


def _positive(value: Any, key: str, *, maximum: int, allow_zero: bool = False) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        _fail(key, f"{key} must be a whole number ≥ {0 if allow_zero else 1}.")
    if value > maximum:
        _fail(key, f"{key} must be at most {maximum}.")
    return value


def _tags(params: dict) -> list[str]:
    value = params.get("tags", [])
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or len(value) > 20:
        _fail("tags", "tags must be a list of at most 20 tags.")
    for tag in value:
        if not isinstance(tag, str) or not TAG.match(tag):
            _fail("tags", f"{tag!r} is not a valid tag (letters, digits, . _ : @ + -).")
    return list(dict.fromkeys(value))


def _backup(host: Host, params: dict) -> dict:
    _only(params, ("group", "limit_upload_kib", "limit_download_kib"))
    name = params.get("group") or "default"
    if not isinstance(name, str):
        _fail("group", "group must be the name of a source group.")
    group = db.session.scalar(
        select(SourceGroup).where(SourceGroup.host_id == host.id, SourceGroup.name == name)
    )
    if group is None:
        _fail("group", f"{host.hostname} has no source group named {name!r}.")
    if not group.includes:
        _fail("group", f"Source group {name!r} has no paths to back up: add paths first.")
    limits = {}
    for key in ("limit_upload_kib", "limit_download_kib"):
        value = params.get(key)
        limits[key] = (
            getattr(host, key)  # no override for this run: the host-wide cap (or none)
            if value in (None, "", 0)
            else _positive(value, key, maximum=MAX_KIB_PER_SECOND)
        )
    return {
        "group": group.name,
        "paths": list(group.includes),
        "excludes": list(group.excludes or []),
        "tags": [group.name],
        **limits,
    }


def sealed_params(box, host: Host, kind: str, params: dict) -> Optional[dict]:
    """What a job.run carries only in its sealed part: a backup's hooks (group's own, else
    the host's default). Never stored in the job's params nor shown by the API."""
    if kind != "backup":
        return None
    group = db.session.scalar(
        select(SourceGroup).where(
            SourceGroup.host_id == host.id, SourceGroup.name == params["group"]
        )
    )
    hooks = {name: text for name, text in source_groups.open_hooks(box, group).items() if text}
    return hooks or None


def _forget(host: Host, params: dict) -> dict:
    """One policy (optionally for some tags), or ``groups``: each tag with its own policy
    (what the maintenance ticker sends: every source group's retention for its tag)."""
    _only(params, ("policy", "tags", "groups", "group_by", "dry_run"))
    group_by = params.get("group_by") or "host,paths"
    if not isinstance(group_by, str) or not all(part in GROUP_BY for part in group_by.split(",")):
        _fail("group_by", "group_by is a comma-separated list of host, paths and tags.")
    common = {"group_by": group_by, "dry_run": _flag(params, "dry_run")}
    if params.get("groups") is not None:
        if "policy" in params or "tags" in params:
            _fail("groups", "Give either groups or policy (with tags), not both.")
        return {"groups": _forget_groups(params["groups"]), **common}
    policy = retention.retention_policy(params.get("policy"), field="params.policy")
    return {"policy": policy, "tags": _tags(params), **common}


def _forget_groups(value: Any) -> list[dict]:
    if not isinstance(value, list) or not 1 <= len(value) <= 100:
        _fail("groups", "groups must be a list of 1 to 100 {tag, policy} objects.")
    groups, seen = [], set()
    for index, item in enumerate(value):
        where = f"groups[{index}]"
        if not isinstance(item, dict) or set(item) - {"tag", "policy"}:
            _fail(where, f"{where} must be an object with tag and policy.")
        tag = item.get("tag")
        if not isinstance(tag, str) or not TAG.match(tag):
            _fail(f"{where}.tag", f"{tag!r} is not a valid tag (letters, digits, . _ : @ + -).")
        if tag in seen:
            _fail(f"{where}.tag", f"Tag {tag!r} is listed twice.")
        seen.add(tag)
        policy = retention.retention_policy(item.get("policy"), field=f"params.{where}.policy")
        groups.append({"tag": tag, "policy": policy})
    return groups


def read_data_subset(value: Any) -> str | None:
    """restic's ``--read-data-subset``: ``n/t``, ``x%`` or a size such as ``500M``."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        _fail("read_data_subset", "read_data_subset must be text such as 10%, 1/5 or 500M.")
    value = value.strip()
    fraction = _SUBSET_FRACTION.match(value)
    if fraction:
        part, total = int(fraction.group(1)), int(fraction.group(2))
        if not 1 <= part <= total:
            _fail("read_data_subset", "In n/t, n must be between 1 and t.")
        return value
    percent = _SUBSET_PERCENT.match(value)
    if percent:
        if not 0 < float(percent.group(1)) <= 100:
            _fail("read_data_subset", "A percentage must be above 0 and at most 100.")
        return value
    if _SUBSET_SIZE.match(value) and not value.startswith("0"):
        return value.upper()
    _fail("read_data_subset", "read_data_subset must look like 10%, 1/5 or 500M.")


def _check(host: Host, params: dict) -> dict:
    _only(params, ("read_data_subset",))
    return {"read_data_subset": read_data_subset(params.get("read_data_subset"))}


def _unlock(host: Host, params: dict) -> dict:
    _only(params, ("remove_all",))
    return {"remove_all": _flag(params, "remove_all")}


def _diff(host: Host, params: dict) -> dict:
    _only(params, ("snapshot_a", "snapshot_b"))
    chosen = {}
    for key in ("snapshot_a", "snapshot_b"):
        try:
            chosen[key] = rpc.resolve_snapshot(host, params.get(key)).snapshot_id
        except ValidationFailed as refused:
            _fail(key, refused.message.replace("snapshot_id", key))
    if chosen["snapshot_a"] == chosen["snapshot_b"]:
        _fail("snapshot_b", "Pick two different snapshots to compare.")
    return chosen


def _nothing(host: Host, params: dict) -> dict:
    _only(params, ())
    return {}


_VALIDATORS: dict[str, Callable[[Host, dict], dict]] = {
    "backup": _backup,
    "forget": _forget,
    "prune": _nothing,
    "check": _check,
    "unlock": _unlock,
    "stats": _nothing,
    "snapshots": _nothing,
    "probe": _nothing,
    "init": _nothing,
    "diff": _diff,
}


def validate(host: Host, kind: Any, params: Any) -> tuple[str, dict]:
    """(kind, normalised params) or :class:`ValidationFailed` with a precise message."""
    if kind in OWN_ENDPOINT_KINDS:
        message = (
            "Start a restore with POST /api/v1/hosts/{id}/restores: it checks the target "
            "and the confirmation an in-place restore needs."
        )
        raise ValidationFailed(message, fields={"kind": [message]})
    if kind not in RUNNABLE_KINDS:
        message = f"'kind' must be one of: {', '.join(RUNNABLE_KINDS)}."
        raise ValidationFailed(message, fields={"kind": [message]})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationFailed("'params' must be an object.", fields={"params": ["not an object"]})
    return kind, _VALIDATORS[kind](host, params)
