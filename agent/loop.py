"""The conversation with the server: hello once, then long-poll until stopped, backing off
while the server cannot be reached (docs/agent.md, "Connection").

Each poll carries the acks of the commands handled since the last one that got through;
what an answer brings (settings, the reconcile list, commands) is handed to the callbacks.
"""

import logging
import threading
from typing import Any, Callable, Dict, List, Optional

from agent.backoff import Backoff
from agent.client import (
    Client,
    ClientError,
    HostDeleted,
    PinMismatch,
    ProtocolTooOld,
    RetryableError,
    Unauthorized,
)
from agent.status import StatusFile

STOP_CHECK_SECONDS = 0.25
log = logging.getLogger(__name__)

Answer = Dict[str, Any]
Running = Callable[[], List[Dict[str, Any]]]


class BackgroundCall:
    """Runs one blocking request on a daemon thread, so a stop never waits for a long poll.

    An abandoned poll is harmless: commands it may have carried are redelivered when their
    lease expires.
    """

    def __init__(self, function: Callable[..., Any], *args: Any):
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        thread.start()

    def _run(self, function, args) -> None:
        try:
            self.result = function(*args)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def wait(self, stop: threading.Event) -> Any:
        """The result; raises what the call raised; ``Stopped`` if ``stop`` came first."""
        while not self.done.wait(STOP_CHECK_SECONDS):
            if stop.is_set():
                raise Stopped()
        if self.error is not None:
            raise self.error
        return self.result


class Stopped(Exception):
    """The loop was asked to stop while a request was on its way."""


class ServerLoop:
    def __init__(
        self,
        server_url: str,
        client: Client,
        status: StatusFile,
        boot_id: str,
        running: Running,
        on_answer: Callable[[Answer], None],
        on_command: Callable[[Dict[str, Any]], None],
    ):
        self.server_url = server_url
        self.client = client
        self.status = status
        self.boot_id = boot_id
        self.running = running
        self.on_answer = on_answer  # settings and the reconcile list (hello and poll)
        self.on_command = on_command
        self._acks: List[Dict[str, Any]] = []
        self._acks_lock = threading.Lock()
        self._backoff = Backoff()

    # -- acks --------------------------------------------------------------------------

    def add_ack(self, ack: Dict[str, Any]) -> None:
        """Send ``ack`` with the next poll (again with each one, until a poll gets through)."""
        with self._acks_lock:
            self._acks.append(ack)

    def pending_acks(self) -> List[Dict[str, Any]]:
        with self._acks_lock:
            return list(self._acks)

    def _forget_acks(self, delivered: List[Dict[str, Any]]) -> None:
        with self._acks_lock:
            self._acks = [ack for ack in self._acks if ack not in delivered]

    # -- hello, poll, back off ---------------------------------------------------------

    def hello(self, stop: threading.Event, facts: Dict[str, Any]) -> bool:
        """Say hello until the server answers; False if ``stop`` came first.

        Raises :class:`ProtocolTooOld` when the server needs a newer agent.
        """
        while not stop.is_set():
            try:
                call = BackgroundCall(self.client.hello, facts, self.boot_id, self.running())
                answer = call.wait(stop)
            except Stopped:
                return False
            except ProtocolTooOld:
                self.status.failed("protocol_too_old", "the server needs a newer agent")
                raise
            except HostDeleted as error:
                self.status.failed("host_deleted", error.message)
                return False
            except ClientError as error:
                self._wait_after(error, stop)
                continue
            self._backoff.reset()
            log.info("connected to %s as host %s", self.server_url, answer.get("host_id"))
            self.on_answer(answer)
            self.status.connected(self.running())
            return True
        return False

    def poll_forever(self, stop: threading.Event) -> None:
        """Long-poll until ``stop``; raises :class:`ProtocolTooOld` like :meth:`hello`."""
        while not stop.is_set():
            acks = self.pending_acks()
            try:
                call = BackgroundCall(self.client.poll, self.boot_id, acks, self.running())
                answer = call.wait(stop)
            except Stopped:
                return
            except ProtocolTooOld:
                self.status.failed("protocol_too_old", "the server needs a newer agent")
                raise
            except HostDeleted as error:
                self.status.failed("host_deleted", error.message)
                return
            except ClientError as error:
                self._wait_after(error, stop)
                continue
            self._forget_acks(acks)
            self._backoff.reset()
            if answer:
                self.on_answer(answer)
                for command in answer.get("commands") or []:
                    self.on_command(command)
            self.status.connected(self.running())

    def _wait_after(self, error: ClientError, stop: threading.Event) -> None:
        if isinstance(error, Unauthorized):
            message = "the server refused this agent's token: re-enroll this host"
            delay = self._backoff.max_delay()
            state = "unauthorized"
        elif isinstance(error, PinMismatch):
            message, delay, state = str(error), self._backoff.max_delay(), "pin_mismatch"
        elif isinstance(error, RetryableError):
            message = str(error)
            delay = self._backoff.next_delay(error.retry_after)
            state = "unreachable"
        else:
            message = f"the server refused the request: {error}"
            delay = self._backoff.next_delay()
            state = "refused"
        log.warning("%s; retrying in %.1f s", message, delay)
        self.status.failed(state, message, self.running())
        stop.wait(delay)
