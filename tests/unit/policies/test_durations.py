"""Go duration strings as Tekton writes them."""

from __future__ import annotations

import time

import pytest

from policies.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("1h", 3600, id="hours"),
    pytest.param("1h0m0s", 3600, id="tekton-default"),
    pytest.param("90m", 5400, id="minutes"),
    pytest.param("1.5h", 5400, id="fraction"),
    pytest.param("500ms", 0.5, id="millis"),
    pytest.param("0", 0, id="zero"),
])
def test_valid_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "-1h", "1d", "1h 30m", "1hh", "3000000h"])
def test_invalid_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked elsewhere
        parse_duration(text)


@pytest.mark.parametrize("text", ["1" * 20_000, "1h" + "1" * 20_000, "1." * 10_000])
def test_a_long_tenant_string_is_refused_in_linear_time(text: str) -> None:
    # Searching ahead for each part took 10 s on 20k digits with no unit.
    started = time.process_time()
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
    assert time.process_time() - started < 0.5


def test_format_is_short() -> None:
    assert (format_duration(5400), format_duration(45), format_duration(3600)) == (
        "1h30m", "45s", "1h")
