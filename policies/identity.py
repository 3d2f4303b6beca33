"""Who a request is for: tool names, and the patterns that map them to namespaces and users."""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = "{tool}"
# Toolforge tool names (builds-api's rule): lower case, digits, "-" and "_", starting with a letter.
_TOOL_NAME = re.compile(r"[a-z](?:[-_a-z0-9]{0,254}[a-z0-9])?")


def is_tool_name(name: str) -> bool:
    """True for a syntactically valid tool name."""
    return bool(_TOOL_NAME.fullmatch(name))


@dataclass(frozen=True)
class ToolPattern:
    """A name with one `{tool}` placeholder, such as `tool-{tool}`."""

    prefix: str
    suffix: str

    @classmethod
    def parse(cls, text: str) -> ToolPattern:
        """Read a pattern; raise ValueError unless it holds `{tool}` exactly once."""
        if text.count(PLACEHOLDER) != 1:
            raise ValueError(f"must contain {PLACEHOLDER} exactly once")
        prefix, _, suffix = text.partition(PLACEHOLDER)
        if "{" in prefix + suffix or "}" in prefix + suffix:
            raise ValueError(f"only the {PLACEHOLDER} placeholder is supported")
        return cls(prefix=prefix, suffix=suffix)

    def expand(self, tool: str) -> str:
        """The name for one tool."""
        return f"{self.prefix}{tool}{self.suffix}"

    def tool_of(self, name: str) -> str | None:
        """The tool a name belongs to, or None when the name does not fit the pattern."""
        if len(name) <= len(self.prefix) + len(self.suffix):
            return None
        if not (name.startswith(self.prefix) and name.endswith(self.suffix)):
            return None
        tool = name[len(self.prefix) : len(name) - len(self.suffix)]
        return tool if is_tool_name(tool) else None

    def __str__(self) -> str:
        return self.expand(PLACEHOLDER)


@dataclass(frozen=True)
class User:
    """The authenticated requester, as the API server reports it in `userInfo`."""

    username: str
    groups: tuple[str, ...] = ()
