"""Registry credentials in real Tekton build pods: only trusted steps keep them.

The Tekton controller gives every step of a buildpacks-phases pod the build ServiceAccount's
registry Secret (a `/tekton/creds-secrets/<secret>` mount, `-basic-docker=<secret>=<url>` before
`--`, a `/tekton/creds` emptyDir, the shared `/tekton/home`). The mutating webhook
`toolforge-admission-build-pods` takes all of it away from every container but the trusted steps
(analyze, restore, export with the lifecycle image, tests/e2e/policy.yaml); without it, the
validating pods webhook refuses the pod (BuildCredentialLeak), so the controller cannot make it.

Each test starts its runs as its own tool (CN=<tool>, O=toolforge, RBAC in the build namespace
only): a tool's active-run slot is held for 30 s after a run is admitted even when the run is
deleted (policies/slots.py, RESERVATION_GRACE), so sharing mytool/other with test_harness.py would
make the order of the tests matter.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.build_pods import (
    CREDS,
    CREDS_SECRETS,
    SECRET,
    TOOL_CODE,
    TRUSTED,
    credential_flags,
    mounts,
    wait_pod,
)
from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    SHELL_IMAGE,
    TEKTON_CONTROLLER_USER,
    TEST_MANIFESTS,
    ControlPlane,
    Suite,
    wait_for,
)
from tests.e2e.objects import (
    API_TOKEN_PATH,
    BUILD_SERVICE_ACCOUNT,
    BUILDER,
    RUN_IMAGE,
    api_token_volumes,
    build_token_automounted,
    delete_runs,
    pipelinerun,
    unique,
)

HARBOR = "https://tools-harbor.wmcloud.org"
CREDENTIAL_FLAG = f"-basic-docker={SECRET}={HARBOR}"
HOME = "/tekton/home"
MUTATING = "toolforge-admission-build-pods"


def tool_account(cp: ControlPlane, tool: str) -> pathlib.Path:
    """A tool account that may create runs in the build namespace (no tool namespace needed)."""
    cp.grant(tool, [BUILD_NAMESPACE])
    return cp.user_kubeconfig(tool, ["toolforge"])






def after_separator(args: list[str]) -> list[str]:
    return args[args.index("--"):] if "--" in args else []


def probe_pod(name: str) -> str:
    """A pod shaped like a Tekton build pod whose one untrusted step carries the credentials:
    with the mutating webhook registered it is stripped and admitted, without it refused."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": BUILD_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "tekton-pipelines"},
            "ownerReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                                 "name": name, "uid": str(uuid.uuid4()),
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "creds", "secret": {"secretName": SECRET}}],
            "containers": [{
                "name": "step-detect", "image": BUILDER,
                "args": [CREDENTIAL_FLAG, "-entrypoint", "/cnb/lifecycle/detector", "--"],
                "volumeMounts": [{"name": "creds", "mountPath": f"{CREDS_SECRETS}/{SECRET}"}],
            }],
        },
    })


def mutation_in_force(cp: ControlPlane) -> bool | None:
    """True when a server dry-run of the probe is stripped and admitted, False when the
    validator refuses it as a credential leak, None for anything else. As the Tekton
    controller: nobody else may create pods in the build namespace."""
    result = cp.kubectl("create", "--dry-run=server", "-f", "-",
                        input=probe_pod(unique("probe")), check=False,
                        user=cp.tekton_kubeconfig)
    if result.returncode == 0:
        return True
    if "BuildCredentialLeak" in result.stderr or "can read registry credentials" in result.stderr:
        return False
    return None


def wait_mutation(cp: ControlPlane, wanted: bool, timeout: float = 30) -> None:
    """The API server's view of webhook configurations follows a watch: wait for it."""
    wait_for(f"the build-pod mutation to be {'in force' if wanted else 'gone'}",
             lambda: mutation_in_force(cp) is wanted, timeout=timeout, interval=0.5)


@pytest.fixture(params=[False, True], ids=["recommended-serviceaccount", "automounted-token"])
def build_token(request: pytest.FixtureRequest, control_plane: ControlPlane) -> Iterator[bool]:
    """The build ServiceAccount as docs/security.md recommends (no API token in build pods), or
    as Kubernetes defaults it (and Toolforge has it today): a token in every container."""
    if not request.param:
        yield False
        return
    with build_token_automounted(control_plane):
        yield True


def test_tekton_build_pod_keeps_credentials_in_trusted_steps_only(
        control_plane: ControlPlane, live_suite: Suite, build_token: bool) -> None:
    tool = "credtoken" if build_token else "credstrip"  # a slot outlives its run by 30 s
    account = tool_account(control_plane, tool)
    run = unique(f"{tool}-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, tool)),
                              user=account)
        pod = wait_pod(control_plane, run)
        pod_name = pod["metadata"]["name"]
        live_suite.wait_review(endpoint="mutate-build-pods", name=pod_name)
        # (a reinvocation, if any, finds nothing left to strip: look at every review of it)
        mutations = live_suite.reviews(endpoint="mutate-build-pods", name=pod_name)
        assert {m["user"] for m in mutations} == {TEKTON_CONTROLLER_USER}, mutations
        assert "mutated" in {m["decision"] for m in mutations}, mutations
        validated = live_suite.wait_review(endpoint="validate-pods", name=pod_name)
        assert validated["decision"] in ("allowed", "warned"), validated

        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        secret_volumes = {name for name, v in volumes.items()
                          if v.get("secret", {}).get("secretName") == SECRET}
        assert len(secret_volumes) == 1, secret_volumes
        containers = {c["name"]: c for c in spec["containers"]}
        assert set(TRUSTED) | set(TOOL_CODE) <= set(containers), list(containers)

        # The trusted steps keep exactly what Tekton gave them.
        homes = set()
        for name in TRUSTED:
            step = containers[name]
            paths = mounts(step)
            assert credential_flags(step["args"]) == [CREDENTIAL_FLAG], (name, step["args"])
            assert {p: v for p, v in paths.items() if p.startswith(CREDS_SECRETS)} == {
                f"{CREDS_SECRETS}/{SECRET}": next(iter(secret_volumes))}, (name, paths)
            assert CREDS in paths, (name, paths)
            assert "emptyDir" in volumes[paths[CREDS]], (name, paths)
            assert HOME in paths, (name, paths)
            homes.add(paths[HOME])
        assert len(homes) == 1, homes
        home = homes.pop()
        assert "emptyDir" in volumes[home]

        # Every other container, the tool's code first of all, has none of it left.
        untrusted = [c for c in spec.get("initContainers", []) + spec["containers"]
                     if c["name"] not in TRUSTED]
        assert {c["name"] for c in untrusted} >= set(TOOL_CODE)
        for container in untrusted:
            name = container["name"]
            paths = mounts(container)
            assert not [p for p in paths if p == CREDS_SECRETS
                        or p.startswith(CREDS_SECRETS + "/")], (name, paths)
            assert not secret_volumes & set(paths.values()), (name, paths)
            assert CREDS not in paths, (name, paths)
            assert home not in paths.values(), (name, paths)
            args = container.get("args") or []
            assert credential_flags(args) == [], (name, args)
        # The build ServiceAccount's API token: only where Kubernetes put it, in trusted steps.
        tokens = api_token_volumes(pod)
        token_holders = {c["name"] for c in spec.get("initContainers", []) + spec["containers"]
                         if API_TOKEN_PATH in mounts(c)}
        if build_token:
            (token,) = tokens
            assert token.startswith("kube-api-access-"), token
            assert token_holders == set(TRUSTED), token_holders
            assert {mounts(containers[name])[API_TOKEN_PATH] for name in TRUSTED} == {token}
        else:
            assert tokens == set(), tokens
            assert token_holders == set(), token_holders
            assert "automountServiceAccountToken" not in spec  # Tekton leaves it to the SA
        # The run's RUN_IMAGE reaches the export step, which so never reads /layers/stack.toml.
        assert f"-run-image={RUN_IMAGE}" in containers["step-export"]["args"]
        # Only the credential flag went; the rest of the step's command is Tekton's.
        for name, entrypoint in (("step-detect", "/cnb/lifecycle/detector"),
                                 ("step-build", "/cnb/lifecycle/builder")):
            args = containers[name]["args"]
            at = args.index("-entrypoint")
            assert args[at + 1] == entrypoint, args
            assert after_separator(args)[:2] == ["--", "-app=/workspace/source/"], args
    finally:
        delete_runs(control_plane, tool)


@pytest.fixture
def without_mutation(control_plane: ControlPlane, live_suite: Suite) -> Iterator[Suite]:
    """The build-pod mutating configuration deleted; registered again afterwards, whatever
    happened, and the test waits until the API server applies it again."""
    wait_mutation(control_plane, True)
    try:
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", MUTATING)
        wait_mutation(control_plane, False)
        yield live_suite
    finally:
        live_suite.register()
        wait_mutation(control_plane, True)
        assert control_plane.kubectl("get", "mutatingwebhookconfiguration",
                                     MUTATING).returncode == 0


def test_without_the_mutating_webhook_the_validator_refuses_the_build_pod(
        control_plane: ControlPlane, without_mutation: Suite) -> None:
    tool = "credleak"
    account = tool_account(control_plane, tool)
    run = unique(f"{tool}-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, tool)),
                              user=account)
        pod_name = f"{run}-build-from-git-pod"  # <run>-<pipeline task>-pod
        denied = without_mutation.wait_review(timeout=120, endpoint="validate-pods",
                                              name=pod_name, operation="CREATE")
        assert denied["user"] == TEKTON_CONTROLLER_USER
        assert denied["decision"] == "denied", denied
        assert denied["reason"] == "BuildCredentialLeak", denied
        for step in TOOL_CODE:
            assert f"untrusted container {step}:" in denied["detail"], denied
        assert without_mutation.reviews(endpoint="mutate-build-pods", name=pod_name) == []

        # The controller could not make the pod, and says so on the TaskRun.
        def refusal() -> str | None:
            control_plane.tekton.check_alive()
            taskruns = control_plane.get_json("-n", BUILD_NAMESPACE, "taskruns", "-l",
                                              f"tekton.dev/pipelineRun={run}")["items"]
            for taskrun in taskruns:
                for condition in taskrun.get("status", {}).get("conditions", []):
                    message = str(condition.get("message", ""))
                    if condition.get("type") == "Succeeded" and "denied" in message:
                        return message
            return None

        message = wait_for(f"the TaskRun of {run} to report the refusal", refusal, 60)
        assert "pods.toolforge-admission.toolforge.org" in message, message
        assert "BuildCredentialLeak" in message or "can read registry credentials" in message, \
            message
        assert control_plane.get_json("-n", BUILD_NAMESPACE, "pods", "-l",
                                      f"tekton.dev/pipelineRun={run}")["items"] == []
    finally:
        delete_runs(control_plane, tool)


# --- TaskRuns and pods made by hand (tools have RBAC for both in this harness) ------------------

TASKRUNS_WEBHOOK = 'admission webhook "taskruns.toolforge-admission.toolforge.org" denied'
PODS_WEBHOOK = 'admission webhook "pods.toolforge-admission.toolforge.org" denied'
LIFECYCLE = "docker.io/buildpacksio/lifecycle:0.10.2"
VICTIM_IMAGE = "tools-harbor.wmcloud.org/tool-victim/victim:latest"


def handmade_taskrun(name: str, owner: dict[str, Any] | None = None) -> str:
    """A TaskRun whose one step looks exactly like the trusted `export`, pushing where its
    author likes, with the build ServiceAccount (and so the robot account's credentials)."""
    metadata: dict[str, Any] = {"name": name, "namespace": BUILD_NAMESPACE}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return json.dumps({
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun", "metadata": metadata,
        "spec": {"serviceAccountName": "buildpacks-service-account", "taskSpec": {"steps": [{
            "name": "export", "image": LIFECYCLE, "command": ["/cnb/lifecycle/exporter"],
            "args": ["-app=/workspace", VICTIM_IMAGE]}]}},
    })


def secret_pod(name: str) -> str:
    """A plain pod of the build namespace that mounts the registry Secret."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": BUILD_NAMESPACE},
        "spec": {"restartPolicy": "Never",
                 "volumes": [{"name": "creds", "secret": {"secretName": SECRET}}],
                 "containers": [{"name": "step-export", "image": LIFECYCLE,
                                 "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}]},
    })


def can_i(cp: ControlPlane, verb: str, resource: str, user: str) -> bool:
    return cp.kubectl("auth", "can-i", verb, resource, "-n", BUILD_NAMESPACE, f"--as={user}",
                      "--as-group=toolforge", check=False).stdout.strip() == "yes"


def test_a_tool_with_rbac_for_taskruns_and_pods_still_cannot_make_them(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    tool = "handmade"
    account = tool_account(control_plane, tool)
    # The harness's RBAC, which a real install should not give (docs/security.md).
    for resource in ("taskruns.tekton.dev", "pods", "pods/ephemeralcontainers"):
        assert can_i(control_plane, "create" if "/" not in resource else "update", resource,
                     tool), resource

    name = unique("handmade-export")
    refused = control_plane.kubectl("create", "-f", "-", input=handmade_taskrun(name),
                                    user=account, check=False)
    assert refused.returncode != 0
    assert TASKRUNS_WEBHOOK in refused.stderr, refused.stderr
    assert "only the Tekton controller creates TaskRuns" in refused.stderr
    review = live_suite.wait_review(endpoint="validate-taskruns", name=name)
    assert (review["user"], review["decision"], review["reason"]) == (
        tool, "denied", "RunNotFromTektonController")
    assert control_plane.kubectl("-n", BUILD_NAMESPACE, "get", "taskrun", name,
                                 check=False).returncode != 0

    for pod_name, manifest in ((unique("plain"), pod_manifest_in_build_namespace),
                               (unique("secret"), secret_pod)):
        refused = control_plane.kubectl("create", "-f", "-", input=manifest(pod_name),
                                        user=account, check=False)
        assert refused.returncode != 0
        assert PODS_WEBHOOK in refused.stderr, refused.stderr
        review = live_suite.wait_review(endpoint="validate-pods", name=pod_name)
        assert (review["decision"], review["reason"]) == ("denied", "PodNotFromTektonController")
        if manifest is secret_pod:
            # The namespace's default ServiceAccount automounts its token: that goes too.
            assert ("untrusted container step-export: mount /creds, mount "
                    f"{API_TOKEN_PATH} (Kubernetes API token) can read registry credentials") \
                in review["detail"], review


def pod_manifest_in_build_namespace(name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": BUILD_NAMESPACE},
                       "spec": {"restartPolicy": "Never",
                                "containers": [{"name": "app", "image": BUILDER}]}})


def test_even_the_controller_makes_taskruns_only_for_pipelineruns_that_exist(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    controller = control_plane.tekton_kubeconfig
    orphan, ghost = unique("orphan"), unique("ghost")
    ghost_owner = {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "name": "no-such-run",
                   "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True}
    for name, owner, why in ((orphan, None, "this one belongs to none"),
                             (ghost, ghost_owner, "PipelineRun no-such-run (uid ")):
        refused = control_plane.kubectl("create", "-f", "-", input=handmade_taskrun(name, owner),
                                        user=controller, check=False)
        assert refused.returncode != 0
        assert TASKRUNS_WEBHOOK in refused.stderr, refused.stderr
        assert why in refused.stderr, refused.stderr
        review = live_suite.wait_review(endpoint="validate-taskruns", name=name)
        assert (review["user"], review["reason"]) == (TEKTON_CONTROLLER_USER,
                                                      "RunWithoutPipelineRun")

    # Nobody else makes CustomRuns either, a cluster admin included.
    custom = unique("custom")
    refused = control_plane.kubectl("create", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "tekton.dev/v1beta1", "kind": "CustomRun",
        "metadata": {"name": custom, "namespace": BUILD_NAMESPACE},
        "spec": {"customRef": {"apiVersion": "example.dev/v1", "kind": "Wait"}}}))
    assert refused.returncode != 0
    assert "only the Tekton controller creates CustomRuns" in refused.stderr, refused.stderr


TASKRUN_OWNER = "trowner"


@contextlib.contextmanager
def tenants_granted(cp: ControlPlane, role_name: str, tools: tuple[str, ...],
                    resources: list[str], check: tuple[str, str],
                    ) -> Iterator[dict[str, pathlib.Path]]:
    """The tool accounts `tools`, a tool namespace's ServiceAccount and the build ServiceAccount,
    each with RBAC for every verb on `resources` in the build namespace (which a real install
    should not give), waited for until `kubectl auth can-i <check>` says yes to each."""
    accounts = {**{tool: tool_account(cp, tool) for tool in tools},
                "tool-other:default": cp.service_account_kubeconfig("tool-other", "default"),
                f"{BUILD_NAMESPACE}:{BUILD_SERVICE_ACCOUNT}":
                    cp.service_account_kubeconfig(BUILD_NAMESPACE, BUILD_SERVICE_ACCOUNT)}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": role_name, "namespace": BUILD_NAMESPACE},
            "rules": [{"apiGroups": ["tekton.dev"], "verbs": ["*"], "resources": resources}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": role_name, "namespace": BUILD_NAMESPACE},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": role_name},
               "subjects": [
                   *({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": tool}
                     for tool in tools),
                   {"kind": "ServiceAccount", "name": "default", "namespace": "tool-other"},
                   {"kind": "ServiceAccount", "name": BUILD_SERVICE_ACCOUNT,
                    "namespace": BUILD_NAMESPACE}]}
    cp.apply([role, binding])
    verb, resource = check
    try:
        for who, account in accounts.items():
            wait_for(f"RBAC to let {who} {verb} {resource}", lambda account=account: (
                cp.kubectl("auth", "can-i", verb, resource, "-n", BUILD_NAMESPACE,
                           user=account, check=False).stdout.strip() == "yes"), 30)
        yield accounts
    finally:
        cp.kubectl("-n", BUILD_NAMESPACE, "delete", "rolebinding,role", role_name,
                   "--ignore-not-found")


@pytest.fixture
def taskrun_writers(control_plane: ControlPlane) -> Iterator[dict[str, pathlib.Path]]:
    """Identities with RBAC to change, delete and write the status of every TaskRun in the
    build namespace, none of them the controller, a run manager or a system user: two tools
    (TASKRUN_OWNER starts the run), a tool namespace's ServiceAccount, and the build
    ServiceAccount (whose token a build step would hold if the ServiceAccount automounted it)."""
    with tenants_granted(control_plane, "e2e-taskrun-writers", (TASKRUN_OWNER, "trintruder"),
                         ["taskruns", "taskruns/status", "customruns", "customruns/status"],
                         ("patch", "taskruns.tekton.dev/status")) as accounts:
        yield accounts


def test_only_tekton_the_run_managers_and_system_users_change_or_delete_taskruns(
        control_plane: ControlPlane, live_suite: Suite,
        taskrun_writers: dict[str, pathlib.Path]) -> None:
    owner = TASKRUN_OWNER
    owner_account = taskrun_writers[owner]
    run = unique(f"{owner}-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, owner)),
                              user=owner_account)
        # The controller's own writes pass: it makes the pod and reports it in the TaskRun's
        # status, through taskruns/status, which the webhook now reviews.
        pod = wait_pod(control_plane, run)
        name = pod["metadata"]["ownerReferences"][0]["name"]

        def pod_in_status() -> bool:
            stored = control_plane.get_json("-n", BUILD_NAMESPACE, "taskrun", name)
            return stored.get("status", {}).get("podName") == pod["metadata"]["name"]

        wait_for(f"Tekton to record the pod in the status of {name}", pod_in_status, 60)
        status_writes = live_suite.wait_review(endpoint="validate-taskruns", name=name,
                                               sub_resource="status", operation="UPDATE")
        assert status_writes["user"] == TEKTON_CONTROLLER_USER, status_writes
        assert {r["decision"] for r in live_suite.reviews(
            endpoint="validate-taskruns", name=name, user=TEKTON_CONTROLLER_USER)} == {"allowed"}

        finished = {"status": {"conditions": [{"type": "Succeeded", "status": "False",
                                               "reason": "Stolen", "message": "stolen"}]}}
        changes = {
            "change TaskRuns": ("label", "taskrun", name, "stolen=yes"),
            "write taskruns/status": ("patch", "taskrun", name, "--subresource=status",
                                      "--type=merge", "-p", json.dumps(finished)),
            "delete TaskRuns": ("delete", "taskrun", name),
        }
        for who, account in taskrun_writers.items():
            for what, verb in changes.items():
                refused = control_plane.kubectl("-n", BUILD_NAMESPACE, *verb, user=account,
                                                check=False)
                assert refused.returncode != 0, (who, verb)
                assert TASKRUNS_WEBHOOK in refused.stderr, (who, refused.stderr)
                assert f"only the Tekton controller, the run managers and the system users may " \
                    f"{what} in the build namespace {BUILD_NAMESPACE}" in refused.stderr, \
                    (who, refused.stderr)
        stored = control_plane.get_json("-n", BUILD_NAMESPACE, "taskrun", name)
        assert "stolen" not in stored["metadata"].get("labels", {})
        assert all(c.get("reason") != "Stolen"
                   for c in stored.get("status", {}).get("conditions", [])), stored["status"]
        # The harness's admin is a run manager in the test policy.
        control_plane.kubectl("-n", BUILD_NAMESPACE, "label", "taskrun", name, "checked=yes")
    finally:
        delete_runs(control_plane, owner)


@pytest.fixture
def definition_writers(control_plane: ControlPlane) -> Iterator[dict[str, pathlib.Path]]:
    """Identities a tenant can act as, with RBAC (which a real install should not give) to
    write every Task, Pipeline and StepAction of the build namespace: a tool, a tool
    namespace's ServiceAccount and the build ServiceAccount."""
    with tenants_granted(control_plane, "e2e-definition-writers", ("defwriter",),
                         ["tasks", "pipelines", "stepactions"],
                         ("create", "stepactions.tekton.dev")) as accounts:
        yield accounts


def test_no_tenant_identity_edits_the_tasks_pipelines_or_stepactions_builds_run(
        control_plane: ControlPlane, live_suite: Suite,
        definition_writers: dict[str, pathlib.Path]) -> None:
    step_action = unique("stolen-step")
    changes = {
        "change them": ("label", "pipeline", "buildpacks", "stolen=yes"),
        "delete them": ("delete", "task", "buildpacks-phases"),
        "create them": ("create", "-f", "-"),
    }
    manifest = json.dumps({
        "apiVersion": "tekton.dev/v1beta1", "kind": "StepAction",
        "metadata": {"name": step_action, "namespace": BUILD_NAMESPACE},
        "spec": {"image": SHELL_IMAGE, "script": "cat /tekton/creds/.docker/config.json"}})
    for who, account in definition_writers.items():
        for what, verb in changes.items():
            refused = control_plane.kubectl(
                "-n", BUILD_NAMESPACE, *verb, user=account, check=False,
                input=manifest if verb[0] == "create" else None)
            assert refused.returncode != 0, (who, verb)
            assert TASKRUNS_WEBHOOK in refused.stderr, (who, refused.stderr)
            assert f"may not {what}: the platform admins manage them" in refused.stderr, \
                (who, refused.stderr)
    review = live_suite.wait_review(endpoint="validate-taskruns", name=step_action)
    assert (review["decision"], review["reason"]) == ("denied", "BuildDefinitionChangeRefused")
    assert control_plane.get_json("-n", BUILD_NAMESPACE, "task", "buildpacks-phases")
    pipeline = control_plane.get_json("-n", BUILD_NAMESPACE, "pipeline", "buildpacks")
    assert "stolen" not in pipeline["metadata"].get("labels", {})
    assert control_plane.kubectl("-n", BUILD_NAMESPACE, "get", "stepaction", step_action,
                                 check=False).returncode != 0
    # The platform admins' tooling writes them (the harness's admin, left to RBAC).
    control_plane.kubectl("-n", BUILD_NAMESPACE, "label", "pipeline", "buildpacks", "checked=yes")
    control_plane.kubectl("-n", BUILD_NAMESPACE, "label", "pipeline", "buildpacks", "checked-")


# --- what a trusted step does -------------------------------------------------------------------

ELSEWHERE = "buildpacks-elsewhere"
NO_RUN_IMAGE = "buildpacks-no-run-image"


@contextlib.contextmanager
def approved_variant(cp: ControlPlane, suite: Suite, name: str,
                     change: Callable[[dict[str, Any]], None]) -> Iterator[Suite]:
    """The harness's buildpacks Pipeline under another name, changed by `change`, approved."""
    pipeline = next(document for document in yaml.safe_load_all(
        (TEST_MANIFESTS / "image-build.yaml").read_text()) if document["kind"] == "Pipeline")
    pipeline["metadata"]["name"] = name
    change(pipeline)
    cp.apply([pipeline])
    suite.set_policy(suite.default_policy.replace(
        "  pipelines: [buildpacks]\n", f"  pipelines: [buildpacks, {name}]\n"))
    try:
        yield suite
    finally:
        cp.kubectl("-n", BUILD_NAMESPACE, "delete", "pipeline", name, "--ignore-not-found")


def refused_build_pod(cp: ControlPlane, suite: Suite, tool: str,
                      pipeline: str) -> dict[str, Any]:
    """A run of `pipeline` by `tool`: the review that refused its pod to the Tekton controller
    (no pod of the run exists), and the run deleted again."""
    account = tool_account(cp, tool)
    run = unique(f"{tool}-buildpacks-pipelinerun")
    manifest = pipelinerun(run, tool)
    manifest["spec"]["pipelineRef"]["name"] = pipeline
    try:
        cp.kubectl("create", "-f", "-", input=yaml.safe_dump(manifest), user=account)
        pod_name = f"{run}-build-from-git-pod"  # <run>-<pipeline task>-pod
        denied = suite.wait_review(timeout=120, endpoint="validate-pods", name=pod_name,
                                   operation="CREATE")
        assert denied["user"] == TEKTON_CONTROLLER_USER
        assert cp.get_json("-n", BUILD_NAMESPACE, "pods", "-l",
                           f"tekton.dev/pipelineRun={run}")["items"] == []
        return denied
    finally:
        delete_runs(cp, tool)


def push_to_victim(pipeline: dict[str, Any]) -> None:
    for param in pipeline["spec"]["tasks"][0]["params"]:
        if param["name"] == "APP_IMAGE":
            param["value"] = VICTIM_IMAGE


def drop_run_image(pipeline: dict[str, Any]) -> None:
    task = pipeline["spec"]["tasks"][0]
    task["params"] = [p for p in task["params"] if p["name"] != "RUN_IMAGE"]


def test_an_export_step_pushing_elsewhere_than_the_runs_app_image_is_refused(
        control_plane: ControlPlane, default_policy: Suite) -> None:
    """An approved pipeline that hands its task a fixed APP_IMAGE: another tool's. An admin's
    mistake, or a compromised pipeline; a run admitted for its own APP_IMAGE then has an export
    step that would push to the other tool's project with the robot account."""
    tool = "credtarget"
    with approved_variant(control_plane, default_policy, ELSEWHERE, push_to_victim) as suite:
        denied = refused_build_pod(control_plane, suite, tool, ELSEWHERE)
    assert (denied["decision"], denied["reason"]) == ("denied", "TrustedStepTarget"), denied
    own = f"tools-harbor.wmcloud.org/tool-{tool}/{tool}:latest"
    assert (f'trusted step step-export would use the registry credentials on image '
            f'"{VICTIM_IMAGE}"; its PipelineRun\'s APP_IMAGE is "{own}"') in denied["detail"]


def test_an_export_step_that_would_read_its_run_image_from_the_layers_is_refused(
        control_plane: ControlPlane, default_policy: Suite) -> None:
    """An approved pipeline that does not hand RUN_IMAGE to its task (an admin's mistake): the
    run names an approved run image, but buildpacks-phases 0.2 then gives its export step
    `-run-image=` and `-stack=/layers/stack.toml`, and the exporter would pull whatever image
    that file names (the tool's build step can rewrite it) with the robot account."""
    with approved_variant(control_plane, default_policy, NO_RUN_IMAGE, drop_run_image) as suite:
        denied = refused_build_pod(control_plane, suite, "credstack", NO_RUN_IMAGE)
        assert (denied["decision"], denied["reason"]) == ("denied", "TrustedStepTarget"), denied
        assert denied["detail"] == (
            "trusted step step-export names no run image, so the lifecycle would pull the one "
            'named in "/layers/stack.toml", which is on volume layers-dir, where the build\'s '
            "other steps can write it; set the run's RUN_IMAGE (the task passes it as "
            "-run-image)"), denied
        # The mutation did its part; the pod would have been coherent but for the run image.
        assert [m["decision"] for m in suite.reviews(endpoint="mutate-build-pods",
                                                     name=denied["name"])][:1] == ["mutated"]


# --- updates of a stored build pod ----------------------------------------------------------------


def test_updates_that_would_hand_a_container_the_credentials_are_refused(
        control_plane: ControlPlane, live_suite: Suite) -> None:
    tool = "credupdate"
    account = tool_account(control_plane, tool)
    run = unique(f"{tool}-buildpacks-pipelinerun")
    try:
        control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump(pipelinerun(run, tool)),
                              user=account)
        pod = wait_pod(control_plane, run)
        name = pod["metadata"]["name"]
        secret_volume = next(v["name"] for v in pod["spec"]["volumes"]
                             if v.get("secret", {}).get("secretName") == SECRET)

        # `kubectl debug`'s subresource, by a tool that has RBAC for it here.
        debugger = {"spec": {"ephemeralContainers": [{
            "name": "debugger", "image": BUILDER, "command": ["sh"],
            "volumeMounts": [{"name": secret_volume, "mountPath": "/s"}]}]}}
        refused = control_plane.kubectl(
            "-n", BUILD_NAMESPACE, "patch", "pod", name, "--subresource=ephemeralcontainers",
            "--type=strategic", "-p", json.dumps(debugger), user=account, check=False)
        assert refused.returncode != 0
        assert PODS_WEBHOOK in refused.stderr, refused.stderr
        review = live_suite.wait_review(endpoint="validate-pods", name=name,
                                        sub_resource="ephemeralcontainers")
        assert review["reason"] == "PodNotFromTektonController", review
        assert "untrusted container debugger: mount /s can read registry credentials" in \
            review["detail"], review

        # The controller itself may change images (it stops sidecars so), but a trusted step
        # in another image is no longer trusted, and still holds the credentials.
        controller = control_plane.tekton_kubeconfig
        attacker = {"spec": {"containers": [{"name": "step-export",
                                             "image": "docker.io/buildpacksio/lifecycle:0.9"}]}}
        refused = control_plane.kubectl("-n", BUILD_NAMESPACE, "patch", "pod", name, "-p",
                                        json.dumps(attacker), user=controller, check=False)
        assert refused.returncode != 0
        assert "untrusted container step-export:" in refused.stderr, refused.stderr
        nop = {"spec": {"containers": [{"name": "step-results", "image": SHELL_IMAGE}]}}
        control_plane.kubectl("-n", BUILD_NAMESPACE, "patch", "pod", name, "-p", json.dumps(nop),
                              user=controller)
        # A shell into the pod: not even for a cluster admin, whom RBAC lets through.
        refused = control_plane.kubectl("-n", BUILD_NAMESPACE, "exec", name, "-c", "step-export",
                                        "--", "cat", f"{CREDS_SECRETS}/{SECRET}/password",
                                        check=False)
        assert refused.returncode != 0
        assert ('admission webhook "build-pod-access.toolforge-admission.toolforge.org" '
                "denied the request") in refused.stderr, refused.stderr
        # Nor a connection proxied to it through the API server (pods/proxy, a CONNECT too).
        refused = control_plane.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{BUILD_NAMESPACE}/pods/{name}/proxy/",
            check=False)
        assert refused.returncode != 0
        assert ('admission webhook "build-pod-access.toolforge-admission.toolforge.org" '
                "denied the request") in refused.stderr, refused.stderr
        review = live_suite.wait_review(endpoint="validate-build-pod-access", name=name,
                                        sub_resource="proxy")
        assert (review["operation"], review["decision"], review["reason"]) == (
            "CONNECT", "denied", "BuildPodAccessRefused"), review
        stored = control_plane.get_json("-n", BUILD_NAMESPACE, "pod", name)
        images = {c["name"]: c["image"] for c in stored["spec"]["containers"]}
        assert images["step-export"] == next(c["image"] for c in pod["spec"]["containers"]
                                             if c["name"] == "step-export")
        assert images["step-results"] == SHELL_IMAGE
        assert "ephemeralContainers" not in stored["spec"]
    finally:
        delete_runs(control_plane, tool)
