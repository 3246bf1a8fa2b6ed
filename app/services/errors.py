"""Exceptions services raise; views turn them into flashes, form errors or JSON."""

from __future__ import annotations


class ServiceError(Exception):
    """A rule refused the request. ``code`` is machine-readable, ``message`` is for people."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, fields=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.fields = fields or {}


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_failed"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class EventRejected(ServiceError):
    """An agent event the server refuses. The batch goes on: the event is acknowledged (and
    recorded as seen) and listed as rejected with ``code`` and ``message``."""

    status = 422
    code = "invalid_event"

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)
