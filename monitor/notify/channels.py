"""Where messages go: one small class per kind of channel (healthchecks style).

``build(message)`` turns a rendered ``Message`` into the exact keyword arguments given to
``apprise.Apprise.notify`` (pure, testable without sending); ``send(built)`` sends them and says whether it
worked, and whether a failure is worth retrying.

* ``SlackChannel`` (``slack://``, ``https://hooks.slack.com/...``): our own Slack mrkdwn, posted verbatim
  (see the class for why neither of apprise's Slack formats is used as is).
* ``EmailChannel`` (``mailto://``, ``mailtos://``): an HTML body declared as HTML, so apprise sends
  ``multipart/alternative`` with a text part it derives from our (escaped) HTML.
* ``GenericChannel`` (any other apprise URL, e.g. ``json://``): plain text declared as text.
* ``LogChannel`` (the ``log`` notifier used when none is configured): one INFO line on ``monitor.notify``.

apprise is imported only when a notifier is configured (``monitor --help`` stays fast), and the URLs of the
schemes above (and ``json://``) are loaded through their own plugin class, so that only that plugin module is
imported (apprise's own lookup imports all ~220 of them, about 17 MB). Secrets: the raw URL
is never logged or stored; ``display`` is apprise's ``url(privacy=True)``; apprise's own logger is kept at
INFO or above (at DEBUG it prints webhook URLs), is silenced while a URL is parsed (its "Unparseable URL"
error quotes the URL in clear), and secret-looking parts of loaded URLs are masked in its log records and
in every error we return.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from monitor.config import ConfigError, NotifierSettings
from monitor.notify.render import Message
from monitor.records import LOG_NOTIFIER

log = logging.getLogger("monitor.notify")

APP_ID = "openai-status-monitor"
SLACK_HOOK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
_NOTIFY_TYPES = {"wait": "warning", "resolved": "success", "test": "info"}


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    permanent: bool = False       # retrying cannot help (bad URL, missing variable, gone notifier)
    error: str | None = None      # one line, secrets masked


# ------------------------------------------------------------------------------------------------ secrets

_SECRET_KEYS = {"token", "key", "apikey", "api_key", "secret", "password", "pass", "pw", "access_token",
                "webhook", "auth", "bearer", "botkey", "user_key", "code"}
_TOKENISH = re.compile(r"^[A-Za-z0-9_\-]{8,}$")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_silence = threading.local()


def secret_parts(url: str) -> set[str]:
    """Parts of an apprise URL that may be credentials: the password, header values, values of token-like
    query keys, and token-looking host/path segments (Slack's T…/B…/xxxx)."""
    out: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            out.update({parts.password, unquote(parts.password)})
        netloc = parts.netloc.rsplit("@", 1)[-1]
        for seg in [netloc.split(":")[0], *parts.path.split("/")]:
            seg = unquote(seg)
            if _TOKENISH.match(seg) and any(c.isdigit() for c in seg) and any(c.isalpha() for c in seg):
                out.add(seg)
        for k, v in parse_qsl(parts.query, keep_blank_values=False):
            if v and (k[:1] in "+-:" or k.lower() in _SECRET_KEYS):
                out.add(v)
    except ValueError:
        pass
    return {s for s in out if len(s) >= 4}


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every known secret replaced by ****."""
    with _secrets_lock:
        known = set(_secrets)
    known.update(secrets or ())
    for s in sorted(known, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "****")
    return text


class _AppriseLogGuard(logging.Filter):
    """On the "apprise" logger: drops records while this thread parses a URL, masks known secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_silence, "on", False):
            return False
        with _secrets_lock:
            if not _secrets:
                return True
        msg = record.getMessage()
        clean = scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


_guard = _AppriseLogGuard()


def quiet_apprise_logging() -> None:
    """apprise's logger at INFO or above (DEBUG prints full webhook URLs and json:// headers), and the
    guard installed. Also urllib3's, whose DEBUG lines carry request paths (Slack's tokens)."""
    for name in ("apprise", "urllib3"):
        lg = logging.getLogger(name)
        if lg.level < logging.INFO:           # NOTSET (0) would inherit a DEBUG root
            lg.setLevel(logging.INFO)
    lg = logging.getLogger("apprise")
    if _guard not in lg.filters:
        lg.addFilter(_guard)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


# The plugin classes of the schemes this project words its messages for, loaded on their own. apprise's own
# lookup (Apprise.add(url), `scheme in NotificationManager()`) imports every one of its ~220 plugin modules
# first: about 17 MB of a daemon's memory for the two or three it will use.
_PLUGINS = {
    "slack": ("apprise.plugins.slack", "NotifySlack"),
    "mailto": ("apprise.plugins.email", "NotifyEmail"),
    "mailtos": ("apprise.plugins.email", "NotifyEmail"),
    "json": ("apprise.plugins.custom_json", "NotifyJSON"),
    "jsons": ("apprise.plugins.custom_json", "NotifyJSON"),
}


def _instantiate(url: str, asset):
    """The apprise plugin object for `url`, built from its own plugin class as Apprise.instantiate() would
    (parse_url, or parse_native_url for a https://hooks.slack.com URL; the class's and the object's
    `enabled`), or None when the scheme is not one of ours or the plugin refuses the URL."""
    import importlib

    scheme = _scheme(url)
    native = scheme in ("http", "https")
    if native:
        if channel_class(url) is not SlackChannel:
            return None
        entry = _PLUGINS["slack"]
    else:
        entry = _PLUGINS.get(scheme)
        if entry is None:
            return None
    cls = getattr(importlib.import_module(entry[0]), entry[1])
    url = url.replace("/#", "/%23")    # as apprise's url_to_dict does
    results = cls.parse_native_url(url) if native else cls.parse_url(url)
    if not results or not cls.enabled:
        return None
    results.update(tag=set(), asset=asset)
    server = cls(**results)
    return server if server.enabled else None


def _load(url: str):
    """An apprise.Apprise holding `url`, or None when apprise cannot load it (nothing logged either way).
    The schemes of _PLUGINS load only their own plugin module; any other URL, or one its plugin refuses,
    goes through apprise's own lookup (every plugin), so that what is accepted stays apprise's call."""
    import apprise

    quiet_apprise_logging()
    asset = apprise.AppriseAsset(app_id=APP_ID, app_desc="OpenAI status monitor")
    a = apprise.Apprise(asset=asset)
    _silence.on = True
    try:
        try:
            server = _instantiate(url, asset)
        except Exception:  # a plugin raising on odd input, or an apprise whose modules moved: apprise decides
            server = None
        ok = a.add(server if server is not None else url)
    except Exception:  # a plugin raising on odd input is a URL it cannot use
        ok = False
    finally:
        _silence.on = False
    if not ok or len(a) == 0:
        return None
    with _secrets_lock:
        _secrets.update(secret_parts(url))
    return a


def known_scheme(scheme: str) -> bool:
    import apprise

    try:
        return scheme in apprise.NotificationManager()
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------- channels

class Channel:
    """A destination. Subclasses set `format` (what to render) and may override `build`/`send`."""

    format = "text"               # render format: slack | email | text
    body_format = "text"          # apprise body_format of the built body

    def __init__(self, name: str):
        self.name = name
        self.display = name       # what to show instead of the URL

    def build(self, message: Message) -> dict:
        """The exact keyword arguments for apprise's notify()."""
        return {"title": message.title, "body": message.body, "body_format": self.body_format,
                "notify_type": _NOTIFY_TYPES.get(message.kind, "info")}

    def send(self, built: dict) -> SendResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def deliver(self, message: Message) -> SendResult:
        return self.send(self.build(message))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.display}>"


class LogChannel(Channel):
    """The `log` notifier: each message is one INFO line (title and the body's lines joined by " | ")."""

    def __init__(self, name: str = LOG_NOTIFIER):
        super().__init__(name)
        self.display = "log"

    def send(self, built: dict) -> SendResult:
        lines = [ln.strip() for ln in str(built.get("body", "")).splitlines() if ln.strip()]
        log.info("%s | %s", built.get("title", ""), " | ".join(lines))
        return SendResult(True)


class AppriseChannel(Channel):
    """A channel backed by one `apprise.Apprise` object, kept for the channel's life (so apprise's own
    per-target bookkeeping and throttling apply per channel)."""

    def __init__(self, name: str, url: str | None, *, error: str | None = None, throttle: bool = True):
        super().__init__(name)
        self._apprise = None
        self._secrets: set[str] = set()
        self.error = error        # set: every send fails permanently with it
        if url is None:
            self.display = "(no URL)"
            return
        self._secrets = secret_parts(url)
        scheme = _scheme(url)
        self.display = f"{scheme}://…" if scheme else "(unparseable URL)"
        a = _load(url)
        if a is None:
            self.error = f"apprise cannot load the URL of notifier {name} (scheme {scheme!r})"
            return
        self._apprise = a
        for server in a:
            self.prepare(server)
            if not throttle:
                server.request_rate_per_sec = 0   # tests: apprise sleeps between sends on one object
        self.display = a[0].url(privacy=True)

    def prepare(self, server) -> None:
        """Adjust the loaded apprise plugin object (hook for subclasses)."""

    def send(self, built: dict) -> SendResult:
        if self.error or self._apprise is None:
            return SendResult(False, True, self.error or "not loaded")
        import apprise

        kwargs = dict(built)
        kwargs["body_format"] = apprise.NotifyFormat(kwargs.get("body_format") or "text")
        kwargs["notify_type"] = apprise.NotifyType(kwargs.get("notify_type") or "info")
        try:
            res = self._apprise.notify(**kwargs)
        except Exception as exc:  # apprise raises only for bad input; never let it escape a delivery run
            return SendResult(False, False, scrub(f"{type(exc).__name__}: {exc}", self._secrets))
        try:
            if res:               # AppriseResult: True only for SUCCESS (res == False is never True)
                return SendResult(True)
            seen: list[str] = []
            for entry in res.logs():
                level = getattr(entry, "level", "")
                level = getattr(level, "name", level)
                if str(level).upper() in ("WARNING", "ERROR", "CRITICAL"):
                    msg = " ".join(str(getattr(entry, "message", entry)).split())
                    if msg and msg not in seen:
                        seen.append(msg)
            status = getattr(res.status, "name", str(res.status))
            detail = "; ".join(seen[-3:]) or "no details from apprise"
            return SendResult(False, False, scrub(f"{status}: {detail}", self._secrets)[:500])
        finally:
            close = getattr(res, "close", None)
            if close:
                close()


class GenericChannel(AppriseChannel):
    """Any other apprise URL (json://, ntfy://, …): plain text, declared as text."""


def _verbatim(body, body_format=None, *args, **kwargs):
    return body


class SlackChannel(AppriseChannel):
    """Slack, with our own mrkdwn posted exactly as rendered.

    apprise 2.3.0's Slack formats, measured: no body_format keeps `<!channel>`, `<!here>` and `<url|text>`
    found in the text (third-party text could ping a channel or disguise a link); TEXT escapes everything,
    our own `<url|View incident>` included, and sends `mrkdwn: false`; MARKDOWN converts CommonMark and
    leaves a literal `<!channel>` raw. So the body is declared MARKDOWN (`"mrkdwn": true`) and the plugin's
    CommonMark-to-mrkdwn step is replaced, on our own plugin object only, by the identity: the renderer
    already entity-escaped every third-party `&`, `<`, `>`. apprise still entity-escapes the title itself.
    tests/test_notify_delivery.py asserts the exact JSON apprise posts."""

    format = "slack"
    body_format = "markdown"

    def prepare(self, server) -> None:
        server.dialect_convert = _verbatim


class EmailChannel(AppriseChannel):
    """E-mail: the escaped HTML declared as HTML, so apprise sends multipart/alternative (text + HTML)."""

    format = "email"
    body_format = "html"

    def build(self, message: Message) -> dict:
        built = super().build(message)
        if message.html is not None:
            built["body"] = message.html
        else:
            import html

            built["body"] = "<p>" + "<br>\n".join(html.escape(ln) for ln in message.body.split("\n")) + "</p>"
        return built


def channel_class(url: str) -> type[AppriseChannel]:
    scheme = _scheme(url)
    if scheme == "slack":
        return SlackChannel
    if scheme in ("http", "https"):
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError:
            host = ""
        if host in SLACK_HOOK_HOSTS:
            return SlackChannel
    if scheme in ("mailto", "mailtos"):
        return EmailChannel
    return GenericChannel


def channel_for(ns: NotifierSettings, *, throttle: bool = True) -> Channel:
    """The channel of one configured notifier. A missing url_env variable or a URL apprise cannot load
    gives a channel whose sends fail permanently with that reason."""
    try:
        url = ns.resolved_url()
    except ConfigError as exc:
        return GenericChannel(ns.name, None, error=str(exc))
    return channel_class(url)(ns.name, url, throttle=throttle)


def validate(notifiers: Iterable[NotifierSettings], *, warn=None) -> None:
    """Raise ConfigError for a notifier URL apprise cannot use (never quoting the URL). A url_env variable
    that is not set here is only warned about: the service may get it from its own environment. The warning
    goes to `warn(message)` when given (config.load runs before logging is set up: the CLI logs what it
    collected once logging is), else to this module's logger."""
    for i, ns in enumerate(notifiers):
        key = f"notifiers[{i}].url" if ns.url else f"notifiers[{i}].url_env"
        url = ns.url or os.environ.get(ns.url_env or "", "")
        if not url:
            message = f"notifier {ns.name}: environment variable {ns.url_env} is not set; its messages will fail"
            (warn or log.warning)(message)
            continue
        scheme = _scheme(url)
        if _load(url) is not None:
            continue
        if not scheme or not (known_scheme(scheme) or channel_class(url) is SlackChannel):
            raise ConfigError(f"{key}: apprise does not know this URL (scheme {scheme!r})")
        raise ConfigError(f"{key}: apprise cannot use this {scheme}:// URL: a required part is missing or "
                          "invalid (see https://github.com/caronc/apprise/wiki)")
