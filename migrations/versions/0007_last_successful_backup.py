"""last successful backup of each host

Revision ID: 0007_last_successful_backup
Revises: 0006_rpc_and_diff
Create Date: 2026-12-03 14:30:00.000000

The dashboard shows the latest backup's result next to the last backup that saved a
snapshot (succeeded or warning), so a cancelled or failed run no longer hides an earlier
success. Existing hosts get theirs from the jobs table.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_last_successful_backup'
down_revision = '0006_rpc_and_diff'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_successful_backup_job_id', sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column('last_successful_backup_at', sa.DateTime(timezone=True), nullable=True)
        )

    # The same rule as repository.note_backup_finished: the highest job id wins.
    op.execute(
        "UPDATE hosts SET last_successful_backup_job_id = ("
        " SELECT MAX(jobs.id) FROM jobs WHERE jobs.host_id = hosts.id"
        " AND jobs.kind = 'backup' AND jobs.status IN ('succeeded', 'warning'))"
    )
    op.execute(
        "UPDATE hosts SET last_successful_backup_at = ("
        " SELECT jobs.finished_at FROM jobs WHERE jobs.id = hosts.last_successful_backup_job_id)"
        " WHERE last_successful_backup_job_id IS NOT NULL"
    )


def downgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('last_successful_backup_at')
        batch_op.drop_column('last_successful_backup_job_id')
