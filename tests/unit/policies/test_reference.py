"""The policy reference is written from the model: every key, a meaning, a default that parses."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from policies.model import Policy, parse_policy
from policies.reference import markdown

ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<default>.+?) \| (?P<meaning>.*) \|$")
ROWS = [match.groupdict() for line in markdown().splitlines() if (match := ROW.match(line))]
PLAIN_KEYS = [row for row in ROWS if "[]" not in row["key"] and "<name>" not in row["key"]]


def test_every_key_has_a_meaning() -> None:
    assert ROWS
    for row in ROWS:
        assert row["meaning"].strip(), row["key"]
    keys = {row["key"] for row in ROWS}
    # Once missing from the hand-written table.
    assert {"builds.toolLabel", "builds.serviceAccount"} <= keys


def test_the_digest_is_not_a_key() -> None:
    assert not [row for row in ROWS if "digest" in row["key"]]


def _document(key: str, value: Any) -> dict[str, Any]:
    *sections, name = key.split(".")
    document: dict[str, Any] = {name: value}
    for section in reversed(sections):
        document = {section: document}
    return document


def _value(policy: Policy, key: str) -> Any:
    found: Any = policy
    for alias in key.split("."):
        name = next(n for n, f in type(found).model_fields.items() if f.alias == alias)
        found = getattr(found, name)
    return found


@pytest.mark.parametrize("row", PLAIN_KEYS, ids=lambda row: row["key"])
def test_a_default_written_at_its_key_is_the_default(row: dict[str, str]) -> None:
    text = row["default"].strip("`")
    policy = parse_policy(yaml.safe_dump(_document(row["key"], yaml.safe_load(text))))
    assert _value(policy, row["key"]) == _value(Policy(), row["key"])
