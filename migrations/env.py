"""Alembic environment: runs the shipped migrations against the configured database.

It uses its own engine without foreign_keys=ON, so batch (table-copy) migrations keep child rows. On SQLite
the whole upgrade runs in one transaction (SQLite's DDL is transactional once pysqlite stops issuing its own
COMMITs), so a process killed during a migration leaves the previous schema, not half of the new one.
On PostgreSQL the transaction first takes an advisory lock (`pg_advisory_xact_lock`, released at its end):
processes starting at once on an empty database migrate one after the other, and the later ones find the
schema already there."""
from alembic import context
from sqlalchemy import create_engine, event, pool, text

from monitor.migrate import MIGRATION_LOCK_KEY
from monitor.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")


def _engine():
    engine = create_engine(url, poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None  # SQLAlchemy, not pysqlite, emits BEGIN/COMMIT

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = _engine()
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                          transactional_ddl=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()
        connection.commit()
    engine.dispose()


run()
