"""one result row per job and level position; stored answers marked when truncated

Revision ID: 0003_level_once
Revises: 0002_stress_jobs
Create Date: 2026-12-01 22:50:00

Recovery used to ingest a level a second time after a worker restart. The duplicates are removed
(the first row of each job and position is kept: both were read from the same files), then a unique
constraint keeps it that way.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_level_once'
down_revision = '0002_stress_jobs'
branch_labels = None
depends_on = None


def upgrade():
    op.execute(
        "DELETE FROM stress_levels WHERE id NOT IN "
        "(SELECT MIN(id) FROM stress_levels GROUP BY job_id, position)"
    )
    with op.batch_alter_table('stress_levels', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_stress_levels_job_position', ['job_id', 'position'])
    with op.batch_alter_table('inference_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('truncated', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('inference_results', schema=None) as batch_op:
        batch_op.drop_column('truncated')
    with op.batch_alter_table('stress_levels', schema=None) as batch_op:
        batch_op.drop_constraint('uq_stress_levels_job_position', type_='unique')
