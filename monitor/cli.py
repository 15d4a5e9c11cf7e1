"""The `monitor` command: a thin layer over the library. Each command loads the settings, calls one library
function and prints a table or, with --json, JSON. Expected failures are one line, never a traceback."""
from __future__ import annotations

import json
import logging
import os
import sys

import click

from monitor.records import cap, now_utc, short_iso as short

log = logging.getLogger("monitor")


def setup_logging(level: str = "info") -> None:
    """One line per event on stderr, level first (journald keeps its own timestamps)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "alembic", "apscheduler.executors", "apscheduler.scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("apprise").setLevel(max(logging.INFO, root.level))  # DEBUG would print secrets


class Ctx:
    def __init__(self, config_path):
        self.config_path = config_path
        self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            from monitor import config

            warnings: list[str] = []
            self._settings = config.load(self.config_path, warn=warnings.append)
            setup_logging(self._settings.log.level)
            for message in warnings:  # only now that logging is set up
                log.warning("%s", message)
        return self._settings

    def sending_settings(self):
        """The settings of a command that sends messages (`run`, `notify-test`, `check-config`, and `poll` when a
        message is due): the notifier URLs checked too, with the same one-line errors as the rest of the
        config. Only these load apprise: the read commands never do, whatever notifiers are configured, and
        neither does a poll with nothing to send (run from cron every minute, it stays light)."""
        settings = self.settings
        if settings.notifiers:
            from monitor.config import ConfigError
            from monitor.notify.channels import validate

            try:
                validate(settings.notifiers)
            except ConfigError as exc:
                raise ConfigError(f"{settings.source}: {exc}") from None
        return settings

    def engine(self, *, readonly: bool = False, migrate_in_child: bool = False):
        """The store, migrated to the shipped schema first."""
        from monitor import db, migrate

        url = self.settings.database_url()
        if readonly:     # a store at the shipped schema is read as it is (by a user who may only read it, too)
            eng = db.make_engine(url, readonly=True)
            if migrate.current_revision(eng) == migrate.HEAD_REVISION:
                return eng
            eng.dispose()
        eng = db.make_engine(url)
        migrate.upgrade(url, eng, in_child=migrate_in_child)
        if readonly:
            eng.dispose()
            eng = db.make_engine(url, readonly=True)
        return eng

    def reader(self):
        """A Reader on the store (plain SQL, no ORM): one version query when the store is at the shipped
        schema, else the store is migrated first."""
        from monitor import migrate
        from monitor.reader import Reader

        url = self.settings.database_url()
        reader = Reader.open(url)
        if reader.revision() != migrate.HEAD_REVISION:
            reader.close()
            self.engine().dispose()
            reader = Reader.open(url)
        return reader

    def store(self):
        """The store for a poll (db.Store): on a SQLite file already at the shipped schema, checked and used with
        the standard library alone, SQLAlchemy loaded only if the poll has something to write; else migrated
        first, through SQLAlchemy."""
        from monitor.db import Store, plain_sqlite_path

        url = self.settings.database_url()
        if plain_sqlite_path(url) is None:
            return Store(url, engine=self.engine())
        self.reader().close()      # the schema checked with one query (and migrated when behind)
        return Store(url)

    def rules(self):
        from monitor.tags import build_rules

        return build_rules(self.settings.tags)


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f):
    """--json on every listing command (one decorator, like sqlite-utils' output options)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def emit_json(data) -> None:
    """Indented for a person at a terminal, compact for a script (20,000 incidents print twice as fast)."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(data, indent=indent, ensure_ascii=False))


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)




def parse_date(_ctx, _param, value):
    from monitor.records import parse_iso

    if value is None:
        return None
    d = parse_iso(value)
    if d is None:
        raise click.BadParameter(f"{value!r} is not a date like 2025-01-01")
    return d


class MonitorGroup(click.Group):
    """Turns the failures users can cause or fix (config, store, files) into one-line errors, exit 1."""

    def invoke(self, ctx):
        from monitor.config import ConfigError
        from monitor.db import StoreError, describe_error

        try:
            return super().invoke(ctx)
        except (ConfigError, StoreError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")) from None
        except Exception as exc:
            message = describe_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=MonitorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="MONITOR_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (TOML). Default: $MONITOR_CONFIG, else built-in defaults watching status.openai.com.")
@click.version_option(package_name="openai-status-monitor")
@click.pass_context
def cli(ctx, config_path):
    """Watch status pages for file-upload incidents: should you wait, or troubleshoot locally?"""
    ctx.obj = Ctx(config_path)


@cli.command()
@click.option("--page", "pages", multiple=True, help="Only this page (repeatable).")
@click.option("--force", is_flag=True,
              help="Poll now, even while backing off after failed polls or while the page's Retry-After runs.")
@pass_ctx
def poll(c: Ctx, pages, force):
    """Poll every configured page once, store what changed, deliver messages, then exit.

    While no `monitor run` leads, this process leads for its duration: messages a killed process had claimed
    are sent at once. Exits 0 when at least one source of every page answered. A page that is backed off
    (after failed polls) or asked us to wait (Retry-After) is skipped, exit 1, unless --force."""
    import asyncio

    from monitor.leader import LeaderLock
    from monitor.notify.outbox import any_due
    from monitor.poll import poll_all

    settings, store = c.settings, c.store()
    lock = LeaderLock(settings.database_url())
    try:
        if lock.hold():
            lock.take_over(store, service=False)
        results = asyncio.run(poll_all(settings, store, c.rules(), pages=list(pages) or None, force=force))
        if any_due(store, now_utc()):   # nothing due: no channel, renderer or apprise is loaded
            from monitor.notify.deliver import deliver_due

            c.sending_settings()        # the notifier URLs, checked before the first message is sent
            deliver_due(settings, store.engine)
    finally:
        lock.release()
        store.close()
    for r in results:
        if r.ok:
            click.echo(r.summary())
    failed = [r for r in results if not r.ok]
    if failed:
        hint = " (--force polls anyway)" if any(r.skipped for r in failed) else ""
        raise click.ClickException("; ".join(r.summary() for r in failed) + hint)


@cli.command()
@click.option("--all", "all_incidents", is_flag=True, help="Every incident, not only upload-related ones.")
@click.option("--broad", is_flag=True, help="Also broad outages of ChatGPT or the API (any surface).")
@click.option("--since", callback=parse_date, help="Only incidents that started on or after this date (UTC).")
@click.option("--tag", "tags", multiple=True, help="Only incidents with this tag (repeatable).")
@click.option("--page", help="Only this page.")
@click.option("--limit", type=click.IntRange(1), help="At most this many incidents.")
@json_option
@pass_ctx
def history(c: Ctx, all_incidents, broad, since, tags, page, limit, as_json):
    """Past incidents, newest first: by default the upload-related ones (with --broad, broad outages too)."""
    from monitor import queries

    reader = c.reader()
    try:
        rows = queries.history(reader, tags=list(tags), all_incidents=all_incidents, since=since, page=page, limit=limit,
                         upload_tags=c.settings.upload_tags, broad=broad)
    finally:
        reader.close()
    if as_json:
        return emit_json(rows)
    if not rows:
        return click.echo("No matching incidents stored." + ("" if all_incidents else " (Try --all.)"))
    click.echo(table([[short(r["started_at"]), r["page"], r["status"], r["impact"], cap(r["title"], 60),
                       ",".join(r["tags"] + [f"down:{x}" for x in r["surfaces"]]) or "-", str(r["messages_sent"])]
                      for r in rows],
                     ["started (UTC)", "page", "status", "impact", "title", "tags", "sent"]))


@cli.command()
@click.argument("incident_id")
@click.option("--page", help="The page, when two pages share the id.")
@json_option
@pass_ctx
def show(c: Ctx, incident_id, page, as_json):
    """One incident: its whole timeline, components, why it was tagged, and what was sent."""
    from monitor import db
    from monitor import queries

    with db.transaction(c.engine(readonly=True)) as s:
        row = queries.find_incident(s, incident_id, page)
        if row is None:
            raise click.ClickException(f"no stored incident with id {incident_id!r}")
        d = queries.incident_detail(s, row)
    if as_json:
        return emit_json(d)
    out = [f"{d['title']}", f"  page {d['page']}  id {d['id']}  {d['url'] or ''}".rstrip(),
           f"  status {d['status']}  impact {d['impact']}  started {short(d['started_at'])}  "
           f"resolved {short(d['resolved_at'])}  first seen {short(d['first_seen_at'])}",
           f"  sources: {', '.join(d['sources']) or '-'}"]
    if d["probe_first_failure_at"]:
        from monitor.verdict import age_words

        out.append(f"  probe: uploads failed from here since {short(d['probe_first_failure_at'])}, "
                   f"{age_words(d['probe_lead_seconds'])} before the page's incident was first seen here "
                   f"(the page gives {short(d['started_at'])} as its start)")
    out.append("Components: " + (", ".join(f"{x['name']} ({x['impact'] or 'affected'})" for x in d["components"])
                                 or "none listed"))
    out.append("Tags:" + ("" if d["tags"] else " none"))
    for t in d["tags"]:
        out.append(f"  {t['tag']}: rule {t['rule']} matched {t['field']}: \"{t['text']}\"")
    out.append("Broad outage of:" + ("" if d["surfaces"] else " none"))
    for x in d["surfaces"]:
        out.append(f"  {x['surface']}: rule {x['rule']} matched {x['field']}: \"{x['text']}\"")
    out.append("Updates:")
    for u in d["updates"]:
        out.append(f"  {short(u['published_at'])}  {u['status'] or '-'}  [{u['source']}]")
        for line in (u["body"] or "(no text)").splitlines():
            out.append(f"      {line}")
    out.append("Messages:" + ("" if d["messages"] else " none"))
    for m in d["messages"]:
        out.append(f"  {m['event']} -> {m['notifier']}: {m['state']}"
                   + (f" at {short(m['sent_at'])}" if m["sent_at"] else "")
                   + (f" ({m['last_error']})" if m["last_error"] and m["state"] != "sent" else ""))
    click.echo("\n".join(out))


@cli.command()
@click.option("--since", callback=parse_date, help="How far back (default: history_days of each page).")
@click.option("--page", "pages", multiple=True, help="Only this page (repeatable).")
@pass_ctx
def backfill(c: Ctx, since, pages):
    """Fetch older incidents the page still offers, with their full timelines (no messages sent). A page whose
    kind offers no more than its recent incidents (Atlassian Statuspage) is skipped with a note."""
    import asyncio
    from datetime import timedelta

    from monitor.poll import client, run_backfill

    settings, engine, rules = c.settings, c.engine(), c.rules()

    async def go():
        async with client() as http:
            out = []
            for ps in [settings.page(n) for n in pages] if pages else settings.pages:
                start = since or now_utc() - timedelta(days=ps.history_days)
                out.append(await run_backfill(settings, ps, engine, http, rules, since=start, details=True))
            return out

    results = asyncio.run(go())
    from monitor.sources import kind as page_kind

    for r in results:
        if not r.ok and r.kind and not page_kind(r.kind).history:   # nothing more to fetch: a note, not a failure
            r.skipped = "this page kind offers no history beyond its recent incidents"
            click.echo(r.summary())
            continue
        click.echo(f"{r.page}: " + ("ok" if r.ok else "failed") + (f" ({'; '.join(r.errors)})" if r.errors else "")
                   + (f", {r.new} new, {r.changed} changed" if r.ok else ""))
    failed = [r.page for r in results if not r.ok and not r.skipped]
    if failed:
        raise click.ClickException("backfill failed for " + ", ".join(failed))


@cli.command()
@pass_ctx
def retag(c: Ctx):
    """Apply the current tag rules to every stored incident (after a rule change)."""
    from monitor.retag import retag_all

    changed, total = retag_all(c.engine(), c.rules(), surface_rules=c.settings.surface_rules)
    click.echo(f"{changed} of {total} incidents changed tags")


@cli.group("db")
def db_group():
    """The store."""


@db_group.command("upgrade")
@pass_ctx
def db_upgrade(c: Ctx):
    """Apply the shipped migrations (poll and run do this on start)."""
    from monitor import db, migrate

    url = c.settings.database_url()
    ran = migrate.upgrade(url, db.make_engine(url))
    click.echo(f"{db.safe_url(url)}: " + ("migrated to " if ran else "already at ") + migrate.HEAD_REVISION)


@cli.command()
@pass_ctx
def run(c: Ctx):
    """The service: poll every page on its interval and deliver messages until SIGTERM or SIGINT (exit 0).

    Speaks systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING) when NOTIFY_SOCKET is set."""
    from monitor import db, service

    try:
        settings = c.sending_settings()
        if settings.probe:
            settings.probe.api_key(settings.source)     # a missing key is a config error now, not at the first probe
        url = settings.database_url()
        where = db.sqlite_path(url)
        service.one_line_logs()
        log.info("store: %s", f"{os.path.abspath(where)} (SQLite)" if where else db.safe_url(url))
        service.run(settings, c.engine(migrate_in_child=True), c.rules())
    except KeyboardInterrupt:  # Ctrl-C before the service installed its handlers: nothing to clean up
        sys.exit(130)


@cli.command()
@click.option("--surface", metavar="NAME", help="Answer for one surface: chatgpt or api (or one the config adds).")
@json_option
@pass_ctx
def status(c: Ctx, surface, as_json):
    """Should you wait, or troubleshoot locally? Answers from the store when every page's last good poll is
    younger than two poll intervals, else polls those pages once first.

    Exit codes (monitoring plugins): 0 = no upload-related incident and no broad outage of ChatGPT or the
    API open (troubleshoot locally), 1 = one is open with minor or no impact, 2 = one is open with major or
    critical impact, 3 = unknown (no fresh data: the page cannot be reached, or the store cannot be read).
    With --surface, only that surface's broad outages count (upload-related incidents always do)."""
    from monitor import status as st

    try:
        report = st.gather(lambda: c.settings, c.reader, c.rules, surface)
    except st.StatusFailure as exc:  # never an exit code a monitoring system reads as a verdict
        if as_json:
            emit_json(st.failure_json(str(exc)))
        else:
            click.echo(f"UNKNOWN: {exc}")
        sys.exit(3)
    if as_json:
        emit_json(st.to_json(report))
    else:
        click.echo(st.to_text(report))
    sys.exit(report.verdict.exit_code)


@cli.command()
@click.argument("files", nargs=-1, metavar="[FILE ...]")
@click.option("--error", "error_text", metavar="TEXT", help="The error message ChatGPT showed.")
@json_option
@pass_ctx
def diagnose(c: Ctx, files, error_text, as_json):
    """The verdict of `monitor status`, then each FILE against ChatGPT's upload limits and the error message
    against the wordings users report: likely cause and what to do.

    Exit codes as `monitor status`: 0 = no upload-related incident open (the findings are the answer),
    1 = one is open with minor or no impact, 2 = major or critical (wait, whatever the files or error say),
    3 = unknown (no fresh data); and 2 also when a FILE is missing or unreadable (one line on stderr naming
    it, nothing checked, nothing on stdout)."""
    from monitor import diagnose as dg
    from monitor import status as st

    try:
        d = dg.diagnose(files, error_text, lambda: st.gather(lambda: c.settings, c.reader, c.rules))
    except dg.FileError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    emit_json(dg.to_json(d)) if as_json else click.echo(dg.to_text(d))
    sys.exit(d.exit_code)


@cli.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The HTML file to write.")
@click.option("--since", callback=parse_date, help="Only incidents that started on or after this date (UTC).")
@pass_ctx
def report(c: Ctx, out, since):
    """The service's page as one self-contained HTML file (CSS and chart inline, no script) to mail or publish:
    the verdict from the store, open upload incidents, the history chart and table."""
    from pathlib import Path

    from monitor.web.page import render_from_store

    html = render_from_store(c.settings, c.engine(readonly=True), since=since, report=True)
    Path(out).write_text(html, encoding="utf-8")
    click.echo(f"wrote {out}")


@cli.command()
@click.option("--all", "include_sent", is_flag=True, help="Include messages already sent.")
@click.option("--limit", type=click.IntRange(1), default=200, show_default=True)
@json_option
@pass_ctx
def outbox(c: Ctx, include_sent, limit, as_json):
    """Messages pending or failed (what the monitor still has to tell, or gave up on)."""
    from monitor import db
    from monitor import queries

    with db.transaction(c.engine(readonly=True)) as s:
        rows = queries.outbox(s, include_sent=include_sent, limit=limit)
    if as_json:
        return emit_json(rows)
    if not rows:
        return click.echo("Nothing pending or failed." if not include_sent else "No messages.")
    click.echo(table([[str(r["id"]), r["state"], r["event"], r["notifier"], str(r["attempts"]),
                       short(r["next_attempt_at"] if r["state"] == "pending" else r["sent_at"]),
                       cap(r["key"], 50), cap(r["last_error"] or "", 60)] for r in rows],
                     ["id", "state", "event", "notifier", "tries", "next/sent (UTC)", "incident", "last error"]))


@cli.command("notify-test")
@click.option("--notifier", "name", help="Only this notifier (default: every configured one).")
@pass_ctx
def notify_test(c: Ctx, name):
    """Send a sample message through each channel and report success or the error, per channel."""
    from monitor.notify.deliver import send_test

    results = send_test(c.sending_settings(), name)
    for notifier, ok, error in results:
        click.echo(f"{notifier}: " + ("sent" if ok else f"FAILED: {error}"))
    if not all(ok for _, ok, _ in results):
        raise click.ClickException("some channels failed")


@cli.command("check-config")
@pass_ctx
def check_config(c: Ctx):
    """Check the whole config, notifier URLs included (as `run` does at start), and say what it configures."""
    settings = c.sending_settings()
    notifiers = ", ".join(n.name for n in settings.notifiers) or "none (messages go to the log)"
    click.echo(f"{settings.source}: OK: pages {', '.join(p.name for p in settings.pages)}; notifiers {notifiers}; "
               f"store {settings.database.url}" + ("; probe on" if settings.probe else ""))


# Commands a monitoring system runs, whose exit code is a verdict: anything but 0-2 must read as unknown (3)
VERDICT_COMMANDS = ("status", "diagnose")


def _command_word(args: list[str]) -> str | None:
    """The subcommand named in `args` (the first word that is not an option or an option's value)."""
    takes_value = {"--config"}
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point (the `monitor` script). A usage error of `status` or `diagnose` (an unknown option, a
    --config that is a directory) exits 3, unknown, never click's 2 (which would read as "major incident")."""
    args = sys.argv[1:] if args is None else list(args)
    if _command_word(args) not in VERDICT_COMMANDS:
        return cli(args=args, prog_name="monitor")
    try:
        rc = cli.main(args=args, prog_name="monitor", standalone_mode=False)
    except click.UsageError as exc:
        message = f"usage: {exc.format_message()}"
        if "--json" in args:
            from monitor import status as st

            emit_json(st.failure_json(message))
        else:
            click.echo(f"UNKNOWN: {message}")
        sys.exit(3)
    except click.exceptions.Abort:
        sys.exit(3)
    except click.ClickException as exc:   # config or store errors caught above status's own handling
        click.echo(f"UNKNOWN: {exc.format_message()}")
        sys.exit(3)
    sys.exit(rc or 0)
