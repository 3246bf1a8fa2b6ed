"""Looking a host up, asking whether its agent is there; renaming, tagging, deleting."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    DateTime,
    Integer,
    String,
    and_,
    cast,
    delete,
    exists,
    false,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from app import MAX_ID
from app.extensions import db
from app.models import AgentToken, Host, Job, RetiredAgentToken, Schedule
from app.services import audit, validate
from app.services.audit import Actor
from app.services.errors import Conflict, NotFound, ValidationFailed


def get_host(host_id: int) -> Host:
    """The host with this id; :class:`NotFound` (404) when there is none."""
    host = db.session.get(Host, host_id)
    if host is None:
        raise NotFound(f"No host with id {host_id}.")
    return host


def require_online(host: Host, what: str, *, now: datetime, offline_after_seconds: int) -> None:
    """409 ``host_offline`` unless the host's agent polled recently."""
    status = host.status(now, offline_after_seconds)
    if status != "online":
        raise Conflict(
            f"{host.hostname} is {status.replace('_', ' ')}: its agent has not polled the "
            f"server recently, so {what} could not start. Check the agent on the host.",
            code="host_offline",
        )


# --- lifecycle: rename, tags, delete (issue 15) ---------------------------------------------

MAX_TAGS = 20  # per host: tags are for grouping a fleet, not for notes
_TAG_SEPARATORS = re.compile(r"[\s,]+")
_TAG_RULE = "a tag is 1-64 letters, digits and . _ : @ + - (starting with a letter or digit)"


def parse_tags(value, field: str = "tags") -> list[str]:
    """A list of tags, duplicates removed in the order given; a string is split on commas
    and white space (the form's input). Every bad tag is named, not only the first."""
    if isinstance(value, str):
        value = [part for part in _TAG_SEPARATORS.split(value) if part]
    if not isinstance(value, list):
        validate.fail(field, "Tags must be a list of strings.")
    tags: list[str] = []
    problems: list[str] = []
    for item in value:
        if not isinstance(item, str):
            problems.append("Each tag must be a string.")
            continue
        item = item.strip()
        if not item:
            continue
        reason = validate.unstorable(item)
        if reason:
            problems.append(f"A tag {reason}.")
        elif not validate.TAG.match(item):
            problems.append(f"{validate.echo(item)!r} is not a tag: {_TAG_RULE}.")
        elif item not in tags:
            tags.append(item)
    if len(tags) > MAX_TAGS:
        problems.append(f"At most {MAX_TAGS} tags per host ({len(tags)} given).")
    if problems:
        problems = list(dict.fromkeys(problems))
        raise ValidationFailed(" ".join(problems), fields={field: problems})
    return tags


def parse_tag_filter(value: str, field: str = "tag") -> str:
    """One tag to filter a list by (``?tag=``), refused like a host's tag would be."""
    reason = validate.unstorable(value)
    if reason:
        validate.fail(field, f"The tag {reason}.")
    if not validate.TAG.match(value):
        validate.fail(field, f"{validate.echo(value)!r} is not a tag: {_TAG_RULE}.")
    return value


def has_tag(tag: str):
    """A WHERE clause: the host's JSON ``tags`` list contains ``tag``. Matched by the
    database, not by reading every host's tags: jsonb containment on PostgreSQL, json_each
    on SQLite (no index either way: a scan of the hosts table, without loading its rows)."""
    if db.engine.dialect.name == "postgresql":
        return cast(Host.tags, JSONB).contains([tag])
    element = func.json_each(Host.tags).table_valued("value").alias("host_tag")
    return exists(select(1).select_from(element).where(element.c.value == tag))


def tagged_host_ids(tag: str) -> list[int]:
    """The hosts carrying ``tag``, in one query (:func:`has_tag`)."""
    return list(db.session.scalars(select(Host.id).where(has_tag(tag))))


def all_tags() -> list[str]:
    """Every tag some host carries, sorted, unpacked by the database."""
    if db.engine.dialect.name == "postgresql":
        element = func.jsonb_array_elements_text(cast(Host.tags, JSONB)).table_valued("value")
        query = select(element.c.value).select_from(Host).join(element, true())
        query = query.where(func.jsonb_typeof(cast(Host.tags, JSONB)) == "array")
    else:
        element = func.json_each(Host.tags).table_valued("value", "type").alias("host_tag")
        query = select(element.c.value).select_from(Host).join(element, true())
        query = query.where(element.c.type == "text")
    return sorted({value for value in db.session.scalars(query.distinct()) if value})


# --- paging by keyset: the dashboard's host table and GET /api/v1/hosts ---------------------
#
# A page is "the rows that sort after the last one shown", not an offset: a host added or
# removed on an earlier page neither repeats nor skips a row on the next, and the database
# never counts past thousands of rows to find a page. A key is a list of (expression,
# descending) ending in Host.id, so no two rows tie. A cursor carries the key's values of one
# row and the name of the order it was written for, opaque (URL-safe base64 of JSON).

SortKey = list[tuple[Any, bool]]
MAX_PAGE = 1000  # GET /hosts?limit=; a cursor without a limit pages at this size
MAX_CURSOR_LENGTH = 1000  # characters; the longest either pager writes is under 600
BY_HOSTNAME: SortKey = [(Host.hostname, False), (Host.id, False)]
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_CURSOR_PROBLEM = "'cursor' is not a cursor of this list: pass a next_cursor exactly as received."
_REFUSED = object()  # a cursor value no key column can hold


def beyond(key: SortKey, values: list, backwards: bool = False):
    """A WHERE clause: rows after ``values`` in the order of ``key`` (before when
    ``backwards``)."""
    clauses, equal = [], []
    for (expression, descending), value in zip(key, values):
        if value is None:  # only NULLs share this value: none is after another
            after, same = false(), expression.is_(None)
        else:
            after = expression < value if descending != backwards else expression > value
            same = expression == value
        clauses.append(and_(*equal, after))
        equal.append(same)
    return or_(*clauses)


def key_order(key: SortKey, backwards: bool = False) -> list:
    """ORDER BY ``key`` (reversed when ``backwards``)."""
    return [
        expression.desc() if descending != backwards else expression.asc()
        for expression, descending in key
    ]


def keyset_page(statement, key: SortKey, values: Optional[list], limit: int, backwards=False):
    """At most ``limit`` rows of ``statement`` after ``values`` (from the start when None) in
    the order of ``key``, and whether more follow: one query, limited in the database."""
    if values is not None:
        statement = statement.where(beyond(key, values, backwards))
    statement = statement.order_by(*key_order(key, backwards)).limit(limit + 1)
    rows = db.session.execute(statement).all()
    return rows[:limit], len(rows) > limit


def encode_cursor(order: str, values: list) -> str:
    """``values`` (a row's key) as an opaque, URL-safe string for the order named ``order``."""
    plain = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    raw = json.dumps({"s": order, "k": plain}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, order: str, key: SortKey) -> Optional[list]:
    """The values of a cursor :func:`encode_cursor` wrote for ``order``, each of its key
    column's type and storable; None for anything else (another order, garbage, forgery)."""
    if not text or len(text) > MAX_CURSOR_LENGTH or not _CURSOR_TEXT.fullmatch(text):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict) or payload.get("s") != order:
        return None
    values = payload.get("k")
    if not isinstance(values, list) or len(values) != len(key):
        return None
    typed = [_key_value(value, expression) for value, (expression, _) in zip(values, key)]
    return None if any(value is _REFUSED for value in typed) else typed


def _key_value(value, expression):
    """``value`` as the type of ``expression``, or _REFUSED (no query may fail on it)."""
    if value is None:
        return None
    sql_type = getattr(expression.type, "impl", expression.type)  # through TypeDecorators
    if isinstance(sql_type, Integer):
        ok = type(value) is int and validate.INT64_MIN <= value <= validate.INT64_MAX
        return value if ok else _REFUSED
    if isinstance(sql_type, String):
        ok = isinstance(value, str) and len(value) <= 255 and not validate.unstorable(value)
        return value if ok else _REFUSED
    if isinstance(sql_type, DateTime):
        try:
            moment = datetime.fromisoformat(value["t"])
        except (TypeError, KeyError, ValueError):
            return _REFUSED
        return moment if moment.tzinfo is not None else _REFUSED
    raise TypeError(f"no cursor value for a key of type {sql_type!r}")


def list_hosts(
    *, tag: str = "", limit: Optional[int] = None, cursor: Optional[str] = None
) -> tuple[list[Host], Optional[str]]:
    """Hosts by hostname (optionally only those tagged ``tag``): every one when neither
    ``limit`` nor ``cursor`` is given, else one page (``limit``, or MAX_PAGE) after
    ``cursor`` and the cursor of the next page (None on the last). A cursor this list did
    not write is a ValidationFailed naming it."""
    statement = select(Host)
    if tag:
        statement = statement.where(has_tag(tag))
    if limit is None and cursor is None:
        return list(db.session.scalars(statement.order_by(*key_order(BY_HOSTNAME)))), None
    values = None
    if cursor is not None:
        values = decode_cursor(cursor, "hostname", BY_HOSTNAME)
        if values is None or values[0] is None or not 1 <= (values[1] or 0) <= MAX_ID:
            validate.fail("cursor", _CURSOR_PROBLEM)
    rows, more = keyset_page(statement, BY_HOSTNAME, values, limit or MAX_PAGE)
    found = [host for (host,) in rows]
    if not more:
        return found, None
    return found, encode_cursor("hostname", [found[-1].hostname, found[-1].id])


def rename_host(
    host: Host, hostname, *, actor: Actor, client_address: Optional[str] = None
) -> Host:
    """A new name for the host; 409 ``hostname_taken`` when another host has it."""
    new_name = validate.hostname(hostname)
    if new_name == host.hostname:
        return host
    taken = db.session.scalar(select(Host.id).where(Host.hostname == new_name, Host.id != host.id))
    if taken:
        raise Conflict(
            f"Another host is already named {new_name}. Choose another name.",
            code="hostname_taken",
            fields={"hostname": [f"Another host is already named {new_name}."]},
        )
    old_name, host.hostname = host.hostname, new_name
    db.session.flush()
    audit.record(
        actor,
        "host.renamed",
        target_type="host",
        target_id=host.id,
        payload={"from": old_name, "to": new_name},
        client_address=client_address,
    )
    return host


def set_tags(host: Host, tags, *, actor: Actor, client_address: Optional[str] = None) -> Host:
    """Replace the host's tags (a list, or the form's comma/space separated text)."""
    new_tags = parse_tags(tags)
    if new_tags == list(host.tags or []):
        return host
    old_tags, host.tags = list(host.tags or []), new_tags
    db.session.flush()
    audit.record(
        actor,
        "host.tags_changed",
        target_type="host",
        target_id=host.id,
        payload={"hostname": host.hostname, "from": old_tags, "to": new_tags},
        client_address=client_address,
    )
    return host


def update_host(
    host: Host, changes: dict, *, actor: Actor, client_address: Optional[str] = None
) -> Host:
    """PATCH: ``hostname`` and/or ``tags``; every problem at once, nothing changed on any."""
    errors = validate.FieldErrors()
    unknown = sorted(set(changes) - {"hostname", "tags"})
    for key in unknown:
        errors.add(validate.echo(key), "Unknown field: only hostname and tags can be changed.")
    if "hostname" in changes:
        errors.check(validate.hostname, changes["hostname"])
    if "tags" in changes:
        errors.check(parse_tags, changes["tags"])
    errors.raise_any()
    if "hostname" in changes:
        rename_host(host, changes["hostname"], actor=actor, client_address=client_address)
    if "tags" in changes:
        set_tags(host, changes["tags"], actor=actor, client_address=client_address)
    return host


MAX_BULK_HOSTS = 10_000
_MAX_ID = 2**31 - 1  # ids are INTEGER columns (app.MAX_ID; services do not import app)


def bulk_tags(
    host_ids, add=(), remove=(), *, actor: Actor, client_address: Optional[str] = None
) -> list[Host]:
    """Add and/or remove tags on many hosts at once (the dashboard's selection)."""
    errors = validate.FieldErrors()
    ids = errors.check(_host_ids, host_ids)
    to_add = errors.check(parse_tags, add if add is not None else [], "add")
    to_remove = errors.check(parse_tags, remove if remove is not None else [], "remove")
    if to_add is not None and to_remove is not None and not (to_add or to_remove):
        errors.add("add", "Give a tag to add or to remove.")
    errors.raise_any()
    hosts = list(db.session.scalars(select(Host).where(Host.id.in_(ids)).order_by(Host.hostname)))
    missing = sorted(set(ids) - {host.id for host in hosts})
    if missing:
        raise NotFound(f"No host with id {', '.join(str(i) for i in missing[:10])}.")
    changed = []
    for host in hosts:
        tags = [tag for tag in (host.tags or []) if tag not in to_remove]
        tags += [tag for tag in to_add if tag not in tags]
        if len(tags) > MAX_TAGS:
            validate.fail("add", f"{host.hostname} would have more than {MAX_TAGS} tags.")
        if tags != list(host.tags or []):
            host.tags = tags
            changed.append(host.hostname)
    db.session.flush()
    if changed:
        audit.record(
            actor,
            "host.tags_bulk_changed",
            target_type="host",
            target_id=None,
            payload={"hosts": changed, "added": to_add, "removed": to_remove},
            client_address=client_address,
        )
    return hosts


def _host_ids(value) -> list[int]:
    if not isinstance(value, list) or not value:
        validate.fail("host_ids", "Select at least one host (host_ids: a list of host ids).")
    if len(value) > MAX_BULK_HOSTS:
        validate.fail("host_ids", f"At most {MAX_BULK_HOSTS} hosts at once.")
    ids = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= _MAX_ID:
            validate.fail("host_ids", "Each host id must be a whole number (a host's id).")
        if item not in ids:
            ids.append(item)
    return ids


def delete_host(
    host: Host,
    confirm_hostname,
    *,
    actor: Actor,
    now: datetime,
    client_address: Optional[str] = None,
) -> None:
    """Remove the host and everything the server knows of it (jobs, logs, snapshot rows,
    schedules, alerts, credentials …); the repository itself is not touched. Its agent's
    tokens are retired, so the agent's next call gets 410 and it stops."""
    if not isinstance(confirm_hostname, str) or confirm_hostname.strip() != host.hostname:
        validate.fail(
            "confirm_hostname",
            f"Type the hostname ({host.hostname}) exactly to confirm deleting this host.",
        )
    host_id, hostname = host.id, host.hostname
    tokens = db.session.scalars(select(AgentToken.token_hash).where(AgentToken.host_id == host_id))
    for token_hash in tokens.all():
        db.session.merge(
            RetiredAgentToken(
                token_hash=token_hash, host_id=host_id, hostname=hostname, retired_at=now
            )
        )
    summary = {
        "hostname": hostname,
        "jobs": db.session.scalar(select(func.count(Job.id)).where(Job.host_id == host_id)),
        "snapshots": host.snapshot_count or 0,
    }
    db.session.flush()
    # Schedules first: their link rows hold the source groups back (ondelete RESTRICT, which
    # PostgreSQL checks per row, whatever order the host's cascade would take).
    db.session.execute(delete(Schedule).where(Schedule.host_id == host_id))
    db.session.execute(delete(Host).where(Host.id == host_id))
    db.session.expunge(host)
    db.session.expire_all()
    audit.record(
        actor,
        "host.deleted",
        target_type="host",
        target_id=host_id,
        payload=summary,
        client_address=client_address,
    )
    db.session.flush()


def retired_token(token_hash: str) -> Optional[RetiredAgentToken]:
    """The retired token of a deleted host's agent, or None."""
    return db.session.get(RetiredAgentToken, token_hash)
