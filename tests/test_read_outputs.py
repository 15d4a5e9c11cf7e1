"""The read commands answer from plain SQL (monitor.reader.Reader) without the ORM: their output must stay byte
for byte what the ORM-based commands printed. tests/data/read/ holds the output of the commands before that
change, on a store built the same way from the replayed status.openai.com history."""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from helpers import run, write_config
from replay import ReplayServer, StatuspagePage

from monitor.reader import Reader

DATA = Path(__file__).parent / "data" / "read"
BEFORE = "2024-08-19T12:00:00Z"       # an upload incident (433mh2zvfmww, major) opens at 18:51
OPEN = "2024-08-19T19:00:00Z"
COMMANDS = {                          # expected file -> arguments
    "history-all.json": ["history", "--json", "--all"],
    "history-all.txt": ["history", "--all"],
    "history-upload.json": ["history", "--json"],
    "history-upload.txt": ["history"],
    "history-filtered.json": ["history", "--json", "--all", "--since", "2024-03-01", "--page", "openai",
                              "--limit", "40"],
    "history-tag.json": ["history", "--json", "--tag", "file-upload", "--tag", "data-analysis", "--limit", "1"],
    "status.json": ["status", "--json"],
}
_TIMES = re.compile(r'"(checked_at|last_success_at|first_seen_at)": "[^"]+"')


def outputs(tmp_path: Path, history) -> dict[str, str]:
    """Each command's stdout on a store polled before and during an upload incident (so that one incident
    has a message sent), with the replay server's address and the wall-clock times replaced."""
    with ReplayServer(StatuspagePage(history), now=BEFORE) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url})
        run(cfg, "poll")
        srv.now = OPEN
        run(cfg, "poll")
        out = {}
        for name, args in COMMANDS.items():
            text = run(cfg, *args, ok=None).stdout.replace(srv.base_url, "BASE")
            out[name] = _TIMES.sub(r'"\1": "T"', text)
    return out


@pytest.fixture(scope="module")
def got(tmp_path_factory, openai_history):
    return outputs(tmp_path_factory.mktemp("read"), openai_history)


@pytest.mark.parametrize("name", COMMANDS)
def test_output_is_unchanged(got, name):
    assert got[name] == (DATA / name).read_text(), name


def test_expected_files_cover_what_matters():
    """The golden files show tags, components, a sent message and an open incident (else the comparison
    above would prove little)."""
    rows = json.loads((DATA / "history-all.json").read_text())
    assert len(rows) > 40
    assert any(r["components"] for r in rows) and any(r["tags"] for r in rows)
    assert any(r["messages_sent"] for r in rows)
    status = json.loads((DATA / "status.json").read_text())
    assert status["verdict"] == "wait" and status["incidents"][0]["components"]


def test_a_store_that_is_not_a_database_is_one_line(tmp_path):
    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"})
    store = tmp_path / "m.db"
    store.write_bytes(b"this is not a database" * 100)
    r = run(cfg, "history", "--all", ok=None)
    assert r.exit_code == 1
    assert r.output == f"Error: cannot read the store {store}: file is not a database\n"
    r = run(cfg, "status", ok=None)
    assert (r.exit_code, r.output) == (3, f"UNKNOWN: cannot read the store {store}: file is not a database\n")
    assert not (tmp_path / "m.db.lock").exists()            # no migration was tried


def test_a_store_path_that_is_a_directory_cannot_be_read_and_is_not_migrated(tmp_path):
    """A store that exists but cannot be read is reported as such, not as a store to migrate."""
    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"})
    store = tmp_path / "m.db"
    store.mkdir()
    r = run(cfg, "history", ok=None)
    assert (r.exit_code, r.output) == (1, f"Error: cannot read the store {store}: it is a directory\n")
    r = run(cfg, "status", ok=None)
    assert (r.exit_code, r.output) == (3, f"UNKNOWN: cannot read the store {store}: it is a directory\n")
    r = run(cfg, "status", "--json", ok=None)
    assert r.exit_code == 3 and json.loads(r.output)["reason"] == f"cannot read the store {store}: it is a directory"
    assert not (tmp_path / "m.db.lock").exists()            # no migration was tried


@pytest.mark.parametrize("stored, written", [
    ("2024-08-19 18:51:00.000000", "2024-08-19T18:51:00Z"),
    ("2026-12-01 11:31:02.482000", "2026-12-01T11:31:02.482000Z"),
    ("2026-12-01 11:31:02.000001", "2026-12-01T11:31:02.000001Z"),
    ("2024-08-19 18:51:00", "2024-08-19T18:51:00Z"),                 # not SQLAlchemy's format: parsed
    (datetime(2024, 8, 19, 18, 51, 0, 500), "2024-08-19T18:51:00.000500Z"),   # PostgreSQL: naive UTC
    (None, None),
])
def test_stored_times_are_written_as_the_orm_wrote_them(stored, written):
    assert Reader.iso(stored) == written
