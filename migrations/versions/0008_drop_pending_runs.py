"""drop pending_runs

Revision ID: 0008_drop_pending_runs
Revises: 0007_last_successful_backup
Create Date: 2026-12-03 17:30:00.000000

Nothing ever queued a pending run: the agent runs its schedules on its own clock, even
while the server is out of reach, and retries a failed run itself (the source group's
retry_max and retry_backoff_seconds reach it with the schedules). The server-side queue
had no producer and is gone.
Downgrade re-creates the empty table as 0004_schedules made it.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008_drop_pending_runs'
down_revision = '0007_last_successful_backup'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('pending_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_pending_runs_state_next_attempt_at')
        batch_op.drop_index(batch_op.f('ix_pending_runs_host_id'))

    op.drop_table('pending_runs')


def downgrade():
    op.create_table('pending_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('host_id', sa.Integer(), nullable=False),
    sa.Column('schedule_id', sa.Integer(), nullable=True),
    sa.Column('source_group_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=1000), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], name=op.f('fk_pending_runs_host_id_hosts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_pending_runs_job_id_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], name=op.f('fk_pending_runs_schedule_id_schedules'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['source_group_id'], ['source_groups.id'], name=op.f('fk_pending_runs_source_group_id_source_groups'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_runs'))
    )
    with op.batch_alter_table('pending_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_runs_host_id'), ['host_id'], unique=False)
        batch_op.create_index('ix_pending_runs_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)
