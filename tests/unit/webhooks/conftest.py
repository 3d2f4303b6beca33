"""An app with a policy file the test can rewrite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.builders import EXAMPLE_POLICY
from webhooks.app import EXTENSION, create_app


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy" / "policy.yaml"
    path.parent.mkdir()
    path.write_bytes(EXAMPLE_POLICY.read_bytes())
    return path


@pytest.fixture
def app(policy_file: Path) -> Iterator[Flask]:
    app = create_app({"POLICY_FILE": str(policy_file), "POLICY_RELOAD_SECONDS": 0,
                      "TESTING": True})
    yield app
    app.extensions[EXTENSION].source.stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
