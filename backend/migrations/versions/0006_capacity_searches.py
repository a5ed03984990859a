"""capacity searches, and the link from a probe's stress jobs to their search

Revision ID: 0006_capacity_searches
Revises: 0005_level_columns
Create Date: 2026-12-02 00:10:00

"""
from alembic import op
import sqlalchemy as sa

from backend.db_types import Json


revision = '0006_capacity_searches'
down_revision = '0005_level_columns'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('capacity_searches',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('model_key', sa.String(length=200), nullable=False),
    sa.Column('target', Json, nullable=False),
    sa.Column('params', Json, nullable=False),
    sa.Column('api_key_encrypted', sa.Text(), nullable=True),
    sa.Column('slo', Json, nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('precision', sa.String(length=16), nullable=False),
    sa.Column('repeats', sa.Integer(), nullable=False),
    sa.Column('max_concurrency', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('requests_per_slot', sa.Integer(), nullable=False),
    sa.Column('probes', Json, nullable=False),
    sa.Column('pending', Json, nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('capacity_searches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_capacity_searches_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_capacity_searches_status'), ['status'], unique=False)
    with op.batch_alter_table('stress_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('search_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_stress_jobs_search_id'), ['search_id'], unique=False)


def downgrade():
    with op.batch_alter_table('stress_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stress_jobs_search_id'))
        batch_op.drop_column('search_id')
    with op.batch_alter_table('capacity_searches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_capacity_searches_status'))
        batch_op.drop_index(batch_op.f('ix_capacity_searches_created_at'))
    op.drop_table('capacity_searches')
