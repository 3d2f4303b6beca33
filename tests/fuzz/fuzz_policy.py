"""Fuzz target: any bytes as the policy file (YAML or JSON).

Invariant: parse_policy returns a Policy or raises PolicyError listing printable, bounded
problems; never another exception (a worker reloading the file, and `/validate/policy`, rely on
it).
"""

from __future__ import annotations

from collections.abc import Iterator

from policies.model import PolicyError, parse_policy
from tests.builders import EXAMPLE_POLICY

MAX_PROBLEM_CHARS = 600
CPU_SECONDS = 2.5
"""The most one input may take: PyYAML (pure Python) reads ahead over up to 1024 nested
levels, which takes about 1 s; only admins write the policy."""


def check(data: bytes) -> None:
    try:
        policy = parse_policy(data)
    except PolicyError as error:
        problems = error.problems
    else:
        assert len(policy.digest) == 64
        return
    assert problems
    for problem in problems:
        assert isinstance(problem, str), problem
        assert len(problem) <= MAX_PROBLEM_CHARS, len(problem)
        assert problem.isprintable(), problem


def seeds() -> Iterator[bytes]:
    # Inputs that once broke an invariant come first, so that the seeds alone catch a regression.
    # (Not deep nesting: PyYAML takes ~1 s on it, and each mutation of such a seed would too;
    # tests/unit/policies/test_model.py covers it.)
    yield b"a: 2027-00-01\n"
    yield b'"a\\nb": 1\n'
    yield EXAMPLE_POLICY.read_bytes()
    yield b"{}"
    yield b'{"builds": {"maxActiveRuns": 2, "mode": "warn"}, "exemptNamespaces": ["a"]}'
    yield b"builds: {maxActiveRuns: 0}\nbogus: 1\n"
    yield b'"quoted\\tkey": {"with\\nnewline": [1, 2]}\ntools: {groups: ["a\\u001bb"]}\n'
    yield (b"registries:\n  exceptions:\n    tool-a:\n"
           b"      - {prefix: quay.io/x, expires: 2027-01-01}\n")
    yield b"credentials:\n  trustedSteps:\n    - {name: export, images: [a/b:1], entrypoint: /x}\n"
