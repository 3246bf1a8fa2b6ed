from __future__ import annotations

import base64
import json
import re

from flask import current_app, jsonify, request
from sqlalchemy import and_, or_, select

from app import MAX_ID
from app.access import Role, require_role
from app.api import bp
from app.api.serialize import host_json, repo_stats_json, snapshot_json
from app.api.validation import json_body, query_integer
from app.authn import client_address, current_actor
from app.bus import host_key
from app.extensions import db
from app.formatting import iso
from app.models import Host
from app.models.types import utcnow
from app.services import backends, hosts, repository, snapshot_sizes
from app.services.errors import ValidationFailed
from app.services.validate import echo, unstorable
from app.transaction import commit_and_wake

MAX_HOSTS_PAGE = 1000  # limit= of GET /hosts; a cursor without limit pages at this size
MAX_HOSTS_CURSOR = 400  # characters: a 255-character hostname and an id, encoded


@bp.get("/hosts")
@require_role(Role.viewer)
def list_hosts():
    """By hostname. Without ``limit``/``cursor`` every host (small fleets, old clients);
    with them one page and ``next_cursor`` (null on the last), by keyset on (hostname, id)."""
    now = utcnow()
    offline_after = current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    tag = request.args.get("tag", "").strip()
    query = select(Host)
    if tag:
        tag = hosts.parse_tag_filter(tag)  # 422 naming the parameter, like /jobs?tag=
        query = query.where(hosts.has_tag(tag))
    limit = None
    if request.args.get("limit", "").strip():
        limit = query_integer("limit", request.args["limit"], 1, MAX_HOSTS_PAGE)
    if "cursor" in request.args:
        hostname, host_id = _hosts_cursor(request.args["cursor"])
        query = query.where(
            or_(Host.hostname > hostname, and_(Host.hostname == hostname, Host.id > host_id))
        )
        limit = limit or MAX_HOSTS_PAGE
    query = query.order_by(Host.hostname, Host.id)
    if limit is None:
        rows = list(db.session.scalars(query))
        next_cursor = None
    else:
        rows = list(db.session.scalars(query.limit(limit + 1)))
        next_cursor = _encode_hosts_cursor(rows[limit - 1]) if len(rows) > limit else None
        rows = rows[:limit]
    return jsonify(
        {
            "items": [host_json(h, h.status(now, offline_after)) for h in rows],
            "next_cursor": next_cursor,
        }
    )


def _encode_hosts_cursor(host: Host) -> str:
    raw = json.dumps([host.hostname, host.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _hosts_cursor(text: str) -> tuple[str, int]:
    """The (hostname, id) a ``next_cursor`` carries; 422 for anything else."""
    problem = "'cursor' is not a cursor of this list: pass a next_cursor exactly as received."
    text = text.strip()
    if not text or len(text) > MAX_HOSTS_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValidationFailed(problem, fields={"cursor": [problem]})
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        value = None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or len(value[0]) > 255
        or unstorable(value[0])
        or isinstance(value[1], bool)
        or not isinstance(value[1], int)
        or not 1 <= value[1] <= MAX_ID
    ):
        raise ValidationFailed(problem, fields={"cursor": [problem]})
    return value[0], value[1]


@bp.get("/hosts/<int:host_id>")
@require_role(Role.viewer)
def get_host(host_id: int):
    host = hosts.get_host(host_id)
    status = host.status(utcnow(), current_app.config["RM_OFFLINE_AFTER_SECONDS"])
    return jsonify(host_json(host, status))


@bp.patch("/hosts/<int:host_id>")
@require_role(Role.admin)
def update_host(host_id: int):
    """Rename and/or retag (only the keys sent)."""
    return _update_host(host_id)


@bp.put("/hosts/<int:host_id>")
@require_role(Role.admin)
def put_host(host_id: int):
    """The same as PATCH (``PUT {"tags": [...]}`` is how the issue names it)."""
    return _update_host(host_id)


def _update_host(host_id: int):
    host = hosts.get_host(host_id)
    hosts.update_host(host, json_body(), actor=current_actor(), client_address=client_address())
    commit_and_wake()
    status = host.status(utcnow(), current_app.config["RM_OFFLINE_AFTER_SECONDS"])
    return jsonify(host_json(host, status))


@bp.delete("/hosts/<int:host_id>")
@require_role(Role.admin)
def delete_host(host_id: int):
    """Delete the host (type its hostname to confirm); its agent's next call gets 410."""
    host = hosts.get_host(host_id)
    body = json_body() if request.content_length or request.is_json else {}
    unknown = sorted(set(body) - {"confirm_hostname"})
    if unknown:
        raise ValidationFailed(
            "Only confirm_hostname is accepted.", fields={echo(unknown[0]): ["Unknown field."]}
        )
    hosts.delete_host(
        host,
        body.get("confirm_hostname"),
        actor=current_actor(),
        now=utcnow(),
        client_address=client_address(),
    )
    commit_and_wake(host_key(host_id))
    return "", 204


@bp.post("/hosts/tags")
@require_role(Role.admin)
def bulk_tag_hosts():
    """Add and/or remove tags on many hosts at once."""
    body = json_body()
    unknown = sorted(set(body) - {"host_ids", "add", "remove"})
    if unknown:
        raise ValidationFailed(
            "Only host_ids, add and remove are accepted.",
            fields={echo(unknown[0]): ["Unknown field."]},
        )
    changed = hosts.bulk_tags(
        body.get("host_ids"),
        body.get("add"),
        body.get("remove"),
        actor=current_actor(),
        client_address=client_address(),
    )
    commit_and_wake()
    now, offline_after = utcnow(), current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    return jsonify({"items": [host_json(h, h.status(now, offline_after)) for h in changed]})


@bp.get("/hosts/<int:host_id>/snapshots")
@require_role(Role.viewer)
def list_snapshots(host_id: int):
    host = hosts.get_host(host_id)
    tag = request.args.get("tag") or None
    snapshots = repository.snapshots_of(host, tag=tag)
    sizes = snapshot_sizes.sizes_of(snapshots)
    return jsonify(
        {"items": [snapshot_json(item, sizes.get(item.snapshot_id)) for item in snapshots]}
    )


@bp.get("/hosts/<int:host_id>/repo-stats")
@require_role(Role.viewer)
def list_repo_stats(host_id: int):
    host = hosts.get_host(host_id)
    return jsonify({"items": [repo_stats_json(row) for row in repository.size_history(host)]})


@bp.get("/hosts/<int:host_id>/repository")
@require_role(Role.viewer)
def get_repository(host_id: int):
    host = hosts.get_host(host_id)
    return jsonify(repository_json(host))


@bp.put("/hosts/<int:host_id>/repository")
@require_role(Role.admin)
def put_repository(host_id: int):
    """New everyday credentials; the repository is checked again (and initialised if new)."""
    host = hosts.get_host(host_id)
    body = json_body()
    repository.update_credentials(
        current_app.extensions["secretbox"],
        host,
        backends.from_body(body),
        actor=current_actor(),
        client_address=client_address(),
        now=utcnow(),
        offline_after_seconds=current_app.config["RM_OFFLINE_AFTER_SECONDS"],
    )
    commit_and_wake(host_key(host.id))
    return jsonify(repository_json(host))


def repository_json(host: Host) -> dict:
    credential = repository.credential_of(host)
    saved = repository.public_settings(credential) if credential else {}
    return {
        "url": saved.get("url"),
        "backend": saved.get("backend"),
        "username": saved.get("username"),
        "password_set": bool(credential and credential.sealed_password),
        "repo_env_names": saved.get("repo_env_names", []),
        "repo_options": saved.get("repo_options", []),
        "cacert": saved.get("cacert"),
        "insecure_tls": saved.get("insecure_tls", False),
        "admin_set": repository.credential_of(host, "admin") is not None,
        "updated_at": iso(credential.updated_at) if credential else None,
        "repo_status": host.repo_status,
        "repo_status_reason": host.repo_status_reason,
    }
