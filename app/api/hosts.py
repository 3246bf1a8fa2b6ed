from __future__ import annotations

from flask import current_app, jsonify, request

from app.access import Role, require_role
from app.api import bp
from app.api.serialize import host_json, repo_stats_json, snapshot_json
from app.api.validation import json_body, query_integer
from app.authn import client_address, current_actor
from app.bus import host_key
from app.formatting import iso
from app.models import Host
from app.models.types import utcnow
from app.services import backends, hosts, repository, snapshot_sizes
from app.services.errors import ValidationFailed
from app.services.validate import echo
from app.transaction import commit_and_wake


@bp.get("/hosts")
@require_role(Role.viewer)
def list_hosts():
    """By hostname. Without ``limit``/``cursor`` every host (small fleets, old clients);
    with them one page and ``next_cursor`` (null on the last), by keyset on (hostname, id)."""
    now = utcnow()
    offline_after = current_app.config["RM_OFFLINE_AFTER_SECONDS"]
    tag = request.args.get("tag", "").strip()
    if tag:
        tag = hosts.parse_tag_filter(tag)  # 422 naming the parameter, like /jobs?tag=
    limit = None
    if request.args.get("limit", "").strip():
        limit = query_integer("limit", request.args["limit"], 1, hosts.MAX_PAGE)
    rows, next_cursor = hosts.list_hosts(tag=tag, limit=limit, cursor=request.args.get("cursor"))
    return jsonify(
        {
            "items": [host_json(h, h.status(now, offline_after)) for h in rows],
            "next_cursor": next_cursor,
        }
    )


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
