"""Bad input from people: an invalid config refuses to start with the file, the key and the reason (exit 1,
one line); bad arguments are a usage error (exit 2); a config readable by others that holds secrets is
warned about; and no secret (a notifier password) appears in logs, output, the store or error messages."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import faults_report
from helpers import db_rows, run, write_config
from notify_servers import HTTPServer, free_port
from replay import ReplayServer, StatuspagePage

MONITOR = str(Path(sys.executable).with_name("monitor"))
UPLOADS_2024 = "vn8j63zg56hz"
SECRET = "S3cr3tPassw0rd42"

PAGE = '[[pages]]\nname = "openai"\nbase_url = "https://status.openai.com"\n'

# (case, what is wrong, config text, the line's key and reason as a regex)
CONFIGS = [
    ("unknown-key", "an unknown key in a page", PAGE + 'colour = "red"\n', r"pages\[0\]\.colour: unknown key"),
    ("wrong-type", "a number given as text", PAGE + 'poll_interval = "often"\n',
     r"pages\[0\]\.poll_interval: Input should be a valid number"),
    ("out-of-range", "a poll interval of 0 s", PAGE + "poll_interval = 0\n",
     r"pages\[0\]\.poll_interval: Input should be greater than or equal to 1"),
    ("bad-url", "a page URL that is not http(s)", '[[pages]]\nname = "openai"\nbase_url = "ftp://status.openai.com"\n',
     r"pages\[0\]\.base_url: must be an http\(s\) URL"),
    ("bad-regex", "a tag rule whose regex does not compile", PAGE + "[tags.uploads]\npatterns = ['(unclosed']\n",
     r"tags\.uploads.*invalid regex"),
    ("not-toml", "a file that is not TOML", "pages = [\n", r"not valid TOML"),
    ("both-urls", "a notifier with both url and url_env",
     PAGE + f'[[notifiers]]\nname = "hook"\nurl = "json://alice:{SECRET}@127.0.0.1/x"\nurl_env = "HOOK_URL"\n',
     r"notifiers\[0\]: set exactly one of url or url_env"),
]


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output     # one line, nothing else
    return lines[0]


@pytest.mark.parametrize("case,what,text,reason", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_invalid_config_refuses_to_start(tmp_path, case, what, text, reason):
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    r = run(cfg, "poll", ok=None)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    line = error_line(r.output)
    assert line.startswith(f"Error: {cfg}: "), line                       # the file
    assert re.search(reason, line), line                                  # the key and the reason
    assert SECRET not in r.output
    assert not (tmp_path / "m.db").exists()
    faults_report.record("input", f"1{CONFIGS.index(next(c for c in CONFIGS if c[0] == case)):02d}", [
        f"`{case}`", what, f"exit 1, one line: `{line.replace(str(cfg), '<file>')}`"])


def test_the_service_refuses_to_start_on_an_invalid_config(tmp_path):
    """`monitor run` (which would otherwise run until stopped) exits at once: unknown key, unknown scheme."""
    out = []
    for text in (PAGE + "colour = 1\n",
                 PAGE + f'[[notifiers]]\nname = "hook"\nurl = "nosuchscheme://alice:{SECRET}@example.org/x"\n'):
        cfg = tmp_path / "config.toml"
        cfg.write_text(text)
        cfg.chmod(0o600)
        p = subprocess.run([MONITOR, "--config", str(cfg), "run"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
        line = error_line(p.stderr)
        assert line.startswith(f"Error: {cfg}: ") or line.startswith("Error: notifiers[0].url: "), line
        assert SECRET not in p.stderr
        out.append(line.replace(str(cfg), "<file>"))
    assert "unknown key" in out[0] and "apprise does not know this URL (scheme 'nosuchscheme')" in out[1], out
    faults_report.record("input", "120", [
        "`run-refuses`", "`monitor run` with an unknown key; with a notifier URL of an unknown apprise scheme "
        "(holding a password)",
        f"exits 1 at once, one line each: `{out[0]}`; `{out[1]}` (the URL is not quoted)"])


def test_the_service_that_cannot_migrate_its_store_says_why_in_one_line(tmp_path):
    """`monitor run` migrates a new store in a child process (so that the service never holds Alembic): the
    child's failure still reaches the user as one line, exit 1, and a store it cannot read is left as it was."""
    store = tmp_path / "m.db"
    store.write_bytes(b"not a database, but someone's file " * 200)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{store}"\n' + PAGE)
    p = subprocess.run([MONITOR, "--config", str(cfg), "run"], capture_output=True, text=True, timeout=60)
    # the first line says where the store is, the second why it cannot be used
    assert (p.returncode, p.stdout, p.stderr.splitlines()) == (
        1, "", [f"INFO monitor: store: {store} (SQLite)", "Error: database: file is not a database"])
    assert store.read_bytes() == b"not a database, but someone's file " * 200
    cfg.write_text('[database]\nurl = "sqlite:////proc/no/such/dir/m.db"\n' + PAGE)
    p = subprocess.run([MONITOR, "--config", str(cfg), "run"], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr.splitlines()[1:]) == (
        1, ["Error: cannot open the store /proc/no/such/dir/m.db: No such file or directory"])


BAD_ARGS = [
    ("poll", "--bogus"),
    ("history", "--limit", "0"),
    ("history", "--since", "yesterday"),
    ("nosuchcommand",),
]


def test_bad_arguments_are_usage_errors(tmp_path):
    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"})
    for args in BAD_ARGS:
        r = run(cfg, *args, ok=None)
        assert r.exit_code == 2, (args, r.output)
        assert "Usage: " in r.output and "Error: " in r.output and "Traceback" not in r.output, r.output
    faults_report.record("input", "130", [
        "`bad-arguments`", ", ".join(f"`monitor {' '.join(a)}`" for a in BAD_ARGS),
        "exit 2 with the usage line and one `Error:` line naming the bad option or value"])


VERDICT_BAD_ARGS = [
    (["status", "extra"], "UNKNOWN: usage: Got unexpected extra argument (extra)"),
    (["status", "--jsn"], "UNKNOWN: usage: No such option '--jsn'. Did you mean '--json'?"),
    (["diagnose", "--eror", "x"], "UNKNOWN: usage: No such option '--eror'. Did you mean '--error'?"),
    (["--config", "{dir}", "status"], "UNKNOWN: usage: Invalid value for '--config': File '{dir}' is a directory."),
]


def test_usage_errors_of_status_and_diagnose_exit_3(tmp_path):
    """A monitoring system reads exit 2 as "major incident": `status` and `diagnose` exit 3 (unknown) for a
    usage error too, through the real console script, saying why in the one line a Nagios check shows."""
    cfg = write_config(tmp_path, {"openai": "http://127.0.0.1:9"})
    for args, line in VERDICT_BAD_ARGS:
        args = [a.format(dir=tmp_path) for a in args]
        full = args if args[0] == "--config" else ["--config", str(cfg), *args]
        p = subprocess.run([MONITOR, *full], capture_output=True, text=True, timeout=60)
        assert (p.returncode, p.stdout.splitlines()) == (3, [line.format(dir=tmp_path)]), (args, p.stdout, p.stderr)
    p = subprocess.run([MONITOR, "--config", str(cfg), "status", "--json", "--bogus"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 3 and json.loads(p.stdout)["verdict"] == "unknown", p.stdout


def secret_config(tmp_path: Path, page_url: str, hook_port: int, level: str = "debug") -> Path:
    extra = (f'[log]\nlevel = "{level}"\n\n[notify]\nretry_base_seconds = 0.01\nretry_max_seconds = 0.05\n\n'
             f'[[notifiers]]\nname = "hook"\nurl = "json://alice:{SECRET}@127.0.0.1:{hook_port}/hook"\n')
    return write_config(tmp_path, {"openai": page_url}, extra=extra)


def test_config_with_secrets_readable_by_others_is_warned_about(tmp_path):
    cfg = secret_config(tmp_path, "http://127.0.0.1:9", free_port(), level="info")
    cfg.chmod(0o644)

    def history():
        p = subprocess.run([MONITOR, "--config", str(cfg), "history", "--json"], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0 and json.loads(p.stdout) == [] and SECRET not in p.stdout + p.stderr, p
        return [ln for ln in p.stderr.splitlines() if ln.strip()]

    warning = history()
    assert len(warning) == 1 and "readable by other users" in warning[0], warning
    cfg.chmod(0o600)
    assert history() == []
    faults_report.record("input", "140", [
        "`readable-secrets`", "a config holding a notifier password, mode 644",
        f"every command warns on stderr: `{warning[0].replace(str(cfg), '<file>')}`; nothing at mode 600"])


def test_no_secret_in_logs_output_store_or_errors(tmp_path, openai_history):
    """A notifier URL with a password, a failing and then an unreachable webhook, debug logging: the password
    appears nowhere - not in any output of any command, not in the store."""
    inc = next(i for i in openai_history if i.id == UPLOADS_2024)
    with ReplayServer(StatuspagePage(openai_history, api_limit=10, feed_limit=10),
                      now=inc.updates[0].at + timedelta(minutes=1)) as srv, HTTPServer() as web:
        web.mode = "error"
        cfg = secret_config(tmp_path, srv.base_url, web.port)
        cfg.chmod(0o600)
        outputs = [run(cfg, "poll", ok=None)]                   # the upload incident opens: delivery fails
        assert web.requests, outputs[0].output
        assert any("HTTP" in o.output or "failed" in o.output for o in outputs)
        web.server.shutdown()
        web.server.server_close()                               # now the webhook is gone altogether
        srv.now = inc.updates[1].at + timedelta(minutes=1)
        outputs.append(run(cfg, "poll", ok=None))
        for args in (("show", UPLOADS_2024), ("show", UPLOADS_2024, "--json"), ("history", "--json"),
                     ("status", "--json"), ("status",)):
            outputs.append(run(cfg, *args, ok=None))
        p = subprocess.run([MONITOR, "--config", str(cfg), "poll"], capture_output=True, text=True, timeout=60)
    text = "\n".join(o.output for o in outputs) + p.stdout + p.stderr
    assert "Traceback" not in text
    assert "DEBUG" in text                                      # debug logging was really on
    # the failures were reported, naming the notifier and why (so the scan below looked at real error text)
    assert "via hook failed (attempt 1)" in text and "Internal server error" in text, text
    assert "opened -> hook: pending (FAILURE: A Connection error occurred" in text, text
    assert SECRET not in text
    con_dump = "\n".join(db_rows(tmp_path / "m.db", "select coalesce(last_error, '') from outbox")[0]) + \
        "\n".join(e or "" for e, in db_rows(tmp_path / "m.db", "select error from deliveries"))
    assert db_rows(tmp_path / "m.db", "select count(*) from deliveries where ok = 0")[0][0] >= 1
    assert SECRET not in con_dump
    files = sorted(tmp_path.glob("m.db*"))                       # the store, its WAL and shared memory
    assert [f.name for f in files if f.name in ("m.db", "m.db-wal")] == ["m.db", "m.db-wal"]
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    faults_report.record("input", "150", [
        "`no-secret-leaks`", "a notifier URL with a password; the webhook answers 500, then is gone; "
        "`[log] level = \"debug\"`",
        "the password is in no output of `poll`, `show`, `history`, `status`, in no log line (debug included) "
        "and not in the store's recorded delivery errors"])
