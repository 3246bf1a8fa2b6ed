"""seal repository URLs

Revision ID: 0009_sealed_repo_urls
Revises: 0008_drop_pending_runs
Create Date: 2026-12-03 18:00:00.000000

A repository URL may carry a password (rest:https://user:secret@host/repo), so the whole
URL is sealed like the password: host_credentials.repo_url becomes sealed_repo_url
(associated data host_credentials:repo_url:<id>) plus repo_url_redacted for display, and
the URLs in config.update commands move into the command's sealed part (the clear part
keeps the redacted URL; the server merges the sealed part over it on delivery).
Downgrade puts the clear URLs back.

The redaction is frozen here on purpose: the migration must keep doing what it did when
it was written, whatever app/services/repository.redact_url becomes.
"""
import json
import re

import sqlalchemy as sa
from alembic import op
from flask import current_app


# revision identifiers, used by Alembic.
revision = '0009_sealed_repo_urls'
down_revision = '0008_drop_pending_runs'
branch_labels = None
depends_on = None

_BACKEND_PREFIX = re.compile(r"^(rest|s3|swift|b2|azure|gs|rclone|sftp):(?!//)")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SECTIONS = ("repository", "admin_repository")

credentials = sa.table(
    "host_credentials",
    sa.column("id", sa.Integer),
    sa.column("repo_url", sa.String),
    sa.column("repo_url_redacted", sa.String),
    sa.column("sealed_repo_url", sa.LargeBinary),
)
commands = sa.table(
    "commands",
    sa.column("id", sa.String),
    sa.column("type", sa.String),
    sa.column("payload", sa.JSON),
    sa.column("sealed_payload", sa.LargeBinary),
)


def _redact(url):
    backend = _BACKEND_PREFIX.match(url)
    start = backend.end() if backend else 0
    scheme = _URL_SCHEME.match(url[start:])
    start += scheme.end() if scheme else 0
    ends = [index for index in (url.find(mark, start) for mark in "/?#") if index != -1]
    end = min(ends, default=len(url))
    userinfo, at, host = url[start:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return url[:start] + userinfo.split(":", 1)[0] + ":***@" + host + url[end:]


def _box():
    return current_app.extensions["secretbox"]


def _secure_delete(connection):
    """On SQLite, overwrite what the migration replaces instead of leaving it in free pages."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA secure_delete = ON")


def _purge_leftovers():
    """What the old clear values leave behind once committed: PostgreSQL's old row versions
    and the dropped column's bytes (VACUUM FULL rewrites both tables without them, unless
    a transaction elsewhere in the cluster is older than this migration: then the next
    VACUUM does), and SQLite's write-ahead log (secure_delete overwrote the freed pages)."""
    dialect = op.get_bind().dialect.name
    with op.get_context().autocommit_block():
        if dialect == "postgresql":
            op.execute("VACUUM FULL host_credentials, commands")
        elif dialect == "sqlite":
            op.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _open_secret(box, command_id, sealed):
    if not sealed:
        return {}
    return json.loads(box.open(sealed, table="commands", column="payload", row_id=command_id))


def _seal_secret(box, command_id, secret):
    if not secret:
        return None
    return box.seal(json.dumps(secret), table="commands", column="payload", row_id=command_id)


def _config_updates(connection):
    return connection.execute(
        sa.select(commands.c.id, commands.c.payload, commands.c.sealed_payload).where(
            commands.c.type == "config.update"
        )
    ).all()


def upgrade():
    connection = op.get_bind()
    _secure_delete(connection)
    box = _box()
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('repo_url_redacted', sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column('sealed_repo_url', sa.LargeBinary(), nullable=True))
    for row_id, url in connection.execute(sa.select(credentials.c.id, credentials.c.repo_url)).all():
        connection.execute(
            credentials.update()
            .where(credentials.c.id == row_id)
            .values(
                repo_url_redacted=_redact(url),
                sealed_repo_url=box.seal(
                    url, table="host_credentials", column="repo_url", row_id=row_id
                ),
            )
        )
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.alter_column('repo_url_redacted', existing_type=sa.String(length=1000), nullable=False)
        batch_op.alter_column('sealed_repo_url', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column('repo_url')

    for command_id, payload, sealed in _config_updates(connection):
        payload = dict(payload or {})
        secret = _open_secret(box, command_id, sealed)
        moved = False
        for section in SECTIONS:
            clear = payload.get(section)
            if isinstance(clear, dict) and isinstance(clear.get("url"), str):
                secret[section] = dict(secret.get(section) or {}, url=clear["url"])
                payload[section] = dict(clear, url=_redact(clear["url"]))
                moved = True
        if moved:
            connection.execute(
                commands.update()
                .where(commands.c.id == command_id)
                .values(payload=payload, sealed_payload=_seal_secret(box, command_id, secret))
            )
    _purge_leftovers()


def downgrade():
    connection = op.get_bind()
    box = _box()
    for command_id, payload, sealed in _config_updates(connection):
        payload = dict(payload or {})
        secret = _open_secret(box, command_id, sealed)
        moved = False
        for section in SECTIONS:
            hidden = secret.get(section)
            if isinstance(hidden, dict) and isinstance(hidden.get("url"), str):
                hidden = dict(hidden)
                payload[section] = dict(payload.get(section) or {}, url=hidden.pop("url"))
                secret[section] = hidden
                moved = True
        if moved:
            connection.execute(
                commands.update()
                .where(commands.c.id == command_id)
                .values(payload=payload, sealed_payload=_seal_secret(box, command_id, secret))
            )

    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('repo_url', sa.String(length=1000), nullable=True))
    rows = connection.execute(sa.select(credentials.c.id, credentials.c.sealed_repo_url)).all()
    for row_id, sealed in rows:
        url = box.open(sealed, table="host_credentials", column="repo_url", row_id=row_id)
        connection.execute(
            credentials.update().where(credentials.c.id == row_id).values(repo_url=url)
        )
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.alter_column('repo_url', existing_type=sa.String(length=1000), nullable=False)
        batch_op.drop_column('sealed_repo_url')
        batch_op.drop_column('repo_url_redacted')
