"""text columns, the leader row, outbox leases by owner

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 11:45:00

Every VARCHAR(n) becomes TEXT: PostgreSQL enforces the lengths (SQLite ignores them, so a long component name
or update id from a page failed a poll on PostgreSQL only). On SQLite both are TEXT affinity already, so the
tables are not copied there. The `leader` table names the process that polls and delivers; `outbox.leased_by`
says which process is sending a row, so that a new leader can take over the rows of a dead one at once.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# table -> (column, length in 0001, nullable)
VARCHARS = {
    'pages': [('name', 100, False), ('base_url', 500, False), ('kind', 20, True)],
    'source_states': [('path', 500, False), ('etag', 500, True), ('last_modified', 100, True),
                      ('body_hash', 64, True)],
    'components': [('key', 100, False), ('name', 300, False), ('group_name', 300, True), ('status', 40, True)],
    'incidents': [('page_incident_id', 100, False), ('status', 20, False), ('impact', 20, False),
                  ('sources', 200, False)],
    'updates': [('page_update_id', 100, True), ('status', 20, True), ('source', 20, False)],
    'incident_components': [('key', 100, False), ('name', 300, False), ('impact', 40, True)],
    'tags': [('tag', 100, False), ('rule', 200, False), ('field', 20, False)],
    'outbox': [('notifier', 100, False), ('event', 20, False), ('dedupe_key', 300, False), ('state', 20, False)],
}


def _retype(to_text: bool) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, cols in VARCHARS.items():
        for name, length, nullable in cols:
            old, new = sa.String(length=length), sa.Text()
            op.alter_column(table, name, existing_type=old if to_text else new, type_=new if to_text else old,
                            existing_nullable=nullable)


def upgrade() -> None:
    _retype(True)
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('leased_by', sa.Text(), nullable=True))
    op.create_table('leader',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sa.Text(), nullable=False),
    sa.Column('host', sa.Text(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('since', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('leader')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('leased_by')
    _retype(False)
