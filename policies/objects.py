"""Kubernetes objects as rules receive them: decoded JSON whose field types are not trusted.

The API server checks an object against its schema before a webhook sees it, but an old object,
a field added by a newer Kubernetes or a hand-written review (the offline CLI) can hold anything
where a rule expects a mapping; reading it through these accessors fails closed instead of
raising.
"""

from __future__ import annotations

from typing import Any


def mapping(value: object) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one."""
    # Decoded JSON holds dicts, and isinstance on dict is cheaper than on the Mapping ABC; rules
    # read thousands of fields per review.
    return value if isinstance(value, dict) else {}
