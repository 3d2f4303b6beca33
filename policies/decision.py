"""What a rule says about an object: findings, and the decision they add up to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["enforce", "warn"]
"""`enforce` denies an object with findings; `warn` admits it with the findings as warnings."""

ALLOWED = "Allowed"

# Messages end up in kubectl's one-line error and in logs; a tenant controls much of their text
# (image references, names), so one message is capped rather than trusted to be short.
MAX_MESSAGE_CHARS = 2000
MAX_WARNING_CHARS = 250


@dataclass(frozen=True)
class Finding:
    """One thing wrong with an object: a machine-readable reason and a message for its author."""

    reason: str
    """CamelCase constant, e.g. `ImageNotAllowed`; used in metrics, logs and audit annotations."""
    message: str
    """What is wrong and what to change, written for the person who submitted the object."""


@dataclass(frozen=True)
class Decision:
    """The verdict on one admission request."""

    allowed: bool
    reason: str = ALLOWED
    message: str = ""
    warnings: tuple[str, ...] = ()
    audit: tuple[tuple[str, str], ...] = ()
    """Key/value pairs for the API server's audit log (`auditAnnotations`)."""
    patched: object | None = field(default=None, compare=False)
    """For a mutation: the object as it should be stored; None when nothing changes."""


ADMITTED = Decision(allowed=True)
"""Admitted with nothing to say: most reviews end here, so rules share this one (it is frozen)."""


def allow(*, warnings: Iterable[str] = (), audit: Iterable[tuple[str, str]] = ()) -> Decision:
    """Admit the object."""
    if not warnings and not audit:
        return ADMITTED
    return Decision(allowed=True, warnings=tuple(warnings), audit=tuple(audit))


def deny(reason: str, message: str) -> Decision:
    """Refuse the object for one reason."""
    return Decision(allowed=False, reason=reason, message=cap(message, MAX_MESSAGE_CHARS))


def decide(findings: Iterable[Finding], mode: Mode, *, patched: object | None = None) -> Decision:
    """Turn a rule's findings into a decision: every finding in one message, or as warnings."""
    found = tuple(findings)
    if not found:
        return ADMITTED if patched is None else Decision(allowed=True, patched=patched)
    reason = found[0].reason
    audit = (("reason", reason), ("findings", str(len(found))))
    if mode == "warn":
        warnings = tuple(cap(f.message, MAX_WARNING_CHARS) for f in found)
        return Decision(allowed=True, reason=reason, warnings=warnings,
                        audit=(*audit, ("mode", "warn")), patched=patched)
    message = found[0].message if len(found) == 1 else "; ".join(f.message for f in found)
    return Decision(allowed=False, reason=reason, message=cap(message, MAX_MESSAGE_CHARS),
                    audit=audit)


def cap(text: str, limit: int) -> str:
    """Cut text to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    # The note takes room too, so more is left out than the excess; it counts what really is.
    left_out = len(text) - limit
    while len(text) - (limit - len(_left_out_note(left_out))) != left_out:
        left_out = len(text) - (limit - len(_left_out_note(left_out)))
    note = _left_out_note(left_out)
    return text[: limit - len(note)] + note


def _left_out_note(count: int) -> str:
    return f"... ({count} more characters)"


def quote(value: object, limit: int = 200) -> str:
    """Quote a tenant-supplied value for a message: one line, printable, bounded."""
    text = value if isinstance(value, str) else repr(value)
    # repr-style escaping keeps control characters and newlines out of logs and kubectl output.
    escaped = text.encode("unicode_escape").decode("ascii")
    return '"' + cap(escaped.replace('"', '\\"'), limit) + '"'


def escape(value: object, limit: int = 80) -> str:
    """A tenant-supplied value escaped and bounded like `quote`, without the quotes.

    For names and keys that read better bare (`untrusted container step-build: mount
    /tekton/creds`, `spec.podTemplate: ...`); the default limit suits a name.
    """
    return quote(value, limit)[1:-1]


def combine(*decisions: Decision) -> Decision:
    """One decision from several rules on one object: the first denial wins, warnings add up."""
    if all(d == ADMITTED and d.patched is None for d in decisions):
        return ADMITTED
    denied = next((d for d in decisions if not d.allowed), None)
    warnings = tuple(w for d in decisions for w in d.warnings)
    if denied is not None:
        return Decision(allowed=False, reason=denied.reason, message=denied.message,
                        warnings=warnings, audit=denied.audit)
    patched = next((d.patched for d in decisions if d.patched is not None), None)
    reason = next((d.reason for d in decisions if d.warnings), ALLOWED)
    audit = tuple(a for d in decisions for a in d.audit)
    return Decision(allowed=True, reason=reason, warnings=warnings, audit=audit, patched=patched)
