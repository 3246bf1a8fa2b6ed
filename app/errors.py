"""Error responses: JSON ``{"error", "message"}`` under /api/, HTML pages elsewhere."""

from __future__ import annotations

import logging

from flask import jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from app.extensions import db
from app.limits import describe_size
from app.services.errors import RateLimited, ServiceError

log = logging.getLogger("restic_manager")

# How long a client should wait before retrying when the database cannot take the request.
RETRY_AFTER_SECONDS = 5
# SQLSTATE classes of a database that is there but cannot serve now: 08 connection
# exception, 53 insufficient resources, 57 operator intervention (shutdown, cancelled by a
# lock or statement timeout), 58 system error (I/O); 25006 a read-only transaction (a
# standby after a failover, default_transaction_read_only); 40001/40P01 serialisation
# failure and deadlock, which a retry resolves.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
_UNAVAILABLE_SQLSTATES = frozenset({"25006", "40001", "40P01", "55P03"})

_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


# Pages for people that live under /api/ (the API reference): HTML errors, sign-in redirect.
HTML_PAGES_UNDER_API = frozenset({"/api/docs"})


def is_api_request() -> bool:
    """JSON errors and 401s (not a sign-in redirect) for this request."""
    return request.path.startswith("/api/") and request.path not in HTML_PAGES_UNDER_API


def wants_json() -> bool:
    return is_api_request()


def error_response(status: int, code: str, message: str, **extra):
    """The one way every JSON error is made."""
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def _page(status: int, title: str, message: str):
    return render_template("errors/error.html", status=status, title=title, message=message), status


def respond_error(status: int, message: str, code: str | None = None, title: str | None = None):
    if wants_json():
        return error_response(status, code or _CODES.get(status, "error"), message)
    return _page(status, title or _default_title(status), message)


def _default_title(status: int) -> str:
    return {
        400: "Bad request",
        401: "Sign-in needed",
        403: "Not allowed",
        404: "Page not found",
        405: "Not allowed here",
        413: "Too large",
        429: "Slow down",
        500: "Something went wrong",
        503: "Temporarily unavailable",
    }.get(status, "Error")


def unauthenticated():
    response = error_response(
        401,
        "unauthenticated",
        "Sign in, or send a personal access token as 'Authorization: Bearer <token>'.",
    )
    response.headers["WWW-Authenticate"] = 'Bearer realm="restic-manager"'
    return response


def forbidden(message: str):
    return respond_error(403, message, "forbidden")


def register_error_handlers(app):
    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return respond_error(
            400,
            "The form had expired or came from another site (CSRF check failed). "
            "Go back, reload the page and try again.",
            code="csrf_failed",
            title="Form expired",
        )

    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError):
        db.session.rollback()  # a refused request leaves the database as it was
        if wants_json() and error.fields:
            response = error_response(error.status, error.code, error.message, fields=error.fields)
        else:
            response = respond_error(error.status, error.message, code=error.code)
        if isinstance(error, RateLimited):
            response = app.make_response(response)
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = error.description or error.name
        if error.code == 404:
            message = (
                f"No API endpoint {request.method} {request.path}."
                if wants_json()
                else "There is nothing at this address."
            )
        elif error.code == 405:
            message = f"{request.method} is not allowed on {request.path}."
        elif error.code == 413 and message == type(error).description:
            # Werkzeug's own words: a body over a view's own, lower limit (/api/v1's 1 MiB).
            limit = request.max_content_length
            if limit:
                message = f"The request body is over the {describe_size(limit)} accepted here."
        response = app.make_response(respond_error(error.code or 500, message))
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(DBAPIError)
    def database_error(error: DBAPIError):
        if not is_database_unavailable(error):
            raise error  # a bug or bad input the boundary missed: not the database's fault
        return database_unavailable(error)

    @app.errorhandler(PoolTimeout)
    def pool_exhausted(error: PoolTimeout):
        return database_unavailable(error)

    if app.testing:
        return  # let tests see the real exception

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return respond_error(500, "An unexpected error happened; it has been logged.")


def is_database_unavailable(error: DBAPIError) -> bool:
    """The database is busy, gone, read-only or failing, as opposed to refusing our SQL."""
    if error.connection_invalidated or isinstance(error, OperationalError):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES


def database_unavailable(error: Exception):
    """503 with Retry-After, the transaction rolled back; says what kind, not the SQL."""
    log.warning("database unavailable on %s %s: %s", request.method, request.path, _reason(error))
    try:
        db.session.rollback()
    except DBAPIError as rollback_error:  # the connection is gone: drop the session
        log.warning("rollback after a database fault failed too: %s", _reason(rollback_error))
    db.session.remove()
    message = (
        "The database cannot take this request right now (it is busy, unreachable or "
        f"read-only). Nothing was changed; try again in {RETRY_AFTER_SECONDS} seconds."
    )
    if wants_json():
        response = error_response(503, "unavailable", message)
    else:
        # A page of its own: the layout would ask the database who is signed in.
        response = make_response(
            render_template(
                "errors/unavailable.html", message=message, retry_after=RETRY_AFTER_SECONDS
            ),
            503,
        )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _reason(error: Exception) -> str:
    """The driver's first line (``database is locked``), never the statement or its values."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"
