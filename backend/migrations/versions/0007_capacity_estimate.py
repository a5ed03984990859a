"""capacity searches: a start from the Little's-law estimate of one short unbounded probe

Revision ID: 0007_capacity_estimate
Revises: 0006_capacity_searches
Create Date: 2026-12-02 04:40:00

"""
from alembic import op
import sqlalchemy as sa

from backend.db_types import Json


revision = '0007_capacity_estimate'
down_revision = '0006_capacity_searches'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('capacity_searches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_auto', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('estimate', Json, nullable=True))


def downgrade():
    with op.batch_alter_table('capacity_searches', schema=None) as batch_op:
        batch_op.drop_column('estimate')
        batch_op.drop_column('start_auto')
