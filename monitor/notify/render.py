"""Pure: one outbox payload (see ``monitor.notify.outbox.payload``) becomes the message a person reads.

Every string in the payload comes from a status page, so it is third-party text: control and bidi characters
are stripped, runs of blank lines collapsed, and it is escaped for the target format:

* ``text``: plain text (log, json:// and every other channel).
* ``slack``: Slack mrkdwn. ``&``, ``<`` and ``>`` in third-party text become entities, so ``<!channel>``,
  ``<!here>`` or ``<https://evil|click>`` in an update cannot ping anyone or disguise a link; our own link is
  ``<url|View incident>``, and only when it is an http(s) URL.
* ``email``: ``body`` is plain text and ``html`` an HTML alternative with every third-party string
  ``html.escape``'d.

``Message.title`` is always plain text (one line): the channel escapes it where its transport needs that
(apprise entity-escapes Slack titles itself; an e-mail subject is not HTML).
"""
from __future__ import annotations

import html as _html
from dataclasses import dataclass
from datetime import datetime, timezone

from monitor.records import CLOSED_STATUSES, UPLOAD_TAGS, parse_iso
from monitor.text import TITLE_MAX, cap, clean_line, clean_text, safe_link, utc_words
from monitor.verdict import CHECKLIST, age_words

FORMATS = ("text", "slack", "email")

_STATUS_WORDS = {
    "investigating": "Investigating", "identified": "Identified", "monitoring": "Monitoring",
    "resolved": "Resolved", "postmortem": "Postmortem", "update": "Update",
}

@dataclass(frozen=True, slots=True)
class Message:
    title: str               # plain text, one line
    body: str                # in the requested format (plain / Slack mrkdwn / plain for e-mail)
    html: str | None = None  # e-mail only: the HTML alternative
    kind: str = "wait"       # wait | resolved | test: lets a channel pick a colour / severity


def slack_escape(s: str) -> str:
    """Slack's three control characters as entities (https://api.slack.com/reference/surfaces/formatting)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_url(url: str) -> str:
    # inside <url|label> the characters | < > would end or split the link
    return url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")


# ------------------------------------------------------------------------------------------- rendering

@dataclass(frozen=True, slots=True)
class _Facts:
    """The payload, cleaned (plain text); formats escape these when they place them."""
    event: str
    kind: str
    title: str
    who: str
    uploads: bool
    again: bool              # the incident reopened: "wait again", then "resolved again"
    status: str
    impact: str
    components: tuple[str, ...]
    started: datetime | None
    resolved: datetime | None
    update_status: str
    update_at: datetime | None
    update_text: str
    link: str | None
    duration: str | None
    probe: tuple[tuple[str, str], ...] | None = None   # the probe's early warning / all-clear: its fact lines
    surfaces: tuple[str, ...] = ()    # the surfaces it takes down broadly (ChatGPT, the API)
    estimate: str = ""                # how long similar incidents went on (one sentence), for a wait
    maintenance_until: datetime | None = None   # a maintenance under way: its planned end


def _facts(p: dict, max_chars: int, now: datetime | None) -> _Facts:
    if p.get("kind") == "probe":
        return _probe_facts(p, now)
    event = clean_line(p.get("event")) or "updated"
    status = clean_line(p.get("status")).lower()
    resolved_now = event == "resolved" or status in CLOSED_STATUSES + ("completed",)   # (older payloads)
    kind = "test" if event == "test" else ("resolved" if resolved_now else "wait")
    page = clean_line(p.get("page"))
    who = "OpenAI" if page.lower() in ("", "openai") else f"The {page} status page"
    tags = {clean_line(t) for t in (p.get("tags") or []) if t}
    upd = p.get("update") if isinstance(p.get("update"), dict) else {}
    started, resolved_at = parse_iso(p.get("started_at")), parse_iso(p.get("resolved_at"))
    update_at = parse_iso(upd.get("published_at"))
    duration = None
    if kind == "resolved" and started:
        end = resolved_at or update_at or now
        if end and end >= started:
            duration = age_words((end - started).total_seconds())
    comps = tuple(dict.fromkeys(c for c in (clean_line(x) for x in (p.get("components") or [])) if c))
    return _Facts(
        event=event, kind=kind, title=cap(clean_line(p.get("title")) or "(untitled incident)", TITLE_MAX),
        who=who, again=p.get("reopened") is True,
        uploads=p["uploads"] if isinstance(p.get("uploads"), bool) else bool(tags.intersection(UPLOAD_TAGS)) or not tags,
        status=_STATUS_WORDS.get(status, status[:1].upper() + status[1:]) or "Unknown",
        impact=clean_line(p.get("impact")) or "unknown", components=comps, started=started,
        resolved=resolved_at if kind == "resolved" else None,
        update_status=_STATUS_WORDS.get(clean_line(upd.get("status")).lower(), clean_line(upd.get("status"))),
        update_at=update_at, update_text=cap(clean_text(upd.get("body")), max_chars),
        link=safe_link(p.get("url")), duration=duration,
        surfaces=tuple(clean_line(x) for x in (p.get("surfaces") or []) if isinstance(x, str) and clean_line(x)),
        maintenance_until=parse_iso(p.get("scheduled_until")) if p.get("maintenance") is True else None,
        estimate=cap(clean_line(p.get("estimate")), 400) if kind == "wait" else "")


def _probe_facts(p: dict, now: datetime | None) -> _Facts:
    """The probe's early warning (event "opened") or its all-clear ("resolved"); see monitor.probe.payload."""
    resolved = clean_line(p.get("event")) == "resolved"
    probe = p.get("probe") if isinstance(p.get("probe"), dict) else {}
    started, ended = parse_iso(p.get("started_at")), parse_iso(p.get("resolved_at"))
    end = ended or now
    duration = age_words((end - started).total_seconds()) if resolved and started and end else None
    lines = [("Failing from here since", utc_words(started))] if started else []
    if resolved and ended:
        lines.append(("Working again since", utc_words(ended)))
    failures = probe.get("failures")
    if isinstance(failures, int) and not isinstance(failures, bool):
        lines.append(("Failed probes", str(failures)))
    if clean_line(probe.get("detail")):
        lines.append(("Last failure", cap(clean_line(probe.get("detail")), 300)))
    statuses = [str(x) for x in (probe.get("statuses") or []) if isinstance(x, int) and not isinstance(x, bool)]
    if statuses:
        lines.append(("HTTP statuses", ", ".join(statuses)))
    return _Facts(event="resolved" if resolved else "opened", kind="resolved" if resolved else "wait",
                  title=("Uploads to the OpenAI Files API work again from here" if resolved
                         else "Uploads to the OpenAI Files API are failing from here"),
                  who="OpenAI", uploads=True, again=False, status="Resolved" if resolved else "Investigating",
                  impact=clean_line(p.get("impact")) or "unknown", components=(), started=started,
                  resolved=ended if resolved else None, update_status="", update_at=None, update_text="",
                  link=None, duration=duration, probe=tuple(lines))


def _title(f: _Facts) -> str:
    word = {"wait": "Wait", "resolved": "Resolved", "test": "Test"}[f.kind]
    return cap(f"{word}{' again' * (f.again and f.kind != 'test')}: {f.title}", TITLE_MAX)


def _verdict(f: _Facts) -> tuple[str, str]:
    """(the lead, bold where the format allows, and the rest of the verdict), plain text."""
    if f.probe is not None and f.kind == "resolved":
        return (f"Resolved after {f.duration}." if f.duration else "Resolved."), \
            ("Uploads to the OpenAI Files API work again from here; the status page posted nothing. "
             "If uploads still fail, troubleshoot locally:")
    if f.probe is not None:
        since = f" since {f.started.astimezone(timezone.utc):%H:%M} UTC" if f.started else ""
        return "Wait:", (f"uploads to the OpenAI Files API have been failing from here{since}, and the status "
                         "page has posted nothing yet. Wait rather than troubleshoot locally; a message follows "
                         "when the page posts an incident or uploads work again.")
    again = " again" if f.again else ""
    if f.kind == "resolved":
        return (f"Resolved{again} after {f.duration}." if f.duration else f"Resolved{again}."), \
            "If uploads still fail, troubleshoot locally:"
    if f.surfaces and not f.uploads:
        from monitor.surfaces import surface_words

        names = " and ".join(surface_words(x) for x in f.surfaces)
        verb = "are" if len(f.surfaces) > 1 else "is"
        down = f"{verb} under maintenance" + (f" until {utc_words(f.maintenance_until)}" if f.maintenance_until
                                              else "") if f.maintenance_until or f.impact == "maintenance" \
            else f"{verb} down{' again' if f.again else ''}"
        side = "OpenAI's side" if f.who == "OpenAI" else "the provider's side"
        return f"Wait{again}:", (f"{f.who} reports that {names} {down}. File uploads fail too: this is {side}, "
                                 "not a local problem. Retrying now will likely fail; this message will update "
                                 "when it is resolved.")
    what = "an active incident affecting file uploads" if f.uploads else "an active incident"
    if f.again:
        what = ("an incident affecting file uploads" if f.uploads else "an incident") + \
            " it had resolved: it is active again"
    return f"Wait{again}:", (f"{f.who} reports {what}. Retrying now will likely fail; "
                             "this message will update when it is resolved.")


def _fact_lines(f: _Facts) -> list[tuple[str, str]]:
    """(label, plain value) pairs, in order."""
    if f.probe is not None:
        return list(f.probe)
    out = [("Status", f.status), ("Impact", f.impact)]
    if f.components:
        out.append(("Affected", ", ".join(f.components)))
    if f.started:
        out.append(("Started", utc_words(f.started)))
    if f.resolved:
        out.append(("Resolved", utc_words(f.resolved)))
    return out


def _update_heading(f: _Facts) -> str:
    bits = [b for b in (f.update_status, utc_words(f.update_at) if f.update_at else "") if b]
    return "Latest update" + (f" ({', '.join(bits)})" if bits else "") + ":"


_TEST_INTRO = ("This is a test message from openai-status-monitor: no incident is open. "
               "Real messages look like the one below.")


def _text(f: _Facts) -> str:
    first, rest = _verdict(f)
    parts = [_TEST_INTRO] if f.kind == "test" else []
    block = [f"{first} {rest}".strip()]
    if f.kind == "resolved":
        block += [f"{n}. {item}" for n, item in enumerate(CHECKLIST, 1)]
    if f.estimate:
        block.append(f.estimate)
    parts.append("\n".join(block))
    parts.append("\n".join(f"{k}: {v}" for k, v in _fact_lines(f)))
    if f.update_text:
        parts.append(_update_heading(f) + "\n" + f.update_text)
    if f.link:
        parts.append(f"Details: {f.link}")
    return "\n\n".join(parts)


def _slack(f: _Facts) -> str:
    e = slack_escape
    first, rest = _verdict(f)
    parts = [_TEST_INTRO] if f.kind == "test" else []
    block = [f"*{first}* {e(rest)}".rstrip()]
    if f.kind == "resolved":
        block += [f"{n}. {e(item)}" for n, item in enumerate(CHECKLIST, 1)]
    if f.estimate:
        block.append(e(f.estimate))
    parts.append("\n".join(block))
    parts.append("\n".join(f"*{k}:* {e(v)}" for k, v in _fact_lines(f)))
    if f.update_text:
        parts.append(f"*{e(_update_heading(f))}*\n{e(f.update_text)}")
    if f.link:
        parts.append(f"<{_slack_url(f.link)}|View incident>")
    return "\n\n".join(parts)


def _html_body(f: _Facts) -> str:
    def e(s: str) -> str:
        return _html.escape(s, quote=True)

    first, rest = _verdict(f)
    parts = [f"<p>{e(_TEST_INTRO)}</p>"] if f.kind == "test" else []
    parts.append(f"<p><strong>{e(first)}</strong> {e(rest)}</p>")
    if f.estimate:
        parts.append(f"<p>{e(f.estimate)}</p>")
    if f.kind == "resolved":
        parts.append("<ol>" + "".join(f"<li>{e(item)}</li>" for item in CHECKLIST) + "</ol>")
    parts.append("<p>" + "<br>".join(f"<strong>{e(k)}:</strong> {e(v)}" for k, v in _fact_lines(f)) + "</p>")
    if f.update_text:
        parts.append(f"<p><strong>{e(_update_heading(f))}</strong><br>"
                     + "<br>".join(e(line) for line in f.update_text.split("\n")) + "</p>")
    if f.link:
        parts.append(f'<p>Details: <a href="{e(f.link)}">{e(f.link)}</a></p>')
    return "\n".join(parts)


def render(payload: dict, fmt: str, *, max_chars: int = 1500, now: datetime | None = None) -> Message:
    """The message for one outbox payload in `fmt` ("text", "slack" or "email").

    `max_chars` caps the status page's update text; `now` ends the duration of a resolved incident that
    carries neither a resolution nor an update time.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown message format {fmt!r} (known: {', '.join(FORMATS)})")
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object")
    f = _facts(payload, max_chars, now)
    title = _title(f)
    if fmt == "slack":
        return Message(title, _slack(f), None, f.kind)
    if fmt == "email":
        return Message(title, _text(f), _html_body(f), f.kind)
    return Message(title, _text(f), None, f.kind)
