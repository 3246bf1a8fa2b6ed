"""repository backends: sealed backend credentials, their names, restic options

Revision ID: 0013_repo_backends
Revises: 0012_host_lock
Create Date: 2026-12-04 00:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013_repo_backends'
down_revision = '0012_host_lock'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sealed_backend', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('env_names', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('repo_options', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('cacert_summary', sa.String(length=300), nullable=True))
        batch_op.add_column(
            sa.Column('insecure_tls', sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade():
    with op.batch_alter_table('host_credentials', schema=None) as batch_op:
        batch_op.drop_column('insecure_tls')
        batch_op.drop_column('cacert_summary')
        batch_op.drop_column('repo_options')
        batch_op.drop_column('env_names')
        batch_op.drop_column('sealed_backend')
