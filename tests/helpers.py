"""Shared test helpers: a config file pointing at a replay server, and running the real CLI on it."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from monitor.cli import cli


def write_config(tmp_path: Path, pages: dict[str, str], extra: str = "", db: str = "m.db", url: str | None = None,
                 **page_opts) -> Path:
    """A config watching `pages` (name -> base_url), with its SQLite store in tmp_path (or the store `url`)."""
    lines = [f'[database]\nurl = "{url or f"sqlite:///{tmp_path / db}"}"\n']
    for name, url in pages.items():
        lines.append(f'[[pages]]\nname = "{name}"\nbase_url = "{url}"\nproxy_host = "status.openai.com"')
        for k, v in page_opts.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    p = tmp_path / "config.toml"
    p.write_text("\n".join(lines) + "\n" + extra)
    return p


def run(cfg: Path, *args: str, ok: bool | None = True):
    """Run `monitor --config cfg ARGS` in-process (CliRunner) and return the result."""
    result = CliRunner().invoke(cli, ["--config", str(cfg), *args], catch_exceptions=False)
    if ok is True:
        assert result.exit_code == 0, result.output
    return result


def history(cfg: Path, *args: str) -> list[dict]:
    return json.loads(run(cfg, "history", "--json", *args).stdout)


def db_rows(path: Path, sql: str, *params):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def store_rows(url: str, sql: str, **params) -> list[tuple]:
    """Rows of `sql` from the store at `url` (SQLite or PostgreSQL), read in a connection of its own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    eng = create_engine(url, poolclass=NullPool)
    try:
        with eng.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        eng.dispose()
