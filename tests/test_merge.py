"""merge(): records from several sources -> one incident, and what changed. Real wording of the
2025-11-14 "file has expired" incident on today's incident.io page."""
from datetime import datetime, timedelta, timezone

from monitor.merge import merge
from monitor.records import ComponentRec, IncidentRec, UpdateRec

T0 = datetime(2025, 11, 14, 17, 2, tzinfo=timezone.utc)
ID = "01KA1XJ0Z4V3M4N5P6Q7R8S9T0"
TITLE = "File uploads to ChatGPT conversations are failing for some users"
TEXT1 = ("File uploads to ChatGPT conversations are failing for some users, giving an error message indicating "
         "the file has expired. We are investigating.")
TEXT2 = "We have identified the cause and are applying a mitigation."
TEXT3 = "This issue has been resolved."


def feed(status, text, at, comps=(("File uploads", "partial_outage"),)):
    return IncidentRec(page_incident_id=ID, source="feed", title=TITLE, status=status,
                       updates=(UpdateRec(status, text, at, "feed"),),
                       components=tuple(ComponentRec(n, n, s) for n, s in comps), updated_at=at)


def api(updates, status):
    return IncidentRec(page_incident_id=ID, source="api", title=TITLE, status=status, started_at=T0,
                       updates=tuple(UpdateRec(s, b, t, "api", f"u{i}") for i, (s, b, t) in enumerate(updates)))


def proxy(updates, status):
    return IncidentRec(page_incident_id=ID, source="proxy", title=TITLE, status=status, impact="major",
                       started_at=T0, full_timeline=True,
                       components=(ComponentRec("01FILEUPLOADS", "", "partial_outage"),),
                       updates=tuple(UpdateRec(s, b, t, "proxy", f"p{i}") for i, (s, b, t) in enumerate(updates)))


NOW = T0 + timedelta(hours=3)
NAMES = {"01FILEUPLOADS": "File uploads", "01LOGINAPI": "Login", "01LOGINCHAT": "Login"}


def test_new_incident_from_all_sources_is_one_incident_one_update():
    ch = merge(None, [feed("investigating", TEXT1, T0), api([("investigating", "", T0)], "investigating"),
                      proxy([("investigating", TEXT1, T0)], "investigating")], NOW, NAMES)
    s = ch.state
    assert ch.event == "opened"
    assert len(s.updates) == 1 and s.updates[0].body == TEXT1
    assert [c.name for c in s.components] == ["File uploads"]
    assert s.impact == "major" and s.full_timeline and s.status == "investigating"


def test_feed_rewritten_in_place_with_same_message_is_no_change():
    first = merge(None, [feed("investigating", TEXT1, T0)], NOW).state
    # same status and text; the component's live state and the feed's stamps changed
    again = merge(first, [feed("investigating", TEXT1, T0, comps=(("File uploads", "degraded_performance"),))], NOW)
    assert again.event is None and again.new_updates == ()
    assert again.state.updates == first.updates


def test_feed_item_with_a_new_message_is_one_update():
    first = merge(None, [feed("investigating", TEXT1, T0)], NOW).state
    ch = merge(first, [feed("identified", TEXT2, T0 + timedelta(minutes=30))], NOW)
    assert ch.event == "updated" and [u.body for u in ch.state.updates] == [TEXT1, TEXT2]
    assert ch.state.status == "identified"


def test_empty_api_text_is_filled_from_feed_and_never_blanked():
    s = merge(None, [api([("investigating", "", T0)], "investigating")], NOW).state
    assert s.updates[0].body == ""
    s2 = merge(s, [feed("investigating", TEXT1, T0 + timedelta(seconds=20))], NOW)
    assert s2.event is None and [u.body for u in s2.state.updates] == [TEXT1]
    s3 = merge(s2.state, [api([("investigating", "", T0)], "investigating")], NOW)
    assert s3.state.updates[0].body == TEXT1 and not s3.changed


def test_markdown_api_text_and_plain_proxy_text_are_the_same_update():
    md = "We are investigating reports; see [GitHub's status page](https://www.githubstatus.com/ \"GitHub's status page\")."
    plain = "We are investigating reports; see GitHub's status page."
    s = merge(None, [api([("investigating", md, T0)], "investigating")], NOW).state
    ch = merge(s, [proxy([("investigating", plain, T0 + timedelta(minutes=5))], "investigating")], NOW)
    assert len(ch.state.updates) == 1 and ch.event is None


def test_stale_source_cannot_reopen_a_resolved_incident():
    ups = [("investigating", TEXT1, T0), ("identified", TEXT2, T0 + timedelta(minutes=30)),
           ("resolved", TEXT3, T0 + timedelta(hours=2, minutes=11))]
    s = merge(None, [proxy(ups, "resolved")], NOW).state
    assert s.status == "resolved" and s.resolved_at == T0 + timedelta(hours=2, minutes=11)
    stale = merge(s, [feed("identified", TEXT2, T0 + timedelta(minutes=30))], NOW)
    assert stale.state.status == "resolved" and stale.event is None


def test_resolution_event_and_first_seen_resolved():
    open_ = merge(None, [proxy([("investigating", TEXT1, T0)], "investigating")], NOW).state
    ch = merge(open_, [proxy([("investigating", TEXT1, T0), ("resolved", TEXT3, T0 + timedelta(hours=1))],
                             "resolved")], NOW)
    assert ch.event == "resolved"
    late = merge(None, [proxy([("investigating", TEXT1, T0), ("resolved", TEXT3, T0 + timedelta(hours=1))],
                              "resolved")], NOW)
    assert late.event == "resolved"
    post = merge(ch.state, [proxy([("investigating", TEXT1, T0), ("resolved", TEXT3, T0 + timedelta(hours=1)),
                                   ("postmortem", "Root cause: a bad deploy.", T0 + timedelta(days=2))],
                                  "postmortem")], NOW + timedelta(days=3))
    assert post.event == "updated" and post.state.status == "postmortem"


def test_dedupe_key_is_stable_across_sources_and_repolls():
    a = merge(None, [feed("investigating", TEXT1, T0)], NOW)
    b = merge(None, [proxy([("investigating", TEXT1, T0)], "investigating")], NOW)
    assert a.dedupe_key == b.dedupe_key == f"{ID}:opened"
    s = a.state
    up1 = merge(s, [proxy([("investigating", TEXT1, T0), ("identified", TEXT2, T0 + timedelta(minutes=30))],
                          "identified")], NOW)
    up2 = merge(s, [feed("identified", TEXT2, T0 + timedelta(minutes=30))], NOW)
    assert up1.event == up2.event == "updated"
    assert up1.dedupe_key == up2.dedupe_key == f"{ID}:updated:identified#1"
    # a second update with the same status is a new key, and so is the reopening's
    up3 = merge(up1.state, [feed("identified", TEXT1 + " More.", T0 + timedelta(minutes=50))], NOW)
    assert up3.dedupe_key == f"{ID}:updated:identified#2"


def test_feed_component_name_maps_to_stored_id_but_ambiguous_login_stays_by_name():
    s = merge(None, [proxy([("investigating", TEXT1, T0)], "investigating")], NOW, NAMES).state
    s2 = merge(s, [feed("investigating", TEXT1, T0, comps=(("File uploads", "partial_outage"),
                                                          ("Login", "degraded_performance")))], NOW, NAMES).state
    keys = sorted(c.key for c in s2.components)
    assert keys == ["01FILEUPLOADS", "Login"]


def test_operational_feed_component_is_not_evidence_and_nothing_is_removed():
    s = merge(None, [feed("investigating", TEXT1, T0)], NOW).state
    s2 = merge(s, [feed("investigating", TEXT1, T0, comps=())], NOW).state
    assert [c.name for c in s2.components] == ["File uploads"]


def test_list_entry_text_kept_when_the_timeline_has_it_empty():
    """Issue 16: a window list's update text stays when the incident's timeline later gives that update
    (same id) without text."""
    listed = merge(None, [proxy([("investigating", TEXT1, T0)], "investigating")], NOW).state
    uid = listed.updates[0].page_update_id
    later = merge(listed, [proxy([("investigating", "", T0)], "investigating")], NOW)
    assert uid and later.state.updates[0].page_update_id == uid
    assert [u.body for u in later.state.updates] == [TEXT1] and not later.new_updates
