"""The command line: policy check, offline review of one object, version; exit codes and
one-line errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.builders import EXAMPLE_POLICY, make_review
from webhooks.cli import EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK, main
from webhooks.server import ServerOptions, WebhookServer
from webhooks.worker import Limits


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
        f"error: {path}: builds.maxActiveRuns: must be an integer >= 1",
        f"error: {path}: bogus: unknown key; the keys here are tools, exemptNamespaces, builds, registries, "
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
    pytest.param("kind: Pod\napiVersion: v1\nmetadata: [a]\n", id="metadata-not-a-mapping"),
    pytest.param("kind: Pod\napiVersion: 3\n", id="api-version-not-a-string"),
    pytest.param("kind: Pod\nmetadata: {annotations: {until: 2027-13-45}}\n", id="bad-date"),
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


def test_a_kind_no_webhook_reviews_is_reported_as_not_reviewed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The API server would not send it to the suite: it is admitted, not bad input.
    code = main(["review", "--policy", str(EXAMPLE_POLICY), "-o", "table",
                 write(tmp_path, "in.yaml", "kind: Secret\napiVersion: v1\n")])
    assert code == EXIT_OK
    assert "not reviewed   no webhook of the suite reviews Secret (v1) objects" in capsys.readouterr().out


def test_metadata_null_is_judged_not_a_crash(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: null\nspec:\n  containers:\n"
           "    - {name: web, image: tools-harbor.wmcloud.org/tool-mytool/web:1}\n")
    code = main(["review", "--policy", str(EXAMPLE_POLICY), "--namespace", "tool-mytool",
                 write(tmp_path, "pod.yaml", pod)])
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out)["response"]["allowed"] is True


@pytest.mark.parametrize(("policy", "expected"), [
    pytest.param("registries:\n  exceptions:\n    tool-a: [{prefix: quay.io/a, expires: "
                 "2027-13-45}]\n",
                 "error: policy: {path}: not valid YAML (line 3, column 43): '2027-13-45' is not a "
                 "date (quote it to make it a string): month must be in 1..12", id="impossible-date"),
    pytest.param({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "toolforge-admission-policy"}, "data": {"other": "x"}},
                 "error: policy: {path}: the ConfigMap has no data key policy.yaml (the policy is "
                 "the policy.yaml key of toolforge-admission-policy)", id="configmap-without-key"),
    pytest.param("builds: {maxActiveRun: 2}\n", "error: policy: {path}: builds.maxActiveRun: "
                 "unknown key; did you mean maxActiveRuns?", id="near-key"),
])
def test_a_bad_policy_exits_2_with_one_line_per_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: object,
        expected: str) -> None:
    path = write(tmp_path, "policy.yaml", policy)
    pod = write(tmp_path, "pod.yaml", {"apiVersion": "v1", "kind": "Pod", "metadata": {}})
    assert main(["review", "--policy", path, pod]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [expected.format(path=path)]
    assert captured.out == ""


@pytest.mark.parametrize("command", [
    ["review", "--policy", "{missing}", "{pod}"],
    ["review", "--policy", "{policy}", "{missing}"],
    ["policy", "check", "{missing}"],
])
def test_a_missing_file_is_one_line_not_an_errno(tmp_path: Path, command: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    paths = {"missing": str(tmp_path / "nope.yaml"), "policy": str(EXAMPLE_POLICY),
             "pod": write(tmp_path, "pod.yaml", {"apiVersion": "v1", "kind": "Pod"})}
    assert main([part.format(**paths) for part in command]) == EXIT_BAD_INPUT
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f"cannot read {paths['missing']}: No such file or directory")
    assert "Errno" not in line


def test_review_as_a_tool_defaults_to_the_first_tool_group(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --group's help says it defaults to the policy's first tool group for a tool's user.
    run = {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
           "metadata": {"name": "build", "namespace": "image-build",
                        "labels": {"toolforge.org/tool": "mytool"}},
           "spec": {"pipelineRef": {"name": "buildpacks"},
                    "taskRunTemplate": {"serviceAccountName": "buildpacks-service-account"},
                    "params": [
                        {"name": "APP_IMAGE", "value": "tools-harbor.wmcloud.org/tool-mytool/a"},
                        {"name": "BUILDER_IMAGE",
                         "value": "tools-harbor.wmcloud.org/toolforge/heroku-builder:22"},
                        {"name": "RUN_IMAGE",
                         "value": "tools-harbor.wmcloud.org/toolforge/heroku-run:22"},
                        {"name": "SOURCE_URL", "value": "https://example.org/a.git"}]}}
    code = main(["review", "--policy", str(EXAMPLE_POLICY), "--user", "mytool",
                 write(tmp_path, "run.yaml", run)])
    captured = capsys.readouterr()
    review = json.loads(captured.out)
    assert review["request"]["userInfo"]["groups"] == ["toolforge", "system:authenticated"]
    assert (code, review["response"]["allowed"]) == (EXIT_OK, True)
    assert "not in any of the groups" not in captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert re.fullmatch(r"toolforge-admission \d+\.\d+\.\d+\S*\n", printed)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == printed


def test_an_unforeseen_failure_is_one_line_and_never_exit_1(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Fault injection: exit 1 means "denied", so a crash must not end with it.
    def broken(*_: object, **__: object) -> None:
        raise KeyError("spec")

    monkeypatch.setattr("webhooks.batch.review_offline", broken)
    pod = write(tmp_path, "pod.yaml", {"apiVersion": "v1", "kind": "Pod"})
    assert main(["review", "--policy", str(EXAMPLE_POLICY), pod]) == EXIT_BAD_INPUT
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: KeyError: 'spec'")


def serve_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                  *flags: str) -> ServerOptions:
    """The ServerOptions `serve --dev` with these flags would run (the server is not started)."""
    started: list[ServerOptions] = []
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(WebhookServer, "run", lambda server: started.append(server.options))
    assert main(["serve", "--dev", *flags]) == EXIT_OK
    return started[0]


def test_serve_sets_every_deadline_and_bound_of_a_worker(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = serve_options(monkeypatch, tmp_path, "--header-timeout=1", "--body-timeout=2",
                            "--idle-timeout=95", "--write-timeout=4", "--body-budget=8",
                            "--max-connections=64", "--workers=3", "--threads=5")
    assert options.limits == Limits(
        header_seconds=1, body_seconds=2, idle_seconds=95, write_seconds=4,
        buffered_bytes=8 * 1024 * 1024, max_connections=64)
    assert (options.workers, options.threads) == (3, 5)
    # Without flags, the worker's own defaults.
    assert serve_options(monkeypatch, tmp_path).limits == Limits()


@pytest.mark.parametrize("flag", ["--idle-timeout=0", "--write-timeout=-1", "--body-budget=2",
                                  "--threads=0", "--workers=0", "--max-connections=0"])
def test_serve_refuses_a_bound_that_cannot_work(
        flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--dev", flag]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: ")
