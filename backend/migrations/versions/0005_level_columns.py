"""a level's per-request figures as one packed array

Revision ID: 0005_level_columns
Revises: 0004_stress_requests
Create Date: 2026-12-01 23:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0005_level_columns'
down_revision = '0004_stress_requests'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('stress_levels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_columns', sa.LargeBinary(), nullable=True))


def downgrade():
    with op.batch_alter_table('stress_levels', schema=None) as batch_op:
        batch_op.drop_column('request_columns')
