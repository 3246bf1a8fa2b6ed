"""Shapes of the public JSON API (a contract: keep fields stable, add freely)."""

from __future__ import annotations

from app.formatting import iso, job_summary


def host_json(host, status: str) -> dict:
    return {
        "id": host.id,
        "hostname": host.hostname,
        "status": status,
        "repo_status": host.repo_status,
        "last_seen_at": iso(host.last_seen_at),
        "repo_status_reason": host.repo_status_reason,
        "last_backup_at": iso(host.last_backup_at),
        "last_backup_status": host.last_backup_status,
        "last_backup_job_id": host.last_backup_job_id,
        "last_successful_backup_at": iso(host.last_successful_backup_at),
        "last_successful_backup_job_id": host.last_successful_backup_job_id,
        "snapshot_count": host.snapshot_count or 0,
        "latest_snapshot_at": iso(host.latest_snapshot_at),
        "repo_size_bytes": host.repo_size_bytes,
        "tags": list(host.tags or []),
        "os": host.os,
        "arch": host.arch,
        "agent_version": host.agent_version,
        "restic_version": host.restic_version,
        "lock": None
        if host.lock_reported_at is None
        else {
            "reported_at": iso(host.lock_reported_at),
            "detail": host.lock_detail,
            "job_id": host.lock_job_id,
        },
    }


def user_json(user) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "created_at": iso(user.created_at),
        "last_login_at": iso(user.last_login_at),
    }


def token_json(token) -> dict:
    """A token's metadata; the secret value appears only in the create response."""
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.display_prefix,
        "owner": token.user.username,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
    }


def job_json(job) -> dict:
    return {
        "id": job.id,
        "host_id": job.host_id,
        "kind": job.kind,
        "status": job.status,
        "actor": {"type": job.actor_type, "label": job.actor_label},
        "params": job.params or {},
        "exit_code": job.exit_code,
        "error": job.error,
        "summary": job_summary(job),  # the line the job tables show
        "stats": job.stats or {},
        "progress": job.progress or {},
        "log_lines": job.log_committed_seq,
        "log_truncated": job.log_truncated,
        "lines_dropped": job.lines_dropped,
        "log_purged_at": iso(job.log_purged_at),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def snapshot_json(snapshot, size=None) -> dict:
    """``size``: the snapshot's :class:`~app.services.snapshot_sizes.SnapshotSize`."""
    return {
        "id": snapshot.snapshot_id,
        "short_id": snapshot.short_id,
        "time": iso(snapshot.time),
        "hostname": snapshot.hostname,
        "username": snapshot.username,
        "paths": list(snapshot.paths or []),
        "tags": list(snapshot.tags or []),
        "parent": snapshot.parent,
        "tree": snapshot.tree,
        "program_version": snapshot.program_version,
        "summary": snapshot.summary,
        "size_bytes": size.size_bytes if size else None,
        "data_added_bytes": size.data_added if size else None,
        "file_count": size.file_count if size else None,
    }


def repo_stats_json(stats) -> dict:
    return {
        "taken_at": iso(stats.taken_at),
        "job_id": stats.job_id,
        "total_size": stats.total_size,
        "total_uncompressed_size": stats.total_uncompressed_size,
        "total_blob_count": stats.total_blob_count,
        "snapshots_count": stats.snapshots_count,
        "compression_ratio": stats.compression_ratio,
    }


def alert_json(alert, hostname, silence=None) -> dict:
    """An alert; ``silence`` is the one muting it now (None: it notifies as usual)."""
    return {
        "id": alert.id,
        "rule": alert.rule,
        "severity": alert.severity,
        "state": alert.state,
        "host_id": alert.host_id,
        "hostname": hostname,
        "subject": alert.subject,
        "message": alert.message,
        "details": alert.details or {},
        "job_id": alert.job_id,
        "occurrences": alert.occurrences,
        "fired_at": iso(alert.fired_at),
        "last_fired_at": iso(alert.last_fired_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "ack_note": alert.ack_note,
        "resolved_at": iso(alert.resolved_at),
        "resolved_by": alert.resolved_by,
        "resolve_note": alert.resolve_note,
        "muted": silence is not None,
        "muted_until": iso(silence.ends_at) if silence is not None else None,
        "silence_id": silence.id if silence is not None else None,
    }


def delivery_json(notification, channel_name) -> dict:
    """One row of an alert's delivery log (the outbox row of one channel and one change)."""
    return {
        "id": notification.id,
        "channel_id": notification.channel_id,
        "channel_name": channel_name,
        "event": notification.event,
        "state": notification.state,
        "attempts": notification.attempts,
        "last_result": notification.last_result,
        "created_at": iso(notification.created_at),
        "last_attempt_at": iso(notification.last_attempt_at),
        "sent_at": iso(notification.sent_at),
        "next_attempt_at": iso(notification.next_attempt_at)
        if notification.state == "pending"
        else None,
    }


def silence_json(silence, hostname, now) -> dict:
    return {
        "id": silence.id,
        "host_id": silence.host_id,
        "hostname": hostname,
        "tag": silence.tag,
        "rule": silence.rule,
        "reason": silence.reason,
        "starts_at": iso(silence.starts_at),
        "ends_at": iso(silence.ends_at),
        "created_by": silence.created_by,
        "created_at": iso(silence.created_at),
        "active": silence.starts_at <= now < silence.ends_at,
    }
