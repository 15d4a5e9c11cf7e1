"""Load and validate the TOML config into frozen settings. Every error names the file, the key and the reason."""
from __future__ import annotations

import functools
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

# pydantic looks for plugins among every installed package's entry points at import (about 14 ms here); the
# monitor uses none
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.records import LOG_NOTIFIER, UPLOAD_TAGS

APP = "openai-status-monitor"
EVENTS = ("opened", "updated", "resolved")


class ConfigError(Exception):
    """A config problem, as one line: `file: key: reason`."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# The pip package of a DBAPI module whose name is not the package's.
_DBAPI_PACKAGES = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "psycopg2": "psycopg2-binary",
                   "mysql": "mysql-connector-python", "mysql.connector": "mysql-connector-python"}


def _install_hint(drivername: str, module: str | None) -> str:
    """What to install for a database driver that is missing, e.g. `pip install mysqlclient`."""
    extra = f"pip install '{APP}[postgres]'"     # psycopg 3: postgresql+psycopg:// (postgresql:// on SQLAlchemy 2.1)
    if drivername.startswith("postgresql") and (module or "psycopg").partition(".")[0] == "psycopg":
        return extra
    package = _DBAPI_PACKAGES.get(module or "", module) or drivername.partition("+")[2] or drivername
    if drivername.startswith("postgresql"):
        return f"pip install {package}, or use postgresql+psycopg:// and {extra}"
    return f"pip install {package}"


def http_url(value: str, example: str):
    """`value` split (urlsplit) when it is an http(s) URL with a host; else ValueError naming `example`."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as {example}")
    return parts


class DatabaseSettings(_Frozen):
    url: str = "sqlite:///monitor.db"

    @field_validator("url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        """A SQLite or PostgreSQL URL whose driver (DBAPI module) is installed: the guarantees (one leader,
        serialised polls, claimed deliveries) are built and tested on those two only. A SQLite file URL needs
        only the standard library's sqlite3 and is accepted as it is: the read commands never import
        SQLAlchemy. SQLite must be 3.35 or newer (UPDATE ... RETURNING claims outbox rows)."""
        from monitor.db import SQLITE_FILE_PREFIXES, check_sqlite_version

        if v.startswith("sqlite"):
            check_sqlite_version()
        if v.startswith(SQLITE_FILE_PREFIXES):
            return v
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError("not a database URL such as sqlite:///monitor.db") from None
        try:
            dialect = url.get_dialect()
        except NoSuchModuleError:
            raise ValueError(f"unknown database driver {url.drivername!r}") from None
        if dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"{dialect.name!r} is not supported: use SQLite (sqlite:////path/monitor.db) "
                             "or PostgreSQL (postgresql+psycopg://user@host/db)")
        import_dbapi = getattr(dialect, "import_dbapi", None) or dialect.dbapi   # SQLAlchemy 2.x, else 1.4
        try:
            import_dbapi()
        except ImportError as exc:
            raise ValueError(f"the driver for {url.drivername!r} is not installed "
                             f"({_install_hint(url.drivername, exc.name)})") from None
        return v


class PageSettings(_Frozen):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    base_url: str
    kind: str = Field("auto", description="auto, or a page kind of monitor.sources.KINDS")
    poll_interval: float = Field(60, ge=1, le=86400)
    history_days: int = Field(365, ge=0, le=3650)
    deadline: float = Field(30, gt=0, le=600, description="seconds a whole poll may take")
    max_response_mb: float = Field(10, gt=0, le=1024)
    proxy_host: str | None = None
    surfaces: tuple[str, ...] | None = Field(None, description="watched surfaces; None: every known surface")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from monitor.sources import KINDS

        if v != "auto" and v not in KINDS:
            raise ValueError(f"must be auto or one of {', '.join(sorted(KINDS))}")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        http_url(v, "https://status.openai.com")
        return v.rstrip("/")

    @property
    def host(self) -> str:
        return self.proxy_host or urlsplit(self.base_url).netloc


class NotifierSettings(_Frozen):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str | None = None
    url_env: str | None = None
    tags: tuple[str, ...] = UPLOAD_TAGS
    events: tuple[Literal["opened", "updated", "resolved"], ...] = EVENTS
    min_impact: Literal["none", "minor", "major", "critical"] = "none"
    surfaces: tuple[str, ...] | None = None     # broad outages of these surfaces; None: every watched one

    @model_validator(mode="after")
    def _one_url(self):
        if bool(self.url) == bool(self.url_env):
            raise ValueError("set exactly one of url or url_env")
        return self

    def resolved_url(self) -> str:
        """The apprise URL; from the environment when url_env is set."""
        if self.url:
            return self.url
        value = os.environ.get(self.url_env or "", "")
        if not value:
            raise ConfigError(f"notifier {self.name}: environment variable {self.url_env} is not set")
        return value

    def wants(self, tags: set[str], event: str, impact: str, surfaces: frozenset[str] = frozenset()) -> bool:
        """This event of an incident with these tags, impact and (watched) broad-outage surfaces."""
        if event not in self.events:
            return False
        broad = surfaces if self.surfaces is None else surfaces.intersection(self.surfaces)
        if "*" not in self.tags and not tags.intersection(self.tags) and not broad:
            return False
        from monitor.records import impact_rank

        return impact_rank(impact) >= impact_rank(self.min_impact)


class NotifySettings(_Frozen):
    give_up_after_hours: float = Field(24, gt=0, le=24 * 30)
    retry_base_seconds: float = Field(30, gt=0, le=3600)
    retry_max_seconds: float = Field(1800, gt=0, le=86400)
    max_text_chars: int = Field(1500, ge=100, le=20000)


class LogSettings(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `:port` or `port` as (host, port); the host is loopback unless named."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = "", value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, such as [::1]:8787")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port with a port from 1 to 65535, such as 127.0.0.1:8787")
    if host and not all(c.isalnum() or c in ".-:" for c in host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return host or "127.0.0.1", int(port)


class HttpSettings(_Frozen):
    """The service's read-only web listener (the page, /metrics, /status.json, /healthz)."""
    listen: str = "127.0.0.1:8787"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        parse_listen(v)
        return v

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class ProbeSettings(_Frozen):
    """The opt-in probe of the OpenAI Files API (see monitor/probe.py). The key only comes from the environment."""
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    base_url: str = "https://api.openai.com/v1"
    interval: float = Field(300, ge=1, le=86400, description="seconds between probes")
    failures_to_warn: int = Field(2, ge=1, le=100)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = http_url(v, "https://api.openai.com/v1")
        if parts.username or parts.password or parts.query:
            raise ValueError("must not carry credentials or a query: the key comes from api_key_env")
        return v.rstrip("/")

    def api_key(self, source: str) -> str:
        """The key from the environment; a one-line ConfigError naming the key when it is not set."""
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise ConfigError(f"{source}: probe.api_key_env: environment variable {self.api_key_env} is not set")
        return value


class Settings(_Frozen):
    database: DatabaseSettings = DatabaseSettings()
    pages: tuple[PageSettings, ...] = (PageSettings(name="openai", base_url="https://status.openai.com"),)
    tags: dict[str, dict] = Field(default_factory=dict)
    surfaces: dict[str, dict] = Field(default_factory=dict)
    notifiers: tuple[NotifierSettings, ...] = ()
    notify: NotifySettings = NotifySettings()
    log: LogSettings = LogSettings()
    http: HttpSettings | None = None
    probe: ProbeSettings | None = None
    source: str = Field("built-in defaults", exclude=True)

    @field_validator("pages")
    @classmethod
    def _unique_pages(cls, v):
        names = [p.name for p in v]
        if not v:
            raise ValueError("at least one page is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"page names must be unique: {names}")
        return v

    @field_validator("notifiers")
    @classmethod
    def _unique_notifiers(cls, v):
        names = [n.name for n in v]
        if len(set(names)) != len(names) or LOG_NOTIFIER in names:
            raise ValueError(f"notifier names must be unique and not 'log': {names}")
        return v

    @model_validator(mode="after")
    def _notifiers_follow_tags(self):
        """A notifier without its own `tags` hears about every upload-related tag, the config's included."""
        if any(t not in UPLOAD_TAGS for t in self.tags):
            fixed = tuple(n if "tags" in n.model_fields_set else n.model_copy(update={"tags": self.upload_tags})
                          for n in self.notifiers)
            object.__setattr__(self, "notifiers", fixed)
        return self

    @property
    def upload_tags(self) -> tuple[str, ...]:
        """What counts as upload-related everywhere (verdict, history, messages): the built-in tags and every
        tag the config's [tags.<tag>] tables add."""
        return UPLOAD_TAGS + tuple(t for t in self.tags if t not in UPLOAD_TAGS)

    @functools.cached_property
    def surface_rules(self):
        """The broad-outage rules: the built-in ones and the config's [surfaces.<name>] tables."""
        from monitor.surfaces import build_surface_rules

        return build_surface_rules(self.surfaces)

    @property
    def known_surfaces(self) -> tuple[str, ...]:
        from monitor.surfaces import SURFACES

        return SURFACES + tuple(s for s in self.surfaces if s not in SURFACES)

    def watched_surfaces(self, page: str) -> frozenset[str]:
        """The surfaces whose broad outages make `page`'s verdict wait and reach notifiers (default: all)."""
        ps = next((p for p in self.pages if p.name == page), None)
        if ps is None or ps.surfaces is None:
            return frozenset(self.known_surfaces)
        return frozenset(ps.surfaces)

    def page(self, name: str) -> PageSettings:
        for p in self.pages:
            if p.name == name:
                return p
        raise ConfigError(f"no page named {name!r} (configured: {', '.join(p.name for p in self.pages)})")

    def database_url(self) -> str:
        return resolve_database_url(self.database.url)


def state_dir() -> Path:
    """$STATE_DIRECTORY when systemd sets it, else the user data dir."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP, appauthor=False))


def resolve_database_url(url: str) -> str:
    """Relative SQLite paths live in the state directory (under systemd the working directory is /)."""
    m = re.match(r"sqlite(\+\w+)?:///(?!/)", url)
    if m and ":memory:" not in url:
        base = state_dir()
        base.mkdir(parents=True, exist_ok=True)
        return m.group(0) + str(base / url[m.end():])
    return url


def _loc(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load(path: str | os.PathLike | None = None, *, warn=None) -> Settings:
    """Settings from `path` (or $MONITOR_CONFIG); built-in defaults when neither is given."""
    path = path or os.environ.get("MONITOR_CONFIG") or None
    if path is None:
        return Settings()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    if "source" in data:   # the file's path, not a key of the file (it would clash with the argument below)
        raise ConfigError(f"{p}: source: unknown key")
    try:
        settings = Settings(**data, source=str(p))
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{p}: {_loc(err['loc'])}: {msg}{more}") from None
    try:
        from monitor.tags import build_rules

        build_rules(settings.tags)
        settings.surface_rules
    except ValueError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    known = set(settings.known_surfaces)
    for where, names in ([(f"pages[{i}].surfaces", ps.surfaces) for i, ps in enumerate(settings.pages)]
                         + [(f"notifiers[{i}].surfaces", n.surfaces) for i, n in enumerate(settings.notifiers)]):
        unknown = [n for n in names or () if n not in known]
        if unknown:
            raise ConfigError(f"{p}: {where}: unknown surface {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if warn and any(n.url for n in settings.notifiers):
        try:
            if p.stat().st_mode & stat.S_IROTH:
                warn(f"{p} holds notifier URLs (secrets) and is readable by other users; chmod 600 it "
                     "or use url_env")
        except OSError:
            pass
    return settings

