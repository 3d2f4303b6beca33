"""Fixtures shared by every test (the builders they use are in tests/builders.py)."""

from __future__ import annotations

import pytest

from policies.model import Policy, parse_policy
from tests.builders import EXAMPLE_POLICY


@pytest.fixture
def example_policy() -> Policy:
    """The bundled example policy, as the dev server uses it."""
    return parse_policy(EXAMPLE_POLICY.read_bytes())
