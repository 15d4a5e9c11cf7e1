"""The store: shipped migrations reach the head the code expects, WAL and busy timeout are on, times stay UTC."""
import sqlite3
from datetime import datetime, timedelta, timezone

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from monitor import db
from monitor.models import Page


def test_head_revision_constant_matches_shipped_migrations():
    cfg = Config()
    cfg.set_main_option("script_location", db.migrations_dir())
    assert ScriptDirectory.from_config(cfg).get_current_head() == db.HEAD_REVISION


def test_upgrade_creates_schema_once(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    eng = db.make_engine(url)
    assert db.upgrade(url, eng) is True
    assert db.upgrade(url, eng) is False
    tables = {r[0] for r in sqlite3.connect(tmp_path / "m.db").execute("select name from sqlite_master where type='table'")}
    assert {"pages", "incidents", "updates", "tags", "outbox", "deliveries", "components", "source_states"} <= tables


def test_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    eng = db.make_engine(url)
    db.upgrade(url, eng)
    with eng.connect() as c:
        assert c.execute(text("pragma journal_mode")).scalar() == "wal"
        assert c.execute(text("pragma busy_timeout")).scalar() == db.BUSY_TIMEOUT_MS
        assert c.execute(text("pragma foreign_keys")).scalar() == 1


def test_times_round_trip_as_utc(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    eng = db.make_engine(url)
    db.upgrade(url, eng)
    pdt = timezone(timedelta(hours=-7))
    with db.transaction(eng) as s:
        s.add(Page(name="p", base_url="https://x", last_poll_at=datetime(2025, 6, 3, 10, 0, tzinfo=pdt),
                   consecutive_failures=0))
    with db.transaction(eng) as s:
        got = s.query(Page).one().last_poll_at
    assert got == datetime(2025, 6, 3, 17, 0, tzinfo=timezone.utc) and got.tzinfo is not None


def test_failed_transaction_leaves_store_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    eng = db.make_engine(url)
    db.upgrade(url, eng)
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


def test_concurrent_first_migrations_do_not_collide(tmp_path):
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/m.db"
    code = f"from monitor import db; u={url!r}; db.upgrade(u, db.make_engine(u))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert db.current_revision(db.make_engine(url)) == db.HEAD_REVISION
