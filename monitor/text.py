"""Third-party text made safe to show: what a status page sends (titles, update texts, links) cleaned of
control and bidi characters, cut to a length, and times in words. Shared by the messages (notify/render.py)
and the page (web/page.py); pure, and a leaf: it imports nothing of the monitor but records.py."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import urlsplit

from monitor.records import cap

__all__ = ["TITLE_MAX", "cap", "clean_text", "clean_line", "safe_link", "utc_words", "CTRL"]

TITLE_MAX = 250

# C0/C1 controls except \t and \n (handled first), DEL, bidi embeddings/overrides/isolates and marks,
# zero-width space and BOM: nothing a status update needs, and all of them can disguise text.
CTRL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clean_text(s: object) -> str:
    """Third-party multi-line text: controls stripped, line ends normalised, blank-line runs collapsed."""
    if s is None:
        return ""
    s = str(s).replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    s = CTRL.sub("", s.replace("\t", " "))
    out: list[str] = []
    for line in s.split("\n"):
        line = line.rstrip()
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def clean_line(s: object) -> str:
    """Third-party one-line text (titles, names): all whitespace runs become one space."""
    return " ".join(clean_text(s).split())


def safe_link(url: object) -> str | None:
    """The URL when it is a plain http(s) link, else None (javascript:, data:, relative, odd characters)."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    if not url or CTRL.search(url) or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def utc_words(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
