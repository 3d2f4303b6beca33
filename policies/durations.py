"""Go duration strings, the format of Tekton's `timeouts` (`1h`, `1h30m`, `90s`, `0`).

Tekton reads them with Go's `time.ParseDuration`, so they are judged here exactly as it reads
them: `parse_duration` follows that function step by step, on the UTF-8 bytes, with its uint64
arithmetic (overflow limits, the float64 step for fractions). What Go reads as zero, such as
`0.5ns` or `.0000001us`, is zero here too, and zero means no timeout at all in Tekton.
tests/unit/policies/test_durations.py checks it against the Go toolchain's own ParseDuration.
"""

from __future__ import annotations

import functools

from policies.decision import quote

NANOSECONDS_PER_SECOND = 1_000_000_000
MAX_DURATION_CHARS = 128
"""Longer strings are refused before parsing. Go takes any length (`000…01h` is an hour), but no
real timeout needs more, and a tenant's megabyte of digits would cost a review that much time."""

_UINT64 = (1 << 64) - 1
_LIMIT = 1 << 63
_UNITS: dict[bytes, int] = {
    b"ns": 1,
    b"us": 1_000,
    "\u00b5s".encode(): 1_000,  # µ, MICRO SIGN
    "\u03bcs".encode(): 1_000,  # μ, GREEK SMALL LETTER MU
    b"ms": 1_000_000,
    b"s": NANOSECONDS_PER_SECOND,
    b"m": 60 * NANOSECONDS_PER_SECOND,
    b"h": 3600 * NANOSECONDS_PER_SECOND,
}
_DIGITS = frozenset(b"0123456789")
_POINT = ord(".")
_ZERO = ord("0")
_HINT = "write a number and a unit (ns, us, µs, ms, s, m, h), e.g. 1h or 1h30m"


class DurationError(ValueError):
    """A string Go's time.ParseDuration refuses (or one too long to judge)."""


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go duration string, as `time.ParseDuration` returns them (may be < 0).

    Raise DurationError where Go returns an error.
    """
    if not isinstance(text, str):
        raise DurationError(f"a duration must be a string; {_HINT}")
    return _parse_duration_text(text)


# Runs name the same few timeouts (`1h`), and a parse makes its error before it knows whether it
# needs it: successful parses are kept (an exception is not cached), 1,024 of at most
# MAX_DURATION_CHARS each, whatever tenants send.
@functools.lru_cache(maxsize=1024)
def _parse_duration_text(text: str) -> int:
    # Go indexes strings by byte; a lone surrogate (only JSON escapes make one) is kept as bytes
    # that match no unit, as Go's U+FFFD would not either.
    s = text.encode("utf-8", "surrogatepass")
    if len(s) > MAX_DURATION_CHARS:
        raise DurationError(f"a duration longer than {MAX_DURATION_CHARS} characters is not "
                            f"accepted; {_HINT}")
    invalid = DurationError(f"{_shown(text)} is not a valid duration; {_HINT}")
    negative = False
    if s[:1] in (b"-", b"+"):
        negative = s[:1] == b"-"
        s = s[1:]
    if s == b"0":
        return 0
    if not s:
        raise invalid
    total = 0
    at = 0
    while at < len(s):
        part, at = _part(s, at, text, invalid)
        total = (total + part) & _UINT64  # uint64 addition, wrapping as Go's does
        if total > _LIMIT:
            raise invalid
    if negative:
        return -total
    if total > _LIMIT - 1:
        raise invalid
    return total


def _part(s: bytes, at: int, text: str, invalid: DurationError) -> tuple[int, int]:
    """One `[0-9]*(\\.[0-9]*)?unit` from `at`: its nanoseconds and where the next one starts."""
    if not (s[at] == _POINT or s[at] in _DIGITS):
        raise invalid
    whole, end = _leading_int(s, at, invalid)
    before_point = end != at
    fraction, scale, after_point = 0, 1.0, False
    if end < len(s) and s[end] == _POINT:
        fraction, scale, after = _leading_fraction(s, end + 1)
        after_point = after != end + 1
        end = after
    if not before_point and not after_point:
        raise invalid
    start = end
    while end < len(s) and not (s[end] == _POINT or s[end] in _DIGITS):
        end += 1
    if end == start:
        raise DurationError(f"{_shown(text)} has a number without a unit; {_HINT}")
    unit = _UNITS.get(s[start:end])
    if unit is None:
        found = s[start:end].decode("utf-8", "replace")
        raise DurationError(f"{_shown(text)} has an unknown unit {_shown(found)}; {_HINT}")
    if whole > _LIMIT // unit:
        raise invalid
    whole *= unit
    if fraction > 0:
        # Go's own float64 step; its truncation is what makes 0.5ns zero.
        whole += int(float(fraction) * (float(unit) / scale))
        if whole > _LIMIT:
            raise invalid
    return whole, end


def _leading_int(s: bytes, at: int, invalid: DurationError) -> tuple[int, int]:
    """[0-9]* from `at`, an error past 2**63 (Go's leadingInt)."""
    value = 0
    while at < len(s) and s[at] in _DIGITS:
        if value > _LIMIT // 10:
            raise invalid
        value = value * 10 + s[at] - _ZERO
        if value > _LIMIT:
            raise invalid
        at += 1
    return value, at


def _leading_fraction(s: bytes, at: int) -> tuple[int, float, int]:
    """[0-9]* from `at`; digits past what fits add no precision (Go's leadingFraction)."""
    value, scale, overflow = 0, 1.0, False
    while at < len(s) and s[at] in _DIGITS:
        if not overflow:
            if value > (_LIMIT - 1) // 10:
                overflow = True
            else:
                following = value * 10 + s[at] - _ZERO
                if following > _LIMIT:
                    overflow = True
                else:
                    value = following
                    scale *= 10
        at += 1
    return value, scale, at


def parse_seconds(text: str) -> float:
    """Seconds in a Go duration string (for limits an admin writes)."""
    return parse_duration(text) / NANOSECONDS_PER_SECOND


def format_duration(seconds: float) -> str:
    """A short Go-style duration for messages: 5400 -> 1h30m."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def _shown(text: str) -> str:
    return quote(text, 60)
