"""probe of the OpenAI Files API: results and outages

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-02 11:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('probe_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=False),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('failure_class', sa.Text(), nullable=True),
    sa.Column('step', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('upload_ms', sa.Integer(), nullable=True),
    sa.Column('upload_status', sa.Integer(), nullable=True),
    sa.Column('retrieve_ms', sa.Integer(), nullable=True),
    sa.Column('retrieve_status', sa.Integer(), nullable=True),
    sa.Column('content_ms', sa.Integer(), nullable=True),
    sa.Column('content_status', sa.Integer(), nullable=True),
    sa.Column('delete_ms', sa.Integer(), nullable=True),
    sa.Column('delete_status', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('probe_results', schema=None) as batch_op:
        batch_op.create_index('ix_probe_results_started', ['started_at'], unique=False)

    op.create_table('probe_outages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('first_failure_at', sa.DateTime(), nullable=False),
    sa.Column('last_failure_at', sa.DateTime(), nullable=False),
    sa.Column('consecutive', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('statuses', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('warned_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('all_clear', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('probe_outages', schema=None) as batch_op:
        batch_op.create_index('ix_probe_outages_first', ['first_failure_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('probe_outages', schema=None) as batch_op:
        batch_op.drop_index('ix_probe_outages_first')
    op.drop_table('probe_outages')
    with op.batch_alter_table('probe_results', schema=None) as batch_op:
        batch_op.drop_index('ix_probe_results_started')
    op.drop_table('probe_results')
