"""who started each job, search and inference run: created_by (a token's name or its role, never a token)

Revision ID: 0010_created_by
Revises: 0009_evaluations
Create Date: 2026-12-02 06:00:00

"""
import sqlalchemy as sa
from alembic import op

revision = '0010_created_by'
down_revision = '0009_evaluations'
branch_labels = None
depends_on = None

TABLES = ('stress_jobs', 'capacity_searches', 'evaluation_jobs', 'inference_runs')


def upgrade():
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('created_by', sa.String(length=100), nullable=True))


def downgrade():
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column('created_by')
