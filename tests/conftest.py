"""Shared fixtures: a replay status-page server over real HTTP on 127.0.0.1; a PostgreSQL server of the
tests' own (one per xdist worker, a fresh database per test); `store_url` runs a test on SQLite and on
PostgreSQL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import replay as _replay  # noqa: E402

# One module object whether tests import ``replay`` or ``tests.replay``.
sys.modules.setdefault("tests.replay", _replay)

from replay import (  # noqa: E402
    IncidentIoPage,
    ReplayServer,
    StatuspagePage,
    incidentio_incidents,
    load_history,
)


@pytest.fixture(scope="session")
def openai_history():
    """The 365 real status.openai.com incidents (Dec 2020 - Aug 2024), loaded once.
    Shared across tests: do not mutate (call load_history() for a private copy)."""
    return load_history("openai")


@pytest.fixture(scope="session")
def anthropic_history():
    return load_history("anthropic")


@pytest.fixture
def replay(openai_history):
    """A started ReplayServer serving the OpenAI history as an Atlassian Statuspage;
    ``replay.now`` defaults to one hour after the last update."""
    with ReplayServer(StatuspagePage(openai_history)) as srv:
        yield srv


@pytest.fixture
def incidentio_page():
    """An incident.io page (today's status.openai.com) with the hand-written incidents."""
    return IncidentIoPage(incidentio_incidents())


@pytest.fixture
def incidentio_replay(incidentio_page):
    with ReplayServer(incidentio_page) as srv:
        yield srv


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL server started for this test session. Without PostgreSQL's binaries the tests that need
    it skip, saying so, except under CI=true where they fail."""
    import pg

    bin_dir = pg.bindir()
    if bin_dir is None:
        reason = "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI requires it")
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("psycopg is not installed; CI requires it")
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    cluster = pg.Cluster(bin_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The URL of an empty store: a SQLite file in tmp_path, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.db"
    return request.getfixturevalue("pg_url")
