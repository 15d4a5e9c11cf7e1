"""pages.time_zone (Atlassian feeds write times in the page's own zone); drop the unused components.group_name

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('pages', sa.Column('time_zone', sa.Text(), nullable=True))
    with op.batch_alter_table('components') as batch:
        batch.drop_column('group_name')


def downgrade() -> None:
    with op.batch_alter_table('components') as batch:
        batch.add_column(sa.Column('group_name', sa.Text(), nullable=True))
    op.drop_column('pages', 'time_zone')
