"""host lock: the repository lock restic last reported (a stale-lock banner)

Revision ID: 0012_host_lock
Revises: 0011_teams
Create Date: 2026-12-03 23:55:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012_host_lock'
down_revision = '0011_teams'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lock_reported_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lock_detail', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('lock_job_id', sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('lock_job_id')
        batch_op.drop_column('lock_detail')
        batch_op.drop_column('lock_reported_at')
