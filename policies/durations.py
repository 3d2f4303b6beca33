"""Go duration strings, the format of Tekton's `timeouts` (`1h`, `1h30m`, `90s`, `0`)."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Go's time.Duration is an int64 of nanoseconds; anything longer does not parse in Tekton either.
MAX_SECONDS = (2**63 - 1) / 1e9


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; raise ValueError when it is not one."""
    if not isinstance(text, str) or not text:
        raise ValueError("a duration must be a non-empty string such as 1h or 90m")
    if text == "0":
        return 0.0
    if text.startswith("-"):
        raise ValueError(f"a duration must not be negative: {text[:40]!r}")
    body = text.removeprefix("+")
    seconds = 0.0
    position = 0
    # Each part is matched where the previous one ended: searching ahead (finditer) tried every
    # later position of a long run of digits without a unit, quadratic in a tenant's string.
    while match := _PART.match(body, position):
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(body) or position == 0:
        raise ValueError(f"not a duration: {text[:40]!r} (use a number and a unit, e.g. 1h30m)")
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration too long: {text[:40]!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short Go-style duration for messages: 5400 -> 1h30m."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")
