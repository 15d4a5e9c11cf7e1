"""Tag incidents by their wording: is this a file-upload, file-expired or data-analysis incident?

The rules are data (``DEFAULT_RULES``), extended or replaced from the config's ``[tags.<tag>]`` tables by
``build_rules``; ``tag_incident`` is a pure function of the rules and the incident's texts.

Matching, per text (the title, then every update body in the given order):

* Markdown link targets, bare URLs and HTML tags are removed first: a link to a help article about file
  uploads is not wording about this incident.
* Each rule's ``pattern`` is searched (case-insensitively) in the whole text. A match is ignored when the
  rule's ``exclude`` also matches within the same sentence (sentences end at ``.``/``!``/``?`` followed by
  whitespace, or at a line break); the search then goes on to the next match.
* Within one text the rules of a tag are tried in table order, so the first (strongest) rule names the
  evidence. Components are compared by exact, case-insensitive name and only after all texts.

The built-in table was written from the wording of status.openai.com incidents 2020-2026 (Atlassian and
incident.io eras) and checked against real incidents, including their near misses: image *generation*,
vision requests, fine-tuned models, logins and sessions, "/etc/hosts file", "profile", the Batch API and
Assistants incidents that say nothing about files (see tests/data/tag_cases.toml).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace as _dc_replace
from typing import NamedTuple
from monitor.records import UPLOAD_TAGS, cap
from monitor.sources.common import strip_html

__all__ = ["UPLOAD_TAGS", "Rule", "TagMatch", "DEFAULT_RULES", "build_rules", "tag_incident"]


SNIPPET_MAX = 200


@dataclass(frozen=True, slots=True)
class Rule:
    name: str                           # unique, e.g. "file-upload/upload-wording"
    tag: str                            # tag it produces
    pattern: str | None = None          # regex (case-insensitive) searched in the title and every update body
    components: tuple[str, ...] = ()    # exact component names (case-insensitive) that count as evidence
    exclude: str | None = None          # regex: a text match is ignored when this also matches in the same sentence


@dataclass(frozen=True, slots=True)
class TagMatch:
    tag: str
    rule: str        # Rule.name
    field: str       # "title" | "update" | "component"
    text: str        # the matched sentence/snippet, whitespace collapsed, at most 200 chars


# --------------------------------------------------------------------------------------------------------
# Vocabulary shared by the patterns. Plural/singular forms are spelled out; everything is case-insensitive.

# Things a user uploads. Images are left out on purpose: "images" next to "process"/"analyze" is vision,
# and next to "edit"/"variation" it is image generation; image uploads are caught by the bare upload rule.
_FILE_OBJ = r"(?:files?|documents?|attachments?|pdfs?|csvs?|spreadsheets?)"
# Words that may stand between a verb and its file object ("upload a large PDF", "uploaded training files").
_FILLER = (r"(?:(?:a|an|the|your|their|some|new|newly|large|certain|multiple|user|users'|uploaded|training"
           r"|data|knowledge|all|of|from|such|text|content|contents)\s+)")
_LOGIN = (r"\blog(?:ged|ging)?[\s-]*(?:in|out|on)\b|\blogins?\b|\bsign(?:ed|ing)?[\s-]*(?:in|out|on)\b"
          r"|\bauth\w*|\bsso\b|\bcookies?\b")
# Sentence-level false friends of "upload"/"file".
_NOT_UPLOAD = (r"dall[\s·•.-]*e\b|\bimage\s+generation\b|\bgenerat\w*\s+(?:an\s+)?images?\b|\bimages\s+api\b"
               r"|\bimage\s+(?:edits?|variations?)\b|\b(?:edits?|variations?|inpaint\w*|outpaint\w*)\b"
               r"|\bprofile\s+(?:pictures?|photos?|images?)\b|\bavatars?\b|\bsora\b|\bvideos?\b"
               r"|\bconfig(?:uration)?\s+files?\b|\blogs\b|/etc/hosts\b")
_NOT_FILE_NOUN = r"\bconfig(?:uration)?\s+files?\b|/etc/hosts\b|\blog\s+files?\b|\bprofile\s+(?:pictures?|photos?)\b"

DEFAULT_RULES: tuple[Rule, ...] = (
    # ---------------------------------------------------------------------------------------- file-upload
    # "Elevated error rates with file uploads", "Elevated errors uploading files in ChatGPT", "File uploads to
    # ChatGPT conversations are failing", "processing newly uploaded files", "document upload on claude.ai".
    Rule(
        name="file-upload/upload-wording",
        tag="file-upload",
        pattern=(
            r"\bfile[\s-]?upload(?:s|ing|er)?\b"
            rf"|\bupload(?:s|ed|ing)?\s+{_FILLER}{{0,3}}{_FILE_OBJ}\b"
            rf"|\b{_FILE_OBJ}\s+(?:(?:are|is|being|were|was|not)\s+){{0,2}}upload(?:s|ed|ing)?\b"
        ),
        exclude=_NOT_FILE_NOUN,
    ),
    # Bare "upload(s)": "uploads are failing in ChatGPT", "images uploaded". Excluded in sentences about image
    # generation (DALL·E edits/variations take an uploaded image), profile pictures, Sora/videos, logs.
    Rule(
        name="file-upload/upload-word",
        tag="file-upload",
        pattern=r"\b(?:re-?)?upload(?:s|ed|ing|er)?\b",
        exclude=_NOT_UPLOAD,
    ),
    # Processing/indexing of uploaded files: "File Processing Delays", "Elevated errors indexing files in
    # Assistants API", "preprocess training data files", "ChatGPT is failing to analyze files", "file processing".
    Rule(
        name="file-upload/file-processing",
        tag="file-upload",
        pattern=(
            r"\bfiles?\s+(?:processing|indexing|parsing|ingestion|conversion|extraction|retrieval|validation"
            r"|verification|analysis)\b"
            r"|\b(?:(?:pre-?)?process|index|pars|ingest|read|retriev|analy[sz]|extract|validat|verif|open)\w*\s+"
            rf"{_FILLER}{{0,3}}(?:files|documents|pdfs|spreadsheets|csvs|attachments)\b"
        ),
        exclude=_NOT_FILE_NOUN,
    ),
    # Search over uploaded files: the Assistants/Responses "file_search" tool and its vector stores, the
    # Assistants v1 "retrieval" tool, GPT "knowledge" files, Project files, Assistants files / file_ids.
    Rule(
        name="file-upload/file-search",
        tag="file-upload",
        pattern=(
            r"\bfile[\s_-]search\b|\bvector[\s_-]stores?\b|\bretrieval\s+tools?\b"
            r"|\b(?:knowledge|file|document)\s+retrieval\b"
            r"|\bretrieval\b[^.!?\n]{0,40}\bassistants?\b|\bassistants?\b[^.!?\n]{0,40}\bretrieval\b"
            r"|\bknowledge\s+(?:files?|base\s+files?|uploads?|documents?)\b|\bgpts?\s+knowledge\b"
            r"|\bproject\s+files\b|\bassistants?\s+files?\b|\bmessage\s+files\b|\bfile[\s_]ids?\b"
        ),
    ),
    # The Files API by name, or "Files" named as the thing affected: "Elevated error rates affecting Files
    # and Fine-tuned model creation", "/v1/files", "the Files endpoint".
    Rule(
        name="file-upload/files-api",
        tag="file-upload",
        pattern=(
            r"\bfiles?\s+(?:api|endpoints?)\b|/v1/files\b"
            r"|\b(?:affecting|impacting|errors?\s+(?:on|with|in|for)|error\s+rates?\s+(?:on|with|in|for)"
            r"|issues?\s+with|problems?\s+with|outage\s+(?:on|of|for)|degraded\s+performance\s+(?:on|for))"
            r"\s+(?:the\s+)?files\b"
        ),
        exclude=_NOT_FILE_NOUN,
    ),
    # "Partial disruption for text attachments", "attaching files". Mail attachments are not uploads.
    Rule(
        name="file-upload/attachments",
        tag="file-upload",
        pattern=(
            r"\battachments?\b"
            r"|\battach(?:es|ed|ing)?\s+(?:(?:a|an|the|your|their|some|multiple)\s+)?"
            r"(?:files?|documents?|images?|photos?|screenshots?|pdfs?|spreadsheets?)\b"
        ),
        exclude=r"\be-?mails?\b|\bnotifications?\b",
    ),
    # File types users upload. Not invoices, usage exports or downloads of conversations.
    Rule(
        name="file-upload/file-types",
        tag="file-upload",
        pattern=r"\b(?:pdfs?|csvs?|spreadsheets?|excel\s+files?|xlsx|docx|pptx|word\s+documents?)\b",
        exclude=(r"\binvoices?\b|\bbilling\b|\breceipts?\b|\busage\b|\bexport\w*|\bdownload\w*|\bdocumentation\b"
                 r"|\bhelp\s+center\b"),
    ),
    # status.openai.com components: ChatGPT "File uploads", API "Files". The caller passes affected ones only.
    Rule(
        name="file-upload/component",
        tag="file-upload",
        components=("File uploads", "File upload", "Files", "Files API"),
    ),
    # --------------------------------------------------------------------------------------- file-expired
    # "giving an error message indicating the file has expired", "expired files", "file expiration".
    Rule(
        name="file-expired/file-expired",
        tag="file-expired",
        pattern=(
            r"\b(?:files?|uploads?|attachments?|documents?)\b[^.!?\n]{0,60}?"
            r"\b(?:has|have|had|is|are|was|were)\s+(?:already\s+|now\s+)?expired\b"
            r"|\bexpired\s+(?:(?:uploaded|user)\s+)?(?:files?|uploads?|attachments?|documents?)\b"
            r"|\bfiles?\s+expir(?:y|ation|ing|es|ed)\b"
            r"|\bexpir(?:y|ation)\s+of\s+(?:(?:the|uploaded|user)\s+)*(?:files?|uploads?|attachments?)\b"
        ),
        exclude=(r"\bcertificates?\b|\bcerts?\b|\btokens?\b|\bpasswords?\b|\bapi\s+keys?\b|\bcredentials?\b"
                 r"|\bsubscriptions?\b|\bcards?\b|\bdomains?\b|\bssl\b|\btls\b"),
    ),
    # "Code interpreter session expired", "session expired" next to file/upload/data-analysis wording, the
    # Responses API's code interpreter "container expired", and "code execution state reset" (the same lost
    # sandbox, and with it the uploaded files). A login session expiring is not this.
    Rule(
        name="file-expired/session-expired",
        tag="file-expired",
        pattern=(
            r"\b(?:code[\s_-]?interpreter|data\s+analysis|python|sandbox|code\s+execution|files?|uploads?"
            r"|attachments?)\b[^.!?\n]{0,80}?\b(?:sessions?|containers?)\b[^.!?\n]{0,20}?"
            r"\b(?:expired|expiring|expires|timed\s+out|timing\s+out)\b"
            r"|\b(?:sessions?|containers?)\b[^.!?\n]{0,20}?\b(?:expired|expiring|expires|timed\s+out)\b[^.!?\n]{0,80}?"
            r"\b(?:code[\s_-]?interpreter|data\s+analysis|python|sandbox|files?|uploads?|attachments?)\b"
            r"|\b(?:code[\s_-]?interpreter|data\s+analysis|python|code\s+execution)\s+"
            r"(?:environment|sandbox|state|kernel|container)s?\s+(?:(?:has|have|had|was|were|is|are|being)\s+)?"
            r"(?:expired|reset|timed\s+out)\b"
        ),
        exclude=_LOGIN,
    ),
    # -------------------------------------------------------------------------------------- data-analysis
    # "Code interpreter and plugins not completing", "Code Interpreter is currently under maintenance".
    Rule(
        name="data-analysis/code-interpreter",
        tag="data-analysis",
        pattern=r"\bcode[\s_-]?interpreter\b",
    ),
    # "Advanced Data Analysis failing on ChatGPT", "Data analysis and file uploads are now performing normally".
    # Not "our data analysis of the root cause".
    Rule(
        name="data-analysis/data-analysis",
        tag="data-analysis",
        pattern=r"\b(?:advanced\s+)?data\s+analysis\b",
        exclude=r"\broot\s+cause|\bpostmortem\b|\bour\s+(?:own\s+)?data\s+analysis\b",
    ),
    # "ADA" in capitals is Advanced Data Analysis; the model family is written "ada" / "Ada" / "text-...-ada-002".
    # Same as (?-i:\bADA\b), written literal-first: the regex engine then skips ahead to "ADA" (30x faster).
    Rule(
        name="data-analysis/ada",
        tag="data-analysis",
        pattern=r"(?-i:ADA)(?<!\wADA)(?!\w)",
        exclude=(r"\bmodels?\b|\bembeddings?\b|\bfine[\s-]?tun\w*|\bbabbage\b|\bcurie\b|\bdavinci\b"
                 r"|\bcomplian\w*|\baccessib\w*|\bdisabilit\w*"),
    ),
    # "ChatGPT is failing to analyze files", "analyzing spreadsheets": the analysis itself (the upload side is
    # tagged file-upload by file-upload/file-processing). Not "analyzing logs/data" during an investigation.
    Rule(
        name="data-analysis/analyze-files",
        tag="data-analysis",
        pattern=(r"\banaly[sz](?:e|es|ed|ing|is)\s+(?:(?:the|your|their|uploaded|user|of)\s+){0,3}"
                 r"(?:files|spreadsheets|csvs?|data\s+files|datasets?|excel\s+files)\b|\bfile\s+analysis\b"),
    ),
    # The python tool behind data analysis: "python tool", "code execution", "ChatGPT is unable to run code".
    # Not Codex (its own product), Canvas (browser runtime), SDKs/clients/CLIs, or the agent.
    Rule(
        name="data-analysis/python-tool",
        tag="data-analysis",
        pattern=(r"\bpython\s+(?:tool|sandbox|environment|execution|interpreter)\b|\bcode\s+execution\b"
                 r"|\b(?:run|runs|running|execute|executes|executing|execution\s+of)\s+(?:python|code)\b"),
        exclude=r"\bcodex\b|\bcanvas\b|\bsdks?\b|\blibrar(?:y|ies)\b|\bclients?\b|\bcli\b|\bagents?\b",
    ),
    # No such component on status.openai.com in 2026; kept for pages (and eras) that name one.
    Rule(
        name="data-analysis/component",
        tag="data-analysis",
        components=("Code Interpreter", "Advanced Data Analysis", "Data Analysis"),
    ),
)


# Speed: a literal gate per built-in rule. Every match of the rule's pattern contains one of these substrings
# (after casefolding), so a text holding none of them is not searched with the (slower) regex. Looked up by
# pattern string, so a pattern changed by hand simply has no gate; config patterns have none either.
# tests/test_tags.py checks on every case text that no match escapes its gate.
_GATE_BY_RULE: dict[str, tuple[str, ...]] = {
    "file-upload/upload-wording": ("upload",),
    "file-upload/upload-word": ("upload",),
    "file-upload/file-processing": ("file", "document", "pdf", "spreadsheet", "csv", "attachment"),
    "file-upload/file-search": ("file", "vector", "retrieval", "knowledge"),
    "file-upload/files-api": ("file",),
    "file-upload/attachments": ("attach",),
    "file-upload/file-types": ("pdf", "csv", "spreadsheet", "excel", "xlsx", "docx", "pptx", "word"),
    "file-expired/file-expired": ("expir",),
    "file-expired/session-expired": ("session", "container", "expired", "reset", "timed"),
    "data-analysis/code-interpreter": ("interpreter",),
    "data-analysis/data-analysis": ("analysis",),
    "data-analysis/ada": ("ada",),
    "data-analysis/analyze-files": ("analy",),
    "data-analysis/python-tool": ("python", "code"),
}
_GATES: dict[str, tuple[str, ...]] = {r.pattern: _GATE_BY_RULE[r.name] for r in DEFAULT_RULES if r.pattern}

# --------------------------------------------------------------------------------------------------------
# Building rules from the config

_TABLE_KEYS = ("patterns", "components", "exclude", "replace")
_TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _check_regex(pattern: object, where: str) -> str:
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: expected a string (a regex), got {type(pattern).__name__}")
    if not pattern.strip():
        raise ValueError(f"{where}: empty regex")
    try:
        rx = _compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: invalid regex: {exc}") from None
    if rx.search("") is not None:
        raise ValueError(f"{where}: regex matches the empty string (it would match every text)")
    return pattern


def _join_exclude(a: str | None, b: str | None) -> str | None:
    if a and b:
        return f"(?:{a})|(?:{b})"
    return a or b


class RuleTable(NamedTuple):
    """One `[tags.<tag>]` or `[surfaces.<name>]` table of the config, checked."""
    patterns: tuple[str, ...]
    components: tuple[str, ...]
    exclude: str | None
    replace: bool


def read_table(where: str, table: object) -> RuleTable:
    """A config table of rules (`patterns`, `components`, `exclude`, `replace`), checked; ValueErrors name the
    key, e.g. ``tags.file-upload.patterns[1]: invalid regex: ...``."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in _TABLE_KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (allowed: {', '.join(_TABLE_KEYS)})")
    replace = table.get("replace", False)
    if not isinstance(replace, bool):
        raise ValueError(f"{where}.replace: expected true or false, got {replace!r}")
    exclude = table.get("exclude")
    if exclude is not None:
        exclude = _check_regex(exclude, f"{where}.exclude")
    patterns = table.get("patterns", [])
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError(f"{where}.patterns: expected a list of regexes, got {type(patterns).__name__}")
    for i, pattern in enumerate(patterns):
        _check_regex(pattern, f"{where}.patterns[{i}]")
    components = table.get("components", [])
    if isinstance(components, str) or not isinstance(components, Sequence):
        raise ValueError(f"{where}.components: expected a list of component names, got {type(components).__name__}")
    for i, comp in enumerate(components):
        if not isinstance(comp, str) or not comp.strip():
            raise ValueError(f"{where}.components[{i}]: expected a non-empty component name, got {comp!r}")
    return RuleTable(tuple(patterns), tuple(c.strip() for c in components), exclude, replace)


def read_tables(config: object, section: str, name_rx: re.Pattern[str],
                bad_name: str) -> list[tuple[str, RuleTable]]:
    """The `[<section>.<name>]` tables of the config (`tags`, `surfaces`), each name and table checked."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ValueError(f"{section}: expected a table, got {type(config).__name__}")
    out = []
    for name, table in config.items():
        if not isinstance(name, str) or not name_rx.fullmatch(name):
            raise ValueError(f"{section}.{name}: {bad_name}")
        out.append((name, read_table(f"{section}.{name}", table)))
    return out


def replaced_and_excluded(tables: list[tuple[str, RuleTable]]) -> tuple[set[str], dict[str, str]]:
    """The names whose built-in rules a table replaces, and the extra exclude of the others that have one."""
    return ({name for name, t in tables if t.replace},
            {name: t.exclude for name, t in tables if not t.replace and t.exclude is not None})


def build_rules(config_tags: Mapping[str, Mapping] | None, defaults: Sequence[Rule] = DEFAULT_RULES) -> tuple[Rule, ...]:
    """Config ``[tags.<tag>]`` tables -> rules.

    Each table may have ``patterns`` (list of regexes, searched case-insensitively), ``components`` (list of
    exact component names), ``exclude`` (a regex; it applies to every text rule of the tag, the built-in ones
    included, in addition to their own exclude) and ``replace`` (bool, default false: false adds to the
    built-in rules of that tag, true drops them; ``replace = true`` alone disables the tag). A table for an
    unknown tag creates a new tag. Config rules are named ``config:<tag>/patterns[<i>]`` (0-based, as in the
    error messages) and ``config:<tag>/components``. Errors are ValueErrors naming the key, e.g.
    ``tags.file-upload.patterns[1]: invalid regex: ...`` or ``tags.file-upload: unknown key 'x'``.
    """
    tables = read_tables(config_tags, "tags", _TAG_NAME,
                         "invalid tag name (letters, digits, '-', '_', '.'; at most 100 chars)")
    added: list[Rule] = []
    for tag, t in tables:
        added += [Rule(name=f"config:{tag}/patterns[{i}]", tag=tag, pattern=pattern, exclude=t.exclude)
                  for i, pattern in enumerate(t.patterns)]
        if t.components:
            added.append(Rule(name=f"config:{tag}/components", tag=tag, components=t.components))
    replaced, extra_exclude = replaced_and_excluded(tables)

    rules: list[Rule] = []
    for rule in defaults:
        if rule.tag in replaced:
            continue
        if rule.tag in extra_exclude and rule.pattern is not None:
            rule = _dc_replace(rule, exclude=_join_exclude(rule.exclude, extra_exclude[rule.tag]))
        rules.append(rule)
    rules.extend(added)

    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"tags: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
    return tuple(rules)


# --------------------------------------------------------------------------------------------------------
# Matching

@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_MD_LINK_TARGET = re.compile(r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
_URL = re.compile(r"<?\bhttps?://[^\s<>()\[\]]+>?")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n")
_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    """Drop what is not wording: Markdown link targets, URLs, HTML tags (line-breaking ones become newlines)."""
    if "](" in text:
        text = _MD_LINK_TARGET.sub("]", text)
    if "://" in text:
        text = _URL.sub(" ", text)
    return strip_html(text, tag=" ")


def _sentence(text: str, start: int, end: int) -> tuple[int, int]:
    """Bounds of the sentence(s) holding text[start:end]."""
    s = 0
    for m in _SENTENCE_BREAK.finditer(text, 0, start):
        s = m.end()
    m = _SENTENCE_BREAK.search(text, end)
    return s, (m.start() if m else len(text))


def _snippet(text: str, s: int, e: int, ms: int, me: int) -> str:
    """The sentence, whitespace collapsed; when longer than SNIPPET_MAX, a window around the match."""
    out = _WS.sub(" ", text[s:e]).strip()
    if len(out) <= SNIPPET_MAX:
        return out
    match = _WS.sub(" ", text[ms:me]).strip()
    before = _WS.sub(" ", text[s:ms]).lstrip()
    after = _WS.sub(" ", text[me:e]).rstrip()
    room = SNIPPET_MAX - 2 - len(match)  # two ellipses at most
    if room <= 0:
        return cap(match, SNIPPET_MAX)
    left = before[max(0, len(before) - room // 2):]
    right = after[: room - len(left)]
    out = ("…" if len(left) < len(before) else "") + left + match + right + ("…" if len(right) < len(after) else "")
    return out[:SNIPPET_MAX]


class _Plan:
    """Rules grouped and compiled once per rule table."""

    __slots__ = ("text_rules", "components", "gate_keys", "ungated")

    def __init__(self, rules: tuple[Rule, ...]):
        text_rules: dict[str, list[tuple[Rule, re.Pattern[str], re.Pattern[str] | None, frozenset[str]]]] = {}
        components: dict[str, list[Rule]] = {}
        for rule in rules:
            if rule.pattern:
                text_rules.setdefault(rule.tag, []).append(
                    (rule, _compile(rule.pattern), _compile(rule.exclude) if rule.exclude else None,
                     frozenset(_GATES.get(rule.pattern, ()))))
            for comp in rule.components:
                components.setdefault(comp.strip().casefold(), []).append(rule)
        self.text_rules = text_rules
        self.components = components
        gates = [g for lst in text_rules.values() for *_, g in lst]
        self.gate_keys = tuple(sorted(set().union(*gates)))
        self.ungated = any(not g for g in gates)


@functools.lru_cache(maxsize=32)
def _plan_for(rules: tuple[Rule, ...]) -> _Plan:
    return _Plan(rules)


_last_plan: tuple[object, _Plan] | None = None


def _plan(rules: Sequence[Rule]) -> _Plan:
    """The plan of a rule table; the same table object (the usual case) skips hashing the rules."""
    global _last_plan
    last = _last_plan
    if last is not None and last[0] is rules:
        return last[1]
    plan = _plan_for(rules if isinstance(rules, tuple) else tuple(rules))
    if isinstance(rules, tuple):  # immutable: safe to remember by identity
        _last_plan = (rules, plan)
    return plan


def _first_match(text: str, rx: re.Pattern[str], exclude: re.Pattern[str] | None) -> tuple[int, int, int, int] | None:
    """(sentence start, sentence end, match start, match end) of the first match not excluded."""
    for m in rx.finditer(text):
        if m.end() == m.start():
            continue
        s, e = _sentence(text, m.start(), m.end())
        if exclude is not None and exclude.search(text, s, e):
            continue
        return s, e, m.start(), m.end()
    return None


def tag_incident(rules: Sequence[Rule], title: str | None, bodies: Iterable[str | None],
                 components: Iterable[str]) -> list[TagMatch]:
    """Pure. At most one TagMatch per tag (the first evidence found: title, then updates in the given order,
    then components), sorted by tag name. None/empty texts are skipped. Bodies may be Markdown or plain text."""
    plan = _plan(rules)
    found: dict[str, TagMatch] = {}

    texts: list[tuple[str, str]] = []
    if plan.text_rules:
        if isinstance(title, str) and title.strip():
            texts.append(("title", _clean(title)))
        texts.extend(("update", _clean(b)) for b in bodies if isinstance(b, str) and b.strip())

    if texts:
        # Gate substrings present anywhere in the incident: most incidents have none, and are done here.
        keys = plan.gate_keys
        if keys:
            everything = "\n".join(t for _, t in texts).casefold()
            keys = tuple(k for k in keys if k in everything)
        pending = list(plan.text_rules)
        if keys or plan.ungated:
            for field, text in texts:
                folded = text.casefold()
                present = {k for k in keys if k in folded}
                if not present and not plan.ungated:
                    continue
                for tag in list(pending):
                    for rule, rx, exclude, gate in plan.text_rules[tag]:
                        if gate and gate.isdisjoint(present):
                            continue
                        hit = _first_match(text, rx, exclude)
                        if hit is not None:
                            found[tag] = TagMatch(tag, rule.name, field, _snippet(text, *hit))
                            pending.remove(tag)
                            break
                if not pending:
                    break

    if plan.components:
        for comp in components:
            if not isinstance(comp, str):
                continue
            for rule in plan.components.get(comp.strip().casefold(), ()):
                if rule.tag not in found:
                    found[rule.tag] = TagMatch(rule.tag, rule.name, "component", _WS.sub(" ", comp).strip()[:SNIPPET_MAX])

    return [found[t] for t in sorted(found)]
