"""one stress test over load generators on several worker hosts: a job's shard jobs (parent_id), the
number of host shards of the job they belong to (host_shards), and the barrier rows through which the
shards agree each level's common start; a shard's level keeps its inter-token gaps (to be merged)

Revision ID: 0013_host_shards
Revises: 0012_worker_leases
Create Date: 2026-12-03 19:20:00

"""
import sqlalchemy as sa
from alembic import op

revision = '0013_host_shards'
down_revision = '0012_worker_leases'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('stress_jobs') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('host_shards', sa.Integer(), nullable=True))
        batch.create_index('ix_stress_jobs_parent_id', ['parent_id'])
    with op.batch_alter_table('stress_levels') as batch:
        batch.add_column(sa.Column('gap_columns', sa.LargeBinary(), nullable=True))
    op.create_table(
        'shard_barriers',
        sa.Column('job_id', sa.String(length=32), nullable=False),  # the job the shards belong to
        sa.Column('level', sa.Integer(), nullable=False),
        sa.Column('shard', sa.Integer(), nullable=False),  # -1: the level's common start
        sa.Column('at', sa.Float(), nullable=False),  # wall-clock seconds (time.time())
        sa.PrimaryKeyConstraint('job_id', 'level', 'shard'),
    )


def downgrade():
    op.drop_table('shard_barriers')
    with op.batch_alter_table('stress_levels') as batch:
        batch.drop_column('gap_columns')
    with op.batch_alter_table('stress_jobs') as batch:
        batch.drop_index('ix_stress_jobs_parent_id')
        batch.drop_column('host_shards')
        batch.drop_column('parent_id')
