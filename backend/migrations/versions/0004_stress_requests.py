"""per-request rows of stress tests

Revision ID: 0004_stress_requests
Revises: 0003_level_once
Create Date: 2026-12-01 23:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0004_stress_requests'
down_revision = '0003_level_once'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('stress_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('start_s', sa.Float(), nullable=True),
    sa.Column('end_s', sa.Float(), nullable=True),
    sa.Column('success', sa.Boolean(), nullable=False),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('latency_s', sa.Float(), nullable=True),
    sa.Column('tpot_ms', sa.Float(), nullable=True),
    sa.Column('itl_mean_ms', sa.Float(), nullable=True),
    sa.Column('itl_max_ms', sa.Float(), nullable=True),
    sa.Column('input_tokens', sa.Integer(), nullable=True),
    sa.Column('output_tokens', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['stress_jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('stress_requests', schema=None) as batch_op:
        batch_op.create_index('ix_stress_requests_job_position', ['job_id', 'position', 'seq'], unique=True)


def downgrade():
    with op.batch_alter_table('stress_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_stress_requests_job_position')
    op.drop_table('stress_requests')
