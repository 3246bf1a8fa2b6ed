"""Strict parsing of agent request bodies: a broken or hostile agent gets a precise 4xx.

:func:`body` is the boundary every agent body passes (docs/protocol.md, "Input rules"):
nesting depth, no NUL characters (log text excepted: stripped, as always) or lone
surrogates, integers within 64 bits, no NaN, and the JSON type of each top-level field
(``"12"`` is not an integer). The helpers below then read the fields they need.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from flask import request

from app.services.errors import ServiceError, UnsupportedMediaType, ValidationFailed
from app.services.events import Event
from app.services.jobs import LOG_STREAMS, MAX_LOG_TEXT
from app.services.validate import MAX_JSON_DEPTH, echo, json_problem

MAX_EVENTS = 500
MAX_RECORDS = 500
MAX_RUNNING = 1000
MAX_ACKS = 1000
# Agent clocks are wrong sometimes, but never by centuries: a time outside this range is a
# bug or an attack, and would render as "1-01-01" or overflow date arithmetic.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 1, 1, tzinfo=timezone.utc)

_STRING, _INTEGER, _NUMBER = (str, type(None)), (int, type(None)), (int, float, type(None))
_BOOLEAN, _LIST, _OBJECT = (bool, type(None)), (list, type(None)), (dict, type(None))
# The JSON type of each field, per endpoint (null always means "absent"): every top-level
# field, and the nested ones a service compares with a set of known values.
FIELD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "agent_api.enroll": {
        "token": _STRING,
        "hostname": _STRING,
        "os": _STRING,
        "arch": _STRING,
        "agent_version": _STRING,
        "restic_version": _STRING,
        "protocol_version": _INTEGER,
    },
    "agent_api.hello": {
        "protocol_version": _INTEGER,
        "agent_version": _STRING,
        "restic_version": _STRING,
        "hostname": _STRING,
        "os": _STRING,
        "arch": _STRING,
        "boot_id": _STRING,
        "running": _LIST,
    },
    "agent_api.poll": {"boot_id": _STRING, "acks": _LIST, "running": _LIST, "wait": _NUMBER},
    "agent_api.events": {
        "events": _LIST,
        "events[].data": _OBJECT,
        "events[].data.status": _STRING,  # job.finished, repo.status
        "events[].data.reason": _STRING,
        "events[].data.error": _STRING,
    },
    "agent_api.logs": {
        "attempt_id": _STRING,
        "first_seq": _INTEGER,
        "records": _LIST,
        "records[].stream": _STRING,
    },
    "agent_api.register_run": {
        "run_id": _STRING,
        "schedule_id": _INTEGER,
        "schedule_version": _INTEGER,
        "kind": _STRING,
        "params": _OBJECT,
        "fired_at": _STRING,
    },
    "agent_api.rpc_answer": {
        "ok": _BOOLEAN,
        "result": _OBJECT,
        "result.items[].type": _STRING,
        "error": _STRING,
        "message": _STRING,
    },
    "agent_api.rpc_end": {
        "ok": _BOOLEAN,
        "bytes": _INTEGER,
        "sha256": _STRING,
        "error": _STRING,
        "message": _STRING,
    },
}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
_JSON_NAMES.update({list: "a list", dict: "an object", type(None): "null"})
_LOG_TEXT = re.compile(r"^records\[\d+\]\.text$")


def body() -> dict:
    """The request's JSON object, checked at the boundary (see the module docstring)."""
    if not request.is_json:
        raise UnsupportedMediaType("Send a JSON body with 'Content-Type: application/json'.")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # json.loads gives up long before MAX_JSON_DEPTH matters
        raise ServiceError(
            f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise ServiceError("The body must be a JSON object.", code="invalid_json")
    found = json_problem(data, nul_allowed=_LOG_TEXT.match)
    if found:
        invalid(*found)
    for path, types in FIELD_TYPES.get(request.endpoint or "", {}).items():
        for field, value in _values_at(data, path.split(".")):
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                wanted = " or ".join(_JSON_NAMES[kind] for kind in types)
                invalid(field, f"must be {wanted}, not {_JSON_NAMES[type(value)]}")
    return data


def _values_at(data: dict, steps: list[str], where: str = ""):
    """``(field, value)`` at a path such as ``events[].data.status`` (``[]``: each item)."""
    name, rest = steps[0].removesuffix("[]"), steps[1:]
    field = f"{where}.{name}" if where else name
    value = data.get(name)
    if not steps[0].endswith("[]"):
        if not rest:
            yield field, value
        elif isinstance(value, dict):
            yield from _values_at(value, rest, field)
        return
    for index, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict) and rest:
            yield from _values_at(item, rest, f"{field}[{index}]")


def invalid(field: str, message: str):
    field = echo(field)
    raise ValidationFailed(f"{field}: {message}", fields={field: [message]})


def short_string(data: dict, field: str, *, max_length: int, required: bool = False):
    value = data.get(field)
    if value is None:
        if required:
            invalid(field, "required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        invalid(field, f"must be a non-empty string of at most {max_length} characters")
    return value


def positive_int(value, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**62:
        invalid(field, "must be a non-negative integer")
    return value


def timestamp(value, field: str) -> datetime:
    """An ISO-8601 time between 1970 and 9998 (UTC when it names no offset)."""
    if not isinstance(value, str) or len(value) > 64:
        invalid(field, "must be an ISO-8601 time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed = parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        invalid(field, "must be an ISO-8601 time")
    if not EARLIEST <= parsed < LATEST:
        invalid(field, "must be a time between 1970 and 9998")
    return parsed


def running(data: dict) -> list[dict]:
    items = data.get("running", [])
    if not isinstance(items, list) or len(items) > MAX_RUNNING:
        invalid("running", f"must be a list of at most {MAX_RUNNING} jobs")
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            invalid(f"running[{index}]", "must be an object")
        parsed.append(
            {
                "job_id": positive_int(item.get("job_id"), f"running[{index}].job_id"),
                "attempt_id": short_string(item, "attempt_id", max_length=64, required=True),
                "state": "reporting" if item.get("state") == "reporting" else "running",
            }
        )
    return parsed


def acks(data: dict) -> list[dict]:
    items = data.get("acks", [])
    if not isinstance(items, list) or len(items) > MAX_ACKS:
        invalid("acks", f"must be a list of at most {MAX_ACKS} acknowledgements")
    parsed = []
    for index, item in enumerate(items):
        if isinstance(item, str):  # a bare command id means "accepted"
            item = {"command_id": item}
        if not isinstance(item, dict):
            invalid(f"acks[{index}]", "must be an object")
        command_id = short_string(item, "command_id", max_length=32, required=True)
        result = item.get("result", "accepted")
        if not isinstance(result, str) or result not in {
            "accepted",
            "duplicate",
            "rejected",
            "noop",
        }:
            invalid(f"acks[{index}].result", "must be accepted, duplicate, rejected or noop")
        reason = item.get("reason")
        parsed.append(
            {
                "command_id": command_id,
                "result": result,
                "reason": reason[:200] if isinstance(reason, str) else None,
            }
        )
    return parsed


def events(data: dict) -> list[Event]:
    items = data.get("events")
    if not isinstance(items, list) or not items or len(items) > MAX_EVENTS:
        invalid("events", f"must be a list of 1 to {MAX_EVENTS} events")
    parsed = []
    for index, item in enumerate(items):
        where = f"events[{index}]"
        if not isinstance(item, dict):
            invalid(where, "must be an object")
        job_id = item.get("job_id")
        if job_id is not None:
            job_id = positive_int(job_id, f"{where}.job_id")
        payload = item.get("data", {})
        if not isinstance(payload, dict):
            invalid(f"{where}.data", "must be an object")
        parsed.append(
            Event(
                event_id=short_string(item, "event_id", max_length=64, required=True),
                type=short_string(item, "type", max_length=32, required=True),
                job_id=job_id,
                attempt_id=short_string(item, "attempt_id", max_length=64),
                ts=timestamp(item.get("ts"), f"{where}.ts"),
                data=payload,
            )
        )
    return parsed


def log_batch(data: dict) -> tuple[str, int, list[dict]]:
    attempt_id = short_string(data, "attempt_id", max_length=64, required=True)
    first_seq = data.get("first_seq")
    if not isinstance(first_seq, int) or isinstance(first_seq, bool) or first_seq < 1:
        invalid("first_seq", "must be an integer of at least 1")
    items = data.get("records")
    if not isinstance(items, list) or not items or len(items) > MAX_RECORDS:
        invalid("records", f"must be a list of 1 to {MAX_RECORDS} records")
    records = []
    for index, item in enumerate(items):
        where = f"records[{index}]"
        if not isinstance(item, dict):
            invalid(where, "must be an object")
        stream = item.get("stream")
        if not isinstance(stream, str) or stream not in LOG_STREAMS:
            invalid(f"{where}.stream", "must be stdout, stderr or agent")
        text = item.get("text")
        if not isinstance(text, str) or len(text) > MAX_LOG_TEXT:
            invalid(f"{where}.text", f"must be a string of at most {MAX_LOG_TEXT} characters")
        records.append(
            {
                "ts": timestamp(item.get("ts"), f"{where}.ts"),
                "stream": stream,
                "text": text.replace("\x00", ""),
            }
        )
    return attempt_id, first_seq, records
