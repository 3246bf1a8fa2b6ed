"""Error responses: JSON ``{"error", "message"}`` under /api/, HTML pages elsewhere."""

from __future__ import annotations

from flask import jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from app.extensions import db
from app.services.errors import RateLimited, ServiceError

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
        429: "Slow down",
        500: "Something went wrong",
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
        response = app.make_response(respond_error(error.code or 500, message))
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    if app.testing:
        return  # let tests see the real exception

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return respond_error(500, "An unexpected error happened; it has been logged.")
