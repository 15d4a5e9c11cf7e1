"""Broad outages: which surfaces (ChatGPT, the API) an incident takes down broadly, and the evidence.

When ChatGPT or the API is broadly down, uploads fail too, though the incident never says "upload": the
answer is then "wait", not "troubleshoot locally". An incident is a broad outage of a surface when its
title says the surface (or its core) fails or is badly degraded, without narrowing it to one model,
feature, product, plan, region or app platform; or when the page marks a core component of the surface
with a partial or full outage.

The rules are data (``DEFAULT_SURFACE_RULES`` and the word lists below), extended from the config's
``[surfaces.<name>]`` tables by ``build_surface_rules``; ``classify`` is a pure function of the rules and
the incident's title, first update text and affected components. How a title is read:

* Parentheses that widen or deny ("(including logins)", "(API not impacted)") and "not the API" are
  dropped first.
* The title is cut into conjuncts at commas, "and", "&" and "with". A surface counts when it is named in a
  conjunct that holds no narrowing word, and the title holds a failure word ("outage", "down",
  "unavailable", "errors", "degraded", "latency", ...). A conjunct that is only a surface's name ("and
  API") takes the reading of the conjunct before it, so "errors on GPT-4V for ChatGPT and API" is narrow
  for both, while "errors affecting gpt-4 and ChatGPT" is broad for ChatGPT.
* Phrases that are broad by themselves ("all API endpoints", "multiple models", "all services") count
  for their surfaces without naming them.
* A title that names no surface and no narrowing word ("Intermittent instability", "Cluster Outage")
  is read in the first update's text the same way, sentence by sentence.

Decisions on the arguable cases (tests/data/surface_cases.toml holds a real case of each):

* "some users", "for some customers": broad. Status pages hedge nearly every incident this way, and a
  user cannot tell whether they are among the "some".
* ChatGPT's sign-in (login-only, "Authentication issues on ChatGPT"): broad for ChatGPT. Without a
  session there is no upload, and OpenAI lists ChatGPT Login among the core components. Single sign-on
  only (SSO) is narrow: one way of signing in.
* The API's sign-in (platform.openai.com logins, "Authentication outage" of the dashboard): narrow. API
  calls use keys and never sign in.
* One plan (ChatGPT Free, Plus, Team, Enterprise, Edu, "free users", "paid users"): narrow.
* One region ("in Europe", "EU", "Japan"): narrow.
* One app platform (Android, iOS, macOS, Windows, the desktop app): narrow. The web app is ChatGPT's main
  surface: "ChatGPT web UI unavailable" is broad, and so is "web & mobile".
* "some models", "some API endpoints": narrow; "multiple models", "multiple API endpoints": broad.
* Latency of the whole surface ("Increased latency affecting ChatGPT"): broad; latency of one model:
  narrow (a model is a narrowing word).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace as _dc_replace

from monitor.tags import (
    SNIPPET_MAX, TagMatch, _clean, _compile, _join_exclude, read_tables, replaced_and_excluded,
)

__all__ = ["SURFACES", "SurfaceRule", "DEFAULT_SURFACE_RULES", "build_surface_rules", "classify",
           "surface_words", "CORE_IMPACTS"]

SURFACES: tuple[str, ...] = ("chatgpt", "api")          # the built-in surfaces (status.openai.com's)
_NAMES = {"chatgpt": "ChatGPT", "api": "the API"}


def surface_words(surface: str) -> str:
    """How a person names a surface: "ChatGPT", "the API", else the name as configured."""
    return _NAMES.get(surface, surface)


# Component impacts that make a core component evidence of a broad outage (both pages' words).
CORE_IMPACTS = ("partial_outage", "major_outage", "full_outage", "major", "critical", "under_maintenance")


@dataclass(frozen=True, slots=True)
class SurfaceRule:
    name: str                            # unique, e.g. "chatgpt/named"
    surface: str                         # the surface it gives evidence for
    pattern: str | None = None           # regex: names the surface (needs a failure word in the title)
    broad: str | None = None             # regex: broad by itself, no failure word needed ("all endpoints")
    components: tuple[str, ...] = ()     # core components: a partial or full outage of one is evidence
    exclude: str | None = None           # regex: more narrowing words for this rule's conjuncts
    extra: tuple[str, ...] = field(default=())   # further surfaces the `broad` phrase takes down
    gate: tuple[str, ...] = ()           # speed: a text holding none of these (casefolded) cannot match


# Words that fail a surface. Latency counts: a whole surface that is slow fails uploads too.
FAILURE = (r"\boutages?\b|\bdown\b|\bunavailable\b|\binaccessible\b|\bnot\s+loading\b|\bunreachable\b"
           r"|\bdisruption|\bdegrad\w*|\berrors?\b|\berror[\s-]+rates?\b|\bfailures?\b|\bfailing\b|\bfails\b"
           r"|\binstability\b|\bincident\b|\blatency\b|\bissues?\b|\bproblems?\b|\bslow\w*|\bunresponsive\b"
           r"|\btimeouts?\b|\b5xx\b|\b50[0-4]s?\b|\bunexpected\s+responses\b|\bnot\s+(?:available|working)\b"
           r"|\bunder\s+maintenance\b|\bdegr[ae]d\w*|\bdowntime\b|\bimpacted\b|\baffected\b"
           r"|\b(?:can(?:no|')t|couldn't|could\s+not|unable\s+to)\s+(?:access|reach|load|use)\b")

# Words that narrow an incident to less than a surface: a model or family, a feature or product, a plan, a
# region, an app platform, or a part of the page that is not the service itself.
NARROW = (
    # models and families
    r"\bgpt[\s-]?\d\w*(?:[\s-](?:turbo|mini|preview|instruct|\d{4}))*|\bgpt[\s-]?4o\b|\bgpt[\s-]?4v\b|\bo\d(?:-\w+)?\b"
    r"|\bgpt-?v\b|\bdavinci\w*|\bcurie\w*|\bbabbage\w*|(?-i:\bAda\b|\bada\b)|\btext-\w+|\bcode-\w+|\bwhisper\b|\btts\b"
    r"|\bdall[\s·•.-]*e\w*|\bsnapshots?\b|\bfine[\s-]?tun\w*|\bfinetun\w*|\breserved\s+capacity\b"
    r"|\bsome\s+(?:\w+\s+)?(?:models?|endpoints?|engines?)\b|\bvision\b|\basr\b"
    r"|\bclaude[\s-]*(?:instant|\d|opus|sonnet|haiku)\w*|\bopus\b|\bsonnet\b|\bhaiku\b"
    # features and products
    r"|\bimages?\b|\bvoice\b|\baudio\b|\brealtime\b|\bbrows\w*|\bsearch\w*|\bplugins?\b|\bgpts\b|\bmemory\b"
    r"|\bsora\b|\bcodex\b|\bdeep\s+research\b|\bagent\b|\boperator\b|\bcanvas\b|\bplayground\b|\blabs\b"
    r"|\bbatch\b|\bembeddings?\b|\bmoderations?\b|\bcontent\s+filter\b|\bassistants?\b|\bbilling\b"
    r"|\bsubscriptions?\b|\bcredits?\b|\bpurchases?\b|\bpayments?\b|\busage\b|\bsign[\s-]?ups?\b|\bsupport\b"
    r"|\bcaptcha\b|\banalytics\b|\bhistory\b|\bconnectors?\b|\bcustom\s+instructions\b|\bshared\s+links?\b"
    r"|\bexports?\b|\baccount\s+(?:management|features?)\b|\brelated\s+apis?\b|\bengine\s+listing\b|\bstreaming\b|\bsuffix\b|\bcode\s+interpreter\b"
    r"|\bdata\s+analysis\b|\bfiles?\b|\buploads?\b|\bscores\b|\bwebsite\s+openai\.com\b|\bopenai\.com\s+is\b"
    r"|\brate[\s-]limit\w*|\bjobs?\b|\btraining\b|\bsso\b|\bcompliance\b|\bworkspace\b|\badmin\b"
    # plans
    r"|\bfree\b|\bplus\b|\bteam\b|\benterprise\b|\bedu\b|\bpaid\b|\bpro\s+users\b"
    # regions
    r"|\bregions?\b|\beurope\w*|\beu\b|\bus\s+east\b|\basia\w*|\bjapan\b|\bindia\b|\bkorea\b|\bbrazil\b"
    # app platforms
    r"|\bandroid\b|\bios\b|\biphone\b|\bipad\b|\bmacos\b|\bmac\s+app\b|\bwindows\b|\bdesktop\s+app\b"
)

_CHATGPT = r"\bchat\s?gpt(?:'s)?\b|\bchat\.openai\.com\b|\bchatgpt\.com\b"
_API = (r"\bapi\s+platform\b|\bplatform\s+api\b|\bapis?\b(?!\s*keys?\b)"
        r"|\bcompletions?\s+(?:requests?|endpoints?)\b|\bchat\s+completions\b|\bresponses\s+api\b")

DEFAULT_SURFACE_RULES: tuple[SurfaceRule, ...] = (
    # "ChatGPT unavailable", "Elevated error rates for ChatGPT", "ChatGPT web UI unavailable", "Outage on
    # chat.openai.com", "Elevated error rate impacting ChatGPT (including logins)", "ChatGPT Login Issues".
    SurfaceRule(name="chatgpt/named", surface="chatgpt", pattern=_CHATGPT, gate=("chat",)),
    # "Elevated error rates across all services", "Labs, API, ChatGPT ... are inaccessible" (named anyway)
    SurfaceRule(name="chatgpt/all-services", surface="chatgpt",
                broad=r"\b(?:all|multiple)\s+(?:openai\s+)?(?:services|products)\b", extra=("api",),
                gate=("services", "products")),
    # today's page: the components at the core of ChatGPT
    SurfaceRule(name="chatgpt/core-component", surface="chatgpt", components=("Conversations",)),
    # "Outage on all API endpoints", "Elevated 5xx errors impacting the API", "Elevated API Errors",
    # "Outage on ChatGPT and API Platform", "Intermittent instability with completion requests"
    # The API's sign-in is the dashboard's (platform.openai.com): API calls use keys, so it is narrow here.
    SurfaceRule(name="api/named", surface="api", pattern=_API, gate=("api", "completion", "responses"),
                exclude=r"\blog(?:ged|ging)?[\s-]*(?:in|on)\w*|\blogins?\b|\bsign(?:ed|ing)?[\s-]*(?:in|on)\b"
                        r"|\bauthenticat\w*|\bplatform\.openai\.com\b|\bdashboard\b"),
    # "Outage on All Endpoints", "Multiple engines are down", "Elevated latency + error rate on all models",
    # "Elevated error rates across multiple models (text, image, and audio)"
    SurfaceRule(name="api/all-endpoints", surface="api",
                broad=(r"\b(?:all|multiple)\s+(?:(?:of\s+)?(?:the|our)\s+)?(?:api\s+)?(?:endpoints|engines|models)\b"
                       r"|\bacross\s+(?:all|multiple)\s+(?:api\s+)?(?:endpoints|engines|models)\b"),
                gate=("endpoints", "engines", "models")),
    # today's page: the components at the core of the API
    SurfaceRule(name="api/core-component", surface="api", components=("Responses", "Chat Completions")),
)

_SURFACE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,49}")


def build_surface_rules(config: Mapping[str, Mapping] | None,
                        defaults: Sequence[SurfaceRule] = DEFAULT_SURFACE_RULES) -> tuple[SurfaceRule, ...]:
    """Config ``[surfaces.<name>]`` tables -> rules, like ``[tags.<tag>]``: ``patterns`` (regexes that name the
    surface; a failure word must stand in the title too), ``components`` (core component names), ``exclude``
    (a regex of more narrowing words for every rule of that surface), ``replace`` (drop the built-in rules of
    that surface). A table for a new name adds a surface. Errors are ValueErrors naming the key."""
    tables = read_tables(config, "surfaces", _SURFACE_NAME,
                         "invalid surface name (lower-case letters, digits, '-', '_', '.')")
    added = []
    for name, t in tables:
        added += [SurfaceRule(name=f"config:{name}/patterns[{i}]", surface=name, pattern=pattern, exclude=t.exclude)
                  for i, pattern in enumerate(t.patterns)]
        if t.components:
            added.append(SurfaceRule(name=f"config:{name}/components", surface=name, components=t.components))
    replaced, extra_exclude = replaced_and_excluded(tables)
    rules = []
    for rule in defaults:
        if rule.surface in replaced:
            continue
        if rule.surface in extra_exclude:
            rule = _dc_replace(rule, exclude=_join_exclude(rule.exclude, extra_exclude[rule.surface]))
        rules.append(rule)
    return tuple(rules) + tuple(added)


# --------------------------------------------------------------------------------------------------------
# Reading a title

_WIDENING = re.compile(r"\(\s*(?:including|incl\.?|e\.g\.)[^)]*\)|\([^)]*\bnot\s+(?:impacted|affected)\b[^)]*\)"
                       r"|\bfree\s+and\s+paid\b|\bpaid\s+and\s+free\b", re.I)
_DENIED = re.compile(r"\b(?:and\s+)?not\s+(?:on\s+|in\s+|for\s+)?(?:the\s+)?(?:api|chat\s?gpt)\b|\bapi\s+not\s+\w+\b", re.I)
_SPLIT = re.compile(r"\s*(?:,|;|&|\+(?!\s*error)|\band\b|\bwith\b|\bas\s+well\s+as\b)\s*", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WS = re.compile(r"\s+")


_CLAUSE = re.compile(r"\s*(?:;|\bbut\b|\bwhile\b|\bwhereas\b)\s*", re.I)
_SPARED = re.compile(r"\b(?:still\s+(?:available|working|up|operational)|unaffected|not\s+(?:impacted|affected)"
                     r"|(?:is|are)\s+operational)\b", re.I)


def _conjuncts(text: str) -> list[str]:
    """The parts of a title that can each name a surface: clauses that say something is spared ("but the API
    is still available") are dropped, the rest cut at commas, "and", "&" and "with"."""
    text = _DENIED.sub(" ", _WIDENING.sub(" ", text))
    clauses = [c for c in _CLAUSE.split(text) if not _SPARED.search(c)]
    return [c for c in (p.strip(" .()-:") for clause in clauses for p in _SPLIT.split(clause)) if c]


def _read(rules: Sequence[SurfaceRule], text: str, field_name: str, found: dict[str, TagMatch]) -> None:
    """Add the surfaces one sentence (a title, or one sentence of an update) takes down broadly."""
    for surface, match in _read_text(tuple(rules), text, field_name):
        found.setdefault(surface, match)


@functools.lru_cache(maxsize=4096)
def _read_text(rules: tuple[SurfaceRule, ...], text: str, field_name: str) -> tuple[tuple[str, TagMatch], ...]:
    """The surfaces one text takes down broadly, in the order found (cached: pages reuse their wording, and a
    first poll or backfill reads thousands of incidents)."""
    found: dict[str, TagMatch] = {}
    folded = text.casefold()
    rules = [r for r in rules if not r.gate or any(g in folded for g in r.gate)]
    if not rules or not _compile(FAILURE).search(text):
        return ()
    snippet = _WS.sub(" ", text).strip()[:SNIPPET_MAX]
    narrow_rx = _compile(NARROW)
    parts = _conjuncts(text)
    for rule in rules:
        if rule.surface in found or not (rule.pattern or rule.broad):
            continue
        excl = _compile(rule.exclude) if rule.exclude else None

        def narrowed(part: str) -> bool:
            return bool(narrow_rx.search(part) or (excl is not None and excl.search(part)))

        if rule.broad:
            for part in parts:
                if _compile(rule.broad).search(part) and not narrowed(_compile(rule.broad).sub(" ", part)):
                    for s in (rule.surface, *rule.extra):
                        found.setdefault(s, TagMatch(s, rule.name, field_name, snippet))
                    break
            continue
        name_rx = _compile(rule.pattern)
        for i, part in enumerate(parts):
            if not name_rx.search(part):
                continue
            bare = not re.sub(r"\bthe\b", " ", name_rx.sub(" ", part), flags=re.I).strip(" .()-:'")
            if bare and i > 0 and _qualifies_head(parts[i - 1], narrowed):
                continue            # "errors on GPT-4V for ChatGPT and API": the model narrows both
            if not narrowed(part):
                found.setdefault(rule.surface, TagMatch(rule.surface, rule.name, field_name, snippet))
                break
    return tuple(found.items())


_ATTACH = re.compile(r"\b(?:on|for|in|to|into|of|affecting|impacting|across|at|from|using)\b", re.I)


def _qualifies_head(part: str, narrowed) -> bool:
    """Whether a narrowing word in `part` stands before its last preposition ("errors on GPT-4V for
    ChatGPT"): it then qualifies the failure, and so every surface listed after it; after the preposition
    ("errors affecting gpt-4") it is one item of the list, and the next item stands on its own."""
    last = None
    for last in _ATTACH.finditer(part):
        pass
    return last is not None and narrowed(part[:last.start()])


def classify(rules: Sequence[SurfaceRule], title: str | None, bodies: Iterable[str | None],
             components: Iterable[tuple[str, str | None]]) -> list[TagMatch]:
    """Pure. The surfaces an incident takes down broadly, one TagMatch each (``tag`` is the surface), sorted by
    surface. `bodies`: update texts, oldest first (only the first is read, and only for a title that names
    neither a surface nor a narrowing word); `components`: (name, impact) of the affected components."""
    found: dict[str, TagMatch] = {}
    text_rules = [r for r in rules if r.pattern or r.broad]
    clean_title = _clean(title) if isinstance(title, str) and title.strip() else ""
    if clean_title:
        _read(text_rules, clean_title, "title", found)
    names_any = any(_compile(r.pattern).search(clean_title) for r in text_rules if r.pattern)
    if not found and not names_any and not _compile(NARROW).search(clean_title):
        first = next((b for b in bodies if isinstance(b, str) and b.strip()), None)
        if first:
            for sentence in _SENTENCE.split(_clean(first)):
                if sentence.strip():
                    _read(text_rules, sentence, "update", found)
    core = {}
    for rule in rules:
        for comp in rule.components:
            core.setdefault(comp.casefold(), []).append(rule)
    for name, impact in components:
        if not isinstance(name, str) or (impact or "").lower() not in CORE_IMPACTS:
            continue
        for rule in core.get(name.strip().casefold(), ()):
            found.setdefault(rule.surface, TagMatch(rule.surface, rule.name, "component",
                                                    f"{name.strip()} ({impact})"[:SNIPPET_MAX]))
    return [found[s] for s in sorted(found)]
