"""Broad outages: table-driven cases from real incidents of both eras (tests/data/surface_cases.toml), near
misses and the arguable decisions included, plus the reader's contract and the config's rules."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from monitor.surfaces import DEFAULT_SURFACE_RULES, SURFACES, build_surface_rules, classify

CASES = tomllib.loads((Path(__file__).parent / "data" / "surface_cases.toml").read_text(encoding="utf-8"))["case"]
RULES = {r.name: r for r in DEFAULT_SURFACE_RULES}


def _run(case, rules=DEFAULT_SURFACE_RULES):
    impacts = case.get("impacts") or [None] * len(case["components"])
    return classify(rules, case["title"], [case["first_update"]], list(zip(case["components"], impacts)))


def test_table_is_well_formed_and_covers_both_eras_and_near_misses():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    assert {c["source"] for c in CASES} == {"openai", "anthropic", "incidentio"}
    assert {s for c in CASES for s in c["expect"]} == set(SURFACES)
    assert sum(1 for c in CASES if not c["expect"]) >= 60          # near misses
    assert sum(1 for c in CASES if c["expect"]) >= 60
    assert all(c["reason"].strip() for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case):
    got = _run(case)
    assert [m.tag for m in got] == sorted(case["expect"]), case["reason"]
    for m in got:
        assert m.rule in RULES and RULES[m.rule].surface == m.tag or m.rule in RULES and m.tag in RULES[m.rule].extra
        assert m.field in ("title", "update", "component") and m.text


def test_evidence_names_the_rule_and_the_text():
    [m] = classify(DEFAULT_SURFACE_RULES, "Outage on All Endpoints", [], [])
    assert (m.tag, m.rule, m.field, m.text) == ("api", "api/all-endpoints", "title", "Outage on All Endpoints")
    [m] = classify(DEFAULT_SURFACE_RULES, "Outage on all API endpoints", [], [])
    assert (m.tag, m.rule, m.field, m.text) == ("api", "api/named", "title", "Outage on all API endpoints")
    [m] = classify(DEFAULT_SURFACE_RULES, "Elevated errors", ["We are looking into it."],
                   [("Conversations", "full_outage")])
    assert (m.tag, m.rule, m.field, m.text) == ("chatgpt", "chatgpt/core-component", "component",
                                                "Conversations (full_outage)")
    [m] = classify(DEFAULT_SURFACE_RULES, "Intermittent instability",
                   ["Servers handling API traffic experienced unexpected downtime, causing high error rates."], [])
    assert (m.tag, m.rule, m.field) == ("api", "api/named", "update")


def test_updates_are_read_only_for_a_title_that_names_nothing():
    """A title that narrows ("Outage on text-davinci-002") is not widened by an update that names the API."""
    assert classify(DEFAULT_SURFACE_RULES, "Outage on text-davinci-002",
                    ["Elevated error rates on the API while text-davinci-002 is down."], []) == []
    assert classify(DEFAULT_SURFACE_RULES, "Elevated error rates for ChatGPT",
                    ["This affects image generation only."], [])[0].tag == "chatgpt"


def test_a_surface_named_without_a_failure_word_is_no_outage():
    assert classify(DEFAULT_SURFACE_RULES, "New ChatGPT release notes", [], []) == []
    assert classify(DEFAULT_SURFACE_RULES, "API pricing update", [], []) == []


def test_operational_or_degraded_core_components_are_no_evidence():
    for impact in ("operational", "degraded_performance", None):
        assert classify(DEFAULT_SURFACE_RULES, "Something", [], [("Conversations", impact)]) == []


def test_config_adds_a_surface_and_narrows_a_builtin_one():
    rules = build_surface_rules({"claude": {"patterns": [r"\bclaude\.ai\b"], "components": ["claude.ai"]},
                                 "api": {"exclude": r"\bconsole\b"}})
    got = classify(rules, "claude.ai down & API partially degraded", [], [])
    assert [(m.tag, m.rule) for m in got] == [("api", "api/named"), ("claude", "config:claude/patterns[0]")]
    assert classify(rules, "Elevated errors on the API console", [], []) == []
    assert [m.rule for m in classify(rules, "x", [], [("claude.ai", "major_outage")])] == ["config:claude/components"]
    assert classify(build_surface_rules({"api": {"replace": True}}), "API outage", [], []) == []


@pytest.mark.parametrize("config, message", [
    ({"API": {}}, "surfaces.API: invalid surface name (lower-case letters, digits, '-', '_', '.')"),
    ({"api": {"pattern": ["x"]}}, "surfaces.api: unknown key 'pattern' (allowed: patterns, components, exclude, replace)"),
    ({"api": {"patterns": ["("]}}, "surfaces.api.patterns[0]: invalid regex: missing ), unterminated subpattern at position 0"),
    ({"api": {"replace": "yes"}}, "surfaces.api.replace: expected true or false, got 'yes'"),
    ({"api": {"components": [""]}}, "surfaces.api.components[0]: expected a non-empty component name, got ''"),
])
def test_config_errors_name_the_key(config, message):
    with pytest.raises(ValueError) as exc:
        build_surface_rules(config)
    assert str(exc.value) == message
