"""Restore requests: what may be restored where (docs/api.md "Restore, browse, download, diff").

The server checks what it can know: the snapshot is one of the host's, the paths are
absolute, an in-place restore is confirmed by typing the host's name. Where files may be
written on the host is the host owner's call: the agent's ``restore_paths`` decides.
"""

from __future__ import annotations

from typing import Any

from app.models import Host, Job
from app.services import rpc
from app.services.errors import ValidationFailed

MAX_INCLUDES = 500
MAX_INCLUDE_BYTES = 256 * 1024  # all of them together: they become restic's argv
DEFAULT_TARGET = "$HOME/rm-restore/{job_id}"
_FIELDS = ("snapshot_id", "include", "target", "in_place", "confirm_hostname", "verify")


def validate(host: Host, body: Any) -> dict:
    """The job's params (``target`` absent when the default is wanted) or ValidationFailed."""
    if not isinstance(body, dict):
        raise ValidationFailed("The request body must be a JSON object.")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        message = f"Unknown field {unknown[0]!r} (accepted: {', '.join(_FIELDS)})."
        raise ValidationFailed(message, fields={unknown[0]: [message]})
    snapshot = rpc.resolve_snapshot(host, body.get("snapshot_id"))
    include = _includes(body.get("include"))
    in_place = _flag(body, "in_place")
    verify = _flag(body, "verify")
    params = {
        "snapshot_id": snapshot.snapshot_id,
        "include": include,
        "in_place": in_place,
        "verify": verify,
    }
    if in_place:
        typed = body.get("confirm_hostname")
        if not isinstance(typed, str) or typed.strip() != host.hostname:
            message = (
                f"Type the host name ({host.hostname}) to confirm: an in-place restore "
                "overwrites the files on the host where they are."
            )
            raise ValidationFailed(
                message, code="confirmation_required", fields={"confirm_hostname": [message]}
            )
        if body.get("target") not in (None, "", "/"):
            message = "An in-place restore writes where the files were: leave target empty."
            raise ValidationFailed(message, fields={"target": [message]})
        params["target"] = "/"
    else:
        target = _target(body.get("target"))
        if target is not None:
            params["target"] = target
    return params


def default_target(job: Job) -> str:
    return DEFAULT_TARGET.format(job_id=job.id)


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        message = f"{key} must be true or false."
        raise ValidationFailed(message, fields={key: [message]})
    return value


def _includes(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [line.strip() for line in value.splitlines() if line.strip()]
    if not isinstance(value, list):
        message = "include must be a list of absolute paths inside the snapshot."
        raise ValidationFailed(message, fields={"include": [message]})
    if len(value) > MAX_INCLUDES:
        message = (
            f"At most {MAX_INCLUDES} paths per restore: pick their parent directories instead."
        )
        raise ValidationFailed(message, fields={"include": [message]})
    paths: list[str] = []
    for item in value:
        path = rpc.snapshot_path(item, "include")
        if path == "/":
            return []  # the whole snapshot
        if path not in paths:
            paths.append(path)
    if sum(len(path) for path in paths) > MAX_INCLUDE_BYTES:
        message = "The selected paths are too long together: pick their parent directories."
        raise ValidationFailed(message, fields={"include": [message]})
    # A path inside another selected one adds nothing.
    chosen = set(paths)
    return [
        path
        for path in paths
        if not any(path.startswith(other + "/") for other in chosen if other != path)
    ]


def _target(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        message = "target must be a directory path."
        raise ValidationFailed(message, fields={"target": [message]})
    value = value.strip()
    message = None
    if len(value) > rpc.MAX_PATH:
        message = f"The target must be at most {rpc.MAX_PATH} characters."
    elif any(char in value for char in "\x00\n\r"):
        message = "The target must not contain NUL or line breaks."
    elif not (
        value.startswith("/")
        or value in ("~", "$HOME", "${HOME}")
        or value.startswith(("~/", "$HOME/", "${HOME}/"))
    ):
        message = "The target must be an absolute path, or start with $HOME or ~/."
    elif ".." in value.split("/"):
        message = "The target must not contain .. components."
    elif value.rstrip("/") == "":
        message = "Restoring into / is an in-place restore: choose “In place” instead."
    if message:
        raise ValidationFailed(message, fields={"target": [message]})
    return value.rstrip("/") or value
