"""restic's "repository is already locked", remembered on the host until it is gone.

A job that failed on a lock records what restic said (who holds it, since when) on the
host; the host page shows it with an Unlock button. An unlock job that succeeds, or a later
job that takes a lock itself (backup, forget, prune, check) and succeeds, clears it.
"""

from __future__ import annotations

import re
from typing import Optional

from app.models import Host, Job

LOCKED = re.compile(r"repository is already locked", re.IGNORECASE)
# Jobs whose success proves restic could take its lock (unlock: the stale ones are gone).
CLEARING_KINDS = frozenset({"unlock", "backup", "forget", "prune", "check"})
CLEARING_STATUSES = frozenset({"succeeded", "warning"})
MAX_DETAIL = 500
# restic's own words for what ``unlock`` removes (restic-cli.md §7).
STALE_RULE = (
    "restic unlock removes only stale locks: those older than 30 minutes, or those of a "
    "process that no longer runs on the same host."
)


def lock_detail(error: Optional[str]) -> Optional[str]:
    """restic's sentence from "repository is already locked" on (who, since when), cut;
    None when the error is not about a lock. The agent's error holds no secrets (it masks
    them), and only restic's part is kept."""
    if not error:
        return None
    found = LOCKED.search(error)
    if found is None:
        return None
    text = error[found.start() :]
    text = re.sub(r"\s+", " ", text.replace(" / ", "; ")).strip()
    text = text.rstrip(")") if text.count(")") > text.count("(") else text
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def note_job_finished(host: Host, job: Job) -> None:
    """Record or clear the host's lock from a job that just ended."""
    if job.status == "failed":
        detail = lock_detail(job.error)
        if detail is not None:
            host.lock_reported_at = job.finished_at
            host.lock_detail = detail
            host.lock_job_id = job.id
        return
    if (
        host.lock_reported_at is not None
        and job.kind in CLEARING_KINDS
        and job.status in CLEARING_STATUSES
        and job.id != host.lock_job_id
        and (job.kind == "unlock" or job.id > (host.lock_job_id or 0))
    ):
        clear(host)


def clear(host: Host) -> None:
    host.lock_reported_at = None
    host.lock_detail = None
    host.lock_job_id = None
