"""HTTP to the server (docs/protocol.md): one method per endpoint, responses as exceptions.

Everything the server or a proxy can answer ends up as either a parsed JSON body or one of
the exceptions below. :class:`RetryableError` means "back off and try again"; the
:class:`Refused` family means the server understood and said no.
"""

import logging
import re
from typing import Any, Callable, Dict, List, Optional

import requests
from requests.adapters import HTTPAdapter

from agent import PROTOCOL_VERSION, __version__
from agent.backoff import parse_retry_after

API_PREFIX = "/api/agent/v1"
CONNECT_TIMEOUT_SECONDS = 10.0
READ_MARGIN_SECONDS = 15.0
RETRYABLE_STATUSES = frozenset({408, 429})
RPC_READ_SECONDS = 30.0
_RPC_ID = re.compile(r"^[0-9a-fA-F]{32}$")

log = logging.getLogger(__name__)


class ClientError(Exception):
    """Base of everything this module raises; ``str()`` is safe to log (never a secret)."""


class RetryableError(ClientError):
    """Connection failure, timeout, 5xx, 408, 429 or a body that is not JSON."""

    def __init__(
        self, message: str, retry_after: Optional[float] = None, status: Optional[int] = None
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class PinMismatch(ClientError):
    """The server's certificate is not the pinned one: we refuse to talk to it."""


class Refused(ClientError):
    """A JSON 4xx answer: the server understood the request and refused it."""

    def __init__(self, status: int, code: str, message: str, body: Optional[Dict[str, Any]] = None):
        super().__init__(message or code or f"HTTP {status}")
        self.status = status
        self.code = code
        self.message = message or code or f"HTTP {status}"
        self.body = body or {}


class Unauthorized(Refused):
    """401: the agent token is unknown or revoked (or, for enroll, the enrollment token)."""


class ProtocolTooOld(Refused):
    """426: the server needs a newer protocol; ``min_protocol`` says which."""

    def __init__(self, status: int, code: str, message: str, body: Optional[Dict[str, Any]] = None):
        super().__init__(status, code, message, body)
        self.min_protocol = (body or {}).get("min_protocol")


class Gap(Refused):
    """416 log_gap: resend from ``committed_seq + 1``."""

    def __init__(self, status: int, code: str, message: str, body: Optional[Dict[str, Any]] = None):
        super().__init__(status, code, message, body)
        self.committed_seq = int((body or {}).get("committed_seq") or 0)


class StaleAttempt(Refused):
    """409 stale_attempt: this attempt is not the job's current one."""


class PayloadTooLarge(Refused):
    """413: send a smaller batch."""


class Gone(Refused):
    """410 (``rpc_closed``): nobody waits for this answer any more."""


class HostDeleted(Gone):
    """410 ``host_deleted``: an administrator deleted this host on the server; the agent stops
    (every call would get the same answer until it is enrolled again)."""


def _refusal_class(status: int, code: str):
    if status == 401:
        return Unauthorized
    if status == 426:
        return ProtocolTooOld
    if status == 416:
        return Gap
    if status == 413:
        return PayloadTooLarge
    if status == 410:
        return HostDeleted if code == "host_deleted" else Gone
    if status == 409 and code == "stale_attempt":
        return StaleAttempt
    return Refused


class PinningAdapter(HTTPAdapter):
    """Checks the SHA-256 of the server's leaf certificate (DER) right after the handshake.

    urllib3 does the comparison (``assert_fingerprint``) on the freshly connected socket,
    also through an HTTPS_PROXY tunnel, and fails closed: no request is sent on mismatch.
    """

    def __init__(self, pin_sha256: str, **kwargs):
        self._pin = pin_sha256
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["assert_fingerprint"] = self._pin
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        proxy_kwargs["assert_fingerprint"] = self._pin
        return super().proxy_manager_for(proxy, **proxy_kwargs)


def api_base(server_url: str) -> str:
    base = server_url.rstrip("/")
    return base if base.endswith(API_PREFIX) else base + API_PREFIX


class Client:
    """One ``requests.Session`` to the server. Not thread-safe: one per thread."""

    def __init__(
        self,
        server_url: str,
        agent_token: Optional[str] = None,
        ca_file: Optional[str] = None,
        pin_sha256: Optional[str] = None,
        poll_wait_seconds: float = 25,
    ):
        self.base_url = api_base(server_url)
        self._token = agent_token
        # Told about a 410 host_deleted from any call, before it is raised (the agent stops).
        self.on_host_deleted: Optional[Callable[[HostDeleted], None]] = None
        self.poll_wait_seconds = poll_wait_seconds
        self._pinned = bool(pin_sha256)
        self.session = requests.Session()
        self.session.trust_env = True  # HTTPS_PROXY / NO_PROXY, like every other tool on the host
        self.session.headers["User-Agent"] = f"restic-manager-agent/{__version__}"
        # Passed with every request: a session-level ``verify`` would silently lose to
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment (requests#3829).
        self._verify: Any = True
        if ca_file:
            self._verify = ca_file
        elif pin_sha256:
            self._verify = False  # the pin is the trust anchor (e.g. a self-signed certificate)
        if pin_sha256:
            self.session.mount("https://", PinningAdapter(pin_sha256))

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- endpoints ---------------------------------------------------------------------

    def enroll(self, token: str, facts: Dict[str, Any]) -> Dict[str, Any]:
        """``POST /enroll`` → ``{"host_id", "agent_token", "settings"}``."""
        body = dict(facts)
        body["token"] = token
        body.setdefault("protocol_version", PROTOCOL_VERSION)
        return self._post("/enroll", body, authenticated=False)

    def hello(
        self, facts: Dict[str, Any], boot_id: str, running: List[Dict[str, Any]]
    ) -> Dict[str, Any]:
        """``POST /hello`` → ``{"host_id", "settings", "reconcile"}``; 426 → ProtocolTooOld."""
        body = dict(facts)
        body.update({"protocol_version": PROTOCOL_VERSION, "boot_id": boot_id, "running": running})
        return self._post("/hello", body)

    def poll(
        self, boot_id: str, acks: List[Dict[str, Any]], running: List[Dict[str, Any]]
    ) -> Optional[Dict[str, Any]]:
        """``POST /poll`` (held up to poll_wait_seconds) → body, or ``None`` for 204."""
        return self._post("/poll", {"boot_id": boot_id, "acks": acks, "running": running})

    def send_events(self, events: List[Dict[str, Any]]) -> Dict[str, Any]:
        """``POST /events`` → ``{"acked": [...], "rejected": [...]}``."""
        return self._post("/events", {"events": events})

    def register_run(self, registration: Dict[str, Any]) -> Dict[str, Any]:
        """``POST /runs`` (a job the agent started) → ``{"job_id", "attempt_id"}``.

        Idempotent by ``run_id``: a repeated registration gets the same ids.
        """
        return self._post("/runs", registration)

    def send_logs(
        self, job_id: int, attempt_id: str, first_seq: int, records: List[Dict[str, Any]]
    ) -> Dict[str, Any]:
        """``POST /jobs/{id}/logs`` → ``{"committed_seq", "job_state", "truncated", "watched"}``.

        416 → :class:`Gap`, 409 → :class:`StaleAttempt`, 413 → :class:`PayloadTooLarge`.
        """
        body = {"attempt_id": attempt_id, "first_seq": first_seq, "records": records}
        return self._post(f"/jobs/{int(job_id)}/logs", body)

    def answer_rpc(self, rpc_id: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """``POST /rpc/{id}`` (``{"ok": true, "result"}`` or ``{"ok": false, "error", …}``).

        404 unknown call, 409 ``rpc_answered``: both :class:`Refused`.
        """
        return self._post(f"/rpc/{_rpc_id(rpc_id)}", body, read_timeout=RPC_READ_SECONDS)

    def send_rpc_data(self, rpc_id: str, offset: int, data: bytes) -> Dict[str, Any]:
        """``POST /rpc/{id}/data?offset=N`` with raw bytes → ``{"committed": M}``.

        416 ``rpc_gap`` → :class:`Gap` (``body["committed"]``), 413 → :class:`PayloadTooLarge`,
        410 ``rpc_closed`` → :class:`Gone`.
        """
        path = f"/rpc/{_rpc_id(rpc_id)}/data?offset={int(offset)}"
        return self._post(path, raw=data, read_timeout=RPC_READ_SECONDS)

    def end_rpc(self, rpc_id: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """``POST /rpc/{id}/end`` (``{"ok", "bytes", "sha256"}`` or an error)."""
        return self._post(f"/rpc/{_rpc_id(rpc_id)}/end", body, read_timeout=RPC_READ_SECONDS)

    # -- plumbing ----------------------------------------------------------------------

    def _post(
        self,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        authenticated: bool = True,
        raw: Optional[bytes] = None,
        read_timeout: Optional[float] = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if authenticated:
            if not self._token:
                raise Unauthorized(401, "unauthenticated", "this agent has no token: enroll it")
            headers["Authorization"] = f"Bearer {self._token}"
        if read_timeout is None:
            read_timeout = self.poll_wait_seconds + READ_MARGIN_SECONDS
        timeout = (CONNECT_TIMEOUT_SECONDS, read_timeout)
        url = self.base_url + path
        content: Dict[str, Any] = {"json": body}
        if raw is not None:
            headers["Content-Type"] = "application/octet-stream"
            content = {"data": raw}
        try:
            response = self.session.post(
                url, headers=headers, timeout=timeout, verify=self._verify, **content
            )
        except requests.exceptions.SSLError as error:
            if "fingerprint" in str(error).lower():
                raise PinMismatch(
                    f"the certificate of {self.base_url} does not match pin_sha256 in agent.conf; "
                    "refusing to talk to it (if the server's certificate was renewed, update "
                    "the pin)"
                ) from None
            raise RetryableError(f"TLS error talking to {url}: {_short(error)}") from None
        except requests.exceptions.Timeout:
            raise RetryableError(f"timed out talking to {url}") from None
        except requests.exceptions.RequestException as error:
            raise RetryableError(f"cannot reach {url}: {_short(error)}") from None
        try:
            return classify_response(response)
        except HostDeleted as error:
            if self.on_host_deleted is not None:
                self.on_host_deleted(error)
            raise
        finally:
            response.close()


def classify_response(response: requests.Response) -> Any:
    """The JSON body of a 2xx answer (``None`` for 204), else the matching exception."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 204:
        return None
    body = _json_body(response)
    if status >= 500 or status in RETRYABLE_STATUSES:
        detail = body.get("message") if isinstance(body, dict) else None
        raise RetryableError(
            f"server answered HTTP {status}" + (f": {detail}" if detail else ""),
            retry_after,
            status,
        )
    if not isinstance(body, dict):
        # A proxy's HTML page (even one with status 200 or 403) is not the server talking.
        raise RetryableError(
            f"HTTP {status} with a body that is not the server's JSON (a proxy page?)",
            retry_after,
            status,
        )
    if 200 <= status < 300:
        return body
    code = str(body.get("error") or "")
    message = str(body.get("message") or "")
    raise _refusal_class(status, code)(status, code, message, body)


def _json_body(response: requests.Response) -> Any:
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type.lower():
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _rpc_id(rpc_id: str) -> str:
    """The id goes into a URL path: 32 hex digits only."""
    if not isinstance(rpc_id, str) or not _RPC_ID.match(rpc_id):
        raise ValueError("an rpc_id is 32 hex digits")
    return rpc_id


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 300 else text[:300] + "…"
