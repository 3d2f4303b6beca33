"""Go duration strings, judged exactly as Go's time.ParseDuration reads them.

The table holds what each case means in Go (derived from its source, time/format.go); the
property test builds goduration/main.go with the machine's Go toolchain and compares the two
parsers on many generated strings. Without `go` on PATH that one test is skipped, the table not.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.durations import (
    MAX_DURATION_CHARS,
    DurationError,
    format_duration,
    parse_duration,
    parse_seconds,
)

HERE = pathlib.Path(__file__).resolve().parent
S = 1_000_000_000
MAX = (1 << 63) - 1

GoParse = Callable[[str], "int | None"]


@pytest.mark.parametrize(("text", "nanoseconds"), [
    pytest.param("1h", 3600 * S, id="hours"),
    pytest.param("1h0m0s", 3600 * S, id="tekton-default"),
    pytest.param("90m", 5400 * S, id="minutes"),
    pytest.param("1.5h", 5400 * S, id="fraction"),
    pytest.param("500ms", S // 2, id="millis"),
    pytest.param("0", 0, id="zero"),
    pytest.param("+0", 0, id="plus-zero"),
    pytest.param("-0", 0, id="minus-zero"),
    pytest.param("0s", 0, id="zero-seconds"),
    pytest.param("0.5ns", 0, id="half-nanosecond-truncates-to-zero"),
    pytest.param(".5ns", 0, id="no-leading-digit"),
    pytest.param("0.9ns", 0, id="just-under-one-nanosecond"),
    pytest.param("0.0000001us", 0, id="tenth-of-a-nanosecond"),
    pytest.param("0.0000000000001h", 0, id="fraction-of-an-hour-below-a-nanosecond"),
    pytest.param("0.0000000001h", 360, id="fraction-of-an-hour"),
    pytest.param("0.000000001s", 1, id="one-nanosecond"),
    pytest.param("1.ns", 1, id="point-without-fraction"),
    pytest.param("1.000000000000000000000000001ns", 1, id="fraction-digits-past-precision"),
    pytest.param("1\u00b5s", 1000, id="micro-sign"),
    pytest.param("1\u03bcs", 1000, id="greek-mu"),
    pytest.param("1us", 1000, id="us"),
    pytest.param("-1h", -3600 * S, id="negative"),
    pytest.param("+1h", 3600 * S, id="plus"),
    pytest.param("1h1h", 7200 * S, id="unit-repeated"),
    pytest.param("1s1h", 3601 * S, id="any-order"),
    pytest.param("0000000000000000000000001h", 3600 * S, id="leading-zeros"),
    pytest.param("9223372036854775807ns", MAX, id="largest"),
    pytest.param("-9223372036854775808ns", -MAX - 1, id="smallest"),
    pytest.param("2562047h47m16.854775807s", MAX, id="largest-in-hours"),
    # 2**63 ns twice: Go's uint64 sum wraps to exactly 0, which it accepts.
    pytest.param("9223372036854775808ns9223372036854775808ns", 0, id="uint64-wraps-to-zero"),
])
def test_durations_read_as_go_reads_them(text: str, nanoseconds: int) -> None:
    assert parse_duration(text) == nanoseconds


@pytest.mark.parametrize(("text", "why"), [
    pytest.param("", "not a valid duration", id="empty"),
    pytest.param("+", "not a valid duration", id="sign-only"),
    pytest.param("1", "without a unit", id="no-unit"),
    pytest.param("h", "not a valid duration", id="unit-only"),
    pytest.param(".", "not a valid duration", id="point-only"),
    pytest.param(".s", "not a valid duration", id="point-unit"),
    pytest.param("-.s", "not a valid duration", id="sign-point-unit"),
    pytest.param("1d", "unknown unit", id="days"),
    pytest.param("1h 30m", "unknown unit", id="space"),
    pytest.param(" 1h", "not a valid duration", id="leading-space"),
    pytest.param("1hh", "unknown unit", id="unit-doubled"),
    pytest.param("1H", "unknown unit", id="upper-case"),
    pytest.param("1\u00b5", "unknown unit", id="micro-without-s"),
    pytest.param("1..5s", "without a unit", id="two-points"),
    pytest.param("--1h", "not a valid duration", id="two-signs"),
    pytest.param("3000000h", "not a valid duration", id="hours-overflow"),
    pytest.param("9223372036854775808ns", "not a valid duration", id="just-past-largest"),
    pytest.param("92233720368547758080ns", "not a valid duration", id="integer-overflow"),
    pytest.param("2562047h47m16.854775808s", "not a valid duration", id="past-largest-in-hours"),
    pytest.param("1" * (MAX_DURATION_CHARS + 1), f"longer than {MAX_DURATION_CHARS}",
                 id="too-long-to-judge"),
])
def test_what_go_refuses_is_refused(text: str, why: str) -> None:
    with pytest.raises(DurationError, match=why):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1" * 20_000, "1h" + "1" * 20_000, "1." * 10_000,
                                  "0" * 3_000_000 + "1h"])
def test_a_long_tenant_string_is_refused_at_once(text: str) -> None:
    started = time.process_time()
    with pytest.raises(DurationError, match="longer than"):
        parse_duration(text)
    assert time.process_time() - started < 0.5


def test_a_message_quotes_the_tenants_text_escaped() -> None:
    with pytest.raises(DurationError) as error:
        parse_duration("1\nh\x1b[31m")
    assert "\n" not in str(error.value)
    assert "\x1b" not in str(error.value)
    assert '"1\\nh\\x1b[31m"' in str(error.value)


def test_seconds_for_limits() -> None:
    assert parse_seconds("1h30m") == 5400.0
    assert parse_seconds("1.5s") == 1.5


def test_format_is_short() -> None:
    assert (format_duration(5400), format_duration(45), format_duration(3600)) == (
        "1h30m", "45s", "1h")


# --- against Go itself --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def go_parse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoParse]:
    """Go's time.ParseDuration behind a pipe: str -> nanoseconds, or None for an error."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain on PATH to compare with")
    binary = tmp_path_factory.mktemp("goduration") / "goduration"
    # Never download a toolchain (the machine's go is the reference); no flags from outside.
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(binary), str(HERE / "goduration" / "main.go")],
                   check=True, env=env, cwd=HERE / "goduration", timeout=300)
    process = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdin is not None
    assert process.stdout is not None
    stdin, stdout = process.stdin, process.stdout

    def parse(text: str) -> int | None:
        stdin.write(text.encode("utf-8", "surrogatepass").hex() + "\n")
        stdin.flush()
        answer = stdout.readline().split() or ["(nothing)"]
        assert answer[0] in ("ok", "err"), answer
        return int(answer[1]) if answer[0] == "ok" else None

    try:
        yield parse
    finally:
        stdin.close()
        process.wait(timeout=10)


def python_parse(text: str) -> int | None:
    try:
        return parse_duration(text)
    except DurationError:
        return None


_NUMBERS = st.one_of(
    st.text("0123456789", max_size=22),
    st.sampled_from(["0", "00", "1", "9223372036854775807", "9223372036854775808",
                     "922337203685477580", "18446744073709551616", "2562047", "3600000000000"]),
)
_UNITS = st.sampled_from(["ns", "us", "\u00b5s", "\u03bcs", "ms", "s", "m", "h", "", "d", "H",
                          "\u00b5", "mss", " ", "\u00e9"])


@st.composite
def go_like(draw: st.DrawFn) -> str:
    """Strings near Go's grammar [-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+ and just off it."""
    text = draw(st.sampled_from(["", "", "", "-", "+", "--"]))
    for _ in range(draw(st.integers(1, 4))):
        text += draw(_NUMBERS)
        if draw(st.booleans()):
            text += "." + draw(_NUMBERS)
        text += draw(_UNITS)
    return text


@pytest.mark.slow  # a property test, and it builds and runs Go
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(go_like(), st.text(max_size=12),
                 st.text("0123456789.+-nsuµμmh", max_size=16)))
def test_every_string_reads_as_in_go(go_parse: GoParse, text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DURATION_CHARS:
        return  # refused before parsing, on purpose (test_a_long_tenant_string_...)
    assert python_parse(text) == go_parse(text), text
