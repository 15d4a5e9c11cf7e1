"""Tag rules: table-driven cases from real incidents (tests/data/tag_cases.toml), plus the matcher's contract."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from monitor import tags
from monitor.tags import DEFAULT_RULES, UPLOAD_TAGS, Rule, TagMatch, build_rules, tag_incident

DATA = tomllib.loads((Path(__file__).parent / "data" / "tag_cases.toml").read_text(encoding="utf-8"))
CASES = DATA["case"]
SWEEP = DATA["sweep"]
RULES_BY_NAME = {r.name: r for r in DEFAULT_RULES}


def _tags(matches: list[TagMatch]) -> list[str]:
    return [m.tag for m in matches]


def _run(case: dict, rules=DEFAULT_RULES) -> list[TagMatch]:
    return tag_incident(rules, case["title"], case["bodies"], case["components"])


def _case(case_id: str) -> dict:
    return next(c for c in CASES if c["id"] == case_id)


# ------------------------------------------------------------------------------------------- the table

def test_case_table_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for c in CASES:
        assert set(c) >= {"id", "title", "bodies", "components", "expect", "reason"}, c["id"]
        assert set(c["expect"]) <= set(UPLOAD_TAGS), c["id"]
        assert c["reason"].strip(), c["id"]
        if c.get("source") in ("openai", "anthropic"):
            assert re.fullmatch(r"[a-z0-9]{12}", c["id"]), f"real case id should be a Statuspage id: {c['id']}"
    # the table covers every tag, and near misses too
    assert {t for c in CASES for t in c["expect"]} == set(UPLOAD_TAGS)
    assert sum(1 for c in CASES if not c["expect"]) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case):
    matches = _run(case)
    assert sorted(_tags(matches)) == sorted(case["expect"]), case["reason"]
    assert _tags(matches) == sorted(_tags(matches)), "matches are sorted by tag"
    for m in matches:
        assert m.rule in RULES_BY_NAME and RULES_BY_NAME[m.rule].tag == m.tag
        assert m.field in ("title", "update", "component")
        assert m.text and len(m.text) <= tags.SNIPPET_MAX and "  " not in m.text and "\n" not in m.text


def test_every_shared_history_title():
    """Every incident title of the shared history: only the expected ones are tagged from the title alone."""
    expect = SWEEP["expect"]
    seen = set()
    for vendor in ("openai", "anthropic"):
        for incident_id, title in SWEEP[vendor]:
            seen.add(incident_id)
            got = _tags(tag_incident(DEFAULT_RULES, title, [], []))
            assert got == sorted(expect.get(incident_id, [])), f"{incident_id}: {title!r}"
    assert len(seen) == 365 + 141
    assert set(expect) <= seen


def test_real_positive_cases_are_in_the_sweep():
    positives = {c["id"] for c in CASES if c["expect"] and c.get("source") in ("openai", "anthropic")}
    all_ids = {i for v in ("openai", "anthropic") for i, _ in SWEEP[v]}
    assert positives <= all_ids


# --------------------------------------------------------------------------------- matches carry evidence

def test_match_carries_rule_field_and_text():
    matches = _run(_case("7021042tlg91"))
    assert matches == [
        TagMatch("data-analysis", "data-analysis/data-analysis", "title", "Advanced Data Analysis failing on ChatGPT"),
        TagMatch("file-upload", "file-upload/upload-wording", "update",
                 "Data analysis and file uploads are now performing normally."),
    ]


def test_text_is_the_matched_sentence_not_the_whole_body():
    body = ("We are investigating an issue. Some users see errors when uploading files to ChatGPT!\n"
            "More details soon.")
    (m,) = tag_incident(DEFAULT_RULES, "Elevated errors", [body], [])
    assert (m.tag, m.field, m.text) == ("file-upload", "update", "Some users see errors when uploading files to ChatGPT!")


def test_long_sentence_snippet_is_at_most_200_chars_and_contains_the_match():
    body = ("word " * 120) + "and\n   file   uploads   are failing " + ("again " * 120)
    (m,) = tag_incident(DEFAULT_RULES, None, [body], [])
    assert len(m.text) <= 200
    assert "file uploads" in m.text and "  " not in m.text


def test_first_evidence_wins_title_then_updates_then_components():
    m = tag_incident(DEFAULT_RULES, "Uploading files fails", ["File uploads failing"], ["File uploads"])
    assert [(x.field, x.text) for x in m] == [("title", "Uploading files fails")]
    m = tag_incident(DEFAULT_RULES, "Degraded", [None, "", "nothing", "file uploads failing", "file uploads!"],
                     ["File uploads"])
    assert [(x.field, x.text) for x in m] == [("update", "file uploads failing")]
    m = tag_incident(DEFAULT_RULES, "Degraded", ["nothing here"], ["File uploads"])
    assert [(x.field, x.rule) for x in m] == [("component", "file-upload/component")]


def test_one_match_per_tag_sorted_by_tag():
    m = tag_incident(DEFAULT_RULES, "Code interpreter session expired", ["file uploads fail", "code interpreter down"],
                     ["Files", "Code Interpreter"])
    assert _tags(m) == ["data-analysis", "file-expired", "file-upload"]


def test_none_and_empty_texts_are_skipped_and_inputs_may_be_iterators():
    assert tag_incident(DEFAULT_RULES, None, [None, "", "   "], []) == []
    assert tag_incident(DEFAULT_RULES, "", iter(["file uploads failing"]), iter([])) != []
    assert tag_incident(list(DEFAULT_RULES), "file uploads failing", (), ()) == \
        tag_incident(DEFAULT_RULES, "file uploads failing", (), ())


def test_pure_no_state_carried_between_calls():
    """The answer depends on the rules and the texts only: not on earlier calls with other rules or other
    incidents (a cache keyed on the texts alone would fail here), and the inputs are left as they were."""
    case = _case("7021042tlg91")
    bodies = list(case["bodies"])
    first = [m.tag for m in _run(case)]
    without = build_rules({"data-analysis": {"replace": True}})
    assert [m.tag for m in _run(case, without)] == ["file-upload"]
    for other in CASES[:40]:
        _run(other)
    assert [m.tag for m in _run(case)] == first == ["data-analysis", "file-upload"]
    assert case["bodies"] == bodies


def test_exclude_only_applies_within_the_same_sentence():
    # "profile pictures" excludes bare "upload" in its own sentence only
    assert tag_incident(DEFAULT_RULES, "Uploads of profile pictures failing", [], []) == []
    m = tag_incident(DEFAULT_RULES, "Profile pictures are fine. Uploads in ChatGPT are failing.", [], [])
    assert [(x.rule, x.text) for x in m] == [("file-upload/upload-word", "Uploads in ChatGPT are failing.")]
    # a later, non-excluded match in the same text is still found
    m = tag_incident(DEFAULT_RULES, "The /etc/hosts file is wrong. Processing uploaded documents is slow.", [], [])
    assert _tags(m) == ["file-upload"]


def test_markdown_and_html_wording_but_not_link_targets():
    assert tag_incident(DEFAULT_RULES, None, ["See [the FAQ](https://help.openai.com/file-uploads-faq)."], []) == []
    assert tag_incident(DEFAULT_RULES, None, ["See https://example.com/file-uploads for details."], []) == []
    m = tag_incident(DEFAULT_RULES, None, ["<b>Status: Identified</b><br/><br/>**File uploads** are failing."], [])
    assert [(x.tag, x.text) for x in m] == [("file-upload", "**File uploads** are failing.")]


# ------------------------------------------------------------------------------------------- components

@pytest.mark.parametrize("component", ["File uploads", "file uploads", " FILE UPLOADS ", "Files", "files", "Files API"])
def test_component_evidence(component):
    m = tag_incident(DEFAULT_RULES, "Degraded performance", ["We are investigating."], [component])
    assert [(x.tag, x.rule, x.field, x.text) for x in m] == \
        [("file-upload", "file-upload/component", "component", component.strip())]


def test_files_as_a_title_word_is_not_a_component_match():
    assert tag_incident(DEFAULT_RULES, "Files", [], []) == []
    assert tag_incident(DEFAULT_RULES, "Files", ["Files"], ["API", "ChatGPT"]) == []


@pytest.mark.parametrize("component", ["API", "ChatGPT", "Image Generation", "Batch", "Login", "Fine-tuning",
                                       "File", "Uploads", "File uploads (ChatGPT)"])
def test_other_components_are_not_evidence(component):
    assert tag_incident(DEFAULT_RULES, "Degraded performance", [], [component]) == []


# -------------------------------------------------------------------------------------------- the rules

def test_default_rules_are_consistent():
    names = [r.name for r in DEFAULT_RULES]
    assert len(names) == len(set(names))
    for r in DEFAULT_RULES:
        assert r.tag in UPLOAD_TAGS and r.name.startswith(r.tag + "/")
        assert r.pattern or r.components
        for rx in (r.pattern, r.exclude):
            if rx:
                assert re.compile(rx, re.I).search("") is None, r.name
    assert {r.tag for r in DEFAULT_RULES} == set(UPLOAD_TAGS)
    assert build_rules({}) == DEFAULT_RULES
    assert build_rules(None) == DEFAULT_RULES


def test_speed_gates_never_hide_a_match():
    """Every default pattern match lies in a text holding one of its gate substrings (tags._GATES)."""
    texts = [c["title"] for c in CASES] + [b for c in CASES for b in c["bodies"]]
    texts += [t for v in ("openai", "anthropic") for _, t in SWEEP[v]]
    texts += ["Code execution state reset", "ADA failing", "Uploads", "containers expired for code interpreter",
              "reading PDFs", "excel files", "Word documents", "/v1/files", "vector_store", "Retrieval tool"]
    for r in DEFAULT_RULES:
        if not r.pattern:
            continue
        gate = tags._GATES[r.pattern]
        assert gate, r.name
        rx = re.compile(r.pattern, re.I)
        for t in texts:
            text = tags._clean(t)
            if rx.search(text):
                assert any(g in text.casefold() for g in gate), (r.name, t)


def test_regexes_are_compiled_once():
    tag_incident(DEFAULT_RULES, "file uploads failing", ["code interpreter session expired"], [])
    before = tags._compile.cache_info()
    for _ in range(50):
        tag_incident(tuple(DEFAULT_RULES), "file uploads failing", ["code interpreter session expired"], [])
    assert tags._compile.cache_info().misses == before.misses


# ------------------------------------------------------------------------------------------ build_rules

def test_build_rules_adds_to_builtin_rules_by_default():
    rules = build_rules({"file-upload": {"patterns": [r"\bfichiers?\b"], "components": ["Uploads (EU)"]}})
    assert rules[: len(DEFAULT_RULES)] == DEFAULT_RULES
    added = rules[len(DEFAULT_RULES):]
    assert added == (
        Rule(name="config:file-upload/patterns[0]", tag="file-upload", pattern=r"\bfichiers?\b"),
        Rule(name="config:file-upload/components", tag="file-upload", components=("Uploads (EU)",)),
    )
    assert _tags(tag_incident(rules, "Erreurs sur les fichiers", [], [])) == ["file-upload"]
    assert tag_incident(rules, "x", [], ["uploads (eu)"])[0].rule == "config:file-upload/components"
    assert _tags(tag_incident(rules, "File uploads failing", [], [])) == ["file-upload"]  # built-ins kept


def test_build_rules_replace_drops_builtin_rules_of_that_tag_only():
    rules = build_rules({"file-upload": {"patterns": ["attachment upload"], "replace": True}})
    assert not any(r.tag == "file-upload" and not r.name.startswith("config:") for r in rules)
    assert [r for r in rules if r.tag != "file-upload"] == [r for r in DEFAULT_RULES if r.tag != "file-upload"]
    assert tag_incident(rules, "File uploads failing", [], ["File uploads"]) == []
    m = tag_incident(rules, "Attachment upload failing", [], [])
    assert [(x.tag, x.rule) for x in m] == [("file-upload", "config:file-upload/patterns[0]")]
    # replace with nothing disables the tag
    rules = build_rules({"data-analysis": {"replace": True}})
    assert tag_incident(rules, "Code interpreter down", [], ["Code Interpreter"]) == []


def test_build_rules_new_tag():
    rules = build_rules({"voice": {"patterns": [r"\bvoice\s+mode\b"], "components": ["Voice mode"],
                                   "exclude": r"\bdeprecat"}})
    assert rules[: len(DEFAULT_RULES)] == DEFAULT_RULES
    m = tag_incident(rules, "Voice mode errors and file uploads failing", [], [])
    assert [(x.tag, x.rule) for x in m] == [("file-upload", "file-upload/upload-wording"),
                                            ("voice", "config:voice/patterns[0]")]
    assert tag_incident(rules, "Voice mode is deprecated", [], []) == []
    assert _tags(tag_incident(rules, "Degraded", [], ["VOICE MODE"])) == ["voice"]


def test_build_rules_exclude_also_narrows_builtin_rules_of_the_tag():
    rules = build_rules({"file-upload": {"exclude": r"\bcodex\b"}})
    assert tag_incident(rules, "Codex file uploads failing", [], []) == []
    assert _tags(tag_incident(rules, "ChatGPT file uploads failing", [], [])) == ["file-upload"]
    names = [r.name for r in rules]
    assert names == [r.name for r in DEFAULT_RULES]  # rule names stay stable


@pytest.mark.parametrize(("config", "message"), [
    ({"file-upload": {"patterns": ["ok", "(unclosed"]}},
     r"^tags\.file-upload\.patterns\[1\]: invalid regex: missing \), unterminated subpattern"),
    ({"file-upload": {"x": 1}}, r"^tags\.file-upload: unknown key 'x'"),
    ({"file-upload": {"patterns": ["ok"], "exclude": "[a-"}}, r"^tags\.file-upload\.exclude: invalid regex: "),
    ({"file-upload": {"patterns": "upload"}}, r"^tags\.file-upload\.patterns: expected a list"),
    ({"file-upload": {"patterns": [3]}}, r"^tags\.file-upload\.patterns\[0\]: expected a string"),
    ({"file-upload": {"patterns": [""]}}, r"^tags\.file-upload\.patterns\[0\]: empty regex"),
    ({"file-upload": {"patterns": ["x*"]}}, r"^tags\.file-upload\.patterns\[0\]: regex matches the empty string"),
    ({"file-upload": {"replace": "yes"}}, r"^tags\.file-upload\.replace: expected true or false"),
    ({"file-upload": {"components": ["Files", ""]}}, r"^tags\.file-upload\.components\[1\]: expected a non-empty"),
    ({"file-upload": {"components": "Files"}}, r"^tags\.file-upload\.components: expected a list"),
    ({"file-upload": ["upload"]}, r"^tags\.file-upload: expected a table"),
    ({"bad tag": {}}, r"^tags\.bad tag: invalid tag name"),
])
def test_build_rules_errors_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        build_rules(config)


def test_build_rules_rejects_duplicate_rule_names_in_defaults():
    dup = (Rule("a/x", "a", pattern="x"), Rule("a/x", "a", pattern="y"))
    with pytest.raises(ValueError, match=r"duplicate rule name 'a/x'"):
        build_rules({}, dup)


def test_build_rules_with_custom_defaults():
    base = (Rule("a/x", "a", pattern=r"\bxyz\b"),)
    rules = build_rules({"a": {"patterns": [r"\babc\b"]}}, base)
    assert [r.name for r in rules] == ["a/x", "config:a/patterns[0]"]
    assert _tags(tag_incident(rules, "abc", [], [])) == ["a"]
