"""Shared fixtures: a replay status-page server over real HTTP on 127.0.0.1."""

from __future__ import annotations

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
