"""Rendering outbox payloads into messages (pure).

The incident is a real one: status.openai.com, 2024-05-07, "Elevated errors uploading files in ChatGPT"
(vn8j63zg56hz, impact minor, affected ChatGPT), copied from
shared/data/status-history/openai/incident_history_202403_202405.csv. Its updates, PDT converted to UTC:
Investigating 05-07 17:39 PDT (05-08 00:39Z), Identified 19:11 (02:11Z), Monitoring 20:16 (03:16Z),
Update 23:58 (06:58Z), Resolved 05-08 09:37 PDT (16:37Z).
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from monitor.notify.render import Message, render
from monitor.text import clean_text, safe_link
from monitor.verdict import age_words

URL = "https://status.openai.com/incidents/vn8j63zg56hz"
TITLE = "Elevated errors uploading files in ChatGPT"
INVESTIGATING = ("We noticed increasing errors during file uploads in ChatGPT yesterday. We are currently "
                 "investigating the the issue. This is impacting ChatGPT and not the API.")
IDENTIFIED = ("We have identified the issue causing the elevated file uploads in ChatGPT. We are currently "
              "developing a fix.")
RESOLVED = ("Between May 4th, 9:30PM PDT and May 7th, 10:15PM PDT we saw elevated error rates for file uploads "
            "on ChatGPT. We rolled out a fix and monitored for several hours. Error rates have returned to "
            "normal and this incident is now resolved.")

WAIT = ("Wait: OpenAI reports an active incident affecting file uploads. Retrying now will likely fail; "
        "this message will update when it is resolved.")
CHECKLIST_TEXT = """\
1. Reload the page, or sign out and back in.
2. Re-upload the original file (an upload from an old chat may have expired).
3. Start a new chat: the code-execution session behind data analysis ends after a period of inactivity, \
so "file has expired" on an old conversation is usually local.
4. Check the file against the upload limits: 512 MB per file, about 50 MB for CSV files and spreadsheets, \
20 MB per image.
5. Try another browser or network; if the same error appears in several new chats, check again in a few \
minutes."""


def payload(event="opened", status="investigating", body=INVESTIGATING, published="2024-05-08T00:39:00Z",
            resolved_at=None, **over) -> dict:
    p = {"event": event, "page": "openai", "id": "vn8j63zg56hz", "title": TITLE, "url": URL, "status": status,
         "impact": "minor", "tags": ["file-upload"], "components": ["ChatGPT"],
         "started_at": "2024-05-08T00:39:00Z", "resolved_at": resolved_at,
         "update": {"status": status, "body": body, "published_at": published}}
    p.update(over)
    return p


OPENED = payload()
IDENTIFIED_P = payload("updated", "identified", IDENTIFIED, "2024-05-08T02:11:00Z")
RESOLVED_P = payload("resolved", "resolved", RESOLVED, "2024-05-08T16:37:00Z", resolved_at="2024-05-08T16:37:00Z")


def test_opened_text_exact():
    m = render(OPENED, "text")
    assert m == Message(title="Wait: Elevated errors uploading files in ChatGPT", body=f"""\
{WAIT}

Status: Investigating
Impact: minor
Affected: ChatGPT
Started: 2024-05-08 00:39 UTC

Latest update (Investigating, 2024-05-08 00:39 UTC):
{INVESTIGATING}

Details: {URL}""", html=None, kind="wait")


def test_updated_while_open_still_says_wait():
    m = render(IDENTIFIED_P, "text")
    assert m.title == "Wait: Elevated errors uploading files in ChatGPT"
    assert m.body == f"""\
{WAIT}

Status: Identified
Impact: minor
Affected: ChatGPT
Started: 2024-05-08 00:39 UTC

Latest update (Identified, 2024-05-08 02:11 UTC):
{IDENTIFIED}

Details: {URL}"""


def resolved_text(lead: str = "Resolved after 15 h 58 min.") -> str:
    return f"""\
{lead} If uploads still fail, troubleshoot locally:
{CHECKLIST_TEXT}

Status: Resolved
Impact: minor
Affected: ChatGPT
Started: 2024-05-08 00:39 UTC
Resolved: 2024-05-08 16:37 UTC

Latest update (Resolved, 2024-05-08 16:37 UTC):
{RESOLVED}

Details: {URL}"""


def test_resolved_text_exact():
    m = render(RESOLVED_P, "text")
    assert m.title == "Resolved: Elevated errors uploading files in ChatGPT"
    assert m.kind == "resolved"
    assert m.body == resolved_text()


def test_reopened_incident_says_wait_again_then_resolved_again():
    reopened = payload("updated", "monitoring", "Errors are back; we are monitoring a second fix.",
                       "2024-05-08T18:00:00Z")
    m = render({**reopened, "reopened": True}, "text")
    assert m.title == "Wait again: Elevated errors uploading files in ChatGPT"
    assert m.kind == "wait"
    assert m.body.startswith("Wait again: OpenAI reports an incident affecting file uploads it had resolved: it is "
                             "active again. Retrying now will likely fail; this message will update when it is "
                             "resolved.\n\nStatus: Monitoring\n")
    again = render({**RESOLVED_P, "reopened": True}, "text")
    assert again.title == "Resolved again: Elevated errors uploading files in ChatGPT"
    assert again.body == resolved_text("Resolved again after 15 h 58 min.")


def test_updated_to_postmortem_uses_resolved_wording():
    p = payload("updated", "postmortem", "We have published a postmortem.", "2024-05-10T18:00:00Z",
                resolved_at="2024-05-08T16:37:00Z")
    m = render(p, "text")
    assert m.title == "Resolved: Elevated errors uploading files in ChatGPT"
    assert m.body.startswith("Resolved after 15 h 58 min. If uploads still fail, troubleshoot locally:\n1. ")


def test_opened_slack_exact():
    m = render(OPENED, "slack")
    assert m.title == "Wait: Elevated errors uploading files in ChatGPT"
    assert m.body == f"""\
*Wait:* OpenAI reports an active incident affecting file uploads. Retrying now will likely fail; \
this message will update when it is resolved.

*Status:* Investigating
*Impact:* minor
*Affected:* ChatGPT
*Started:* 2024-05-08 00:39 UTC

*Latest update (Investigating, 2024-05-08 00:39 UTC):*
{INVESTIGATING}

<{URL}|View incident>"""


def test_resolved_email_html_exact():
    m = render(RESOLVED_P, "email")
    assert m.body == resolved_text()          # the plain part of the mail is the text message
    assert m.html == (
        "<p><strong>Resolved after 15 h 58 min.</strong> If uploads still fail, troubleshoot locally:</p>\n"
        "<ol><li>Reload the page, or sign out and back in.</li>"
        "<li>Re-upload the original file (an upload from an old chat may have expired).</li>"
        "<li>Start a new chat: the code-execution session behind data analysis ends after a period of "
        "inactivity, so &quot;file has expired&quot; on an old conversation is usually local.</li>"
        "<li>Check the file against the upload limits: 512 MB per file, about 50 MB for CSV files and "
        "spreadsheets, 20 MB per image.</li>"
        "<li>Try another browser or network; if the same error appears in several new chats, check again in "
        "a few minutes.</li></ol>\n"
        "<p><strong>Status:</strong> Resolved<br><strong>Impact:</strong> minor<br>"
        "<strong>Affected:</strong> ChatGPT<br><strong>Started:</strong> 2024-05-08 00:39 UTC<br>"
        "<strong>Resolved:</strong> 2024-05-08 16:37 UTC</p>\n"
        f"<p><strong>Latest update (Resolved, 2024-05-08 16:37 UTC):</strong><br>{RESOLVED}</p>\n"
        f'<p>Details: <a href="{URL}">{URL}</a></p>')


@pytest.mark.parametrize("seconds, words", [
    (2 * 3600 + 11 * 60, "2 h 11 min"), (2 * 3600 + 11 * 60 + 59, "2 h 11 min"), (45 * 60, "45 min"),
    (27 * 3600, "1 d 3 h"), (27 * 3600 + 59 * 60, "1 d 3 h"), (3600, "1 h"), (2 * 86400, "2 d"),
    (30, "30 s"), (119, "119 s"), (120, "2 min"),
])
def test_duration_words(seconds, words):
    assert age_words(seconds) == words


@pytest.mark.parametrize("started, resolved, words", [
    ("2024-05-08T00:39:00Z", "2024-05-08T02:50:00Z", "2 h 11 min"),
    ("2024-05-08T00:39:00Z", "2024-05-08T01:24:00Z", "45 min"),
    ("2024-05-08T00:39:00Z", "2024-05-09T03:39:00Z", "1 d 3 h"),
])
def test_resolved_duration_in_message(started, resolved, words):
    m = render(payload("resolved", "resolved", "Fixed.", resolved, resolved_at=resolved, started_at=started),
               "text")
    assert m.body.splitlines()[0] == f"Resolved after {words}. If uploads still fail, troubleshoot locally:"


def test_resolved_without_resolution_time_uses_the_update_or_now():
    p = payload("resolved", "resolved", "Fixed.", None, resolved_at=None)
    now = datetime(2024, 5, 8, 1, 24, tzinfo=timezone.utc)
    assert render(p, "text", now=now).body.startswith("Resolved after 45 min.")
    p["started_at"] = None
    assert render(p, "text").body.startswith("Resolved. If uploads still fail")


HOSTILE = ("Heads up <!channel> and <!here>: see <https://evil.example|the fix> & <@U123> "
           "<script>alert(1)</script>")


def test_slack_escapes_every_third_party_string():
    p = payload(body=HOSTILE, title="Uploads <!channel> & <https://evil.example|x>",
                components=["File <!here> uploads"], status="<!channel>")
    m = render(p, "slack")
    assert "&lt;!channel&gt;" in m.body and "&lt;!here&gt;" in m.body
    assert "&lt;https://evil.example|the fix&gt; &amp; &lt;@U123&gt;" in m.body
    assert "*Affected:* File &lt;!here&gt; uploads" in m.body
    # the only raw "<" is our own link
    assert m.body.count("<") == 1 and m.body.endswith(f"<{URL}|View incident>")
    # titles stay plain: the transport escapes them (apprise does for Slack; asserted in the delivery tests)
    assert m.title == "Wait: Uploads <!channel> & <https://evil.example|x>"


def test_email_html_escapes_and_text_part_stays_plain():
    p = payload(body="R&D <script>alert(1)</script> \"quoted\"", title="Files <b>broken</b> & slow",
                components=["<img src=x onerror=alert(1)>"])
    m = render(p, "email")
    assert "<script>" not in m.html and "<img" not in m.html and "<b>" not in m.html
    assert "R&amp;D &lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot;" in m.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in m.html
    assert "R&D <script>alert(1)</script> \"quoted\"" in m.body
    assert m.title == "Wait: Files <b>broken</b> & slow"


def test_update_text_is_capped():
    long = "word " * 1000
    m = render(payload(body=long), "text", max_chars=100)
    text = m.body.split("):\n", 1)[1].split("\n\nDetails:")[0]
    assert len(text) <= 100 and text.endswith("…") and text.startswith("word word")
    # the cap applies before escaping: an entity is never cut in half
    m = render(payload(body="&" * 500), "slack", max_chars=100)
    assert "&amp;" * 99 + "…" in m.body and "&am…" not in m.body


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "data:text/html,<b>x</b>", "ftp://files.example/x", "//evil.example/x",
    "https://", "https://exa mple.com/x", "https://evil.example/\u202ex", None, 42,
])
def test_non_http_links_are_dropped(url):
    p = payload(url=url)
    for fmt in ("text", "slack", "email"):
        m = render(p, fmt)
        assert "Details:" not in m.body and "View incident" not in m.body
        assert m.html is None or "href" not in m.html
    assert safe_link(url) is None


def test_http_link_with_slack_metacharacters_cannot_break_out():
    m = render(payload(url="https://status.example/x|y>z"), "slack")
    assert m.body.endswith("<https://status.example/x%7Cy%3Ez|View incident>")


def test_control_characters_stripped_and_blank_lines_collapsed():
    body = "First\x1b[31m line\x07\r\n\r\n\r\n\n  \nSecond\u202e line\t end\x00\n\n\n"
    assert clean_text(body) == "First[31m line\n\nSecond line  end"
    m = render(payload(body=body, title="Up\x1bloads\nfailing\u2066"), "text")
    assert m.title == "Wait: Uploads failing"
    assert "First[31m line\n\nSecond line  end\n\nDetails:" in m.body


def test_other_page_and_non_upload_incident():
    p = payload(page="anthropic", tags=["login"], url="https://status.anthropic.com/incidents/abc")
    m = render(p, "text")
    assert m.body.startswith("Wait: The anthropic status page reports an active incident. Retrying now")


def test_missing_fields_do_not_crash():
    m = render({"event": "opened"}, "text")
    assert m.title == "Wait: (untitled incident)"
    assert "Status: Unknown" in m.body and "Details" not in m.body


def test_test_event_is_clearly_a_test():
    m = render(payload(event="test"), "slack")
    assert m.title.startswith("Test: ") and m.kind == "test"
    assert m.body.startswith("This is a test message from openai-status-monitor: no incident is open.")


def test_unknown_format_rejected():
    with pytest.raises(ValueError):
        render(OPENED, "pdf")
