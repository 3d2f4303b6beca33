"""A policy as the command line reads it: a policy file, a ConfigMap manifest, or the ConfigMap
in the cluster. Every problem is one line that names where the policy came from.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from policies.configmap import POLICY_CONFIGMAP, POLICY_KEY
from policies.model import Policy, PolicyError, parse_policy


class InputError(ValueError):
    """A file the command line was given cannot be read."""


class PolicyFileError(ValueError):
    """The policy cannot be used; `problems` are one line each, with the file's name."""

    def __init__(self, problems: list[str], *, unreadable: bool = False) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)
        self.unreadable = unreadable
        """True when there was no policy to judge (a missing file, a ConfigMap without the key),
        as opposed to a policy with problems."""


def read_bytes(name: str) -> bytes:
    """A file's bytes (`-`: stdin), or an InputError that says which file, in one line."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {name}: {error.strerror or error}") from None


def load_policy(name: str) -> Policy:
    """The policy in a file (`-`: stdin): a policy YAML or a ConfigMap manifest holding one."""
    origin = "stdin" if name == "-" else name
    try:
        data = read_bytes(name)
    except InputError as error:
        raise PolicyFileError([str(error)], unreadable=True) from None
    return parse_policy_text(data, origin)


def parse_policy_text(data: bytes, origin: str) -> Policy:
    """A policy from a file's bytes, which may be a ConfigMap manifest holding it."""
    try:
        document = yaml.safe_load(data)
    except (yaml.YAMLError, ValueError, RecursionError):
        document = None  # parse_policy reports the problem with its position
    if isinstance(document, dict) and document.get("kind") == "ConfigMap":
        return policy_from_configmap(document, origin)
    try:
        return parse_policy(data)
    except PolicyError as error:
        raise PolicyFileError([f"{origin}: {problem}" for problem in error.problems]) from None


def policy_from_configmap(configmap: Mapping[str, Any], origin: str) -> Policy:
    """The policy held by a ConfigMap object (from a manifest or the API server)."""
    data = configmap.get("data")
    text = data.get(POLICY_KEY) if isinstance(data, Mapping) else None
    if not isinstance(text, str):
        raise PolicyFileError([f"{origin}: the ConfigMap has no data key {POLICY_KEY} (the policy "
                               f"is the {POLICY_KEY} key of {POLICY_CONFIGMAP})"],
                              unreadable=True)
    try:
        return parse_policy(text)
    except PolicyError as error:
        where = f"{origin}: data.{POLICY_KEY}"
        raise PolicyFileError([f"{where}: {problem}" for problem in error.problems]) from None
