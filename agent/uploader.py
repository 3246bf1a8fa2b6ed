"""Delivers the spool to the server: events in order, then each job's log records in order.

One thread, one batch in flight at a time. A ``job.finished`` event waits until its job's
records are committed, so a watcher never sees a job end before its last lines.

While the server says someone watches a running job (``"watched": true`` in the answer
to its log records), flushes come every ``log_flush_watched_seconds`` instead of every
``log_flush_seconds``; ``job.progress`` events, which never wake the uploader, go with them.

Runs the agent started while the server was away are registered (``POST /runs``) at the
start of every flush; their records and events then go out under the server's ids.
Until then their events hold back the queue behind them, so everything stays in order.
"""

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Set

from agent.backoff import Backoff
from agent.client import (
    Client,
    ClientError,
    Gap,
    HostDeleted,
    PayloadTooLarge,
    Refused,
    RetryableError,
    StaleAttempt,
    Unauthorized,
)
from agent.jobspool import JobKey, JobSpool
from agent.runs import registered_ids
from agent.spool import MAX_EVENTS_PER_BATCH, Spool

CANCEL_STATES = frozenset({"cancelling", "canceling", "cancelled", "canceled"})
log = logging.getLogger(__name__)


class Uploader:
    def __init__(
        self,
        client: Client,
        spool: Spool,
        settings: Callable[[], Dict[str, Any]],
        cancel_job: Callable[[int, Optional[str], str], Any],
        is_running: Callable[[JobKey], bool] = lambda job_id: False,
        on_run_registered: Callable[[str, int, str], Any] = lambda *ids: None,
    ):
        self.client = client
        self.spool = spool
        self.settings = settings
        self.cancel_job = cancel_job
        self.is_running = is_running
        self.on_run_registered = on_run_registered
        self.backoff = Backoff()
        self.last_error: Optional[str] = None
        self._wake = threading.Event()
        self._event_batch = MAX_EVENTS_PER_BATCH
        self._record_batch: Dict[int, int] = {}
        self._watched: Set[int] = set()  # job ids the server last said are watched

    def wake(self) -> None:
        """Flush now (a job ended, an event was spooled)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Flush every interval (or when woken) until ``stop`` is set."""
        delay = 0.0
        while not stop.is_set():
            self._wake.wait(timeout=delay)
            if stop.is_set():
                return
            self._wake.clear()
            delay = self.flush_once_logged()

    def flush_once_logged(self) -> float:
        """One flush; returns how long to wait before the next one."""
        try:
            self.flush()
        except HostDeleted as error:  # the agent stops (its callback said why, once)
            self.last_error = f"host deleted: {error.message}"
            return self.backoff.max_delay()
        except Unauthorized as error:
            self.last_error = f"unauthorized: {error.message}"
            log.error("uploads refused: the server does not accept this agent's token")
            return self.backoff.max_delay()
        except ClientError as error:
            self.last_error = str(error)
            retry_after = getattr(error, "retry_after", None)
            delay = self.backoff.next_delay(retry_after)
            log.warning("upload failed (%s); retrying in %.1f s", error, delay)
            return delay
        except OSError:
            log.exception("spool error while uploading")
            return self.backoff.next_delay()
        self.backoff.reset()
        self.last_error = None
        return self.flush_interval()

    def flush_interval(self) -> float:
        """``log_flush_watched_seconds`` while a running job is watched, else the normal one."""
        settings = self.settings()
        self._watched = {job_id for job_id in self._watched if self.is_running(job_id)}
        if self._watched:
            return float(settings.get("log_flush_watched_seconds", 1))
        return float(settings.get("log_flush_seconds", 10))

    def is_watched(self, job_id: int) -> bool:
        return job_id in self._watched

    def mark_watched(self, job_id: int) -> None:
        """Someone just opened the job's live view (a ``job.watch`` command): flush now."""
        if self.is_running(job_id):
            self._watched.add(job_id)
            self.wake()

    def _note_watched(self, batch: List[Dict[str, Any]], answer: Dict[str, Any]) -> None:
        """The events answer lists which of the batch's jobs are watched right now."""
        listed = answer.get("watched")
        if not isinstance(listed, list):
            return  # an older server: only log answers say it
        for job_id in {event.get("job_id") for event in batch if event.get("job_id")}:
            if job_id in listed:
                self._watched.add(job_id)
            else:
                self._watched.discard(job_id)

    def flush(self) -> None:
        """Deliver everything deliverable now; raises the client error that stopped it."""
        while True:
            self.spool.sync()
            self.spool.report_dropped()
            self._register_runs()
            sent_events = self._flush_events()
            sent_records = self._flush_records()
            self.spool.remove_delivered_jobs(
                keep=[job.job_id for job in self.spool.jobs() if self.is_running(job.job_id)]
            )
            if not (sent_events or sent_records):
                return

    # -- runs the agent started --------------------------------------------------------

    def _register_runs(self) -> None:
        """``POST /runs`` for every run still keyed by its run_id; adopt the answered ids."""
        for job in self.spool.pending_runs():
            run_id = str(job.job_id)
            if job.registration is None:
                log.error("run %s: its registration is lost; dropping its data", run_id)
                self._drop_run(run_id)
                continue
            try:
                answer = self.client.register_run(job.registration)
            except (Unauthorized, RetryableError, HostDeleted):  # the flush stops
                raise
            except Refused as error:
                log.error("run %s: the server refused it (%s); dropping its data", run_id, error)
                self._drop_run(run_id)
                continue
            ids = registered_ids(answer)
            if ids is None:
                log.error("run %s: the server's answer has no job id; retrying later", run_id)
                continue
            job_id, attempt_id = ids
            log.info("run %s is registered as job %s", run_id, job_id)
            # The runner first, so a still-running job never appears under both keys.
            self.on_run_registered(run_id, job_id, attempt_id)
            self.spool.adopt_run(run_id, job_id, attempt_id)

    def _drop_run(self, run_id: str) -> None:
        events = [e["event_id"] for e in self.spool.pending_events(10**9) if e["job_id"] == run_id]
        self.spool.ack_events(events)
        if not self.is_running(run_id):
            self.spool.remove_job(run_id)

    # -- events ------------------------------------------------------------------------

    def _flush_events(self) -> bool:
        progressed = False
        while True:
            batch = self._next_event_batch()
            if not batch:
                return progressed
            try:
                answer = self.client.send_events(batch)
            except (Unauthorized, RetryableError, HostDeleted):  # the flush stops
                raise
            except PayloadTooLarge:
                self._event_batch = max(1, len(batch) // 2)
                if len(batch) > 1:
                    continue
                self._drop_event(batch[0], "too large for the server")
                progressed = True
                continue
            except Refused as error:
                if len(batch) > 1:
                    self._event_batch = max(1, len(batch) // 2)
                    continue
                self._drop_event(batch[0], error.message)
                progressed = True
                continue
            self._event_batch = MAX_EVENTS_PER_BATCH
            self._note_watched(batch, answer)
            done = set(answer.get("acked") or [])
            for rejection in answer.get("rejected") or []:
                if isinstance(rejection, dict) and rejection.get("event_id"):
                    done.add(rejection["event_id"])
                    log.warning(
                        "the server rejected event %s: %s",
                        rejection["event_id"],
                        rejection.get("message") or rejection.get("error"),
                    )
            if not self.spool.ack_events(done & {event["event_id"] for event in batch}):
                return progressed  # nothing acked: try again at the next flush
            progressed = True

    def _next_event_batch(self) -> List[Dict[str, Any]]:
        batch = []
        for event in self.spool.pending_events(self._event_batch):
            if isinstance(event.get("job_id"), str):
                break  # a run not registered yet: it and what follows wait
            if event.get("type") == "job.finished" and event.get("job_id") is not None:
                job = self.spool.job(event["job_id"])
                if job is not None and job.has_unsent_records():
                    break  # the job's last lines go first
            batch.append(event)
        return batch

    def _drop_event(self, event: Dict[str, Any], reason: str) -> None:
        log.error("dropping event %s (%s): %s", event["event_id"], event.get("type"), reason)
        self.spool.ack_events([event["event_id"]])

    # -- log records -------------------------------------------------------------------

    def _flush_records(self) -> bool:
        progressed = False
        for job in self.spool.jobs():
            if isinstance(job.job_id, str):
                continue  # not registered yet
            while self._send_one_batch(job):
                progressed = True
        return progressed

    def _send_one_batch(self, job: JobSpool) -> bool:
        """Send the next batch of ``job``; True if the server took something (or a rewind)."""
        limit = int(self.settings().get("max_log_batch_records", 500))
        limit = min(limit, self._record_batch.get(job.job_id, limit))
        batch = job.pending_batch(max_records=limit)
        if batch is None:
            return False
        first_seq, records = batch
        before = job.acked_seq
        try:
            answer = self.client.send_logs(job.job_id, job.attempt_id, first_seq, records)
        except Gap as gap:
            log.info(
                "job %s: server has records up to %s; resending", job.job_id, gap.committed_seq
            )
            job.set_committed(gap.committed_seq)
            return not job.stopped and job.acked_seq != before
        except StaleAttempt:
            log.warning(
                "job %s: attempt %s is stale; dropping its spool", job.job_id, job.attempt_id
            )
            self.cancel_job(job.job_id, job.attempt_id, "stale_attempt")
            self.spool.remove_job(job.job_id)
            return False
        except PayloadTooLarge:
            if len(records) == 1:
                job.stop("too_large")
                return False
            self._record_batch[job.job_id] = max(1, len(records) // 2)
            return True
        except (Unauthorized, RetryableError, HostDeleted):  # the flush stops
            raise
        except Refused as error:
            log.error("job %s: the server refused its log records: %s", job.job_id, error.message)
            job.stop(f"refused: {error.code or error.status}")
            return False
        job.set_committed(int(answer.get("committed_seq") or 0))
        if answer.get("watched") is True:
            self._watched.add(job.job_id)
        else:
            self._watched.discard(job.job_id)
        if answer.get("truncated"):
            log.warning("job %s: the server's log cap is reached; no more records", job.job_id)
            job.stop("truncated")
        if str(answer.get("job_state") or "") in CANCEL_STATES:
            self.cancel_job(job.job_id, job.attempt_id, "cancelled")
        return job.acked_seq != before and not job.stopped
