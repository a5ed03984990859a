"""job logs in the database (the tail, in chunks) and where each job's artefacts were stored

Revision ID: 0011_job_logs_artifacts
Revises: 0010_created_by
Create Date: 2026-12-02 12:40:00

"""
import sqlalchemy as sa
from alembic import op

revision = '0011_job_logs_artifacts'
down_revision = '0010_created_by'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'job_logs',
        sa.Column('job_kind', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('read_offset', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('kept_bytes', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('dropped_bytes', sa.BigInteger(), nullable=False, server_default='0'),
        sa.PrimaryKeyConstraint('job_kind', 'job_id', name='pk_job_logs'),
    )
    op.create_table(
        'job_log_chunks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_kind', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_job_log_chunks'),
    )
    op.create_index('ix_job_log_chunks_job', 'job_log_chunks', ['job_kind', 'job_id', 'id'])
    op.create_table(
        'job_artifacts',
        sa.Column('job_kind', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('location', sa.String(length=2000), nullable=False),
        sa.PrimaryKeyConstraint('job_kind', 'job_id', name='pk_job_artifacts'),
    )
    op.create_table(
        'job_artifact_files',
        sa.Column('job_kind', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=1000), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('modified', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('job_kind', 'job_id', 'name', name='pk_job_artifact_files'),
    )


def downgrade():
    op.drop_table('job_artifact_files')
    op.drop_table('job_artifacts')
    op.drop_index('ix_job_log_chunks_job', table_name='job_log_chunks')
    op.drop_table('job_log_chunks')
    op.drop_table('job_logs')
