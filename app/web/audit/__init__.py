"""The audit log viewer (/audit, admins): filters, keyset pages, links to each target and
the CSV / NDJSON exports of the filtered set."""

from flask import Blueprint

bp = Blueprint("audit", __name__)

from app.web.audit import routes  # noqa: E402,F401
