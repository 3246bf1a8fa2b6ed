"""Request body limits, applied where a request enters, before anything reads the body.

The app-wide limit (``RM_MAX_BODY_MB``, 16 MiB by default) is sized for an agent's log
batches and file chunks. The doors anyone can knock on without a credential — enrollment
and the sign-in and setup forms — take far less, so an anonymous client cannot make a
worker hold megabytes. A ``Content-Length`` over the limit is refused at once, unread; a
body without one (chunked) is read up to the limit and refused as soon as it passes it, so
at most the limit is ever held.
"""

from __future__ import annotations

import io

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

MIB = 1024 * 1024
SMALL_BODY_BYTES = 64 * 1024
READ_SIZE = 64 * 1024

# Endpoints reachable without a credential, or before one is checked.
SMALL_BODY_ENDPOINTS = frozenset(
    {
        "agent_api.enroll",
        "auth.login",
        "auth.setup",
        "auth.logout",
    }
)


def max_body_bytes(config) -> int:
    """The app-wide limit in bytes (``RM_MAX_BODY_MB``)."""
    return config["RM_MAX_BODY_MB"] * MIB


def body_limit_for(endpoint: str | None, config) -> int:
    largest = max_body_bytes(config)
    if endpoint in SMALL_BODY_ENDPOINTS:
        return min(SMALL_BODY_BYTES, largest)
    return largest


def describe_size(limit: int) -> str:
    if limit >= MIB and limit % MIB == 0:
        return f"{limit // MIB} MiB"
    return f"{limit // 1024} KiB"


def limit_request_body() -> None:
    """``before_request``: set this request's limit and refuse a body over it, unread."""
    limit = body_limit_for(request.endpoint, current_app.config)
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        _buffer_chunked_body(limit)  # before anything asks for the (then unknown) length
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge(
            f"The request body is {request.content_length} bytes; at most "
            f"{describe_size(limit)} is accepted here."
        )


def _buffer_chunked_body(limit: int) -> None:
    """Read a chunked body up to ``limit`` + 1 bytes and hand it on with a length.

    Werkzeug's limited stream stops at the limit *silently* (the view would parse a
    truncated body); reading one byte past it tells an over-long body from one that fits.
    """
    stream = request.environ["wsgi.input"]
    body = bytearray()
    while len(body) <= limit:
        chunk = stream.read(min(READ_SIZE, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise RequestEntityTooLarge(
            f"The request body is over the {describe_size(limit)} accepted here."
        )
    # From here on the body is an ordinary one of known length.
    request.environ.pop("HTTP_TRANSFER_ENCODING", None)
    request.environ["CONTENT_LENGTH"] = str(len(body))
    request.environ["wsgi.input"] = io.BytesIO(bytes(body))
