"""Fixtures for the certs tests: a fake clock and a fake cluster (see fakes.py)."""

from __future__ import annotations

import pytest

from tests.unit.certs.fakes import FakeClock, FakeStore, make_store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> FakeStore:
    return make_store(clock)
