"""`monitor diagnose`: the local side of "wait or troubleshoot". The verdict of `monitor status` first, then
each file against ChatGPT's upload limits and an error message against the wordings users report.

The limits and the wording rules are data, with their source and date, in ``diagnose_rules.toml`` next to
this module. Files are checked by their size and one bounded read of their first bytes (at most
``[tokens] sample_bytes``): a large file is never read whole. Token counts are estimates (no tokenizer is
available offline).
"""
from __future__ import annotations

import functools
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files

from monitor import status

# First bytes of the image and PDF formats: a file is recognised by them whatever its name.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image"), (b"\xff\xd8\xff", "image"), (b"GIF87a", "image"),
          (b"GIF89a", "image"), (b"II*\x00", "image"), (b"MM\x00*", "image"), (b"%PDF-", "document"))
_ASCII = bytes(range(0x80))
_CONTINUATION = bytes(range(0x80, 0xC0))   # UTF-8 bytes that do not start a character


class FileError(Exception):
    """A FILE that cannot be checked (missing, unreadable, not a regular file): one line naming it."""


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    kinds: tuple[str, ...]
    label: str
    advice: str
    max_bytes: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorRule:
    name: str
    patterns: tuple[str, ...]
    cause: str
    steps: tuple[str, ...]
    exclude: str | None = None
    during_incident: str | None = None


@dataclass(frozen=True, slots=True)
class Rules:
    limits: tuple[Limit, ...]
    kinds: dict[str, str]                 # extension -> kind
    mb: int
    max_files: int
    window_hours: int
    sample_bytes: int
    ascii_chars_per_token: float
    errors: tuple[ErrorRule, ...]
    source: dict[str, str]


@functools.cache
def load_rules() -> Rules:
    """The shipped rules (monitor/diagnose_rules.toml)."""

    d = tomllib.loads(files("monitor").joinpath("diagnose_rules.toml").read_text(encoding="utf-8"))
    return Rules(
        limits=tuple(Limit(x["name"], tuple(x["kinds"]), x["label"], x["advice"], x.get("max_bytes"),
                           x.get("max_tokens")) for x in d["limit"]),
        kinds={ext: kind for kind, exts in d["kinds"].items() for ext in exts},
        mb=d["files"]["mb"], max_files=d["files"]["max_files"], window_hours=d["files"]["window_hours"],
        sample_bytes=d["tokens"]["sample_bytes"], ascii_chars_per_token=d["tokens"]["ascii_chars_per_token"],
        errors=tuple(ErrorRule(x["name"], tuple(x["patterns"]), x["cause"], tuple(x["steps"]), x.get("exclude"),
                               x.get("during_incident")) for x in d["error"]),
        source={k: str(v) for k, v in d["source"].items()},
    )


# ------------------------------------------------------------------------------------------------ files

@dataclass
class FileFinding:
    path: str
    kind: str                                   # spreadsheet | image | document | text | other
    bytes: int
    tokens: int | None = None                   # estimated, text files only
    reasons: list[str] = field(default_factory=list)    # each limit exceeded, and by how much
    advice: list[str] = field(default_factory=list)     # what to do, one per limit exceeded
    notes: list[str] = field(default_factory=list)      # how it was checked, what was not

    @property
    def ok(self) -> bool:
        return not self.reasons


def check_file(path: str, rules: Rules) -> FileFinding:
    """One file against every limit that applies to its kind. Raises FileError."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise FileError(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):   # a FIFO or device could block or never end
            raise FileError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            sample = f.read(rules.sample_bytes)
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror or exc}") from None
    size = st.st_size
    kind = kind_of(path, sample, rules)
    out = FileFinding(path, kind, size)
    mb = rules.mb
    if kind == "text":
        out.tokens = estimate_tokens(size, sample, rules)
        whole = "the whole file" if len(sample) >= size else f"its first {len(sample) / mb:.0f} MB"
        out.notes.append(f"about {out.tokens:,} tokens: an estimate from {whole}, "
                         f"{rules.ascii_chars_per_token:g} ASCII characters per token")
    elif kind == "document":
        out.notes.append("tokens not estimated: the text would have to be extracted first")
    for lim in rules.limits:
        if "*" not in lim.kinds and kind not in lim.kinds:
            continue
        if lim.max_bytes is not None and size > lim.max_bytes:
            out.reasons.append(f"{size / mb:.1f} MB is over {lim.label}, by {(size - lim.max_bytes) / mb:.1f} MB")
            out.advice.append(lim.advice)
        if lim.max_tokens is not None and out.tokens is not None and out.tokens > lim.max_tokens:
            out.reasons.append(f"about {out.tokens:,} tokens (estimated) is over {lim.label}, "
                               f"by about {out.tokens - lim.max_tokens:,}")
            out.advice.append(lim.advice)
    return out


def kind_of(path: str, head: bytes, rules: Rules) -> str:
    """By the first bytes (images, PDF), then the extension, then whether the first bytes read as text."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if webp or head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1"):
        return "image"
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext in rules.kinds:
        return rules.kinds[ext]
    if b"\x00" not in head and _utf8(head):
        return "text"
    return "other"


def _utf8(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:   # a character cut by the end of the sample is still text
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def estimate_tokens(size: int, sample: bytes, rules: Rules) -> int:
    """Tokens of a text file of `size` bytes from its first bytes: ASCII characters at
    `ascii_chars_per_token` each, every other character (counted by its UTF-8 lead byte) as one token."""
    if not sample:
        return 0
    high = sample.translate(None, _ASCII)
    others = len(high.translate(None, _CONTINUATION))
    per_sample = (len(sample) - len(high)) / rules.ascii_chars_per_token + others
    return round(per_sample * size / len(sample))


# ----------------------------------------------------------------------------------------------- errors

@functools.cache
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE | re.DOTALL)


def match_error(text: str, rules: Rules) -> ErrorRule | None:
    """The first rule, in table order, with a pattern found in `text` and no `exclude` found in it."""
    for rule in rules.errors:
        if rule.exclude and _compile(rule.exclude).search(text):
            continue
        if any(_compile(p).search(text) for p in rule.patterns):
            return rule
    return None


# -------------------------------------------------------------------------------------------- the answer

@dataclass
class Diagnosis:
    report: object | None                  # status.Report, or None when the verdict could not be computed
    failure: str | None                    # why not (status.StatusFailure), else None
    files: list[FileFinding]
    error_text: str | None
    error: ErrorRule | None
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return self.report.verdict.verdict if self.report else "unknown"

    @property
    def exit_code(self) -> int:
        return self.report.verdict.exit_code if self.report else 3

    @property
    def found_something(self) -> bool:
        return self.error is not None or any(not f.ok for f in self.files)


def diagnose(paths, error_text: str | None, gather) -> Diagnosis:
    """Check the files (FileError first, before any polling), match the error, then the verdict:
    `gather()` returns the status.Report (status.gather with the CLI's factories)."""
    rules = load_rules()
    files = [check_file(p, rules) for p in paths]
    notes = []
    if len(files) > rules.max_files:
        notes.append(f"{len(files)} files: ChatGPT takes up to {rules.max_files} files every "
                     f"{rules.window_hours} hours; upload the rest later or combine small files.")
    error = match_error(error_text, rules) if error_text is not None else None
    try:
        report, failure = gather(), None
    except status.StatusFailure as exc:
        report, failure = None, str(exc)
    return Diagnosis(report, failure, files, error_text, error, notes)


def to_json(d: Diagnosis) -> dict:
    """The `monitor diagnose --json` object."""
    base = status.to_json(d.report) if d.report else status.failure_json(d.failure)
    waiting = d.verdict == "wait"
    err = None
    if d.error_text is not None:
        r = d.error
        err = {"text": d.error_text, "matched": r.name if r else None, "cause": r.cause if r else None,
               "steps": list(r.steps) if r else [],
               "incident_note": r.during_incident if r and waiting else None}
    return {"verdict": base["verdict"], "exit_code": base["exit_code"], "reason": base["reason"],
            "files": [{"path": f.path, "ok": f.ok, "kind": f.kind, "bytes": f.bytes, "reasons": f.reasons,
                       "advice": f.advice, "estimated_tokens": f.tokens, "notes": f.notes} for f in d.files],
            "error": err, "notes": d.notes, "incidents": base["incidents"], "checked_at": base["checked_at"]}


def to_text(d: Diagnosis) -> str:
    """The verdict as `monitor status` words it (its checklist only when nothing specific was found), then
    each file and the error."""
    mb = load_rules().mb
    if d.report:
        lines = status.to_text(d.report, checklist=not d.found_something).splitlines()
    else:
        lines = [f"UNKNOWN: {d.failure}"]
    if d.verdict == "wait" and (d.files or d.error_text is not None):
        lines.append("An upload incident is open: wait for it to end, whatever the files or error below say.")
    for f in d.files:
        lines.append(f"{f.path}: {'ok' if f.ok else 'OVER A LIMIT'} ({f.kind}, {_size(f.bytes, mb)})")
        lines += [f"  - {n}" for n in f.notes]
        for reason, advice in zip(f.reasons, f.advice):
            lines += [f"  - {reason}.", f"    {advice}"]
    lines += d.notes
    if d.error_text is not None:
        r = d.error
        if r is None:
            lines.append(f"Error {d.error_text!r}: not a wording this command knows; go by the verdict above.")
        else:
            lines += [f"Error {d.error_text!r}: {r.name}", f"  Likely cause: {r.cause}"]
            if d.verdict == "wait" and r.during_incident:
                lines.append(f"  {r.during_incident}")
            lines.append("  What to do:")
            lines += [f"    {n}. {s}" for n, s in enumerate(r.steps, 1)]
    return "\n".join(lines)


def _size(n: int, mb: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KB" if n < mb else f"{n / mb:.1f} MB"
