"""Findings add up to one decision; tenant text is quoted and capped."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decision import (
    MAX_MESSAGE_CHARS,
    MAX_WARNING_CHARS,
    Decision,
    Finding,
    allow,
    cap,
    combine,
    decide,
    deny,
    escape,
    quote,
)

# Tenant text: anything, with the characters that would break a line or a terminal made likely.
_PIECES = st.text(st.one_of(st.characters(), st.sampled_from("\n\r\x1b\x00\u2028\\\"")),
                  max_size=30)
TENANT_TEXT = _PIECES | st.builds(lambda piece, times: (piece or "x") * times, _PIECES,
                                  st.integers(10, 300))
"""Short text, or long text made of one repeated piece (cheaper to generate than random)."""


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


@pytest.mark.slow
@settings(max_examples=300, derandomize=True)
@given(text=TENANT_TEXT, limit=st.integers(40, 400))
def test_quoted_tenant_text_is_one_printable_bounded_line_that_reads_back(text: str,
                                                                          limit: int) -> None:
    quoted = quote(text, limit)
    assert quoted.isascii()
    assert quoted.isprintable()
    assert len(quoted) <= limit + 2
    inner = quoted[1:-1]
    assert (quoted[0], quoted[-1]) == ('"', '"')
    assert escape(text, limit) == inner
    if len(inner) < limit:  # not capped: the escaped text is the text, nothing lost or added
        assert codecs.decode(inner.replace('\\"', '"'), "unicode_escape") == text


@pytest.mark.slow
@settings(max_examples=300, derandomize=True)
@given(text=TENANT_TEXT, limit=st.integers(40, 2000))
def test_cap_bounds_the_length_and_says_what_was_left_out(text: str, limit: int) -> None:
    capped = cap(text, limit)
    assert len(capped) <= limit
    if len(text) <= limit:
        assert capped == text
    else:
        kept, _, note = capped.rpartition("... (")
        assert text.startswith(kept)
        assert note == f"{len(text) - len(kept)} more characters)"


@pytest.mark.slow
@settings(max_examples=200, derandomize=True)
@given(messages=st.lists(TENANT_TEXT, min_size=1, max_size=5))
def test_every_decision_message_and_warning_is_capped(messages: list[str]) -> None:
    findings = [Finding("R", message) for message in messages]
    assert len(decide(findings, "enforce").message) <= MAX_MESSAGE_CHARS
    assert all(len(w) <= MAX_WARNING_CHARS for w in decide(findings, "warn").warnings)
    assert len(deny("R", "".join(messages) * 3).message) <= MAX_MESSAGE_CHARS
