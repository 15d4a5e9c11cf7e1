"""The page kinds, one module each behind `common.PageKind`. A new kind is one module and one line here."""
from __future__ import annotations

import importlib

KINDS = {  # name (as in the config's `kind` and the store) -> module holding its KIND; the first that
    # recognises a page is its kind, so the most general (Atlassian Statuspage) comes last
    "incidentio": "monitor.sources.incidentio",
    "statuspage": "monitor.sources.statuspage",
}


def kind(name: str):
    """The PageKind called `name`."""
    return importlib.import_module(KINDS[name]).KIND


def detect(summary: bytes | None, feed: bytes | None) -> str | None:
    """Which kind serves a page, from its `/api/v2/summary.json` or else its `/history.atom`."""
    from monitor.sources.common import ParseError, load_json

    page = None
    if summary is not None:
        try:
            data = load_json(summary, "summary.json")
        except ParseError:
            data = None
        page = data.get("page") if isinstance(data, dict) and isinstance(data.get("page"), dict) else None
    if page is None and feed is None:
        return None
    return next((name for name in KINDS if kind(name).recognises(page, None if page else feed)), None)
