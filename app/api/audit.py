"""/api/v1 audit log: one page as JSON, or the whole filtered set as CSV or NDJSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from flask import Response, current_app, jsonify, request

from app.access import Role, require_role
from app.api import bp
from app.formatting import iso
from app.models import AuditLog
from app.services import audit_log

EXPORT_BATCH = 500
CSV_COLUMNS = (
    "id",
    "at",
    "actor",
    "actor_type",
    "action",
    "target_type",
    "target_id",
    "address",
    "payload",
)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def audit_json(row: AuditLog) -> dict:
    return {
        "id": row.id,
        "at": iso(row.at),
        "actor": row.actor_label,
        "actor_type": row.actor_type,
        "action": row.action,
        "target_type": row.target_type,
        "target_id": row.target_id,
        "payload": row.payload or {},
        "address": row.client_address,
    }


@bp.get("/audit")
@require_role(Role.admin)
def list_audit():
    """Newest first; ``next_cursor`` continues with older rows (null: the last page)."""
    filters = audit_log.parse_filters(request.args)
    limit = audit_log.parse_limit(request.args.get("limit"))
    before_id = audit_log.decode_cursor(request.args.get("cursor", ""))
    rows, next_cursor = audit_log.page(filters, before_id=before_id, limit=limit)
    return jsonify({"items": [audit_json(row) for row in rows], "next_cursor": next_cursor})


def _rows(app, filters: audit_log.AuditFilters, before_id: int) -> Iterator[list[dict]]:
    """The filtered set in batches, each read in its own short session (as app.live does)."""
    while True:
        with app.app_context():
            rows = audit_log.search(filters, before_id=before_id, limit=EXPORT_BATCH)
            batch = [audit_json(row) for row in rows]
        if not batch:
            return
        before_id = batch[-1]["id"]
        yield batch


def csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv(batches: Iterator[list[dict]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    for batch in batches:
        buffer.seek(0)
        buffer.truncate()
        for item in batch:
            writer.writerow([csv_cell(item[column]) for column in CSV_COLUMNS])
        yield buffer.getvalue()


def _ndjson(batches: Iterator[list[dict]]) -> Iterator[str]:
    for batch in batches:
        yield "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in batch)


def _export(render, mimetype: str, extension: str) -> Response:
    filters = audit_log.parse_filters(request.args)
    # Rows written while the file streams are left out: the export is the log as it was.
    start = audit_log.newest_id()
    batches = _rows(current_app._get_current_object(), filters, start)
    return Response(
        render(batches),
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="audit-log.{extension}"'},
    )


@bp.get("/audit.csv")
@require_role(Role.admin)
def export_audit_csv():
    return _export(_csv, "text/csv", "csv")


@bp.get("/audit.ndjson")
@require_role(Role.admin)
def export_audit_ndjson():
    return _export(_ndjson, "application/x-ndjson", "ndjson")
