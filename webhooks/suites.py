"""Policy test suites: objects, a policy, and the verdicts expected (`toolforge-admission test`).

A suite is a YAML file (docs/cli.md has the format and an example):

    apiVersion: toolforge-admission.toolforge.org/v1alpha1
    kind: Suite
    policy: ../policy.yaml             # a policy file or ConfigMap manifest, beside this file
    now: 2027-01-15                    # optional: the day (or time) the rules see
    tests:
      - name: a tool's pod from its own Harbor project
        object: pod.yaml               # a path (one object or AdmissionReview), or inline
        namespace: tool-mytool         # optional, as `review` takes them: user, groups, ...
        expect:
          allowed: true
          mutated: false               # or a list of field checks on the stored object

Each case is judged exactly as `review` judges an object (`webhooks.offline`), so a suite passes
or fails for the reasons the API server would admit or refuse.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from policies.model import Policy
from webhooks.documents import SUFFIXES, Document, expand_paths, parse_documents
from webhooks.offline import OfflineOutcome, OfflineReviewError, Requester, review_offline
from webhooks.policy_files import InputError, PolicyFileError, load_policy, read_bytes
from webhooks.terminal import diff

API_VERSION = "toolforge-admission.toolforge.org/v1alpha1"
KIND = "Suite"


class SuiteError(ValueError):
    """A suite that cannot be run: unreadable, malformed, or naming files that are not there."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)


class FieldCheck(_Strict):
    """One field of the object as the API server would store it (after any mutation)."""

    path: str
    """`spec.containers[step-build].env[0].value`: keys, list items by name or position,
    `metadata.labels["toolforge.org/tool"]` for keys with dots."""
    equals: Any = None
    absent: bool = False
    contains: Any = None
    """A list holds an item that matches (a mapping matches any item with those keys and
    values); a string holds the substring."""
    excludes: Any = None
    """The opposite of `contains` (also true when the field is absent)."""

    @model_validator(mode="after")
    def _one_check(self) -> FieldCheck:
        checks = self.model_fields_set & {"equals", "absent", "contains", "excludes"}
        if len(checks) != 1:
            raise ValueError("give exactly one of equals, absent, contains, excludes")
        return self


class Expectation(_Strict):
    allowed: bool
    reason: str | None = None
    """The machine-readable reason of the denial (or of the first warning)."""
    messages: tuple[str, ...] = ()
    """Substrings of the message the user sees (the denial, or the warnings)."""
    warnings: tuple[str, ...] = ()
    """Substrings each of which some warning holds."""
    mutated: bool | tuple[FieldCheck, ...] | None = None
    """false: stored as submitted; true: changed; field checks: changed, and these hold."""


class Case(_Strict):
    name: str = Field(min_length=1)
    object: str | dict[str, Any]
    namespace: str | None = None
    user: str | None = None
    groups: tuple[str, ...] | None = None
    operation: Literal["CREATE", "UPDATE", "DELETE"] = "CREATE"
    old: str | dict[str, Any] | None = None
    dry_run: bool = False
    endpoint: str | None = None
    now: datetime.datetime | datetime.date | None = None
    expect: Expectation


class Metadata(_Strict):
    name: str = ""


class SuiteFile(_Strict):
    api_version: Literal["toolforge-admission.toolforge.org/v1alpha1"]
    kind: Literal["Suite"]
    metadata: Metadata = Metadata()
    policy: str
    now: datetime.datetime | datetime.date | None = None
    tests: tuple[Case, ...] = Field(min_length=1)


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    path: str
    cases: tuple[CaseResult, ...]


def find_suites(names: Sequence[str]) -> list[str]:
    """Suite files among the paths: files as given; in directories, the YAML files that are
    suites (kind Suite of this apiVersion)."""
    suites = []
    for name in names:
        if Path(name).is_dir():
            found = [f for f in expand_paths([name]) if f.endswith(SUFFIXES[:2]) and _is_suite(f)]
            if not found:
                raise SuiteError(f"{name}: no suites (kind: {KIND}, apiVersion: {API_VERSION}) "
                                 "in this directory")
            suites += found
        else:
            suites.append(name)
    return suites


def _is_suite(name: str) -> bool:
    try:
        head = yaml.safe_load(read_bytes(name))
    except (InputError, yaml.YAMLError, ValueError):
        return False
    return isinstance(head, dict) and head.get("kind") == KIND \
        and head.get("apiVersion") == API_VERSION


def run_suite(name: str, clock: datetime.datetime) -> SuiteResult:
    """Judge every case of a suite; raises SuiteError when the suite itself is unusable."""
    suite = _load(name)
    base = Path(name).parent
    try:
        policy = load_policy(str(base / suite.policy))
    except PolicyFileError as error:
        raise SuiteError("; ".join(f"policy: {p}" for p in error.problems)) from None
    results = []
    for case in suite.tests:
        now = _instant(case.now or suite.now) or clock
        results.append(CaseResult(case.name, tuple(_run_case(case, base, policy, now))))
    return SuiteResult(name, tuple(results))


def _load(name: str) -> SuiteFile:
    try:
        document = yaml.safe_load(read_bytes(name))
    except InputError as error:
        raise SuiteError(str(error)) from None
    except (yaml.YAMLError, ValueError) as error:
        raise SuiteError(f"{name}: not valid YAML: {' '.join(str(error).split())}") from None
    try:
        return SuiteFile.model_validate(document)
    except ValidationError as error:
        problems = [f"{_path(e['loc']) or 'suite'}: {_message(e)}" for e in error.errors()]
        raise SuiteError(f"{name}: " + "; ".join(problems)) from None


def _path(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required"
    if error["type"] == "too_short":
        return f"must list at least {error['ctx']['min_length']} entry"
    return str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")


def _instant(value: datetime.datetime | datetime.date | None) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value
    return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC)


def _object(value: str | dict[str, Any], base: Path, what: str) -> Any:
    if isinstance(value, dict):
        return value
    path = base / value
    try:
        documents: list[Document] = parse_documents(read_bytes(str(path)), str(path))
    except InputError as error:
        raise SuiteError(f"{what}: {error}") from None
    if len(documents) != 1:
        raise SuiteError(f"{what}: {path} holds {len(documents)} objects; a case judges one")
    return documents[0].body


def _run_case(case: Case, base: Path, policy: Policy, now: datetime.datetime) -> Iterator[str]:
    document = _object(case.object, base, f"{case.name}: object")
    old = _object(case.old, base, f"{case.name}: old") if case.old is not None else None
    requester = Requester(user=case.user, groups=case.groups, namespace=case.namespace,
                          operation=case.operation, old=old, dry_run=case.dry_run)
    try:
        outcome = review_offline(document, policy, endpoint=case.endpoint, requester=requester,
                                 now=now)
    except OfflineReviewError as error:
        yield f"cannot be judged: {error}"
        return
    yield from _compare(case.expect, outcome)


def _compare(expect: Expectation, outcome: OfflineOutcome) -> Iterator[str]:
    decision = outcome.decision
    seen = outcome.message or "(no message)"
    if decision.allowed != expect.allowed:
        yield (f"expected {'allowed' if expect.allowed else 'denied'}, got "
               f"{'allowed' if decision.allowed else 'denied'}: {seen}")
        return
    if expect.reason is not None and decision.reason != expect.reason:
        yield f"expected reason {expect.reason}, got {decision.reason}"
    for text in expect.messages:
        if text not in outcome.message:
            yield f"the message does not say {text!r}: {seen}"
    for text in expect.warnings:
        if not any(text in warning for warning in decision.warnings):
            yield f"no warning says {text!r}: {list(decision.warnings)}"
    if expect.mutated is None:
        return
    changed = outcome.mutated is not None
    if expect.mutated is False and changed:
        changes = diff(outcome.request.object, outcome.mutated).splitlines()
        yield f"expected no mutation, got {len(changes)} changes: {'; '.join(changes[:3])}"
    elif expect.mutated is not False and not changed:
        yield "expected a mutation, the object is stored as submitted"
    if isinstance(expect.mutated, tuple):
        stored = outcome.mutated if changed else outcome.request.object
        for check in expect.mutated:
            problem = _check(check, stored)
            if problem:
                yield f"{check.path}: {problem}"


# -- field checks --------------------------------------------------------------------------------

_STEP = re.compile(r"""\.?([^.\[\]]+)|\[(\d+)\]|\[(["'])(.*?)\3\]|\[([^\]]+)\]""")


def lookup(document: Any, path: str) -> tuple[bool, Any]:
    """The value at a path (see FieldCheck.path): (found, value)."""
    value = document
    for key, index, name in _steps(path):
        if key is not None:
            if not isinstance(value, dict) or key not in value:
                return False, None
            value = value[key]
        elif index is not None:
            if not isinstance(value, list) or index >= len(value):
                return False, None
            value = value[index]
        else:
            items = [i for i in value if isinstance(i, dict) and i.get("name") == name] \
                if isinstance(value, list) else []
            if not items:
                return False, None
            value = items[0]
    return True, value


def _steps(path: str) -> list[tuple[str | None, int | None, str | None]]:
    """A path as (mapping key, list position, item name) steps, one of the three set each."""
    steps: list[tuple[str | None, int | None, str | None]] = []
    position = 0
    while position < len(path):
        match = _STEP.match(path, position)
        if match is None or match.end() == position:
            raise SuiteError(f"cannot read the path {path!r} at {path[position:]!r}")
        position = match.end()
        key, index, _, quoted, name = match.groups()
        if index is not None:
            steps.append((None, int(index), None))
        elif name is not None:
            steps.append((None, None, name))
        else:
            steps.append((key if key is not None else quoted, None, None))
    return steps


def _check(check: FieldCheck, document: Any) -> str:
    found, value = lookup(document, check.path)
    fields = check.model_fields_set
    if "absent" in fields:
        if check.absent and found:
            return f"expected absent, is {_short(value)}"
        if not check.absent and not found:
            return "expected present, is absent"
        return ""
    if "equals" in fields:
        if not found:
            return f"expected {_short(check.equals)}, is absent"
        if value != check.equals:
            return f"expected {_short(check.equals)}, is {_short(value)}"
        return ""
    if "contains" in fields:
        if not found:
            return f"expected to contain {_short(check.contains)}, is absent"
        return "" if _contains(value, check.contains) else \
            f"does not contain {_short(check.contains)}: {_short(value)}"
    if found and _contains(value, check.excludes):
        return f"contains {_short(check.excludes)}: {_short(value)}"
    return ""


def _contains(value: Any, wanted: Any) -> bool:
    if isinstance(value, list):
        return any(_matches(item, wanted) for item in value)
    if isinstance(value, str) and isinstance(wanted, str):
        return wanted in value
    return _matches(value, wanted)


def _matches(item: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(item, dict) and all(
            key in item and _matches(item[key], expected) for key, expected in wanted.items())
    return bool(item == wanted)


def _short(value: Any, limit: int = 120) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
