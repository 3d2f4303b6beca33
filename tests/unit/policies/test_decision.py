"""Findings add up to one decision; tenant text is quoted and capped."""

from __future__ import annotations

from policies.decision import (
    MAX_MESSAGE_CHARS,
    Decision,
    Finding,
    allow,
    combine,
    decide,
    deny,
    quote,
)


def test_no_findings_allow() -> None:
    assert decide([], "enforce") == Decision(allowed=True)


def test_enforce_lists_every_finding_in_one_message() -> None:
    decision = decide([Finding("A", "first"), Finding("B", "second")], "enforce")
    assert not decision.allowed
    assert decision.reason == "A"
    assert decision.message == "first; second"
    assert ("findings", "2") in decision.audit


def test_warn_mode_admits_with_the_findings_as_warnings() -> None:
    decision = decide([Finding("A", "first"), Finding("B", "second")], "warn")
    assert decision.allowed
    assert decision.warnings == ("first", "second")
    assert ("mode", "warn") in decision.audit


def test_long_messages_are_capped() -> None:
    decision = deny("A", "x" * 10_000)
    assert len(decision.message) == MAX_MESSAGE_CHARS
    assert decision.message.endswith("more characters)")


def test_quote_keeps_tenant_text_on_one_printable_line() -> None:
    assert quote('evil\n{"level":"info"}') == '"evil\\n{\\"level\\":\\"info\\"}"'
    assert len(quote("a" * 5000)) < 250


def test_combine_takes_the_first_denial_and_all_warnings() -> None:
    warned = decide([Finding("W", "careful")], "warn")
    denied = deny("D", "no")
    combined = combine(warned, denied, allow())
    assert (combined.allowed, combined.reason, combined.message) == (False, "D", "no")
    assert combined.warnings == ("careful",)
    assert combine(allow(), warned).allowed
