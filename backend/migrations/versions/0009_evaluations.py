"""evaluation jobs, their model x dataset cells and every scored sample

Revision ID: 0009_evaluations
Revises: 0008_eval_datasets
Create Date: 2026-12-02 04:50:00

"""
import sqlalchemy as sa

from backend.db_types import Json
from alembic import op

revision = '0009_evaluations'
down_revision = '0008_eval_datasets'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('evaluation_jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('model_key', sa.String(length=200), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=True),
    sa.Column('target', Json, nullable=False),
    sa.Column('params', Json, nullable=False),
    sa.Column('api_key_encrypted', sa.Text(), nullable=True),
    sa.Column('estimated_requests', sa.Integer(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pgid', sa.Integer(), nullable=True),
    sa.Column('worker_id', sa.String(length=64), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('progress', Json, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('failed_requests', sa.Integer(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluation_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluation_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_jobs_model_key'), ['model_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_jobs_status'), ['status'], unique=False)

    op.create_table('evaluation_cells',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('model_key', sa.String(length=200), nullable=False),
    sa.Column('target', Json, nullable=False),
    sa.Column('dataset_id', sa.String(length=100), nullable=False),
    sa.Column('dataset_hash', sa.String(length=64), nullable=True),
    sa.Column('dataset_name', sa.String(length=200), nullable=False),
    sa.Column('dataset_kind', sa.String(length=16), nullable=False),
    sa.Column('benchmark', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=True),
    sa.Column('primary_metric', sa.String(length=64), nullable=True),
    sa.Column('metrics', Json, nullable=False),
    sa.Column('live', Json, nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('judge_input_tokens', sa.Integer(), nullable=True),
    sa.Column('judge_output_tokens', sa.Integer(), nullable=True),
    sa.Column('judge_cost', sa.Float(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['evaluation_jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'position', name='uq_evaluation_cells_job_position')
    )
    with op.batch_alter_table('evaluation_cells', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluation_cells_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_cells_model_key'), ['model_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_cells_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_cells_dataset_hash'), ['dataset_hash'], unique=False)

    op.create_table('evaluation_samples',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('cell_id', sa.Integer(), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('sample_id', sa.String(length=200), nullable=False),
    sa.Column('subset', sa.String(length=200), nullable=False),
    sa.Column('input_messages', Json, nullable=False),
    sa.Column('prediction', sa.Text(), nullable=True),
    sa.Column('extracted', sa.Text(), nullable=True),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('correct', sa.Boolean(), nullable=True),
    sa.Column('scores', Json, nullable=False),
    sa.Column('repeat_scores', Json, nullable=False),
    sa.Column('judge_verdict', sa.Text(), nullable=True),
    sa.Column('judge_explanation', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('metadata', Json, nullable=False),
    sa.ForeignKeyConstraint(['cell_id'], ['evaluation_cells.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cell_id', 'sample_index', name='uq_evaluation_samples_cell_index')
    )
    with op.batch_alter_table('evaluation_samples', schema=None) as batch_op:
        batch_op.create_index('ix_evaluation_samples_cell_correct', ['cell_id', 'correct', 'sample_index'],
                              unique=False)
        batch_op.create_index('ix_evaluation_samples_cell_sample_id', ['cell_id', 'sample_id'], unique=False)
        batch_op.create_index('ix_evaluation_samples_cell_subset', ['cell_id', 'subset', 'sample_index'],
                              unique=False)
        batch_op.create_index('ix_evaluation_samples_cell_score', ['cell_id', 'score'], unique=False)


def downgrade():
    op.drop_table('evaluation_samples')
    op.drop_table('evaluation_cells')
    op.drop_table('evaluation_jobs')
