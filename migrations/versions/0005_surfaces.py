"""surfaces: the surfaces (ChatGPT, the API) each incident takes down broadly, with the rule and text that
said so, filled in for the incidents already stored; incidents.scheduled_until (a maintenance's planned end)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'surfaces',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('incident_id', sa.Integer(), sa.ForeignKey('incidents.id', ondelete='CASCADE'), nullable=False),
        sa.Column('surface', sa.Text(), nullable=False),
        sa.Column('rule', sa.Text(), nullable=False),
        sa.Column('field', sa.Text(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.UniqueConstraint('incident_id', 'surface'),
    )
    op.create_index('ix_surfaces_surface', 'surfaces', ['surface'])
    op.add_column('incidents', sa.Column('scheduled_until', sa.DateTime(), nullable=True))
    _fill(op.get_bind())


def _fill(conn) -> None:
    """Classify every stored incident with the built-in rules (`monitor retag` applies the config's too)."""
    from monitor.surfaces import DEFAULT_SURFACE_RULES, classify

    first: dict[int, str] = {}
    for iid, body in conn.execute(sa.text(
            "SELECT incident_id, body FROM updates WHERE body <> '' ORDER BY incident_id, published_at, id")):
        first.setdefault(iid, body)
    comps: dict[int, list] = {}
    for iid, name, impact in conn.execute(sa.text("SELECT incident_id, name, impact FROM incident_components")):
        comps.setdefault(iid, []).append((name, impact))
    rows = []
    for iid, title in conn.execute(sa.text("SELECT id, title FROM incidents")):
        for m in classify(DEFAULT_SURFACE_RULES, title, [first.get(iid)], comps.get(iid, [])):
            rows.append({"incident_id": iid, "surface": m.tag, "rule": m.rule, "field": m.field, "text": m.text})
    if rows:
        conn.execute(sa.text("INSERT INTO surfaces (incident_id, surface, rule, field, text) "
                             "VALUES (:incident_id, :surface, :rule, :field, :text)"), rows)


def downgrade() -> None:
    op.drop_column('incidents', 'scheduled_until')
    op.drop_index('ix_surfaces_surface', table_name='surfaces')
    op.drop_table('surfaces')
