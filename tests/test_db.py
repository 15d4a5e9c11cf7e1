"""The store: shipped migrations reach the head the code expects, WAL and busy timeout are on, times stay UTC."""
from datetime import datetime, timedelta, timezone

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from monitor import db, migrate
from monitor.leader import LeaderLock
from monitor.models import Component, Incident, Page, Update


def test_head_revision_constant_matches_shipped_migrations():
    cfg = Config()
    cfg.set_main_option("script_location", migrate.migrations_dir())
    assert ScriptDirectory.from_config(cfg).get_current_head() == migrate.HEAD_REVISION


def test_upgrade_creates_schema_once(store_url):
    eng = db.make_engine(store_url)
    assert migrate.upgrade(store_url, eng) is True
    assert migrate.upgrade(store_url, eng) is False
    tables = set(inspect(eng).get_table_names())
    assert {"pages", "incidents", "updates", "tags", "outbox", "deliveries", "components", "source_states",
            "leader"} <= tables
    eng.dispose()


def test_long_names_and_ids_from_a_page_are_stored(store_url):
    """PostgreSQL enforces VARCHAR(n) (SQLite does not): what a page sends is stored whatever its length."""
    eng = db.make_engine(store_url)
    migrate.upgrade(store_url, eng)
    long = "Files API, uploads and retrieval (" + "x" * 600 + ")"
    now = datetime(2025, 6, 3, tzinfo=timezone.utc)
    with db.transaction(eng) as s:
        page = Page(name=long, base_url="https://status.example/" + "p" * 600, kind="incidentio" * 5,
                    consecutive_failures=0)
        s.add(page)
        s.flush()
        s.add(Component(page_id=page.id, key=long, name=long, status="degraded" * 10))
        inc = Incident(page_id=page.id, page_incident_id=long, status="investigating" * 5, impact="major" * 10,
                       first_seen_at=now, last_seen_at=now, sources=",".join(["api", "feed", "proxy"] * 100))
        s.add(inc)
        s.flush()
        s.add(Update(incident_id=inc.id, page_update_id=long, status="identified" * 5, source="proxy" * 10,
                     first_seen_at=now))
    with db.transaction(eng) as s:
        assert s.scalars(select(Update.page_update_id)).one() == long
        assert s.scalars(select(Component.name)).one() == long
    eng.dispose()


def test_migration_0002_keeps_rows_written_under_0001(store_url):
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrate.migrations_dir())
    cfg.set_main_option("sqlalchemy.url", store_url)
    command.upgrade(cfg, "0001")
    eng = db.make_engine(store_url)
    with eng.begin() as c:
        c.execute(text("insert into pages (name, base_url, consecutive_failures) values ('openai', 'https://x', 0)"))
    migrate.upgrade(store_url, eng)
    assert migrate.current_revision(eng) == migrate.HEAD_REVISION
    with eng.begin() as c:
        assert c.execute(text("select name from pages")).scalars().all() == ["openai"]
        c.execute(text("update pages set name = :n"), {"n": "y" * 500})
    eng.dispose()


def test_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    eng = db.make_engine(url)
    migrate.upgrade(url, eng)
    with eng.connect() as c:
        assert c.execute(text("pragma journal_mode")).scalar() == "wal"
        assert c.execute(text("pragma busy_timeout")).scalar() == db.BUSY_TIMEOUT_MS
        assert c.execute(text("pragma foreign_keys")).scalar() == 1


def test_times_round_trip_as_utc(store_url):
    url = store_url
    eng = db.make_engine(url)
    migrate.upgrade(url, eng)
    pdt = timezone(timedelta(hours=-7))
    with db.transaction(eng) as s:
        s.add(Page(name="p", base_url="https://x", last_poll_at=datetime(2025, 6, 3, 10, 0, tzinfo=pdt),
                   consecutive_failures=0))
    with db.transaction(eng) as s:
        got = s.query(Page).one().last_poll_at
    assert got == datetime(2025, 6, 3, 17, 0, tzinfo=timezone.utc) and got.tzinfo is not None


def test_failed_transaction_leaves_store_as_it_was(store_url):
    url = store_url
    eng = db.make_engine(url)
    migrate.upgrade(url, eng)
    try:
        with db.transaction(eng) as s:
            s.add(Page(name="p", base_url="https://x", consecutive_failures=0))
            s.flush()
            raise RuntimeError("midway")
    except RuntimeError:
        pass
    with db.transaction(eng) as s:
        assert s.query(Page).count() == 0


def test_safe_url_masks_password():
    assert "secret" not in db.safe_url("postgresql://u:secret@h/db")


def test_concurrent_first_migrations_do_not_collide(store_url):
    """Any number of processes starting at once on an empty store (PostgreSQL: without the advisory lock the
    second dies on `duplicate key value violates unique constraint "pg_type_typname_nsp_index"`)."""
    import subprocess
    import sys

    import time

    url, at = store_url, time.time() + 3     # all imports done, then the same moment in every process
    code = (f"import time; from alembic import command; from monitor import db, migrate; import monitor.models; "
            f"u = {url!r}; e = db.make_engine(u); time.sleep(max(0, {at} - time.time())); migrate.upgrade(u, e)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    assert migrate.current_revision(db.make_engine(url)) == migrate.HEAD_REVISION


def test_one_leader_lock_at_a_time(store_url):
    """Two would-be leaders on one store (each as a `monitor run` holds it): one gets it, the other does
    not until the first lets go."""
    first, second = LeaderLock(store_url), LeaderLock(store_url)
    try:
        assert first.hold() is True
        assert second.hold() is False
        assert first.hold() is True and second.hold() is False       # kept, and still refused
        first.release()
        assert second.hold() is True and first.hold() is False
    finally:
        first.release()
        second.release()


def test_a_leader_whose_session_dies_knows_it(pg_url, caplog):
    """The server ends the leader's session (a restart, a keepalive timeout): its next hold() says it no
    longer leads, with one warning, and a standby gets the lock. The session has the server-side keepalives."""
    leader, standby = LeaderLock(pg_url), LeaderLock(pg_url)
    admin = db.make_engine(pg_url)
    try:
        assert leader.hold()
        with admin.connect() as c:
            pid = leader._conn.execute(text("select pg_backend_pid()")).scalar()
            assert leader._conn.execute(text("show tcp_keepalives_idle")).scalar() == "10"
            assert not standby.hold()
            c.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
        assert leader.hold() is False
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["lost the leader lock"]
        assert standby.hold() is True
    finally:
        leader.release()
        standby.release()
        admin.dispose()


def test_migration_0005_fills_surfaces_for_a_store_of_0004(store_url):
    """An existing store learns its broad outages on upgrade, from the titles and components it holds."""
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", migrate.migrations_dir())
    cfg.set_main_option("sqlalchemy.url", store_url.replace("%", "%%"))
    command.upgrade(cfg, "0004")
    eng = db.make_engine(store_url)
    now = datetime(2024, 7, 17, 8, 30, tzinfo=timezone.utc).replace(tzinfo=None)
    with eng.begin() as c:
        c.execute(text("INSERT INTO pages (id, name, base_url, consecutive_failures) VALUES (1, 'openai', 'x', 0)"))
        for iid, title in ((1, "ChatGPT outage"), (2, "Elevated error rates on text-davinci-003"),
                           (3, "Elevated errors")):
            c.execute(text("INSERT INTO incidents (id, page_id, page_incident_id, title, status, impact, "
                           "first_seen_at, last_seen_at, sources, timeline_complete) VALUES "
                           "(:id, 1, :pid, :title, 'resolved', 'major', :now, :now, 'api', :f)"),
                      {"id": iid, "pid": f"i{iid}", "title": title, "now": now, "f": False})
        c.execute(text("INSERT INTO incident_components (incident_id, key, name, impact) "
                       "VALUES (3, 'c1', 'Chat Completions', 'full_outage')"))
    command.upgrade(cfg, "head")
    with eng.connect() as c:
        rows = c.execute(text("SELECT incident_id, surface, rule, field, text FROM surfaces ORDER BY incident_id")).all()
    assert [tuple(r) for r in rows] == [
        (1, "chatgpt", "chatgpt/named", "title", "ChatGPT outage"),
        (3, "api", "api/core-component", "component", "Chat Completions (full_outage)")]
    eng.dispose()


def test_core_tables_match_the_migrated_schema(store_url):
    """tables.py (what the code reads and writes with) says what the shipped migrations create: Alembic finds
    no table, column, nullability, index or unique constraint to add or drop."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from monitor.tables import metadata

    eng = db.make_engine(store_url)
    migrate.upgrade(store_url, eng)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diffs = [d for d in compare_metadata(ctx, metadata)
                 if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")]
    eng.dispose()
    assert diffs == []
