"""What a platform team would pick instead of the suite, for bench/e2e.py: the same registry
allow-list for tool pods as a ValidatingAdmissionPolicy (CEL, inside the API server) and as a
Kyverno ClusterPolicy (Kyverno's admission controller, a webhook), plus the sample pods that
every mode must refuse or admit as the suite does before it is measured.

Both are generated from the policy file the suite runs with (tests/e2e/policy.yaml): its
`registries.allowed` entries, with `{tool}` taken from the namespace through
`tools.namespacePattern`, for pods in tool namespaces. They check containers, initContainers
and ephemeralContainers, as Kyverno's `restrict-image-registries` sample does: an image passes
when it starts with an allowed prefix followed by "/". That is a string test, not the suite's
parse (Docker's normalisation, the distribution grammar, digests): it agrees with the suite on
the samples below, which include the boundary cases a prefix test must get right (another
tool's project, a longer host or path, a port, a short Docker Hub name), and not on spellings
the suite normalises (an upper-case registry host, `index.docker.io`, an image volume).

Kyverno runs out of the cluster as its DEVELOPMENT.md ("Debugging local code") describes:
`--kubeconfig` and `--serverIP=127.0.0.1:<port>` (its webhook configurations then carry a URL
clientConfig to that address instead of a Service), with its namespace, CRDs (config/crds of the
module) and ConfigMaps (`kyverno`, `kyverno-metrics` of the module's install manifest) applied
first. It registers its own webhook configurations and makes its own CA and serving certificate
(Secrets in its namespace, an IP SAN for the serverIP), as in a cluster; its leader election
Lease is in that namespace too. Only the admission controller runs: no background, reports or
cleanup controller, so admission reports are off (`--admissionReports=false`: nothing would
consume them), and ValidatingAdmissionPolicy generation is off (the policy is measured as a
webhook). Other flags are those of the module's install manifest.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from kyverno import VERSION as KYVERNO_VERSION

__all__ = ["KYVERNO_VERSION"]

VAP_NAME = "toolforge-registries"
KYVERNO_POLICY = "restrict-image-registries"
KYVERNO_NAMESPACE = "kyverno"
# Secret names (what Kyverno calls them when installed), not secrets.
KYVERNO_CA_SECRET = "kyverno-svc.kyverno.svc.kyverno-tls-ca"  # noqa: S105
KYVERNO_TLS_SECRET = "kyverno-svc.kyverno.svc.kyverno-tls-pair"  # noqa: S105
KYVERNO_WEBHOOK = "validate.kyverno.svc-fail"
"""The resource validating webhook Kyverno registers for a policy with failurePolicy Fail."""

DIGEST = "sha256:" + "a" * 64


# -- the policy's allow-list, in each tool's terms --------------------------------------------

@dataclass(frozen=True)
class AllowList:
    namespace_prefix: str
    namespace_suffix: str
    entries: tuple[str, ...]
    """`registries.allowed` as written, `{tool}` included."""

    @classmethod
    def from_policy(cls, policy_file: pathlib.Path) -> AllowList:
        from policies.model import parse_policy

        policy = parse_policy(policy_file.read_bytes())
        pattern = policy.tools.namespace_pattern
        # `{harborProject}` as the project pattern in the tool's terms: the peers skip Harbor's
        # rule for adjacent separators (policies/harbor.py), which no benchmark tool name meets.
        project = policy.builds.harbor_project.expand("{tool}")
        return cls(pattern.prefix, pattern.suffix,
                   tuple(str(e).replace("{harborProject}", project)
                         for e in policy.registries.allowed))


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def vap_documents(allow: AllowList) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy with the prefixes inline, and its binding (Deny)."""
    prefix, suffix = allow.namespace_prefix, allow.namespace_suffix
    end = f"size(request.namespace) - {len(suffix)}" if suffix else "size(request.namespace)"
    tool = f"request.namespace.substring({len(prefix)}, {end})"
    in_tool_namespace = " && ".join(
        [f"request.namespace.startsWith({_cel_string(prefix)})"]
        + ([f"request.namespace.endsWith({_cel_string(suffix)})"] if suffix else [])
        + [f"size(request.namespace) > {len(prefix) + len(suffix)}"])

    def entry(text: str) -> str:
        # Each prefix ends with "/": a prefix covers what lies below it, on a "/" boundary.
        terms: list[str] = []
        for index, part in enumerate((text + "/").split("{tool}")):
            terms += (["variables.tool"] if index else []) + ([_cel_string(part)] if part else [])
        return " + ".join(terms)

    entries = ", ".join(entry(e) for e in allow.entries)
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": VAP_NAME},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                   "operations": ["CREATE", "UPDATE"],
                                   "resources": ["pods"]}],
                # As the suite's webhook configuration: never its own namespace or kube-system.
                "namespaceSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                    "values": ["kube-system", "toolforge-admission"]}]},
            },
            "matchConditions": [{
                "name": "tool-namespace",
                "expression": in_tool_namespace,
            }],
            "variables": [
                {"name": "tool", "expression": tool},
                {"name": "prefixes", "expression": f"[{entries}]"},
                {"name": "images", "expression":
                    "object.spec.containers.map(c, c.image)"
                    " + object.spec.?initContainers.orValue([]).map(c, c.image)"
                    " + object.spec.?ephemeralContainers.orValue([]).map(c, c.image)"},
            ],
            "validations": [{
                "expression": "variables.images.all(i, "
                              "variables.prefixes.exists(p, i.startsWith(p)))",
                "messageExpression": "'images must come from ' + "
                                     "variables.prefixes.join(', ') + ': not ' + "
                                     "variables.images.filter(i, !variables.prefixes.exists("
                                     "p, i.startsWith(p))).join(', ')",
                "reason": "Forbidden",
            }],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": VAP_NAME},
        "spec": {"policyName": VAP_NAME, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def kyverno_policy(allow: AllowList) -> dict[str, Any]:
    """Kyverno's restrict-image-registries sample, with the policy's prefixes; the tool's from
    the namespace (JMESPath trim_prefix / trim_suffix)."""
    prefix, suffix = allow.namespace_prefix, allow.namespace_suffix
    tool = f"trim_prefix(request.namespace, '{prefix}')"
    if suffix:
        tool = f"trim_suffix({tool}, '{suffix}')"
    pattern = " | ".join(entry.replace("{tool}", "{{ " + tool + " }}") + "/*"
                         for entry in allow.entries)
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": KYVERNO_POLICY},
        "spec": {
            "background": False,
            "rules": [{
                "name": "validate-registries",
                "match": {"any": [{"resources": {"kinds": ["Pod"],
                                                 "namespaces": [f"{prefix}*{suffix}"]}}]},
                "validate": {
                    "failureAction": "Enforce",
                    "message": f"images must come from {', '.join(allow.entries)}",
                    "pattern": {"spec": {
                        "=(ephemeralContainers)": [{"image": pattern}],
                        "=(initContainers)": [{"image": pattern}],
                        "containers": [{"image": pattern}],
                    }},
                },
            }],
        },
    }


# -- the sample pods --------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    name: str
    images: tuple[str, ...]
    init_images: tuple[str, ...] = ()
    refused: bool = False


def samples(harbor: str, tool: str, other: str) -> tuple[Sample, ...]:
    """Pods every mode must refuse or admit as the suite does (namespace tool-<tool>)."""
    own = f"{harbor}/tool-{tool}"
    return (
        Sample("own-project", (f"{own}/web:latest",), (f"{harbor}/toolforge/init:1",)),
        Sample("toolforge-registries", ("docker-registry.tools.wmflabs.org/python311:latest",
                                        "docker-registry.svc.toolforge.org/php82:latest",
                                        f"{harbor}/toolforge/heroku-builder@{DIGEST}")),
        Sample("docker-hub", ("docker.io/library/nginx:1",), refused=True),
        Sample("short-name", ("nginx",), refused=True),
        Sample("other-tool", (f"{harbor}/tool-{other}/web:1",), refused=True),
        Sample("longer-host", (f"{harbor}.evil.example/toolforge/x:1",), refused=True),
        Sample("longer-path", (f"{harbor}/toolforgeevil/x:1",), refused=True),
        Sample("port", ("docker-registry.tools.wmflabs.org:5000/x:1",), refused=True),
        Sample("bad-init", (f"{own}/web:1",), ("quay.io/evil/init:1",), refused=True),
    )


def sample_pod(sample: Sample, namespace: str) -> dict[str, Any]:
    def containers(prefix: str, images: Sequence[str]) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}{i}", "image": image} for i, image in enumerate(images)]

    spec: dict[str, Any] = {"containers": containers("c", sample.images)}
    if sample.init_images:
        spec["initContainers"] = containers("i", sample.init_images)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"bench-sample-{sample.name}", "namespace": namespace},
            "spec": spec}


# -- Kyverno, out of the cluster --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kyverno_manifests(paths: Mapping[str, pathlib.Path]) -> tuple[list[pathlib.Path],
                                                                   list[dict[str, Any]]]:
    """Its CRDs (files) and its namespace and ConfigMaps (documents)."""
    crds = sorted(paths["crds"].rglob("*.yaml"))
    configmaps = [d for d in yaml.safe_load_all(paths["configmaps"].read_text()) if d]
    for document in configmaps:
        document["metadata"]["namespace"] = KYVERNO_NAMESPACE
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": KYVERNO_NAMESPACE}}
    return crds, [namespace, *configmaps]


class Kyverno:
    """Kyverno's admission controller as a local process against the harness's API server."""

    def __init__(self, binary: pathlib.Path, kubeconfig: pathlib.Path,
                 workdir: pathlib.Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / "kyverno.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--kubeconfig={self.kubeconfig}",
            # Out of the cluster: the webhook configurations get https://<serverIP><path>.
            f"--serverIP=127.0.0.1:{self.port}",
            "--webhookServerHost=127.0.0.1", f"--webhookServerPort={self.port}",
            f"--caSecretName={KYVERNO_CA_SECRET}", f"--tlsSecretName={KYVERNO_TLS_SECRET}",
            "--backgroundServiceAccountName="
            "system:serviceaccount:kyverno:kyverno-background-controller",
            "--reportsServiceAccountName="
            "system:serviceaccount:kyverno:kyverno-reports-controller",
            "--admissionReports=false",
            "--generateValidatingAdmissionPolicy=false",
            "--generateMutatingAdmissionPolicy=false",
            "--autoUpdateWebhooks=true", "--resyncPeriod=15m", "--crdWatcher=false",
            "--disableMetrics=false", "--otelConfig=prometheus",
            f"--metricsPort={self.metrics_port}",
            "--controllerRuntimeMetricsAddress=0",
            "--enableConfigMapCaching=true", "--enableDeferredLoading=true",
            "--dumpPayload=false", "--forceFailurePolicyIgnore=false",
            "--omitEvents=PolicyApplied,PolicySkipped", "--enablePolicyException=false",
            "--protectManagedResources=false", "--loggingFormat=text", "--v=2",
        ]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, KYVERNO_NAMESPACE=KYVERNO_NAMESPACE,
                    KYVERNO_SERVICEACCOUNT_NAME="kyverno-admission-controller",
                    KYVERNO_ROLE_NAME="kyverno:admission-controller",
                    KYVERNO_DEPLOYMENT="kyverno-admission-controller",
                    KYVERNO_POD_NAME="kyverno-admission-controller-bench",
                    KYVERNO_SVC="kyverno-svc", INIT_CONFIG="kyverno",
                    METRICS_CONFIG="kyverno-metrics")

    def start(self, timeout: float = 180) -> float:
        """Start it and wait until its webhook server answers over TLS; the seconds taken."""
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT, env=self.environment(),
                                            cwd=self.workdir)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # its own CA, read later from the API server
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"kyverno exited with {self.process.returncode}:\n"
                                   + self.tail())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw, \
                        context.wrap_socket(raw):
                    return time.monotonic() - started
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"kyverno's webhook server not up after {timeout}s:\n"
                                   + self.tail())
            time.sleep(0.5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def errors(self) -> list[str]:
        """Error lines of its log (zerolog's console format: level ERR)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines())
        return [line for line in plain if " ERR " in line]
