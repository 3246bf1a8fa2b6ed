"""job log retention: jobs.log_purged_at, indexes for the job list, the dashboard and
housekeeping

Revision ID: 0014_job_log_retention
Revises: 0013_repo_backends
Create Date: 2026-12-04 01:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014_job_log_retention'
down_revision = '0013_repo_backends'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('log_purged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_jobs_host_id_id', ['host_id', 'id'], unique=False)
        batch_op.create_index('ix_jobs_created_at', ['created_at'], unique=False)
        batch_op.create_index(
            'ix_jobs_log_purged_at_finished_at', ['log_purged_at', 'finished_at'], unique=False
        )


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_log_purged_at_finished_at')
        batch_op.drop_index('ix_jobs_created_at')
        batch_op.drop_index('ix_jobs_host_id_id')
        batch_op.drop_column('log_purged_at')
