"""The OpenAPI 3.1 description of /api/v1, built from the URL map plus one entry per route.

Paths and path parameters come from the app's own routes, so they cannot drift; what a
route takes and answers is written once below (``OPERATIONS``) in terms of the reusable
component schemas (``SCHEMAS``). A route without an entry is left out of the document —
``tests/test_openapi.py`` compares the document with the URL map and names it.

Bounds in the schemas are the server's real limits (the services enforce them; the
document only says what they are), integers are 64-bit, and every error has one shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, jsonify

from app import MAX_ID, __version__
from app.access import PUBLIC, declared_access, public
from app.api import bp
from app.models import Role
from app.models.alert import ALERT_STATES, SEVERITIES
from app.models.job import STATUSES as JOB_STATUSES
from app.services.alerts import GROUP_RULES, MAX_THRESHOLD_SECONDS
from app.services.alerts import MAX_PAGE as ALERTS_PAGE
from app.services.alerts import RULES as ALERT_RULES
from app.services.hosts import MAX_CURSOR_LENGTH as MAX_HOSTS_CURSOR
from app.services.hosts import MAX_PAGE as HOSTS_PAGE
from app.services.job_params import MAX_KIB_PER_SECOND
from app.services.job_params import RUNNABLE_KINDS as JOB_KINDS
from app.services.notifications import KINDS as CHANNEL_KINDS
from app.services.notifications import MAX_REMIND_HOURS
from app.services.retention import MAX_KEEP
from app.services.rpc import MAX_PATH
from app.services.source_groups import MAX_HOOK_BYTES
from app.services.validate import MAX_PATHS, TAG_PATTERN

INT64_MAX = 2**63 - 1

# --- schema helpers ------------------------------------------------------------------------


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    """``schema`` or JSON null (3.1 style: a type list, or anyOf for references)."""
    if "type" in schema and isinstance(schema["type"], str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict, required: tuple[str, ...] = (), *, closed: bool = False, **extra):
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def array(items: dict, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


def string(max_length: int | None = None, **extra) -> dict:
    schema: dict[str, Any] = {"type": "string", **extra}
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def integer(minimum: int = 0, maximum: int = INT64_MAX, **extra) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, **extra}


def items_of(name: str, **more) -> dict:
    return obj({"items": array(ref(name)), **more}, ("items",))


ID = integer(1, MAX_ID, examples=[1])
DATE_TIME = {"type": "string", "format": "date-time"}
MAYBE_DATE_TIME = nullable(DATE_TIME)
MAYBE_STRING = {"type": ["string", "null"]}
MAYBE_INTEGER = {"type": ["integer", "null"]}
ABSOLUTE_PATH = string(MAX_PATH, description="An absolute path (/… or C:\\…).")
CRON = string(128, description="Five cron fields: minute hour day-of-month month day-of-week.")
KEEP_COUNT = nullable(integer(0, MAX_KEEP, description="0 or null: rule not used."))

# --- component schemas ---------------------------------------------------------------------


# The backend parts of a repository connection (docs/repositories.md), in both inputs.
BACKEND_INPUT = {
    "repo_env": ref("RepoEnv"),
    "repo_options": nullable(
        array(
            string(300),
            maxItems=20,
            description="restic -o options of the backend's allow-list, e.g. "
            "s3.region=eu-west-1, s3.bucket-lookup=path.",
        )
    ),
    "cacert": nullable(string(65536, description="PEM CA certificate(s) for restic --cacert.")),
    "insecure_tls": {
        "type": "boolean",
        "description": "restic --insecure-tls (insecure; prefer cacert).",
    },
}

SCHEMAS: dict[str, dict] = {
    "Error": obj(
        {
            "error": string(description="Machine-readable code, e.g. validation_failed."),
            "message": string(description="A sentence for people."),
            "fields": {
                "type": "object",
                "description": "Per-field problems (422): field name → messages.",
                "additionalProperties": array({"type": "string"}),
            },
        },
        ("error", "message"),
    ),
    "Me": obj(
        {
            "id": ID,
            "username": string(),
            "role": {"type": "string", "enum": [role.value for role in Role]},
            "created_at": MAYBE_DATE_TIME,
            "last_login_at": MAYBE_DATE_TIME,
            "auth": {"type": "string", "enum": ["token", "session"]},
        },
        ("id", "username", "role", "auth"),
    ),
    "Token": obj(
        {
            "id": ID,
            "name": string(100),
            "prefix": string(description="The first characters, to recognise the token."),
            "owner": string(),
            "created_at": MAYBE_DATE_TIME,
            "last_used_at": MAYBE_DATE_TIME,
        },
        ("id", "name", "prefix", "owner", "created_at", "last_used_at"),
    ),
    "TokenCreated": {
        "allOf": [
            ref("Token"),
            obj(
                {"token": string(description="The secret: shown in this answer only.")}, ("token",)
            ),
        ]
    },
    "TokenInput": obj({"name": string(100)}, ("name",)),
    "User": obj(
        {
            "id": ID,
            "username": string(64),
            "role": {"type": "string", "enum": [role.value for role in Role]},
            "disabled": {"type": "boolean"},
            "auth_source": {"type": "string", "enum": ["local", "oidc"]},
            "has_password": {"type": "boolean"},
            "last_login_at": MAYBE_DATE_TIME,
            "created_at": MAYBE_DATE_TIME,
            "invite_pending": {"type": "boolean"},
            "invite_expires_at": MAYBE_DATE_TIME,
        },
        ("id", "username", "role", "disabled", "auth_source", "invite_pending"),
    ),
    "UserInvited": obj(
        {
            "id": ID,
            "username": string(64),
            "role": {"type": "string", "enum": [role.value for role in Role]},
            "disabled": {"type": "boolean"},
            "invite_url": string(description="One-time link to choose a password (24 h)."),
            "invite_expires_at": DATE_TIME,
        },
        ("id", "username", "role", "disabled", "invite_url", "invite_expires_at"),
    ),
    "UserInput": obj(
        {
            "username": string(64, description="1-64: letters, digits and . _ @ -"),
            "role": {"type": "string", "enum": [role.value for role in Role]},
        },
        ("username", "role"),
        closed=True,
    ),
    "UserUpdate": obj(
        {
            "role": {"type": "string", "enum": [role.value for role in Role]},
            "disabled": {"type": "boolean"},
        },
        closed=True,
    ),
    "InviteLink": obj(
        {
            "invite_url": string(description="One-time link to choose a password (24 h)."),
            "invite_expires_at": DATE_TIME,
        },
        ("invite_url", "invite_expires_at"),
    ),
    "PasswordChange": obj(
        {"current_password": string(1024), "new_password": string(1024)},
        ("current_password", "new_password"),
        closed=True,
    ),
    "Session": obj(
        {
            "id": ID,
            "created_at": MAYBE_DATE_TIME,
            "last_seen_at": MAYBE_DATE_TIME,
            "expires_at": MAYBE_DATE_TIME,
            "client_address": MAYBE_STRING,
            "user_agent": MAYBE_STRING,
            "current": {"type": "boolean", "description": "The session making this call."},
        },
        ("id", "current"),
    ),
    "Host": obj(
        {
            "id": ID,
            "hostname": string(255),
            "status": {"type": "string", "enum": ["online", "offline", "never_seen"]},
            "repo_status": string(
                description="unknown, ready, initializing, missing, error or init_failed."
            ),
            "repo_status_reason": MAYBE_STRING,
            "last_seen_at": MAYBE_DATE_TIME,
            "last_backup_at": MAYBE_DATE_TIME,
            "last_backup_status": MAYBE_STRING,
            "last_backup_job_id": MAYBE_INTEGER,
            "last_successful_backup_at": MAYBE_DATE_TIME,
            "last_successful_backup_job_id": MAYBE_INTEGER,
            "snapshot_count": integer(),
            "latest_snapshot_at": MAYBE_DATE_TIME,
            "repo_size_bytes": nullable(integer(description="Raw data in the repository.")),
            "tags": array({"type": "string"}),
            "os": MAYBE_STRING,
            "arch": MAYBE_STRING,
            "agent_version": MAYBE_STRING,
            "restic_version": MAYBE_STRING,
            "lock": nullable(
                obj(
                    {
                        "reported_at": DATE_TIME,
                        "detail": string(
                            500, description="restic's words: who holds the lock, since when."
                        ),
                        "job_id": MAYBE_INTEGER,
                    },
                    ("reported_at", "detail", "job_id"),
                    description="The repository lock restic last reported (a job failed on "
                    "it); null once an unlock or a later backup, forget, prune or check "
                    "succeeds.",
                ),
            ),
        },
        ("id", "hostname", "status", "repo_status", "last_seen_at", "snapshot_count", "tags"),
    ),
    "EnrollmentToken": obj(
        {
            "id": ID,
            "hostname": MAYBE_STRING,
            "repo_url": string(description="Without any password embedded in it."),
            "repo_backend": string(description="The backend the URL names."),
            "paths": array({"type": "string"}),
            "created_at": DATE_TIME,
            "expires_at": DATE_TIME,
            "expired": {"type": "boolean"},
            "used_at": MAYBE_DATE_TIME,
            "revoked_at": MAYBE_DATE_TIME,
            "host": nullable(
                obj(
                    {"id": ID, "hostname": string(255)},
                    ("id", "hostname"),
                    description="The host it enrolled, once used.",
                )
            ),
        },
        ("id", "hostname", "repo_url", "paths", "created_at", "expires_at", "expired"),
    ),
    "EnrollmentTokenCreated": {
        "allOf": [
            ref("EnrollmentToken"),
            obj(
                {
                    "token": string(description="One-time secret, valid for one hour."),
                    "install_command": string(),
                    "agent_command": string(),
                },
                ("token", "install_command", "agent_command"),
            ),
        ]
    },
    "RepoEnv": obj(
        {},
        description="Backend credentials restic reads from its environment (or, for "
        "GOOGLE_APPLICATION_CREDENTIALS, SFTP_PRIVATE_KEY and SFTP_KNOWN_HOSTS, the text of a "
        "file). Only the names of the URL's backend are taken (docs/repositories.md): e.g. "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3:, RESTIC_REST_USERNAME and "
        "RESTIC_REST_PASSWORD for rest:; any other name is a 422 naming it. Values are sealed "
        "and never shown again.",
        additionalProperties=nullable(string(65536, writeOnly=True)),
        maxProperties=20,
        writeOnly=True,
    ),
    "EnrollmentTokenInput": obj(
        {
            "hostname": nullable(
                string(255, description="Optional: the machine's own name is used when absent.")
            ),
            "repo_url": string(1000, minLength=1),
            "repo_username": nullable(string(255)),
            "repo_password": string(1024, minLength=1, writeOnly=True),
            "paths": array(ABSOLUTE_PATH, maxItems=MAX_PATHS),
            **BACKEND_INPUT,
        },
        ("repo_url", "repo_password"),
    ),
    "Job": obj(
        {
            "id": ID,
            "host_id": ID,
            "kind": string(),
            "status": {"type": "string", "enum": list(JOB_STATUSES)},
            "actor": obj(
                {
                    "type": string(description="user, system, schedule or maintenance."),
                    "label": string(),
                },
                ("type", "label"),
            ),
            "params": {"type": "object"},
            "exit_code": MAYBE_INTEGER,
            "error": nullable(string(description="Why it failed, for people.")),
            "summary": nullable(string(description="One line: the error or what it did.")),
            "stats": ref("JobStats"),
            "progress": {"type": "object"},
            "log_lines": integer(),
            "log_truncated": {"type": "boolean"},
            "lines_dropped": integer(),
            "log_purged_at": nullable(
                {
                    "type": "string",
                    "format": "date-time",
                    "description": "When housekeeping removed the log "
                    "(RM_JOB_LOG_RETENTION_DAYS after the job finished); null while kept.",
                }
            ),
            "created_at": DATE_TIME,
            "started_at": MAYBE_DATE_TIME,
            "finished_at": MAYBE_DATE_TIME,
        },
        ("id", "host_id", "kind", "status", "params", "stats", "progress", "created_at"),
    ),
    "JobStats": obj(
        {
            "snapshot_id": MAYBE_STRING,
            "data_added": MAYBE_INTEGER,
            "files_new": MAYBE_INTEGER,
            "missing_paths": array(
                {"type": "string"}, description="Backup: source paths that did not exist."
            ),
        },
        description="Depends on the kind (see docs/api.md); known fields are listed.",
    ),
    "JobInput": obj(
        {
            "kind": {"type": "string", "enum": list(JOB_KINDS)},
            "params": nullable(
                obj(
                    {
                        "group": string(64),
                        "limit_upload_kib": nullable(integer(0, MAX_KIB_PER_SECOND)),
                        "limit_download_kib": nullable(integer(0, MAX_KIB_PER_SECOND)),
                        "policy": ref("RetentionPolicy"),
                        "groups": array(obj({"tag": string(64), "policy": ref("RetentionPolicy")})),
                        "group_by": string(32),
                        "dry_run": {"type": "boolean"},
                        "read_data_subset": nullable(string(32)),
                        "remove_all": {"type": "boolean"},
                        "snapshot_a": string(64),
                        "snapshot_b": string(64),
                    },
                    description="Per kind: see docs/api.md; unknown keys are refused.",
                )
            ),
        },
        ("kind",),
    ),
    "LogRecord": obj(
        {
            "seq": integer(1),
            "ts": DATE_TIME,
            "stream": string(description="stdout, stderr or agent."),
            "text": string(),
        },
        ("seq", "ts", "stream", "text"),
    ),
    "Snapshot": obj(
        {
            "id": string(64),
            "short_id": string(16),
            "time": DATE_TIME,
            "hostname": MAYBE_STRING,
            "username": MAYBE_STRING,
            "paths": array({"type": "string"}),
            "tags": array({"type": "string"}),
            "parent": MAYBE_STRING,
            "tree": MAYBE_STRING,
            "program_version": MAYBE_STRING,
            "summary": nullable({"type": "object"}),
            "size_bytes": nullable(
                integer(
                    description="Bytes the backup read (total_bytes_processed): restic's "
                    "summary (0.17+), else the stats of the restic-manager backup that made it; "
                    "null when neither is known."
                )
            ),
            "data_added_bytes": nullable(
                integer(description="New data this snapshot added to the repository.")
            ),
            "file_count": nullable(
                integer(description="Files the backup read (total_files_processed).")
            ),
        },
        ("id", "short_id", "time", "paths", "tags"),
    ),
    "RepoStats": obj(
        {
            "taken_at": DATE_TIME,
            "job_id": MAYBE_INTEGER,
            "total_size": integer(),
            "total_uncompressed_size": MAYBE_INTEGER,
            "total_blob_count": MAYBE_INTEGER,
            "snapshots_count": MAYBE_INTEGER,
            "compression_ratio": {"type": ["number", "null"]},
        },
        ("taken_at", "total_size"),
    ),
    "Repository": obj(
        {
            "url": nullable(string(description="Redacted: never a password.")),
            "backend": nullable(
                string(description="local, rest, s3, b2, azure, gs, sftp or rclone.")
            ),
            "username": MAYBE_STRING,
            "password_set": {"type": "boolean"},
            "repo_env_names": array(
                string(), description="Names of the saved backend variables; never values."
            ),
            "repo_options": array(string()),
            "cacert": nullable(
                string(description="Subject and SHA-256 prefix of the saved CA certificate.")
            ),
            "insecure_tls": {"type": "boolean"},
            "admin_set": {"type": "boolean"},
            "updated_at": MAYBE_DATE_TIME,
            "repo_status": string(),
            "repo_status_reason": MAYBE_STRING,
        },
        ("url", "username", "password_set", "admin_set", "repo_status"),
    ),
    "RepositoryInput": obj(
        {
            "repo_url": string(1000, minLength=1),
            "repo_username": nullable(
                string(255, description="The REST server's user (rest: URLs only).")
            ),
            "repo_password": string(1024, minLength=1, writeOnly=True),
            "url": string(1000, minLength=1, description="Older spelling of repo_url."),
            "username": nullable(string(255, description="Older spelling of repo_username.")),
            "password": string(
                1024, minLength=1, writeOnly=True, description="Older spelling of repo_password."
            ),
            **BACKEND_INPUT,
        },
        description="repo_url and repo_password (or their older spellings) are required.",
    ),
    "RepositoryTest": obj(
        {
            "ok": {"type": "boolean"},
            "detail": string(
                description="restic's own words: reachable (with the repository id), or why "
                "not — wrong password, repository or bucket missing, authentication refused, "
                "TLS, DNS, connection refused, timeout."
            ),
        },
        ("ok", "detail"),
    ),
    "RetentionPolicy": obj(
        {
            **{
                f"keep_{unit}": KEEP_COUNT
                for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
            },
            "keep_within": nullable(
                string(32, pattern=r"^(?:\d+y)?(?:\d+m)?(?:\d+d)?(?:\d+h)?$", examples=["30d"])
            ),
        },
        closed=True,
    ),
    "SourceGroup": obj(
        {
            "id": ID,
            "name": string(64),
            "includes": array({"type": "string"}),
            "excludes": array({"type": "string"}),
            "retention": ref("RetentionPolicy"),
            "retry_max": integer(0, 20),
            "retry_backoff_seconds": integer(30, 86_400),
            "pre_hook_set": {"type": "boolean"},
            "post_hook_set": {"type": "boolean"},
            "schedules": array({"type": "string"}, description="Names of schedules using it."),
            "created_at": MAYBE_DATE_TIME,
            "updated_at": MAYBE_DATE_TIME,
        },
        ("id", "name", "includes", "excludes", "retention", "retry_max", "retry_backoff_seconds"),
    ),
    "SourceGroupInput": obj(
        {
            "name": string(64, pattern=TAG_PATTERN, description="Also the snapshots' tag."),
            "includes": array(ABSOLUTE_PATH, minItems=1, maxItems=MAX_PATHS),
            "excludes": array(string(4096), maxItems=100),
            "retention": nullable(ref("RetentionPolicy")),
            "retry_max": integer(0, 20),
            "retry_backoff_seconds": integer(30, 86_400),
            "pre_hook": nullable(
                string(MAX_HOOK_BYTES, description="Shell text (admin only); null removes it.")
            ),
            "post_hook": nullable(string(MAX_HOOK_BYTES, description="As pre_hook.")),
        },
        closed=True,
    ),
    "RetentionPreview": obj(
        {
            "retention": ref("RetentionPolicy"),
            "description": string(),
            "keep": array(ref("RetentionDecision")),
            "remove": array(ref("RetentionDecision")),
        },
        ("retention", "description", "keep", "remove"),
    ),
    "RetentionDecision": obj(
        {
            "id": string(64),
            "short_id": string(16),
            "time": DATE_TIME,
            "hostname": MAYBE_STRING,
            "paths": array({"type": "string"}),
            "tags": array({"type": "string"}),
            "reasons": array({"type": "string"}),
        },
        ("id", "short_id", "time", "reasons"),
    ),
    "HooksSet": obj(
        {"pre_hook_set": {"type": "boolean"}, "post_hook_set": {"type": "boolean"}},
        ("pre_hook_set", "post_hook_set"),
    ),
    "HooksInput": obj(
        {
            "pre_hook": nullable(string(MAX_HOOK_BYTES)),
            "post_hook": nullable(string(MAX_HOOK_BYTES)),
        },
        closed=True,
        description="A key left out keeps that hook; null or empty text removes it.",
    ),
    "Schedule": obj(
        {
            "id": ID,
            "name": string(64),
            "cron": string(128),
            "cron_description": string(),
            "enabled": {"type": "boolean"},
            "missed_policy": {"type": "string", "enum": ["run_once", "skip"]},
            "source_groups": array({"type": "string"}),
            "next_runs": array(DATE_TIME),
            "last_run": nullable(
                obj(
                    {"job_id": ID, "status": string(), "finished_at": MAYBE_DATE_TIME},
                    ("job_id", "status"),
                )
            ),
        },
        ("id", "name", "cron", "enabled", "missed_policy", "source_groups", "next_runs"),
    ),
    "ScheduleList": obj(
        {
            "items": array(ref("Schedule")),
            "schedule_version": integer(),
            "agent_schedule_version": MAYBE_INTEGER,
            "in_sync": {"type": "boolean"},
        },
        ("items", "schedule_version", "in_sync"),
    ),
    "ScheduleInput": obj(
        {
            "name": string(64),
            "cron": CRON,
            "source_groups": array(
                {"oneOf": [ID, string(64)]},
                minItems=1,
                description="Source groups of the host, by id or by name.",
            ),
            "enabled": {"type": "boolean", "default": True},
            "missed_policy": {"type": "string", "enum": ["run_once", "skip"]},
        },
        description="POST needs name, cron and source_groups; PUT changes the keys it sends.",
    ),
    "Maintenance": obj(
        {
            "enabled": {"type": "boolean"},
            "forget_cron": MAYBE_STRING,
            "prune_cron": MAYBE_STRING,
            "check_cron": MAYBE_STRING,
            "check_subset_percent": {"type": ["number", "null"]},
            "tasks": {"type": "object", "additionalProperties": ref("MaintenanceTask")},
        },
        ("enabled", "forget_cron", "prune_cron", "check_cron", "tasks"),
    ),
    "MaintenanceTask": obj(
        {
            "cron": MAYBE_STRING,
            "description": MAYBE_STRING,
            "next_run_at": MAYBE_DATE_TIME,
            "last_job": nullable(
                obj(
                    {
                        "id": ID,
                        "status": string(),
                        "created_at": DATE_TIME,
                        "finished_at": MAYBE_DATE_TIME,
                    },
                    ("id", "status"),
                )
            ),
        },
        ("cron", "next_run_at", "last_job"),
    ),
    "MaintenanceInput": obj(
        {
            "enabled": {"type": "boolean", "default": True},
            "forget_cron": nullable(CRON),
            "prune_cron": nullable(CRON),
            "check_cron": nullable(CRON),
            "check_subset_percent": nullable(
                {"type": "number", "exclusiveMinimum": 0, "maximum": 100}
            ),
        },
        description="Replaces the cadences: a null or absent cron turns that task off.",
    ),
    "Bandwidth": obj(
        {
            "upload_kib": nullable(integer(1, MAX_KIB_PER_SECOND)),
            "download_kib": nullable(integer(1, MAX_KIB_PER_SECOND)),
        },
        ("upload_kib", "download_kib"),
        description="KiB/s; null: unlimited.",
    ),
    "AdminCredential": obj(
        {"admin_set": {"type": "boolean"}, "username": MAYBE_STRING, "updated_at": MAYBE_DATE_TIME},
        ("admin_set", "username", "updated_at"),
    ),
    "AdminCredentialInput": obj(
        {
            "username": nullable(string(255)),
            "password": string(1024, minLength=1, writeOnly=True),
        },
        ("password",),
    ),
    "RestoreInput": obj(
        {
            "snapshot_id": string(64, minLength=8, pattern="^[0-9a-fA-F]{8,64}$"),
            "include": array(string(MAX_PATH), maxItems=500),
            "target": nullable(string(MAX_PATH)),
            "in_place": {"type": "boolean", "default": False},
            "confirm_hostname": nullable(string(255)),
            "verify": {"type": "boolean", "default": False},
        },
        ("snapshot_id",),
        closed=True,
    ),
    "Tree": obj(
        {
            "snapshot_id": string(64),
            "short_id": string(16),
            "path": string(),
            "items": array(ref("TreeNode")),
            "truncated": {"type": "boolean"},
            "cached": {"type": "boolean"},
        },
        ("snapshot_id", "path", "items", "truncated", "cached"),
    ),
    "TreeNode": obj(
        {
            "name": string(),
            "type": string(description="file, dir, symlink, …"),
            "path": string(),
            "size": MAYBE_INTEGER,
            "mtime": MAYBE_DATE_TIME,
        },
        ("name", "type", "path"),
    ),
    "Diff": obj(
        {
            "summary": {"type": "object"},
            "counts": {"type": "object", "additionalProperties": integer()},
            "sizes": {"type": "object", "description": "Bytes per kind of change."},
            "items": array(
                obj(
                    {
                        "path": string(),
                        "modifier": string(),
                        "change": string(),
                        "type": MAYBE_STRING,
                        "size_before": MAYBE_INTEGER,
                        "size_after": MAYBE_INTEGER,
                    },
                    ("path", "modifier"),
                )
            ),
            "total": integer(),
            "next": MAYBE_INTEGER,
        },
        ("summary", "counts", "items", "total", "next"),
    ),
}

# --- operations ----------------------------------------------------------------------------

CONFLICT = "Conflict (e.g. host_offline: the agent is not polling)."


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers; path and path parameters come from the URL map."""

    summary: str
    tag: str
    status: int = 200
    response: dict | None = None  # JSON schema of the success body; None: no body
    body: str | None = None  # component name of the JSON request body
    body_required: bool = True
    query: tuple[tuple[str, dict, str], ...] = ()  # (name, schema, description)
    errors: tuple[int, ...] = ()  # statuses beyond the ones every call may get
    media_type: str = "application/json"
    description: str = ""
    headers: tuple[tuple[str, dict, str], ...] = ()
    extra: dict = field(default_factory=dict)


def _list(name: str) -> dict:
    return ref(f"{name}List") if f"{name}List" in SCHEMAS else items_of(name)


OPERATIONS: dict[str, Operation] = {
    "api.openapi": Operation("This document (OpenAPI 3.1)", "Meta", response={"type": "object"}),
    "api.me": Operation("Who am I", "Meta", response=ref("Me")),
    "api.list_tokens": Operation(
        "List your personal access tokens", "Tokens", response=_list("Token")
    ),
    "api.create_token": Operation(
        "Mint a personal access token (the secret is in this answer only)",
        "Tokens",
        201,
        ref("TokenCreated"),
        body="TokenInput",
    ),
    "api.revoke_token": Operation("Revoke one of your tokens", "Tokens", 204),
    "api.list_users": Operation("List users (admin)", "Users", response=_list("User")),
    "api.create_user": Operation(
        "Invite a user: creates them without a password and answers a one-time link (24 h)",
        "Users",
        201,
        ref("UserInvited"),
        body="UserInput",
        errors=(409,),
    ),
    "api.get_user": Operation("One user (admin)", "Users", response=ref("User")),
    "api.update_user": Operation(
        "Change a user's role or disable/enable them (disabling ends their sessions and "
        "tokens at once; the last active admin cannot be demoted or disabled)",
        "Users",
        response=ref("User"),
        body="UserUpdate",
        errors=(409,),
    ),
    "api.delete_user": Operation(
        "Delete a user (audit rows keep the name; not the last active admin)",
        "Users",
        204,
        errors=(409,),
    ),
    "api.reset_user": Operation(
        "A fresh one-time link to choose a new password (older links stop working)",
        "Users",
        response=ref("InviteLink"),
        errors=(409,),
    ),
    "api.change_password": Operation(
        "Change your own password (the current one is required; your other sessions end)",
        "Users",
        204,
        body="PasswordChange",
    ),
    "api.my_sessions": Operation(
        "Your active browser sessions", "Users", response=_list("Session")
    ),
    "api.end_my_session": Operation("Sign one of your sessions out", "Users", 204),
    "api.list_enrollment_tokens": Operation(
        "Outstanding enrollment tokens (including those expired in the last week)",
        "Hosts",
        response=_list("EnrollmentToken"),
    ),
    "api.create_enrollment_token": Operation(
        "Add a host: mint a one-time enrollment token",
        "Hosts",
        201,
        ref("EnrollmentTokenCreated"),
        body="EnrollmentTokenInput",
    ),
    "api.get_enrollment_token": Operation(
        "One enrollment token, also once used or revoked (host: the host it enrolled)",
        "Hosts",
        response=ref("EnrollmentToken"),
    ),
    "api.regenerate_enrollment_token": Operation(
        "A fresh secret and a fresh hour for an outstanding token",
        "Hosts",
        201,
        ref("EnrollmentTokenCreated"),
    ),
    "api.revoke_enrollment_token": Operation("Revoke an outstanding token", "Hosts", 204),
    "api.list_hosts": Operation(
        "List hosts, by hostname (every host, or one page with limit/cursor)",
        "Hosts",
        response=obj(
            {
                "items": array(ref("Host")),
                "next_cursor": nullable(
                    string(
                        MAX_HOSTS_CURSOR,
                        pattern="^[A-Za-z0-9_-]+$",
                        description="Pass as cursor= for the next page; null on the last "
                        "page and whenever neither limit nor cursor was given.",
                    )
                ),
            },
            ("items", "next_cursor"),
        ),
        query=(
            ("tag", string(64), "Only hosts with this tag."),
            (
                "limit",
                integer(1, HOSTS_PAGE),
                f"Page size (1-{HOSTS_PAGE}). Without limit and cursor (or with an empty "
                "limit) every host is listed at once.",
            ),
            (
                "cursor",
                string(MAX_HOSTS_CURSOR, pattern="^[A-Za-z0-9_-]+$"),
                "The next_cursor of the previous page, exactly as received (opaque); "
                f"without limit it pages by {HOSTS_PAGE}. Anything else is a 422.",
            ),
        ),
    ),
    "api.get_host": Operation("One host", "Hosts", response=ref("Host")),
    "api.list_snapshots": Operation(
        "The host's snapshots, newest first",
        "Snapshots",
        response=_list("Snapshot"),
        query=(("tag", string(64), "Only snapshots with this tag."),),
    ),
    "api.snapshot_tree": Operation(
        "One directory of a snapshot (answered by the agent)",
        "Snapshots",
        response=ref("Tree"),
        query=(("path", string(MAX_PATH), "Absolute directory path; default /."),),
        errors=(409, 502, 504),
    ),
    "api.snapshot_download": Operation(
        "Download one file of a snapshot (streamed from the agent)",
        "Snapshots",
        response={"type": "string", "format": "binary"},
        media_type="application/octet-stream",
        query=(("path", string(MAX_PATH), "Absolute path of a file (required)."),),
        errors=(409, 413, 502, 504),
    ),
    "api.list_repo_stats": Operation(
        "Repository size history", "Repository", response=_list("RepoStats")
    ),
    "api.test_repository": Operation(
        "Test a repository connection without saving it (the agent runs restic cat config)",
        "Repository",
        response=ref("RepositoryTest"),
        body="RepositoryInput",
        errors=(409, 502, 504),
    ),
    "api.get_repository": Operation(
        "The repository connection (never the password)", "Repository", response=ref("Repository")
    ),
    "api.put_repository": Operation(
        "Replace the repository connection; the repository is checked again",
        "Repository",
        response=ref("Repository"),
        body="RepositoryInput",
    ),
    "api.get_repo_maintenance": Operation(
        "Maintenance cadences (forget, prune, check)", "Repository", response=ref("Maintenance")
    ),
    "api.put_repo_maintenance": Operation(
        "Replace the maintenance cadences",
        "Repository",
        response=ref("Maintenance"),
        body="MaintenanceInput",
    ),
    "api.get_bandwidth": Operation("Bandwidth caps", "Repository", response=ref("Bandwidth")),
    "api.put_bandwidth": Operation(
        "Replace the bandwidth caps", "Repository", response=ref("Bandwidth"), body="Bandwidth"
    ),
    "api.put_admin_credential": Operation(
        "Set the admin credential (used by forget and prune)",
        "Repository",
        response=ref("AdminCredential"),
        body="AdminCredentialInput",
        errors=(409,),
    ),
    "api.delete_admin_credential": Operation("Remove the admin credential", "Repository", 204),
    "api.list_source_groups": Operation(
        "The host's source groups", "Source groups", response=_list("SourceGroup")
    ),
    "api.create_source_group": Operation(
        "Add a source group",
        "Source groups",
        201,
        ref("SourceGroup"),
        body="SourceGroupInput",
        description="Needs name and includes; hooks need the admin role.",
    ),
    "api.get_source_group": Operation(
        "One source group", "Source groups", response=ref("SourceGroup")
    ),
    "api.update_source_group": Operation(
        "Change a source group (only the keys sent)",
        "Source groups",
        response=ref("SourceGroup"),
        body="SourceGroupInput",
    ),
    "api.delete_source_group": Operation(
        "Remove a source group", "Source groups", 204, errors=(409,)
    ),
    "api.preview_source_group_retention": Operation(
        "Which snapshots a retention policy would keep and remove (changes nothing)",
        "Source groups",
        response=ref("RetentionPreview"),
        body="RetentionPreviewInput",
        body_required=False,
    ),
    "api.get_host_hooks": Operation(
        "Whether the host has default hooks (never their text)",
        "Source groups",
        response=ref("HooksSet"),
    ),
    "api.put_host_hooks": Operation(
        "Set the host's default hooks (admin)",
        "Source groups",
        response=ref("HooksSet"),
        body="HooksInput",
    ),
    "api.list_schedules": Operation(
        "The host's schedules", "Schedules", response=ref("ScheduleList")
    ),
    "api.create_schedule": Operation(
        "Add a schedule", "Schedules", 201, ref("Schedule"), body="ScheduleInput"
    ),
    "api.get_schedule": Operation("One schedule", "Schedules", response=ref("Schedule")),
    "api.update_schedule": Operation(
        "Change a schedule (only the keys sent)",
        "Schedules",
        response=ref("Schedule"),
        body="ScheduleInput",
    ),
    "api.delete_schedule": Operation("Remove a schedule", "Schedules", 204),
    "api.run_schedule": Operation(
        "Run a schedule now: a backup job of each of its source groups",
        "Schedules",
        202,
        obj({"jobs": array(ref("Job"))}, ("jobs",)),
        errors=(409,),
        description="The same as the agent's run when the schedule fires, started now by "
        "you (a disabled schedule too: it is a manual run). 409 host_offline when the agent "
        "is not connected, schedule_empty when the schedule has no source groups; 422 when a "
        "group has no paths. Nothing is started unless every group's job is.",
    ),
    "api.start_job": Operation(
        "Start a job on the host",
        "Jobs",
        201,
        ref("Job"),
        body="JobInput",
        errors=(409,),
        description=CONFLICT,
    ),
    "api.create_restore": Operation(
        "Restore files from a snapshot (a job)",
        "Jobs",
        201,
        ref("Job"),
        body="RestoreInput",
        errors=(409,),
        description=CONFLICT,
    ),
    "api.list_jobs": Operation(
        "Jobs, newest first (one page of at most 200)",
        "Jobs",
        response=obj(
            {
                "items": array(ref("Job")),
                "next_before": nullable(
                    integer(1, MAX_ID, description="Pass as before= for the next page.")
                ),
            },
            ("items", "next_before"),
        ),
        query=(
            ("host_id", ID, "Only this host's jobs."),
            ("kind", string(32), "Only this kind."),
            ("status", string(16), "Only this status."),
            ("tag", string(64), "Only jobs of hosts that carry this tag now."),
            ("before", ID, "Only jobs with a smaller id (next_before of a page)."),
            ("limit", integer(1, 200, default=200), "Page size."),
        ),
    ),
    "api.get_job": Operation("One job", "Jobs", response=ref("Job")),
    "api.cancel_job": Operation(
        "Cancel a queued or running job", "Jobs", 202, ref("Job"), errors=(409,)
    ),
    "api.get_diff": Operation(
        "The changes a diff job found, one page",
        "Jobs",
        response=ref("Diff"),
        query=(
            ("modifier", {"type": "string", "enum": ["+", "-", "M", "T"]}, "Only this change."),
            ("limit", integer(1, 1000, default=100), "Page size."),
            ("offset", integer(0, default=0), "Rows to skip."),
        ),
    ),
    "api.job_log_text": Operation(
        "The job's log as text", "Jobs", response={"type": "string"}, media_type="text/plain"
    ),
    "api.job_log_ndjson": Operation(
        "The job's log, one JSON record per line",
        "Jobs",
        response={"type": "string", "description": "LogRecord objects, one per line."},
        media_type="application/x-ndjson",
    ),
    "api.stream_job": Operation(
        "Live log, progress and status (Server-Sent Events)",
        "Jobs",
        response={"type": "string", "description": "Events: log, progress, status, end."},
        media_type="text/event-stream",
        query=(("after", integer(0), "Send log records after this sequence number."),),
        headers=(("Last-Event-ID", integer(0), "Resume after this log sequence number."),),
    ),
}

SCHEMAS["RetentionPreviewInput"] = obj(
    {"retention": nullable(ref("RetentionPolicy"))},
    description="Without a body (or retention), the group's own policy is previewed.",
)

# --- alerts, silences, alert rules (issue 14) -------------------------------------------------

ALERT_RULE = {"type": "string", "enum": list(ALERT_RULES)}
SEVERITY = {"type": "string", "enum": list(SEVERITIES)}
THRESHOLD = integer(
    60, MAX_THRESHOLD_SECONDS, description="Seconds, from 60 (one minute) to 366 days."
)
FACTOR = {"type": "number", "minimum": 2, "maximum": 1000}
DROP_PERCENT = {"type": "number", "minimum": 1, "maximum": 100}
INPUT_TIME = string(40, format="date-time", examples=["2026-12-24T18:00:00Z"])

SCHEMAS.update(
    {
        "Alert": obj(
            {
                "id": ID,
                "rule": ALERT_RULE,
                "severity": SEVERITY,
                "state": {"type": "string", "enum": list(ALERT_STATES)},
                "host_id": ID,
                "hostname": MAYBE_STRING,
                "subject": string(
                    255, description="The source group or task it is about; empty: the host."
                ),
                "message": string(2000),
                "details": {"type": "object", "description": "The rule's numbers (per rule)."},
                "job_id": MAYBE_INTEGER,
                "occurrences": integer(1),
                "fired_at": DATE_TIME,
                "last_fired_at": DATE_TIME,
                "acknowledged_at": MAYBE_DATE_TIME,
                "acknowledged_by": MAYBE_STRING,
                "ack_note": MAYBE_STRING,
                "resolved_at": MAYBE_DATE_TIME,
                "resolved_by": nullable(
                    string(description="automatic (the condition cleared) or who resolved it.")
                ),
                "resolve_note": MAYBE_STRING,
                "muted": {
                    "type": "boolean",
                    "description": "A silence mutes it now: shown, but notifies no one.",
                },
                "muted_until": MAYBE_DATE_TIME,
                "silence_id": MAYBE_INTEGER,
            },
            (
                "id",
                "rule",
                "severity",
                "state",
                "host_id",
                "subject",
                "message",
                "fired_at",
                "acknowledged_at",
                "resolved_at",
                "muted",
            ),
        ),
        "AlertList": obj(
            {
                "items": array(ref("Alert")),
                "next_before": nullable(
                    integer(1, MAX_ID, description="Pass as before= for the next page.")
                ),
            },
            ("items", "next_before"),
        ),
        "Delivery": obj(
            {
                "id": ID,
                "channel_id": ID,
                "channel_name": MAYBE_STRING,
                "event": {"type": "string", "enum": ["firing", "resolved", "reminder"]},
                "state": {"type": "string", "enum": ["pending", "sent", "failed"]},
                "attempts": integer(),
                "last_result": nullable(string(description="The last attempt's outcome.")),
                "created_at": DATE_TIME,
                "last_attempt_at": MAYBE_DATE_TIME,
                "sent_at": MAYBE_DATE_TIME,
                "next_attempt_at": nullable(
                    {**DATE_TIME, "description": "While pending: the next try."}
                ),
            },
            ("id", "channel_id", "event", "state", "attempts", "created_at"),
        ),
        "AlertDetail": {
            "allOf": [
                ref("Alert"),
                obj(
                    {
                        "deliveries": array(
                            ref("Delivery"), description="The delivery log, oldest first."
                        )
                    },
                    ("deliveries",),
                ),
            ]
        },
        "AlertActionInput": obj(
            {"note": nullable(string(1000))},
            closed=True,
            description="Optional: the body may be left out.",
        ),
        "Silence": obj(
            {
                "id": ID,
                "host_id": MAYBE_INTEGER,
                "hostname": MAYBE_STRING,
                "tag": MAYBE_STRING,
                "rule": {"anyOf": [ALERT_RULE, {"type": "null"}]},
                "reason": string(500),
                "starts_at": DATE_TIME,
                "ends_at": DATE_TIME,
                "created_by": string(),
                "created_at": DATE_TIME,
                "active": {"type": "boolean"},
            },
            ("id", "host_id", "tag", "rule", "reason", "starts_at", "ends_at", "active"),
        ),
        "SilenceInput": obj(
            {
                "host_id": nullable(ID),
                "tag": nullable(string(64)),
                "rule": {"anyOf": [ALERT_RULE, {"type": "null"}]},
                "reason": string(500, minLength=1),
                "starts_at": nullable(INPUT_TIME),
                "ends_at": INPUT_TIME,
            },
            ("reason", "ends_at"),
            closed=True,
            description=(
                "At least one of host_id, tag and rule; every one given must match. "
                "ends_at: in the future, at most a year away."
            ),
        ),
        "AlertRule": obj(
            {
                "rule": ALERT_RULE,
                "label": string(),
                "description": string(),
                "enabled": {"type": "boolean"},
                "severity": SEVERITY,
                "default_severity": SEVERITY,
                "auto_resolves": {"type": "boolean"},
                "has_threshold": {"type": "boolean"},
                "threshold_seconds": MAYBE_INTEGER,
                "default_threshold_seconds": MAYBE_INTEGER,
                "factor": {"type": "number", "description": "backup_size_anomaly only."},
                "drop_percent": {"type": "number", "description": "backup_size_anomaly only."},
            },
            ("rule", "label", "enabled", "severity", "has_threshold", "threshold_seconds"),
        ),
        "AlertRuleInput": obj(
            {
                "enabled": {"type": "boolean"},
                "severity": {"anyOf": [SEVERITY, {"type": "null"}]},
                "threshold_seconds": nullable(THRESHOLD),
                "factor": nullable({**FACTOR, "description": "backup_size_anomaly only."}),
                "drop_percent": nullable(
                    {**DROP_PERCENT, "description": "backup_size_anomaly only."}
                ),
            },
            closed=True,
            description="Keys left out keep their value; null returns a setting to its default.",
        ),
        "HostAlertRules": obj(
            {
                "host_id": ID,
                "overrides": {
                    "type": "object",
                    "description": "Rule → the host's own settings (only those set).",
                    "additionalProperties": ref("AlertOverride"),
                },
                "effective": {
                    "type": "object",
                    "description": "Rule → the setting in force for the host.",
                    "additionalProperties": ref("EffectiveAlertRule"),
                },
            },
            ("host_id", "overrides", "effective"),
        ),
        "EffectiveAlertRule": obj(
            {
                "enabled": {"type": "boolean"},
                "severity": SEVERITY,
                "threshold_seconds": MAYBE_INTEGER,
                "max_age_seconds": MAYBE_INTEGER,
                "factor": {"type": "number"},
                "drop_percent": {"type": "number"},
            },
            ("enabled", "severity", "threshold_seconds"),
        ),
        "GroupAlertRules": obj(
            {
                "host_id": ID,
                "source_group_id": ID,
                "group": string(),
                "overrides": {
                    "type": "object",
                    "description": "Rule → the group's own settings (only those set).",
                    "propertyNames": {"enum": list(GROUP_RULES)},
                    "additionalProperties": ref("AlertOverride"),
                },
                "effective": {
                    "type": "object",
                    "description": "Rule → the setting in force for the group (fleet, then "
                    "host, then group), for the rules a group may set.",
                    "propertyNames": {"enum": list(GROUP_RULES)},
                    "additionalProperties": ref("EffectiveAlertRule"),
                },
            },
            ("host_id", "source_group_id", "group", "overrides", "effective"),
        ),
        "AlertOverride": obj(
            {
                "enabled": {"type": "boolean"},
                "threshold_seconds": integer(60, MAX_THRESHOLD_SECONDS),
                "max_age_seconds": integer(60, MAX_THRESHOLD_SECONDS),
                "factor": {"type": "number"},
                "drop_percent": {"type": "number"},
            }
        ),
        "AlertOverrideInput": obj(
            {
                "enabled": {"type": ["boolean", "null"]},
                "threshold_seconds": nullable(THRESHOLD),
                "max_age_seconds": nullable(
                    {
                        **THRESHOLD,
                        "description": "backup_overdue only: the limit for groups "
                        "without a schedule.",
                    }
                ),
                "factor": nullable(FACTOR),
                "drop_percent": nullable(DROP_PERCENT),
            },
            closed=True,
            description="Keys left out keep their value; null inherits the fleet's setting.",
        ),
        "GroupAlertOverrideInput": obj(
            {
                "enabled": {"type": ["boolean", "null"]},
                "threshold_seconds": nullable(
                    {**THRESHOLD, "description": "backup_overdue only: the grace."}
                ),
                "factor": nullable({**FACTOR, "description": "backup_size_anomaly only."}),
                "drop_percent": nullable(
                    {**DROP_PERCENT, "description": "backup_size_anomaly only."}
                ),
            },
            closed=True,
            description="Keys left out keep their value; null inherits the host's setting "
            "(or the fleet's).",
        ),
    }
)

OPERATIONS.update(
    {
        "api.list_alerts": Operation(
            "Alerts, newest first (one page)",
            "Alerts",
            response=ref("AlertList"),
            query=(
                (
                    "state",
                    {"type": "string", "enum": [*ALERT_STATES, "open"]},
                    "open: firing or acknowledged.",
                ),
                ("host_id", ID, "Only this host's alerts."),
                ("rule", ALERT_RULE, "Only this rule."),
                ("severity", SEVERITY, "Only this severity."),
                ("tag", string(64), "Only hosts with this tag."),
                ("before", ID, "Only alerts with a smaller id (next_before of a page)."),
                ("limit", integer(1, ALERTS_PAGE, default=100), "Page size."),
            ),
        ),
        "api.get_alert": Operation(
            "One alert with its delivery log", "Alerts", response=ref("AlertDetail")
        ),
        "api.acknowledge_alert": Operation(
            "Acknowledge an alert: someone is on it (no more reminders)",
            "Alerts",
            response=ref("AlertDetail"),
            body="AlertActionInput",
            body_required=False,
            errors=(409,),
            description="409 alert_resolved when it is already resolved.",
        ),
        "api.resolve_alert": Operation(
            "Resolve an alert by hand (notifies like an automatic resolve)",
            "Alerts",
            response=ref("AlertDetail"),
            body="AlertActionInput",
            body_required=False,
            errors=(409,),
            description="409 alert_resolved when it is already resolved.",
        ),
        "api.list_silences": Operation(
            "Silences, latest end first",
            "Alerts",
            response=_list("Silence"),
            query=(
                (
                    "include_expired",
                    {"type": "boolean", "default": False},
                    "Also silences that have ended.",
                ),
            ),
        ),
        "api.create_silence": Operation(
            "Mute a host, a tag or a rule until a time",
            "Alerts",
            201,
            ref("Silence"),
            body="SilenceInput",
        ),
        "api.get_silence": Operation("One silence", "Alerts", response=ref("Silence")),
        "api.delete_silence": Operation("End a silence (removes it)", "Alerts", 204),
        "api.list_alert_rules": Operation(
            "The built-in alert rules and their fleet-wide settings",
            "Alerts",
            response=_list("AlertRule"),
        ),
        "api.get_alert_rule": Operation("One alert rule", "Alerts", response=ref("AlertRule")),
        "api.update_alert_rule": Operation(
            "Change an alert rule fleet-wide (only the keys sent)",
            "Alerts",
            response=ref("AlertRule"),
            body="AlertRuleInput",
        ),
        "api.get_host_alert_rules": Operation(
            "The host's own alert rule settings and the settings in force",
            "Alerts",
            response=ref("HostAlertRules"),
        ),
        "api.put_host_alert_rule": Operation(
            "Set the host's own setting of a rule (only the keys sent)",
            "Alerts",
            response=ref("HostAlertRules"),
            body="AlertOverrideInput",
        ),
        "api.get_group_alert_rules": Operation(
            "A source group's own alert rule settings and the settings in force",
            "Alerts",
            response=ref("GroupAlertRules"),
        ),
        "api.put_group_alert_rule": Operation(
            "Set a source group's own setting of a rule (only the keys sent)",
            "Alerts",
            response=ref("GroupAlertRules"),
            body="GroupAlertOverrideInput",
            description="Only "
            + ", ".join(GROUP_RULES)
            + " have per-group settings; another rule is a 422 naming it.",
        ),
    }
)

# --- notification channels (issue 14) --------------------------------------------------------

SECRET = string(1024, writeOnly=True)
SCHEMAS.update(
    {
        "Channel": obj(
            {
                "id": ID,
                "name": string(64),
                "kind": {"type": "string", "enum": list(CHANNEL_KINDS)},
                "enabled": {"type": "boolean"},
                "min_severity": SEVERITY,
                "tags": array(string(64), description="Only hosts with one of these; []: all."),
                "remind_every_hours": integer(0, MAX_REMIND_HOURS),
                "config": {
                    "type": "object",
                    "description": "The clear settings (a URL redacted); never a secret.",
                },
                "secrets_set": array(
                    {"type": "string"}, description="Which secret settings are stored (sealed)."
                ),
                "created_at": MAYBE_DATE_TIME,
                "updated_at": MAYBE_DATE_TIME,
            },
            ("id", "name", "kind", "enabled", "min_severity", "tags", "config", "secrets_set"),
        ),
        "ChannelConfig": obj(
            {
                "url": nullable(
                    string(
                        2000,
                        description="webhook: where to POST (secret); ntfy: the server "
                        "(default https://ntfy.sh); apprise: the Apprise URL (secret).",
                    )
                ),
                "secret": nullable(
                    {**SECRET, "description": "webhook: the HMAC key, at least 16 characters."}
                ),
                "host": nullable(string(255, description="email: the SMTP server.")),
                "port": nullable(integer(1, 65535)),
                "security": {
                    "anyOf": [
                        {"type": "string", "enum": ["none", "starttls", "tls"]},
                        {"type": "null"},
                    ]
                },
                "username": nullable(string(255)),
                "password": nullable({**SECRET, "description": "email: the SMTP password."}),
                "from": nullable(string(254)),
                "to": array(string(254), maxItems=20, description="email: the recipients."),
                "topic": nullable(string(64, description="ntfy: the topic.")),
                "token": nullable({**SECRET, "description": "ntfy: an access token."}),
            },
            description=(
                "Per kind — webhook: url, secret; email: host, port, security, username, "
                "password, from, to; ntfy: url, topic, token; apprise: url. On PATCH a secret "
                "left out (or empty) keeps its value."
            ),
        ),
        "ChannelInput": obj(
            {
                "name": string(64, minLength=1),
                "kind": {"type": "string", "enum": list(CHANNEL_KINDS)},
                "config": ref("ChannelConfig"),
                "min_severity": SEVERITY,
                "tags": array(string(64), maxItems=50),
                "enabled": {"type": "boolean", "default": True},
                "remind_every_hours": integer(0, MAX_REMIND_HOURS, default=24),
            },
            closed=True,
            description="POST needs name, kind and config; PATCH changes the keys it sends "
            "(the kind cannot change).",
        ),
        "ChannelTestResult": obj(
            {
                "ok": {"type": "boolean"},
                "detail": string(description="What happened: the status or the error text."),
            },
            ("ok", "detail"),
        ),
    }
)

OPERATIONS.update(
    {
        "api.list_channels": Operation(
            "Notification channels (never their secrets)",
            "Notifications",
            response=_list("Channel"),
        ),
        "api.create_channel": Operation(
            "Add a notification channel",
            "Notifications",
            201,
            ref("Channel"),
            body="ChannelInput",
            errors=(409,),
            description="409 name_taken when another channel has the name.",
        ),
        "api.get_channel": Operation(
            "One notification channel", "Notifications", response=ref("Channel")
        ),
        "api.update_channel": Operation(
            "Change a notification channel (only the keys sent)",
            "Notifications",
            response=ref("Channel"),
            body="ChannelInput",
            errors=(409,),
        ),
        "api.delete_channel": Operation(
            "Remove a notification channel and its delivery log", "Notifications", 204
        ),
        "api.test_channel": Operation(
            "Send a test notification now",
            "Notifications",
            response=ref("ChannelTestResult"),
            description="200 either way: ok false and detail say why it did not go out.",
        ),
    }
)

# --- host lifecycle: rename, tags, delete (issue 15) ------------------------------------------

HOST_TAG = string(64, pattern=TAG_PATTERN, examples=["db"])
HOST_TAGS = array(HOST_TAG, maxItems=20, description="At most 20; duplicates are dropped.")
SCHEMAS.update(
    {
        "HostUpdate": obj(
            {"hostname": string(255, examples=["web-2"]), "tags": HOST_TAGS},
            closed=True,
            description="Only the keys sent change; tags replace the host's tags.",
        ),
        "HostDeleteInput": obj(
            {"confirm_hostname": string(255, examples=["web-1"])},
            ("confirm_hostname",),
            closed=True,
        ),
        "HostTagsBulk": obj(
            {
                "host_ids": array(ID, minItems=1, maxItems=10_000),
                "add": HOST_TAGS,
                "remove": HOST_TAGS,
            },
            ("host_ids",),
            closed=True,
            description="Tags to add to and/or remove from every listed host.",
        ),
    }
)
OPERATIONS.update(
    {
        "api.update_host": Operation(
            "Rename and/or retag a host (only the keys sent)",
            "Hosts",
            response=ref("Host"),
            body="HostUpdate",
            errors=(409,),
            description="409 hostname_taken when another host has the name.",
        ),
        "api.put_host": Operation(
            "The same as PATCH: rename and/or retag a host (only the keys sent)",
            "Hosts",
            response=ref("Host"),
            body="HostUpdate",
            errors=(409,),
            description="409 hostname_taken when another host has the name.",
        ),
        "api.delete_host": Operation(
            "Delete a host and everything the server holds of it (not its repository)",
            "Hosts",
            204,
            body="HostDeleteInput",
            description=(
                "confirm_hostname must equal the hostname (else 422). Jobs, logs, snapshot "
                "rows, schedules and alerts go; the agent's next call gets 410 host_deleted."
            ),
        ),
        "api.bulk_tag_hosts": Operation(
            "Add and/or remove tags on many hosts",
            "Hosts",
            response=_list("Host"),
            body="HostTagsBulk",
        ),
    }
)

SCHEMAS["AuditEntry"] = obj(
    {
        "id": ID,
        "at": DATE_TIME,
        "actor": string(255, description="Who: a username, an agent's hostname, or system."),
        "actor_type": {"type": "string", "enum": ["user", "agent", "system"]},
        "action": string(64, examples=["host.restore"]),
        "target_type": MAYBE_STRING,
        "target_id": MAYBE_STRING,
        "payload": {"type": "object", "description": "What changed; secrets are redacted."},
        "address": MAYBE_STRING,
    },
    ("id", "at", "actor", "action", "target_type", "target_id", "payload", "address"),
)
SCHEMAS["AuditPage"] = obj(
    {
        "items": array(ref("AuditEntry")),
        "next_cursor": nullable(string(description="Pass as cursor for older rows.")),
    },
    ("items", "next_cursor"),
)
_AUDIT_FILTERS = (
    ("actor", string(255), "Actor label (case-insensitive); ends with * for a prefix."),
    ("action", string(65), "An action (host.restore), or a prefix: job. or job*."),
    ("target_type", string(255), "Target type: host, job, user, alert, channel, …"),
    ("target_id", string(255), "Target id (with target_type)."),
    ("host_id", ID, "Rows about this host: it, its jobs and source groups, or payload host_id."),
    ("since", string(40), "From this ISO-8601 time (a date alone: its start), inclusive."),
    ("until", string(40), "Up to this ISO-8601 time (a date alone: its end), inclusive."),
    ("q", string(255), "Free text in the actor, action, target id or payload."),
)
OPERATIONS.update(
    {
        "api.list_audit": Operation(
            "The audit log, newest first (one page)",
            "Audit",
            response=ref("AuditPage"),
            query=(
                *_AUDIT_FILTERS,
                ("limit", integer(1, 500, default=100), "Page size."),
                ("cursor", string(40), "next_cursor of the previous page."),
            ),
        ),
        "api.export_audit_csv": Operation(
            "The whole filtered audit log as CSV",
            "Audit",
            response={"type": "string", "description": "A header row, then one row per entry."},
            media_type="text/csv",
            query=_AUDIT_FILTERS,
            description="Cells a spreadsheet would run as a formula start with a quote.",
        ),
        "api.export_audit_ndjson": Operation(
            "The whole filtered audit log, one JSON object per line",
            "Audit",
            response={"type": "string", "description": "AuditEntry objects, one per line."},
            media_type="application/x-ndjson",
            query=_AUDIT_FILTERS,
        ),
    }
)

# --- the document --------------------------------------------------------------------------

_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_ERROR_TEXT = {
    400: "Malformed request (e.g. the body is not a JSON object).",
    401: "No or bad credentials.",
    403: "Your role is too low (the message names the role needed).",
    404: "No such object.",
    409: "Conflict with the current state.",
    413: "Request body (or the file) too large.",
    415: "The body is not application/json.",
    422: "A field is missing or wrong; `fields` names each one.",
    502: "The agent could not answer.",
    504: "The agent did not answer in time.",
}


def _path_and_parameters(rule) -> tuple[str, list[dict]]:
    parameters = []

    def replace(match: re.Match) -> str:
        converter, name = match.group(1) or "default", match.group(2)
        schema = ID if converter == "int" else string(64, minLength=1)
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return _ARGUMENT.sub(replace, rule.rule), parameters


def _role_of(view) -> str:
    access = declared_access(view)
    return "public" if access == PUBLIC else getattr(access, "value", str(access))


def _operation(endpoint: str, method: str, spec: Operation, view, parameters: list) -> dict:
    role = _role_of(view)
    writes = method not in ("GET", "HEAD") and not getattr(view, "_rm_self_service", False)
    if writes and role in ("viewer",):
        role = "operator"
    description = f"Needs the **{role}** role." if role != "public" else "No sign-in needed."
    if spec.description:
        description += " " + spec.description
    operation: dict[str, Any] = {
        "operationId": endpoint.removeprefix("api."),
        "summary": spec.summary,
        "description": description,
        "tags": [spec.tag],
        "x-required-role": role,
    }
    parameters = list(parameters)
    for name, schema, text in spec.query:
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
        )
    for name, schema, text in spec.headers:
        parameters.append(
            {"name": name, "in": "header", "required": False, "schema": schema, "description": text}
        )
    if parameters:
        operation["parameters"] = parameters
    if spec.body:
        operation["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": ref(spec.body)}},
        }
    success: dict[str, Any] = {"description": "OK" if spec.status < 300 else "Done"}
    if spec.status == 201:
        success["description"] = "Created"
    elif spec.status == 202:
        success["description"] = "Accepted"
    elif spec.status == 204:
        success["description"] = "Done (no body)"
    if spec.response is not None:
        success["content"] = {spec.media_type: {"schema": spec.response}}
    responses: dict[str, Any] = {str(spec.status): success}
    errors = set(spec.errors)
    if role != "public":
        errors |= {401, 403}
    if parameters and any(p["in"] == "path" for p in parameters):
        errors.add(404)
    if spec.body:
        errors |= {400, 413, 415, 422}
    if spec.query or spec.headers:
        errors.add(422)
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    operation["responses"] = responses
    if role == "public":
        operation["security"] = []
    return operation


def build_document(app) -> dict:
    """The whole OpenAPI 3.1 document for ``app``'s /api/v1 routes."""
    paths: dict[str, dict] = {}
    rules = sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule)
    for rule in rules:
        if not rule.rule.startswith("/api/v1/") or rule.endpoint not in OPERATIONS:
            continue
        spec = OPERATIONS[rule.endpoint]
        path, parameters = _path_and_parameters(rule)
        view = app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            item = paths.setdefault(path, {})
            item[method.lower()] = _operation(rule.endpoint, method, spec, view, parameters)
    error_content = {"application/json": {"schema": ref("Error")}}
    responses = {
        f"E{status}": {"description": text, "content": error_content}
        for status, text in _ERROR_TEXT.items()
    }
    responses["Error"] = {"description": "Any other error.", "content": error_content}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "restic-manager API",
            "version": __version__,
            "summary": "Backups of a fleet of hosts with restic: hosts, jobs, snapshots, restores.",
            "description": (
                "Authenticate with a personal access token (`Authorization: Bearer rmp_…`, "
                "Settings → API tokens) or, from the browser, with the signed-in session; "
                "session writes also need the page's CSRF token in `X-CSRFToken`. Errors are "
                '`{"error": code, "message": text}` (422 adds `fields`). Times are ISO-8601 '
                'UTC. Lists are `{"items": [...]}`. See docs/api.md for examples.'
            ),
            "license": {
                "name": "PolyForm Noncommercial 1.0.0",
                "identifier": "PolyForm-Noncommercial-1.0.0",
            },
        },
        "servers": [{"url": "/", "description": "This server"}],
        "security": [{"bearerToken": []}, {"session": []}],
        "tags": [
            {"name": name} for name in dict.fromkeys(spec.tag for spec in OPERATIONS.values())
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A personal access token (rmp_…).",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "rm_session",
                    "description": "The browser's session; writes need X-CSRFToken.",
                },
            },
        },
    }


def document() -> dict:
    """The document of the running app, built once per process."""
    app = current_app._get_current_object()
    cached = app.extensions.get("openapi_document")
    if cached is None:
        cached = app.extensions["openapi_document"] = build_document(app)
    return cached


@bp.get("/openapi.json")
@public
def openapi():
    """Public on purpose: it describes the API and holds no data (docs/security.md)."""
    response = jsonify(document())
    response.headers["Cache-Control"] = "no-cache"
    return response
