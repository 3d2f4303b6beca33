"""Policy test suites: the shipped suites pass, and a suite says exactly what failed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import EXAMPLE_POLICY
from webhooks.cli import EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK, main
from webhooks.suites import API_VERSION, SuiteError, lookup

REPO = Path(__file__).parent.parent.parent.parent
SHIPPED = [REPO / "examples" / "suites", REPO / "manifests" / "overlays" / "toolforge"]
BUILD_POD = REPO / "examples" / "objects" / "build-pod.admissionreview.json"


def test_the_shipped_suites_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["test", *map(str, SHIPPED)])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    summary = re.search(r"^(\d+) passed, 0 failed$", out, re.MULTILINE)
    assert summary is not None, out
    assert int(summary.group(1)) >= 20
    assert "FAIL" not in out


def suite(tmp_path: Path, tests: list[dict[str, Any]], **extra: Any) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": API_VERSION, "kind": "Suite",
                                    "policy": str(EXAMPLE_POLICY), "tests": tests, **extra}))
    return str(path)


NGINX = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "n", "namespace": "tool-mytool"},
         "spec": {"containers": [{"name": "n", "image": "docker.io/library/nginx:1"}]}}


@pytest.mark.parametrize(("expect", "failure"), [
    pytest.param({"allowed": True}, "expected allowed, got denied: 1 image is not allowed",
                 id="verdict"),
    pytest.param({"allowed": False, "reason": "ImageInvalid"},
                 "expected reason ImageInvalid, got ImageNotAllowed", id="reason"),
    pytest.param({"allowed": False, "messages": ["quay.io"]},
                 "the message does not say 'quay.io': 1 image is not allowed", id="message"),
])
def test_a_failing_case_says_what_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          expect: dict[str, Any], failure: str) -> None:
    path = suite(tmp_path, [{"name": "nginx", "object": NGINX, "expect": expect}])
    assert main(["test", path]) == EXIT_DENIED
    out = capsys.readouterr().out
    assert "  FAIL  nginx\n" in out
    assert f"          {failure}" in out
    assert out.rstrip().endswith("0 passed, 1 failed")


def test_mutation_expectations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = suite(tmp_path, [
        {"name": "unchanged expected", "object": str(BUILD_POD), "expect": {
            "allowed": True, "mutated": False}},
        {"name": "a change expected", "object": NGINX | {"metadata": {
            "name": "n", "namespace": "tool-mytool"}}, "endpoint": "mutate-build-pods",
         "expect": {"allowed": True, "mutated": True}},
        {"name": "fields", "object": str(BUILD_POD), "expect": {"allowed": True, "mutated": [
            {"path": "spec.containers[step-build].volumeMounts",
             "contains": {"mountPath": "/tekton/creds"}},
            {"path": "spec.containers[step-export].args", "excludes": "-basic-docker="
                                                                      "basic-user-pass="
                                                                      "https://tools-harbor."
                                                                      "wmcloud.org"},
            {"path": 'metadata.labels["tekton.dev/pipeline"]', "equals": "buildpacks"},
            {"path": "spec.containers[step-build].volumeMounts[99]", "absent": True},
            {"path": "spec.containers[nothing]", "absent": False},
        ]}},
    ])
    assert main(["test", path]) == EXIT_DENIED
    out = capsys.readouterr().out
    assert re.search(r"expected no mutation, got \d+ changes: \+ spec.volumes", out)
    assert "expected a mutation, the object is stored as submitted" in out
    lines = [line.strip() for line in out.splitlines()]
    assert "spec.containers[step-build].volumeMounts: does not contain " \
           "{mountPath: /tekton/creds}:" in " ".join(lines)
    assert any(line.startswith("spec.containers[step-export].args: contains "
                               "-basic-docker=basic-user-pass=") for line in lines)
    assert "spec.containers[nothing]: expected present, is absent" in lines
    # The checks that hold are not reported.
    assert not any("tekton.dev/pipeline" in line or "[99]" in line for line in lines)
    assert out.rstrip().endswith("0 passed, 3 failed")


@pytest.mark.parametrize(("content", "problem"), [
    pytest.param({"tests": [{"name": "a", "object": NGINX, "expect": {"allowd": True}}]},
                 "tests[0].expect.allowd: unknown key", id="unknown-key"),
    pytest.param({"tests": [{"name": "a", "object": "missing.yaml",
                             "expect": {"allowed": True}}]},
                 "a: object: cannot read", id="missing-object"),
    pytest.param({"tests": [{"name": "a", "object": NGINX, "expect": {
        "allowed": True, "mutated": [{"path": "a", "equals": 1, "absent": True}]}}]},
                 "give exactly one of equals, absent, contains, excludes", id="two-checks"),
    pytest.param({"tests": []}, "tests: must list at least 1 entry", id="no-tests"),
    pytest.param({"policy": "nope.yaml", "tests": [{"name": "a", "object": NGINX,
                                                     "expect": {"allowed": True}}]},
                 "policy: cannot read", id="missing-policy"),
])
def test_a_suite_that_cannot_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         content: dict[str, Any], problem: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": API_VERSION, "kind": "Suite",
                                    "policy": str(EXAMPLE_POLICY)} | content))
    assert main(["test", str(path)]) == EXIT_BAD_INPUT
    out = capsys.readouterr().out
    assert problem in out
    assert out.rstrip().endswith("1 suite could not run")


def test_a_directory_without_suites_exits_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(NGINX))
    assert main(["test", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "no suites (kind: Suite" in capsys.readouterr().err


def test_a_directory_runs_only_its_suites(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(NGINX))
    suite(tmp_path, [{"name": "nginx", "object": "pod.yaml", "expect": {"allowed": False}}])
    assert main(["test", str(tmp_path)]) == EXIT_OK
    assert capsys.readouterr().out.rstrip().endswith("1 passed, 0 failed")


@pytest.mark.parametrize(("path", "found", "value"), [
    ("spec.containers[web].image", True, "a:1"),
    ("spec.containers[0].name", True, "web"),
    ('metadata.labels["example.org/tool"]', True, "x"),
    ("metadata.labels['example.org/tool']", True, "x"),
    ("spec.containers[side]", False, None),
    ("spec.containers[5]", False, None),
    ("spec.nope.deeper", False, None),
])
def test_lookup_paths(path: str, found: bool, value: object) -> None:
    document = {"metadata": {"labels": {"example.org/tool": "x"}},
                "spec": {"containers": [{"name": "web", "image": "a:1"}]}}
    assert lookup(document, path) == (found, value)


def test_lookup_refuses_a_path_it_cannot_read() -> None:
    with pytest.raises(SuiteError, match="cannot read the path"):
        lookup({}, "spec.containers[")
