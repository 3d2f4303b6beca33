"""A valid PipelineRun in either Tekton shape, and the policy it is valid under."""

from __future__ import annotations

from typing import Any

HARBOR = "harbor.example.org"
BUILDER = f"{HARBOR}/toolforge/heroku-builder:22"
RUN = f"{HARBOR}/toolforge/heroku-run:22"
POLICY_YAML = f"""
tools:
  namespacePattern: "tool-{{tool}}"
  usernamePattern: "{{tool}}"
  groups: [toolforge]
  systemUsers: [system:serviceaccount:image-build:builds-api]
builds:
  namespace: image-build
  harborHosts: [{HARBOR}]
  harborProject: "tool-{{tool}}"
  pipelines:
    - {{name: buildpacks, tasks: [build-from-git, lint]}}
    - plain
  builders: [{BUILDER}]
  runImages: [{RUN}]
  params:
    required: [APP_IMAGE, BUILDER_IMAGE, SOURCE_URL]
    optional:
      - SOURCE_REFERENCE
      - SOURCE_SUBPATH
      - RUN_IMAGE
      - {{name: ENV_VARS, type: array}}
      - {{name: USER_ID, pattern: "[1-9][0-9]{{0,8}}"}}
      - {{name: LANGUAGE, values: [python, node]}}
      - {{name: FLAGS, type: array, pattern: "--[a-z]+"}}
      - {{name: SLOW, pattern: "(a+)+b"}}
  runMetadata:
    labels: [example.org/*]
    annotations: [kubectl.kubernetes.io/last-applied-configuration, example.org/note]
  maxActiveRuns: 1
  maxTimeout: 1h
  serviceAccount: buildpacks-sa
"""


def make_run(shape: str = "v1", *, tool: str = "mytool", params: dict[str, Any] | None = None,
             **spec: Any) -> dict[str, Any]:
    """A valid run for `tool` in the given Tekton shape; `spec` keys override or add fields."""
    values: dict[str, Any] = {
        "APP_IMAGE": f"{HARBOR}/tool-{tool}/{tool}:latest",
        "BUILDER_IMAGE": BUILDER,
        "SOURCE_URL": "https://gitlab.example.org/mytool/app.git",
        "ENV_VARS": ["A=1", "B_2=x=y"],
    }
    values.update(params or {})
    body: dict[str, Any] = {
        "pipelineRef": {"name": "buildpacks"},
        "params": [{"name": k, "value": v} for k, v in values.items() if v is not None],
        "workspaces": [{"name": "source-ws", "emptyDir": {}}],
    }
    if shape == "v1":
        body["taskRunTemplate"] = {"serviceAccountName": "buildpacks-sa"}
        body["timeouts"] = {"pipeline": "1h"}
    else:
        body["serviceAccountName"] = "buildpacks-sa"
        body["timeout"] = "30m"
    body.update(spec)
    return {
        # With matchPolicy Equivalent and no conversion, a v1beta1 body arrives labelled v1.
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": f"{tool}-buildpacks-pipelinerun-abcde", "namespace": "image-build",
                     "uid": "0c8a7d3e-0000-4000-8000-000000000001",
                     "labels": {"toolforge.org/tool": tool}},
        "spec": body,
    }


def run_for(tool: str = "mytool", uid: str = "u1", shape: str = "v1", **spec: Any,
            ) -> dict[str, Any]:
    """A valid run with its own uid and name, as separate runs of one tool have."""
    run = make_run(shape, tool=tool, **spec)
    run["metadata"]["uid"] = uid
    run["metadata"]["name"] = f"{tool}-buildpacks-pipelinerun-{uid}"
    return run


TOOLFORGE_HARBOR = "tools-harbor.wmcloud.org"


def builds_api_run(tool: str, *, shape: str = "v1", name: str | None = None) -> dict[str, Any]:
    """A run exactly as Toolforge's builds API creates it (its internal/build.go `Start`), for
    the Toolforge overlay's policy: named by the API server from `generateName` unless `name`
    is given; `shape` "v1beta1" names the task's ServiceAccount as v1beta1 runs do."""
    account = "serviceAccountName" if shape == "v1" else "taskServiceAccountName"
    metadata: dict[str, Any] = {"generateName": f"{tool}-buildpacks-pipelinerun-",
                                "namespace": "image-build", "labels": {"user": tool}}
    if name is not None:
        metadata.update(name=name, uid=f"uid-{name}")
    harbor = TOOLFORGE_HARBOR
    return {
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": metadata,
        "spec": {
            "pipelineRef": {"name": "buildpacks"},
            "taskRunSpecs": [{"pipelineTaskName": "build-from-git",
                              account: "buildpacks-service-account"}],
            "params": [
                {"name": "BUILDER_IMAGE", "value": f"{harbor}/toolforge/heroku-builder:22"},
                {"name": "RUN_IMAGE", "value": f"{harbor}/toolforge/heroku-run:22"},
                {"name": "APP_IMAGE", "value": f"{harbor}/tool-{tool}/tool-{tool}:latest"},
                {"name": "SOURCE_URL", "value": f"https://gitlab.wikimedia.org/toolforge/{tool}"},
                {"name": "SOURCE_REFERENCE", "value": "5f1b2c3d4e5f60718293a4b5c6d7e8f901234567"},
                {"name": "UNRESOLVED_SOURCE_REFERENCE", "value": "main"},
                {"name": "ENV_VARS", "value": ["PYTHON_VERSION=3.11", "EMPTY="]},
            ],
            "workspaces": [{"name": "source-ws", "emptyDir": {}},
                           {"name": "cache-ws", "emptyDir": {}},
                           {"name": "aptbuildpack-ws", "emptyDir": {}}],
        },
    }
