"""housekeeping: indexes to find old commands and old agent event ids (job.progress ones
apart)

Revision ID: 0015_housekeeping_indexes
Revises: 0014_job_log_retention
Create Date: 2026-12-04 05:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0015_housekeeping_indexes'
down_revision = '0014_job_log_retention'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.create_index('ix_commands_created_at', ['created_at'], unique=False)
    with op.batch_alter_table('agent_events', schema=None) as batch_op:
        batch_op.create_index('ix_agent_events_received_at', ['received_at'], unique=False)
        batch_op.create_index(
            'ix_agent_events_progress_received_at',
            ['received_at'],
            unique=False,
            sqlite_where=sa.text("type = 'job.progress'"),
            postgresql_where=sa.text("type = 'job.progress'"),
        )


def downgrade():
    with op.batch_alter_table('agent_events', schema=None) as batch_op:
        batch_op.drop_index('ix_agent_events_progress_received_at')
        batch_op.drop_index('ix_agent_events_received_at')
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_index('ix_commands_created_at')
