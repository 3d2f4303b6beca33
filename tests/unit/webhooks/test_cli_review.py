"""`review` for many objects: inputs of every shape, the table, JSON and YAML, what mutation
changed, and the exit code over all of them."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.builders import EXAMPLE_POLICY, make_review
from tests.buildruns import PIPELINERUN_POD, captured_review
from webhooks.cli import EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK, main

# The sample: the captured review of scenario c, its run with RUN_IMAGE (tests/buildruns.py).
BUILD_POD_REVIEW = (Path(__file__).resolve().parents[3] / "examples" / "objects"
                    / "build-pod.admissionreview.json")


def test_the_sample_build_pod_is_the_captured_one_of_a_run_with_run_image() -> None:
    assert json.loads(BUILD_POD_REVIEW.read_text()) == captured_review(PIPELINERUN_POD)
OWN = "tools-harbor.wmcloud.org/tool-mytool/web:1"


def pod(name: str, image: str = OWN, namespace: str = "tool-mytool") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "web", "image": image}]}}


def deployment(name: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "tool-mytool"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}


def review(*args: str) -> list[str]:
    return ["review", "--policy", str(EXAMPLE_POLICY), *args]


def table_rows(text: str) -> list[list[str]]:
    """The table's rows (after the header) split on the column gaps."""
    lines = text.split("\n\n", maxsplit=1)[0].splitlines()[1:]
    return [re.split(r" {3,}", line) for line in lines]


def test_many_inputs_of_every_shape_one_row_each(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dir" / "nested").mkdir(parents=True)
    (tmp_path / "dir" / "a.yaml").write_text(yaml.safe_dump_all([pod("one"), pod("two")]))
    (tmp_path / "dir" / "nested" / "b.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [deployment("d", OWN),
                                                       deployment("bad", "quay.io/x/y:1")]}))
    (tmp_path / "dir" / "notes.txt").write_text("not an input")
    (tmp_path / "dir" / "c.yml").write_text(json.dumps(make_review(pod("reviewed"))))
    code = main(review("-o", "table", str(tmp_path / "dir"), str(BUILD_POD_REVIEW)))
    out = capsys.readouterr().out
    assert code == EXIT_DENIED
    rows = table_rows(out)
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("Pod", "tool-mytool/one", "allowed"),
        ("Pod", "tool-mytool/two", "allowed"),
        ("Pod", "tool-mytool/reviewed", "allowed"),
        ("Deployment", "tool-mytool/d", "allowed"),
        ("Deployment", "tool-mytool/bad", "denied"),
        ("Pod", "image-build/mytool-buildpacks-pipelinerun-7xk2p-build-pod", "mutated"),
    ]
    assert rows[4][2] == "validate-pods"
    assert rows[5][2] == "mutate-build-pods,validate-pods"
    assert 'image "quay.io/x/y:1"' in rows[4][4]
    assert out.rstrip().endswith("6 objects: 4 allowed, 1 denied, 1 mutated")


def test_stdin_and_the_table_by_default_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(
        yaml.safe_dump(pod("web")).encode())))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(review("-")) == EXIT_OK
    assert table_rows(capsys.readouterr().out)[0][:2] == ["Pod", "tool-mytool/web"]


def test_json_and_yaml_give_the_admission_reviews(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump_all([pod("web"), pod("nginx", "docker.io/library/nginx")]))
    assert main(review("-o", "json", str(path))) == EXIT_DENIED
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List"
    assert [item["response"]["allowed"] for item in listed["items"]] == [True, False]
    assert [item["request"]["name"] for item in listed["items"]] == ["web", "nginx"]
    assert main(review("-o", "yaml", str(path))) == EXIT_DENIED
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["response"]["allowed"] for d in documents] == [True, False]
    assert documents[1]["response"]["status"]["message"] == \
        listed["items"][1]["response"]["status"]["message"]


def test_bad_documents_are_reported_in_place_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(pod("nginx", "docker.io/library/nginx")) + "---\n- a list\n")
    code = main(review("-o", "table", str(path), str(tmp_path / "missing.yaml")))
    rows = table_rows(capsys.readouterr().out)
    assert code == EXIT_BAD_INPUT  # bad input outweighs a denial
    assert [r[3] for r in rows] == ["denied", "error", "error"]
    assert rows[1][1] == f"{path}#2"
    assert rows[2][4] == f"cannot read {tmp_path / 'missing.yaml'}: No such file or directory"


def test_show_mutated_diff_names_each_change_at_its_path(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(review(str(BUILD_POD_REVIEW), "--show-mutated")) == EXIT_OK
    out = capsys.readouterr().out
    lines = out.splitlines()
    # The tool's code runs in step-build: it loses the registry credentials.
    assert ('- spec.containers[step-build].args[8]: '
            '"-basic-docker=basic-user-pass=https://tools-harbor.wmcloud.org"') in lines
    removed_mounts = [line for line in lines
                      if line.startswith("- spec.containers[step-build].volumeMounts[")]
    assert any('"mountPath":"/tekton/creds"' in line for line in removed_mounts)
    # The trusted export step keeps them: nothing of it changes.
    assert not any("[step-export]" in line for line in lines)
    assert '"patch"' not in out


def test_show_mutated_object_is_the_patch_applied(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(review(str(BUILD_POD_REVIEW), "--show-mutated-object", "-o", "json")) == EXIT_OK
    mutated = json.loads(capsys.readouterr().out)
    assert main(review(str(BUILD_POD_REVIEW), "-o", "json")) == EXIT_OK
    answer = json.loads(capsys.readouterr().out)
    original = json.loads(BUILD_POD_REVIEW.read_text())["request"]["object"]
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert mutated == jsonpatch.apply_patch(copy.deepcopy(original), patch)
    assert mutated != original


def test_show_mutated_diff_needs_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(review(str(BUILD_POD_REVIEW), "--show-mutated", "-o", "json")) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: --show-mutated is for people")


@pytest.mark.parametrize(("now", "verdict", "code"), [
    ("2027-06-29", "allowed", EXIT_OK),
    ("2027-06-30", "denied", EXIT_DENIED),  # the exception's expiry day is excluded
])
def test_now_judges_an_exception_before_and_after_it_expires(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], now: str, verdict: str,
        code: int) -> None:
    path = tmp_path / "byoc.yaml"
    path.write_text(yaml.safe_dump(pod("app", "quay.io/example-org/app:1", "tool-example-byoc")))
    assert main(review("-o", "table", "--now", now, str(path))) == code
    assert table_rows(capsys.readouterr().out)[0][3] == verdict


def test_old_takes_exactly_one_input_object(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(pod("web", "docker.io/library/nginx")))
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump_all([pod("web"), pod("web2")]))
    code = main(review("--operation", "UPDATE", "--old", str(old), str(two)))
    assert code == EXIT_BAD_INPUT
    assert "--old needs exactly one input object, not 2" in capsys.readouterr().err
    # An UPDATE that leaves an image alone passes even if the image is no longer allowed.
    assert main(review("--operation", "UPDATE", "--old", str(old), str(old))) == EXIT_OK
