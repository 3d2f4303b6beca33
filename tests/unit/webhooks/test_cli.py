"""The command line: policy check and offline review, with their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_POLICY, make_review
from webhooks.cli import EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK, main


def write(tmp_path: Path, name: str, document: object) -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return str(path)


def test_policy_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(EXAMPLE_POLICY)]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ok: policy is valid")


def test_policy_check_lists_every_problem(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "p.yaml", "builds: {maxActiveRuns: 0}\nbogus: 1\n")
    assert main(["policy", "check", path]) == EXIT_DENIED
    assert capsys.readouterr().err.splitlines() == [
        "error: builds.maxActiveRuns: must be an integer >= 1",
        "error: bogus: unknown key; the keys here are tools, exemptNamespaces, builds, registries, "
        "credentials"]


def test_policy_check_reads_the_policy_out_of_a_configmap_manifest(tmp_path: Path) -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "toolforge-admission-policy"},
                 "data": {"policy.yaml": "builds: {maxActiveRuns: -1}\n"}}
    assert main(["policy", "check", write(tmp_path, "cm.yaml", configmap)]) == EXIT_DENIED
    configmap["data"] = {"policy.yaml": EXAMPLE_POLICY.read_text()}
    assert main(["policy", "check", write(tmp_path, "cm.yaml", configmap)]) == EXIT_OK


def test_review_of_a_manifest_prints_the_admission_review(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": [{"name": "web",
                                    "image": "tools-harbor.wmcloud.org/tool-mytool/web:1"}]}}
    code = main(["review", "--policy", str(EXAMPLE_POLICY), "--namespace", "tool-mytool",
                 write(tmp_path, "pod.yaml", pod)])
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert out["kind"] == "AdmissionReview"
    assert out["response"]["allowed"] is True


def test_review_of_a_broken_policy_configmap_is_denied_with_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "toolforge-admission-policy",
                              "namespace": "toolforge-admission"},
                 "data": {"policy.yaml": "builds: {maxActiveRuns: 0}\n"}}
    code = main(["review", "--policy", str(EXAMPLE_POLICY), write(tmp_path, "cm.yaml", configmap)])
    captured = capsys.readouterr()
    assert code == EXIT_DENIED
    response = json.loads(captured.out)["response"]
    assert response["status"]["message"].endswith("builds.maxActiveRuns: must be an integer >= 1")
    assert "validate-policy: denied" in captured.err


def test_review_accepts_a_real_admission_review(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    review = make_review({"metadata": {"name": "other"}}, resource="configmaps")
    path = tmp_path / "review.json"
    path.write_text(json.dumps(review))
    assert main(["review", "--policy", str(EXAMPLE_POLICY), str(path)]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["response"]["uid"] == review["request"]["uid"]


@pytest.mark.parametrize("content", [
    pytest.param("{not: [valid", id="not-yaml"),
    pytest.param("just a string", id="no-kind"),
    pytest.param("kind: Secret\napiVersion: v1\n", id="unhandled-kind"),
])
def test_review_of_unusable_input_exits_2(tmp_path: Path, content: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["review", "--policy", str(EXAMPLE_POLICY), write(tmp_path, "in.yaml", content)])
    assert code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error:")


def test_review_with_an_invalid_policy_exits_2(tmp_path: Path) -> None:
    policy = write(tmp_path, "p.yaml", "bogus: 1\n")
    pod = write(tmp_path, "pod.yaml", {"apiVersion": "v1", "kind": "Pod", "metadata": {}})
    assert main(["review", "--policy", policy, pod]) == EXIT_BAD_INPUT
