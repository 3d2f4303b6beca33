"""Regular expressions an admin writes in the policy, matched against what a tenant sends.

A param entry may carry a `pattern` that the whole value must match. The value is the tenant's,
of any length, and the pattern is the admin's, so a mistake like `(a+)+` must not turn into a
review that backtracks for minutes. Patterns are therefore RE2 (google-re2): matching takes time
linear in the value whatever the pattern, and constructs that need backtracking (backreferences,
lookaround) are refused when the policy loads. The syntax is Go's `regexp`, which Kubernetes and
Tekton users know. Every match is anchored at both ends, written or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re2

MAX_PATTERN_CHARS = 1000
# RE2 refuses a pattern whose compiled program would need more than this, rather than grow.
_MAX_PROGRAM_BYTES = 8 << 20


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised to the policy check; stderr stays quiet
    options.max_mem = _MAX_PROGRAM_BYTES
    return options


@dataclass(frozen=True)
class AnchoredPattern:
    """An RE2 pattern that a whole value must match."""

    text: str
    _compiled: Any = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> AnchoredPattern:
        """Compile `text`; raise ValueError with RE2's reason when it is not a valid RE2."""
        if len(text) > MAX_PATTERN_CHARS:
            raise ValueError(f"a pattern may have at most {MAX_PATTERN_CHARS} characters")
        try:
            compiled = re2.compile(text, _options())
        except re2.error as error:
            reason = error.args[0] if error.args else error
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise ValueError(f"not a valid RE2 regular expression: {reason}") from None
        return cls(text=text, _compiled=compiled)

    def matches(self, value: str) -> bool:
        """True when the whole of `value` matches."""
        try:
            return self._compiled.fullmatch(value) is not None
        except UnicodeError:  # a lone surrogate (a JSON escape) is no text any pattern names
            return False

    def __str__(self) -> str:
        return self.text
