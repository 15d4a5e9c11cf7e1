"""What a command loads (issue 24): a poll that learns nothing new loads neither SQLAlchemy nor the ORM, the
models, the channels, the renderer or apprise; the read commands never load apprise, whatever notifiers are
configured; and the monitor's modules import each other without a circle. Real `monitor` processes against
the replayed status.openai.com."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_config
from replay import ReplayServer, StatuspagePage

ROOT = Path(__file__).resolve().parent.parent
QUIET = "2024-08-19T12:00:00Z"        # no incident open: nothing to send
# runs the real CLI in this process, then says which of the watched modules it loaded
DRIVER = """
import json, sys
sys.argv = ["monitor"] + json.loads(sys.argv[1])
from monitor.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
watched = WATCHED
print("LOADED=" + json.dumps(sorted(m for m in watched if m in sys.modules)), file=sys.stderr)
"""
HEAVY = ["apprise", "sqlalchemy", "sqlalchemy.orm", "monitor.models", "monitor.store", "monitor.notify.channels",
         "monitor.notify.render", "monitor.notify.deliver", "alembic", "jinja2"]


def loaded(cfg: Path, *args: str) -> tuple[list[str], subprocess.CompletedProcess]:
    code = DRIVER.replace("WATCHED", json.dumps(HEAVY))
    p = subprocess.run([sys.executable, "-c", code, json.dumps(["--config", str(cfg), *args])],
                       capture_output=True, text=True, timeout=120)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("LOADED=")]
    assert line, p.stderr
    return json.loads(line[-1][len("LOADED="):]), p


@pytest.fixture(scope="module")
def world(tmp_path_factory, openai_history):
    tmp = tmp_path_factory.mktemp("lighter")
    with ReplayServer(StatuspagePage(openai_history), now=QUIET) as srv:
        # an ntfy notifier: with apprise's own lookup it would load every plugin (the heaviest case)
        cfg = write_config(tmp, {"openai": srv.base_url},
                           extra='[[notifiers]]\nname = "phone"\nurl = "ntfy://127.0.0.1:9/uploads"\n')
        cfg.chmod(0o600)
        first, p = loaded(cfg, "poll")                  # the first poll writes 50 incidents: the ORM is used
        assert p.returncode == 0, p.stderr
        assert "sqlalchemy.orm" in first and "monitor.store" in first
        yield cfg


def test_a_poll_that_learns_nothing_new_loads_nothing_heavy(world):
    got, p = loaded(world, "poll")
    assert p.returncode == 0 and p.stdout == "openai: ok (2 source(s)), unchanged\n", p.stderr
    assert got == []


@pytest.mark.parametrize("args", [["status"], ["history", "--all"], ["history", "--json"], ["show", "433mh2zvfmww"],
                                  ["outbox"], ["--help"], ["status", "--json"]])
def test_read_commands_never_load_apprise(world, args):
    got, p = loaded(world, *args)
    assert p.returncode == 0, p.stderr
    assert "apprise" not in got and "monitor.notify.channels" not in got, got


def test_report_never_loads_apprise(world, tmp_path):
    got, p = loaded(world, "report", "--out", str(tmp_path / "r.html"))
    assert p.returncode == 0, p.stderr
    assert "apprise" not in got and "monitor.notify.channels" not in got, got


def _module_imports(path: Path, package: str) -> set[str]:
    """The monitor modules `path` imports at module level (not in functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("monitor"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("monitor"):
                    out.add(node.module)
                    out.update(f"{node.module}.{a.name}" for a in node.names)
    visit(tree.body)
    return out


def test_no_import_circle():
    modules = {}
    for path in (ROOT / "monitor").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {name: {m for m in _module_imports(path, "monitor") if m in modules and m != name}
             for name, path in modules.items()}
    assert len(graph) > 30 and graph["monitor.poll"]
    seen, stack, circles = set(), [], []

    def walk(n):
        if n in stack:
            circles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph[n]):
            walk(m)
        stack.pop()

    for n in sorted(graph):
        walk(n)
    assert circles == []


def test_https_is_verified_and_http_loads_no_certificates():
    """The client builds its transports at their first request: an https:// request goes through one that
    checks certificates and host names (httpx's default), an http:// one through one with nothing to check."""
    import asyncio
    import ssl

    import httpx

    from monitor.sources.http import client

    async def main():
        async with client() as c:
            https, http = c._transport, next(iter(c._mounts.values()))
            assert https._transport is None and http._transport is None       # nothing built yet
            for url in ("https://127.0.0.1:9/", "http://127.0.0.1:9/"):
                with pytest.raises(httpx.ConnectError):
                    await c.get(url)
            return https._transport._pool._ssl_context, http._transport._pool._ssl_context

    verified, plain = asyncio.run(main())
    assert (verified.verify_mode, verified.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert plain.verify_mode == ssl.CERT_NONE
