"""Config: defaults, validation errors that name the file, the key and the reason, state directory."""
import os
import stat

import pytest

from monitor import config
from monitor.config import ConfigError


def write(tmp_path, text, name="config.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_no_config_watches_status_openai_com(monkeypatch, tmp_path):
    monkeypatch.delenv("MONITOR_CONFIG", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    s = config.load(None)
    assert [(p.name, p.base_url, p.poll_interval, p.history_days) for p in s.pages] == [
        ("openai", "https://status.openai.com", 60, 365)]
    assert s.notifiers == ()
    assert s.database_url() == f"sqlite:///{tmp_path}/state/monitor.db"


def test_example_config_is_valid_and_documents_every_key(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    example = os.path.join(os.path.dirname(__file__), "..", "config.example.toml")
    s = config.load(example)
    assert s.pages[0].base_url == "https://status.openai.com"
    text = open(example).read()
    for model in (config.PageSettings, config.NotifierSettings, config.NotifySettings, config.DatabaseSettings):
        for key in model.model_fields:
            assert f"{key} =" in text or f"# {key} =" in text, key


def test_absolute_and_other_database_urls_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert config.resolve_database_url("sqlite:////var/x.db") == "sqlite:////var/x.db"
    assert config.resolve_database_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"


@pytest.mark.parametrize("text, expected", [
    ("[[pages]]\nname='a'\nbase_url='https://x.example'\npoll_interval='fast'\n",
     "pages[0].poll_interval: Input should be a valid number"),
    ("[[pages]]\nname='a'\nbase_url='ftp://x.example'\n", "pages[0].base_url: must be an http(s) URL"),
    ("[[pages]]\nname='a'\nbase_url='https://x.example'\ncolour='red'\n", "pages[0].colour: unknown key"),
    ("[databse]\nurl='sqlite:///x.db'\n", "databse: unknown key"),
    ("[[notifiers]]\nname='n'\n", "notifiers[0]: set exactly one of url or url_env"),
    ("[[notifiers]]\nname='n'\nurl='json://127.0.0.1'\nmin_impact='huge'\n", "notifiers[0].min_impact: Input should be"),
    ("[tags.file-upload]\npatterns=['(unclosed']\n", "tags.file-upload.patterns[0]: invalid regex"),
    ("[[pages]]\nname='a'\nbase_url='https://x'\n[[pages]]\nname='a'\nbase_url='https://y'\n", "pages: page names must be unique"),
    ("this is = = not toml", "not valid TOML"),
])
def test_bad_config_names_file_key_and_reason(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: ")
    assert expected in msg
    assert "\n" not in msg


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read: No such file"):
        config.load(tmp_path / "nope.toml")


def test_world_readable_config_with_secret_url_warns(tmp_path):
    p = write(tmp_path, "[[notifiers]]\nname='slack'\nurl='slack://T0/B0/XyZ123token'\n")
    os.chmod(p, 0o644)
    warnings = []
    config.load(p, warn=warnings.append)
    assert len(warnings) == 1 and "readable by other users" in warnings[0] and "XyZ123token" not in warnings[0]
    os.chmod(p, 0o600)
    warnings.clear()
    config.load(p, warn=warnings.append)
    assert warnings == []


def test_url_env_keeps_secret_out_of_file(tmp_path, monkeypatch):
    p = write(tmp_path, "[[notifiers]]\nname='slack'\nurl_env='MY_SLACK'\n")
    os.chmod(p, 0o644)
    warnings = []
    s = config.load(p, warn=warnings.append)
    assert warnings == []       # no warning about a readable file: it holds no secret
    from monitor.notify.channels import validate

    validate(s.notifiers, warn=warnings.append)   # what the commands that send check: the variable is not set here
    assert warnings == ["notifier slack: environment variable MY_SLACK is not set; its messages will fail"]
    with pytest.raises(ConfigError, match="MY_SLACK is not set"):
        s.notifiers[0].resolved_url()
    monkeypatch.setenv("MY_SLACK", "slack://T/B/C")
    assert s.notifiers[0].resolved_url() == "slack://T/B/C"


def test_notifier_filters():
    n = config.NotifierSettings(name="n", url="json://x", events=("opened", "resolved"), min_impact="major")
    assert n.wants({"file-upload"}, "opened", "critical")
    assert not n.wants({"file-upload"}, "updated", "critical")
    assert not n.wants({"file-upload"}, "opened", "minor")
    assert not n.wants({"other"}, "opened", "critical")
    assert config.NotifierSettings(name="n", url="json://x", tags=("*",)).wants(set(), "opened", "none")


def test_settings_are_frozen():
    from pydantic import ValidationError

    s = config.Settings()
    with pytest.raises(ValidationError, match="frozen_instance"):
        s.pages[0].poll_interval = 1
    with pytest.raises(ValidationError, match="frozen_instance"):
        s.database = config.DatabaseSettings(url="sqlite:///other.db")
    assert s.pages[0].poll_interval == 60 and s.database.url == "sqlite:///monitor.db"


# ------------------------------------------------------------------------- through the real `monitor` CLI

def test_a_top_level_source_key_is_an_unknown_key(tmp_path):
    """`source` is where the settings came from, not a key of the file: refused like any unknown key (it
    used to crash every command with a TypeError)."""
    from helpers import run

    p = write(tmp_path, 'source = "x"\n')
    r = run(p, "history", ok=None)
    assert (r.exit_code, r.output) == (1, f"Error: {p}: source: unknown key\n")
    r = run(p, "status", ok=None)
    assert (r.exit_code, r.output) == (3, f"UNKNOWN: {p}: source: unknown key\n")


@pytest.mark.parametrize("url, reason", [
    ("mysql://u@h/db", "'mysql' is not supported: use SQLite (sqlite:////path/monitor.db) or PostgreSQL "
                       "(postgresql+psycopg://user@host/db)"),
    ("oracle+oracledb://u@h/db", "'oracle' is not supported: use SQLite (sqlite:////path/monitor.db) or PostgreSQL "
                                 "(postgresql+psycopg://user@host/db)"),
    ("mssql+pyodbc://u@h/db", "'mssql' is not supported: use SQLite (sqlite:////path/monitor.db) or PostgreSQL "
                              "(postgresql+psycopg://user@host/db)"),
    ("postgresql+pg8000://u@h/db", "the driver for 'postgresql+pg8000' is not installed (pip install pg8000, "
                                   "or use postgresql+psycopg:// and pip install 'openai-status-monitor[postgres]')"),
])
def test_a_database_that_is_not_supported_or_whose_driver_is_missing_is_refused(tmp_path, url, reason):
    from helpers import run

    p = write(tmp_path, f'[database]\nurl = "{url}"\n')
    r = run(p, "history", ok=None)
    assert (r.exit_code, r.output) == (1, f"Error: {p}: database.url: {reason}\n")
    r = run(p, "status", ok=None)
    assert (r.exit_code, r.output) == (3, f"UNKNOWN: {p}: database.url: {reason}\n")


def test_sqlite_older_than_3_35_is_refused_at_start(tmp_path, monkeypatch):
    """SQLite before 3.35 has no UPDATE ... RETURNING (outbox claims): refused at start, naming the key,
    not failing at the first delivery. (The library's version is what Python reports; this machine's is
    newer, so the reported version is lowered for the test.)"""
    import sqlite3

    from helpers import run

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    p = write(tmp_path, f'[database]\nurl = "sqlite:///{tmp_path}/m.db"\n')
    reason = ("SQLite 3.34.1 is too old: the monitor needs 3.35 or newer (UPDATE ... RETURNING); use a newer "
              "Python build or PostgreSQL")
    r = run(p, "poll", ok=None)
    assert (r.exit_code, r.output) == (1, f"Error: {p}: database.url: {reason}\n")
    r = run(p, "status", ok=None)
    assert (r.exit_code, r.output) == (3, f"UNKNOWN: {p}: database.url: {reason}\n")
    assert not (tmp_path / "m.db").exists()


def test_without_psycopg_a_postgresql_url_names_the_postgres_extra(tmp_path):
    """PostgreSQL's driver is the [postgres] extra: a machine without it (psycopg made unimportable in the
    process) is told what to install."""
    import subprocess
    import sys

    p = write(tmp_path, '[database]\nurl = "postgresql+psycopg://monitor@db.example.org/monitor"\n')
    code = ("import sys\nsys.modules['psycopg'] = None\nfrom monitor.cli import main\n"
            "sys.argv = ['monitor', '--config', sys.argv[1], 'history']\nmain()\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (
        1, "", f"Error: {p}: database.url: the driver for 'postgresql+psycopg' is not installed "
               "(pip install 'openai-status-monitor[postgres]')\n")


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_a_sqlite_url_is_accepted_without_importing_sqlalchemy(tmp_path, scheme):
    """A SQLite file needs no driver check: reading a migrated store imports no SQLAlchemy at all."""
    import subprocess
    import sys

    from helpers import run

    p = write(tmp_path, f'[database]\nurl = "{scheme}:///{tmp_path / "m.db"}"\n')
    run(p, "db", "upgrade")
    code = ("import sys\nfrom monitor.cli import cli\n"
            "try:\n    cli(['--config', sys.argv[1], 'history'], prog_name='monitor')\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('sqlalchemy imported' if 'sqlalchemy' in sys.modules else 'no sqlalchemy', file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (
        0, "No matching incidents stored. (Try --all.)\n", "no sqlalchemy\n")


def test_an_unset_url_env_is_one_formatted_warning(tmp_path):
    """A notifier whose url_env variable is not set is warned about once, as a log line (not raw text
    printed while the config loads), by the commands that send: here `monitor check-config`; a read command
    (`monitor history`) says nothing of notifiers at all."""
    import subprocess
    import sys
    from pathlib import Path

    p = write(tmp_path, f'[database]\nurl = "sqlite:///{tmp_path / "m.db"}"\n\n'
                        '[[notifiers]]\nname = "slack"\nurl_env = "MONITOR_TEST_UNSET_URL"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("MONITOR_TEST_UNSET_URL", "MONITOR_CONFIG")}
    monitor = str(Path(sys.executable).with_name("monitor"))
    out = subprocess.run([monitor, "--config", str(p), "history"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "No matching incidents stored. (Try --all.)\n", "")
    out = subprocess.run([monitor, "--config", str(p), "check-config"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert (out.returncode, out.stdout) == (
        0, f"{p}: OK: pages openai; notifiers slack; store sqlite:///{tmp_path / 'm.db'}\n"), out.stderr
    assert out.stderr == ("WARNING monitor.notify: notifier slack: environment variable MONITOR_TEST_UNSET_URL is "
                          "not set; its messages will fail\n")
