"""evaluation datasets: one row per distinct content, identified by its sha256

Revision ID: 0008_eval_datasets
Revises: 0007_capacity_estimate
Create Date: 2026-12-02 04:50:00

"""
import sqlalchemy as sa

from backend.db_types import Json
from alembic import op

revision = '0008_eval_datasets'
down_revision = '0007_capacity_estimate'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('eval_datasets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('bundled', sa.Boolean(), nullable=False),
    sa.Column('filename', sa.String(length=200), nullable=False),
    sa.Column('dev_filename', sa.String(length=200), nullable=True),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.Column('dev_items', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('summary', Json, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('content_hash')
    )
    with op.batch_alter_table('eval_datasets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_eval_datasets_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('eval_datasets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_eval_datasets_created_at'))
    op.drop_table('eval_datasets')
