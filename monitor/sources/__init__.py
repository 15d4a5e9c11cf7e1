"""The page kinds, one module each behind `common.PageKind`. A new kind is one module and one line here."""
from __future__ import annotations

KINDS = {  # name (as in the config's `kind` and the store) -> module holding its KIND
    "statuspage": "monitor.sources.statuspage",
    "incidentio": "monitor.sources.incidentio",
}


def kind(name: str):
    """The PageKind called `name`."""
    import importlib

    return importlib.import_module(KINDS[name]).KIND


def detect(summary: bytes | None, feed: bytes | None) -> str | None:
    """Which kind serves these answers: incident.io pages have no `time_zone` in summary.json's page and name
    `incident.io` as their feed's generator."""
    from monitor.sources.common import ParseError, load_json

    if summary is not None:
        try:
            data = load_json(summary, "summary.json")
        except ParseError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("page"), dict):
            return "statuspage" if "time_zone" in data["page"] else "incidentio"
    if feed is not None:
        return "incidentio" if b"incident.io" in feed[:4000] else "statuspage"
    return None
