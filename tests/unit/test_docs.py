"""The commands the README and docs/cli.md show work, on the samples they name.

Every `toolforge-admission` command in a `sh` block of those pages is run (from the repository
root, as the pages assume) except those that need a server or a cluster (`serve`, `audit`,
`certs`); none may end in bad input (exit 2). The samples agree with each other, and the
AdmissionReview the README posts is answered. The example rule of docs/adding-a-rule.md runs as
the page says, against the current `policies.rule` API.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from flask.testing import FlaskClient

from policies import buildruns, configmap, credentials, pipelinerun, registry
from policies.model import Policy, parse_policy
from policies.rule import Rule
from tests.builders import EXAMPLE_POLICY, judged, rule_review
from tests.buildruns import captured_pod
from webhooks.admission import ENDPOINTS_BY_NAME
from webhooks.cli import EXIT_BAD_INPUT, main

ROOT = Path(__file__).resolve().parents[1].parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "cli.md"]
NEEDS_A_CLUSTER = ("serve", "audit", "certs")


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for page in PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0].endswith("toolforge-admission"):
                    commands.append((page.name, " ".join(words)))
    return commands


COMMANDS = documented_commands()


def test_the_pages_show_commands() -> None:
    shown = {command.split()[1] for _, command in COMMANDS}
    assert {"review", "test", "policy", "audit"} <= shown


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_a_documented_command_works(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str], page: str,
                                    command: str) -> None:
    words = command.split()
    if words[1] in NEEDS_A_CLUSTER:
        pytest.skip(f"{words[1]} needs a server or a cluster (tests/e2e)")
    monkeypatch.chdir(ROOT)
    code = main(words[1:])
    captured = capsys.readouterr()
    assert code != EXIT_BAD_INPUT, f"{page}: {command}\n{captured.err}"
    assert "error:" not in captured.err


def test_the_table_shown_for_the_samples_is_what_review_prints(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    page = (ROOT / "docs" / "cli.md").read_text()
    shown = re.search(r"```\n(KIND .*?)```", page, re.DOTALL)
    assert shown is not None
    monkeypatch.chdir(ROOT)
    main(["review", "--policy", "policies/example-policy.yaml", "examples/objects", "-o",
          "table"])
    printed = capsys.readouterr().out.splitlines()
    for line in shown.group(1).splitlines():
        if line == "...":
            continue
        cells = re.split(r" {3,}", line.split("...")[0].rstrip(" ;"))
        assert any(re.split(r" {3,}", out)[:len(cells) - 1] == cells[:-1]
                   and cells[-1] in out for out in printed), line


def test_the_review_the_readme_posts_is_the_sample_pod(client: FlaskClient) -> None:
    review = json.loads((ROOT / "examples" / "review.json").read_text())
    pod = yaml.safe_load((ROOT / "examples" / "objects" / "pod.yaml").read_text())
    assert review["request"]["object"] == pod
    answer = client.post("/validate/pods", json=review)
    assert answer.status_code == 200
    assert answer.json is not None
    assert answer.json["response"] == {"uid": review["request"]["uid"], "allowed": True}


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    from webhooks.app import create_app

    app = create_app({"POLICY_FILE": str(ROOT / "policies" / "example-policy.yaml"),
                      "POLICY_RELOAD_SECONDS": 0, "TESTING": True})
    return app.test_client()


# --- docs/adding-a-rule.md: its example runs, and what it names exists ------------------------

GUIDE = ROOT / "docs" / "adding-a-rule.md"
GUIDE_ADDS = {"policies/build_resources.py", "tests/unit/policies/test_build_resources.py"}
"""The files the guide's example would add; every other file it names must exist."""


def _guide_blocks(language: str) -> list[str]:
    # Blocks inside a list item are indented with it.
    return [textwrap.dedent(block)
            for block in re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.DOTALL)]


def test_the_files_the_rule_guide_names_exist() -> None:
    named = set(re.findall(r"`((?:policies|webhooks|tests|manifests|docs|examples|bench)/[\w./-]*)`",
                           GUIDE.read_text()))
    assert len(named) > 20
    assert sorted(p for p in named - GUIDE_ADDS if not (ROOT / p).exists()) == []


def test_the_rule_the_guide_builds_works_as_the_guide_says() -> None:
    blocks = _guide_blocks("python")
    module: dict[str, Any] = {"__name__": "build_resources"}
    source = next(b for b in blocks if b.startswith('"""Build pods request'))
    exec(compile(source, str(GUIDE), "exec"), module)
    rule = module["BUILD_POD_CPU"]
    example = parse_policy(EXAMPLE_POLICY.read_bytes())
    # The key the guide adds, on a stand-in for the policy: the model has no such key.
    builds = SimpleNamespace(namespace=example.builds.namespace, mode="enforce", max_pod_cpu=4000)
    policy = cast(Policy, SimpleNamespace(exempt_namespaces=example.exempt_namespaces,
                                          builds=builds))
    scope = {**module, "captured_pod": captured_pod, "judged": judged,
             "rule_review": rule_review, "POLICY": policy}
    exec(compile(next(b for b in blocks if b.startswith("def test_")), str(GUIDE), "exec"),
         scope)
    tests = [test for name, test in scope.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()

    def pod_requesting(*cpus: object) -> dict[str, Any]:
        pod = captured_pod()
        for container, cpu in zip(pod["spec"]["containers"], cpus, strict=False):
            container["resources"] = {"requests": {"cpu": cpu}}
        return pod

    build = example.builds.namespace
    assert judged((rule,), rule_review(pod_requesting("3", "1000m"), namespace=build),
                  policy).allowed
    unreadable = judged((rule,), rule_review(pod_requesting("1.5"), namespace=build), policy)
    assert (unreadable.allowed, unreadable.reason) == (False, module["CPU_REQUEST_UNREADABLE"])
    assert 'requests CPU "1.5": write whole cores' in unreadable.message
    assert not judged((rule,), rule_review(pod_requesting(4), namespace=build), policy).allowed
    too_much = pod_requesting("5")
    assert not judged((rule,), rule_review(too_much, namespace=build, operation="UPDATE"),
                      policy).allowed
    for elsewhere in (rule_review(too_much, namespace="tool-mytool"),
                      rule_review(too_much, namespace=build, operation="DELETE")):
        assert judged((rule,), elsewhere, policy).allowed


def test_the_guide_adds_its_rule_after_the_rules_the_endpoint_has() -> None:
    shown = re.search(r'Endpoint\("validate-pods", "/validate/pods", False, \(([\w, ]+)\)',
                      GUIDE.read_text())
    assert shown is not None
    names = shown.group(1).split(", ")
    assert names[-1] == "BUILD_POD_CPU"
    rules = {name: value for module in (registry, credentials, buildruns, pipelinerun, configmap)
             for name, value in vars(module).items() if isinstance(value, Rule)}
    assert tuple(rules[name] for name in names[:-1]) == ENDPOINTS_BY_NAME["validate-pods"].rules
    for block in _guide_blocks("yaml"):
        assert yaml.safe_load(block)
