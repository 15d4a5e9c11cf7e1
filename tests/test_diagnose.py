"""`monitor diagnose`: the error-wording rules from a table of real wordings and near misses
(tests/data/error_cases.toml), files built in a temp directory (sparse files over the limits), and the real
CLI joined to the verdict through the replay server at moments with and without an upload incident open."""
from __future__ import annotations

import json
import os
import re
import time
import tomllib
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import run, write_config
from replay import INCIDENT_FILE_EXPIRED, IncidentIoPage, ReplayServer, StatuspagePage, incidentio_incidents

from monitor import diagnose as dg
from monitor.verdict import CHECKLIST

MiB = 1024 * 1024
CASES = tomllib.loads((Path(__file__).parent / "data" / "error_cases.toml").read_text(encoding="utf-8"))["case"]
RULES = dg.load_rules()
QUIET = "2024-05-08T00:00:00Z"          # no upload-related incident open
MAJOR = "433mh2zvfmww"                  # 2024-08-19 "File uploads returning error messages", impact major
MAJOR_OPEN = "2024-08-19T19:00:00Z"
SESSION_STEPS = [
    "Upload the original file again in the same or a new chat and rerun the analysis from the start.",
    "Ask for downloads (charts, cleaned files) again instead of reopening old download links: those pointed "
    "into the expired session.",
    "For long work, keep the conversation active or save intermediate results to your computer.",
]
CSV_REASON = ("60.0 MB is over the limit of about 50 MB for CSV files and spreadsheets (it depends on the size "
              "of each row), by 10.0 MB")
CSV_ADVICE = ("Split the spreadsheet into several files, drop the columns you do not need, or export only the "
              "sheet you need as CSV.")


# -------------------------------------------------------------------------------------- error wordings

def test_case_table_is_well_formed():
    names = {r.name for r in RULES.errors}
    texts = [c["text"] for c in CASES]
    assert len(texts) == len(set(texts)), "duplicate case"
    for c in CASES:
        assert set(c) == {"text", "expect", "source", "reason"}, c
        assert c["expect"] in names | {""}, c
        assert c["source"] in ("reported", "variant", "near miss") and c["reason"].strip(), c
    assert {c["expect"] for c in CASES if c["source"] == "reported"} >= names - {"upload-too-large"}
    assert {c["expect"] for c in CASES} >= names
    assert sum(c["source"] == "near miss" for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
def test_error_case(case):
    rule = dg.match_error(case["text"], RULES)
    assert (rule.name if rule else "") == case["expect"], case["reason"]


def test_rules_file_names_its_source_and_date_and_the_published_limits():
    assert "help.openai.com" in RULES.source["limits"] and "2025-11-14" in RULES.source["errors"]
    assert RULES.source["recorded"] == "2026-12-02"
    by_name = {lim.name: lim for lim in RULES.limits}
    assert by_name["any-file"].max_bytes == 512 * MiB and by_name["any-file"].kinds == ("*",)
    assert by_name["spreadsheet"].max_bytes == 50 * MiB
    assert by_name["image"].max_bytes == 20 * MiB
    assert by_name["tokens"].max_tokens == 2_000_000 and by_name["tokens"].max_bytes is None
    assert (RULES.max_files, RULES.window_hours) == (80, 3)
    for lim in RULES.limits:
        assert lim.label.startswith("the ") and lim.advice.endswith(".")
    for r in RULES.errors:
        assert r.cause and r.steps
        for rx in (*r.patterns, r.exclude or "x"):
            assert re.compile(rx).search("") is None, (r.name, rx)


# ----------------------------------------------------------------------------------------------- files

def sparse(path: Path, size: int, head: bytes = b"") -> str:
    path.write_bytes(head)
    os.truncate(path, size)
    return str(path)


def test_small_csv_is_ok(tmp_path):
    p = tmp_path / "sales.csv"
    p.write_text("region,month,revenue\nnorth,2026-01,1200\nsouth,2026-01,900\n")
    f = dg.check_file(str(p), RULES)
    assert (f.ok, f.kind, f.bytes, f.reasons, f.tokens) == (True, "spreadsheet", 21 + 19 + 18, [], None)


def test_csv_over_the_limit_says_by_how_much_and_what_to_do(tmp_path):
    f = dg.check_file(sparse(tmp_path / "big.csv", 60 * MiB, b"a,b\n"), RULES)
    assert (f.ok, f.kind, f.bytes) == (False, "spreadsheet", 60 * MiB)
    assert f.reasons == [CSV_REASON] and f.advice == [CSV_ADVICE]


def test_csv_at_the_limit_is_ok_one_byte_more_is_not(tmp_path):
    assert dg.check_file(sparse(tmp_path / "a.xlsx", 50 * MiB), RULES).ok
    f = dg.check_file(sparse(tmp_path / "b.xlsx", 50 * MiB + 1), RULES)
    assert f.reasons == [CSV_REASON.replace("60.0", "50.0").replace("10.0 MB", "0.0 MB")]


def test_image_recognised_by_its_png_header_whatever_its_name(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    small = dg.check_file(sparse(tmp_path / "screenshot.png", 4096, png), RULES)
    assert (small.ok, small.kind) == (True, "image")
    f = dg.check_file(sparse(tmp_path / "scan.dat", 25 * MiB, png), RULES)
    assert (f.ok, f.kind) == (False, "image")
    assert f.reasons == ["25.0 MB is over the 20 MB limit per image, by 5.0 MB"]
    assert f.advice == ["Compress the image (save it as JPEG or WebP) or reduce its resolution."]


@pytest.mark.parametrize(("name", "head", "kind"), [
    ("photo", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image"),
    ("anim", b"GIF89a\x01\x00\x01\x00", "image"),
    ("pic", b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image"),
    ("iphone", b"\x00\x00\x00\x18ftypheic\x00\x00", "image"),
    ("scan", b"II*\x00\x08\x00\x00\x00", "image"),
    ("report.docx", b"PK\x03\x04\x14\x00", "document"),
    ("budget.xlsx", b"PK\x03\x04\x14\x00", "spreadsheet"),
    ("archive.zip", b"PK\x03\x04\x14\x00", "other"),
    ("table.TSV", b"a\tb\n", "spreadsheet"),
    ("main.py", b"print(1)\n", "text"),
])
def test_kind_by_first_bytes_then_extension(tmp_path, name, head, kind):
    assert dg.check_file(sparse(tmp_path / name, 1000, head), RULES).kind == kind


def test_any_file_over_512_mb_is_checked_without_reading_it(tmp_path):
    path = sparse(tmp_path / "dump.bin", 600 * MiB, b"\x00\x01\x02")
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        f = dg.check_file(path, RULES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 4 * MiB                        # one bounded read (1 MiB), not 600 MiB
    assert (f.ok, f.kind) == (False, "other")
    assert f.reasons == ["600.0 MB is over the 512 MB limit for any file, by 88.0 MB"]


def test_text_tokens_are_estimated_and_said_to_be(tmp_path):
    p = tmp_path / "notes.md"
    p.write_bytes(b"abcd" * 1000)                 # 4000 ASCII characters: 1000 tokens at 4 a token
    f = dg.check_file(str(p), RULES)
    assert (f.ok, f.kind, f.tokens) == (True, "text", 1000)
    assert f.notes == ["about 1,000 tokens: an estimate from the whole file, 4 ASCII characters per token"]


def test_text_over_2m_tokens_is_estimated_from_its_first_mb_only(tmp_path):
    """The first MiB is 524,288 'é' (one token each by the estimate); the rest of the 4 MiB file is a sparse
    tail of zero bytes that a whole read would count as ASCII (1,310,720 tokens: under the limit). Estimated
    from the first MiB alone: 4 x 524,288 = 2,097,152 tokens, over by 97,152."""
    f = dg.check_file(sparse(tmp_path / "book.txt", 4 * MiB, "é".encode() * (MiB // 2)), RULES)
    assert (f.ok, f.kind, f.tokens) == (False, "text", 2_097_152)
    assert f.reasons == ["about 2,097,152 tokens (estimated) is over the limit of about 2M tokens for text and "
                         "document files, by about 97,152"]
    assert f.notes == ["about 2,097,152 tokens: an estimate from its first 1 MB, 4 ASCII characters per token"]


def test_unknown_extension_is_text_when_it_reads_as_text(tmp_path):
    (tmp_path / "data.weird").write_text("plain words here\n" * 10)
    (tmp_path / "blob.weird").write_bytes(b"\xff\xfe\x00\x01" * 10)
    assert dg.check_file(str(tmp_path / "data.weird"), RULES).kind == "text"
    assert dg.check_file(str(tmp_path / "blob.weird"), RULES).kind == "other"


def test_pdf_tokens_are_not_estimated_and_it_says_so(tmp_path):
    f = dg.check_file(sparse(tmp_path / "paper", 300_000, b"%PDF-1.7\n"), RULES)
    assert (f.ok, f.kind, f.tokens) == (True, "document", None)
    assert f.notes == ["tokens not estimated: the text would have to be extracted first"]


# ----------------------------------------------------------------------------------- the real command

@pytest.fixture
def sp(openai_history):
    with ReplayServer(StatuspagePage(openai_history), now=QUIET) as srv:
        yield srv


def diagnose(cfg: Path, *args: str):
    return run(cfg, "diagnose", *args, ok=None)


def test_quiet_moment_exit_0_with_the_findings(tmp_path, sp):
    big = sparse(tmp_path / "big.csv", 60 * MiB, b"a,b\n")
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    r = diagnose(cfg, big, "--error", "Code interpreter session expired")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "TROUBLESHOOT LOCALLY: no upload-related incident and no broad outage is open"
    assert lines[1].startswith("Source openai: fresh, last good poll ")
    assert lines[2:] == [
        f"{big}: OVER A LIMIT (spreadsheet, 60.0 MB)",
        f"  - {CSV_REASON}.",
        f"    {CSV_ADVICE}",
        "Error 'Code interpreter session expired': session-expired",
        "  Likely cause: The code-execution session behind data analysis ended (ChatGPT destroys it within "
        "13 hours of inactivity), and the files and variables in it went with it.",
        "  What to do:",
        *[f"    {n}. {s}" for n, s in enumerate(SESSION_STEPS, 1)],
    ]                                            # specific findings: no generic checklist


def test_major_incident_open_means_wait_whatever_the_file_exit_2(tmp_path, sp):
    sp.now = MAJOR_OPEN
    big = sparse(tmp_path / "big.csv", 60 * MiB, b"a,b\n")
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    r = diagnose(cfg, big, "--error", "Something went wrong")
    assert r.exit_code == 2, r.output
    lines = r.stdout.splitlines()
    assert lines[:3] == ["WAIT: 1 upload-related incident open (worst impact: major)",
                         "No estimate: no comparable incident lasted this long.",
                         "  - File uploads returning error messages"]
    assert "An upload incident is open: wait for it to end, whatever the files or error below say." in lines
    r = diagnose(cfg, big, "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 2 == data["exit_code"]
    assert data["verdict"] == "wait" and [i["id"] for i in data["incidents"]] == [MAJOR]
    assert data["files"] == [{"path": big, "ok": False, "kind": "spreadsheet", "bytes": 60 * MiB,
                              "reasons": [CSV_REASON], "advice": [CSV_ADVICE], "estimated_tokens": None,
                              "notes": []}]
    assert data["error"] is None


def test_file_has_expired_during_the_2025_11_14_incident_says_it_was_openais(tmp_path):
    inc = next(i for i in incidentio_incidents() if i.id == INCIDENT_FILE_EXPIRED)
    with ReplayServer(IncidentIoPage(incidentio_incidents()), now=inc.updates[1].posted + timedelta(minutes=1)) as srv:
        cfg = write_config(tmp_path, {"openai": srv.base_url}, history_days=0)
        r = diagnose(cfg, "--error", "The file has expired", "--json")
        text = diagnose(cfg, "--error", "The file has expired")
        srv.now = inc.updates[-1].posted + timedelta(minutes=1)       # resolved
        run(cfg, "poll")
        after = diagnose(cfg, "--error", "The file has expired", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 2 and data["verdict"] == "wait", r.output     # partial outage of File uploads
    assert [i["id"] for i in data["incidents"]] == [INCIDENT_FILE_EXPIRED]
    assert data["error"]["matched"] == "file-unavailable"
    assert "2025-11-14" in data["error"]["incident_note"]
    assert text.exit_code == 2 and text.stdout.splitlines()[-6:-3] == [
        "Error 'The file has expired': file-unavailable",
        "  Likely cause: The upload is no longer attached to the conversation: it expired with the session "
        "behind it, or it never finished uploading.",
        "  During an upload incident this wording came from OpenAI's side: on 2025-11-14 uploads failed with "
        "\"the file has expired\" for files uploaded moments earlier."]
    assert data["files"] == [] and set(data) == {"verdict", "exit_code", "reason", "files", "error", "notes",
                                                 "incidents", "checked_at"}
    data = json.loads(after.stdout)
    assert after.exit_code == 0 and data["verdict"] == "troubleshoot-locally", after.output
    assert data["error"]["matched"] == "file-unavailable" and data["error"]["incident_note"] is None
    assert data["error"]["steps"][0] == "Upload the file again in a new message and rerun the request."


def test_unknown_wording_falls_back_to_the_verdict_and_its_checklist(tmp_path, sp):
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    r = diagnose(cfg, "--error", "The model is thinking very hard")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "TROUBLESHOOT LOCALLY: no upload-related incident and no broad outage is open"
    assert lines[2:] == ["Local checklist:", *[f"  {n}. {c}" for n, c in enumerate(CHECKLIST, 1)],
                         "Error 'The model is thinking very hard': not a wording this command knows; "
                         "go by the verdict above."]
    data = json.loads(diagnose(cfg, "--error", "The model is thinking very hard", "--json").stdout)
    assert data["error"] == {"text": "The model is thinking very hard", "matched": None, "cause": None,
                             "steps": [], "incident_note": None}


def test_page_unreachable_is_unknown_exit_3_with_the_local_findings(tmp_path):
    with ReplayServer(StatuspagePage([]), now=QUIET) as srv:
        url = srv.base_url
    cfg = write_config(tmp_path, {"openai": url})                    # nothing listens there any more
    small = tmp_path / "ok.csv"
    small.write_text("a,b\n1,2\n")
    r = diagnose(cfg, str(small))
    assert r.exit_code == 3, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("UNKNOWN: no fresh data: openai has never been polled successfully")
    assert lines[-1] == f"{small}: ok (spreadsheet, 8 bytes)"


@pytest.mark.parametrize("make", ["missing", "directory", "fifo"])
def test_bad_file_is_one_line_naming_it_exit_2_before_any_poll(tmp_path, sp, make):
    path = tmp_path / "input.csv"
    expected = {"missing": "No such file or directory", "directory": "is a directory, not a file",
                "fifo": "not a regular file"}[make]
    if make == "directory":
        path.mkdir()
    elif make == "fifo":
        os.mkfifo(path)                          # opening it would block: never opened
    ok = tmp_path / "ok.csv"
    ok.write_text("a\n")
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    sp.clear_requests()
    r = diagnose(cfg, str(ok), str(path), "--error", "network error")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == f"Error: {path}: {expected}\n"
    assert sp.requests == []


def test_more_than_80_files_notes_the_cap(tmp_path, sp):
    paths = []
    for n in range(81):
        p = tmp_path / f"part{n}.csv"
        p.write_text("a\n")
        paths.append(str(p))
    cfg = write_config(tmp_path, {"openai": sp.base_url})
    data = json.loads(diagnose(cfg, *paths, "--json").stdout)
    assert len(data["files"]) == 81 and all(f["ok"] for f in data["files"])
    assert data["notes"] == ["81 files: ChatGPT takes up to 80 files every 3 hours; upload the rest later or "
                             "combine small files."]


def test_verdict_that_cannot_be_computed_is_unknown_exit_3_with_the_findings(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("pages = [\n")
    r = diagnose(cfg, "--error", "Error 429", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 3 == data["exit_code"] and data["verdict"] == "unknown"
    assert data["reason"].startswith(f"{cfg}: not valid TOML")
    assert data["error"]["matched"] == "rate-limited"
