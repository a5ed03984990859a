"""workers on several hosts: each worker's host, labels, capacity per kind and lease; each job's worker
host and the labels it requires

Revision ID: 0012_worker_leases
Revises: 0011_job_logs_artifacts
Create Date: 2026-12-02 16:30:00

"""
import sqlalchemy as sa
from alembic import op

from backend.db_types import Json, UtcDateTime

revision = '0012_worker_leases'
down_revision = '0011_job_logs_artifacts'
branch_labels = None
depends_on = None

JOB_TABLES = ('stress_jobs', 'evaluation_jobs')


def upgrade():
    with op.batch_alter_table('stress_workers') as batch:
        batch.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('labels', Json, nullable=True))
        batch.add_column(sa.Column('capacity', Json, nullable=True))
        batch.add_column(sa.Column('lease_until', UtcDateTime(), nullable=True))
    for table in JOB_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('worker_host', sa.String(length=255), nullable=True))
            batch.add_column(sa.Column('labels', Json, nullable=True))


def downgrade():
    for table in JOB_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column('labels')
            batch.drop_column('worker_host')
    with op.batch_alter_table('stress_workers') as batch:
        for column in ('lease_until', 'capacity', 'labels', 'host'):
            batch.drop_column(column)
