"""A real control plane for the end-to-end tests, and the suite running against it.

`ControlPlane` starts etcd, kube-apiserver and kube-controller-manager (built and cached by
`build.py`) on free 127.0.0.1 ports with a throwaway PKI, installs Tekton (CRDs with conversion
strategy None, RBAC, ConfigMaps) and runs the Tekton controller as a local process. `Suite` runs
`toolforge-admission serve` exactly as production does (gunicorn over TLS, the policy file, the
cluster from KUBECONFIG) and registers the project's own webhook configurations with only
`clientConfig` swapped for a URL on 127.0.0.1.

Mutual TLS is on, as production should run it: the API server presents a client certificate to
webhooks (an AdmissionConfiguration whose kubeConfigFile names it, from a CA of its own), and the
suite answers admission reviews only over connections that carry it (`serve --client-ca
--client-name`), closing any other right after the handshake. Probes and /metrics are on a second
port (`--status-bind`) that needs no certificate; `Suite.client_context()` is the API server's
side, for a test that posts a review itself.

The flag sets come from `smoke_controlplane.py` (the manual check that they work here). Nothing
listens beyond loopback. Every process is started here and stopped here by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import hashlib
import ipaddress
import json
import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
MANIFESTS = REPO / "manifests" / "base"
TEST_MANIFESTS = HERE / "manifests"
TEST_POLICY = HERE / "policy.yaml"

SERVICE_CIDR = "10.0.0.0/24"  # never routed: there is no kube-proxy
ISSUER = "https://kubernetes.default.svc.cluster.local"
SUITE_NAMESPACE = "toolforge-admission"
BUILD_NAMESPACE = "image-build"
TEST_NAMESPACES = (SUITE_NAMESPACE, BUILD_NAMESPACE, "tool-mytool", "tool-other")
TEKTON_NAMESPACE = "tekton-pipelines"
WORKLOADS_ROLE = "e2e-workloads"
"""The ClusterRole `ControlPlane.grant` binds in a tool's namespace."""
BUILDS_ROLE = "e2e-builds"
"""The ClusterRole `ControlPlane.grant` binds in the build namespace."""
TEKTON_CONTROLLER_USER = "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller"
# The subject of the client certificate the API server presents to webhooks.
WEBHOOK_CLIENT_NAME = "kube-apiserver-webhook-client"

# Release-style image names, as a Tekton v1.15 release.yaml gives the controller. Nothing pulls
# them (there is no kubelet); they end up in the pods, where the registry policy sees them.
TEKTON_IMAGE_PREFIX = "ghcr.io/tektoncd/pipeline/github.com/tektoncd/pipeline/cmd"
TEKTON_VERSION = "v1.15.1"
SHELL_IMAGE = ("cgr.dev/chainguard/busybox@sha256:"
               "19f02276bf8dbdd62f069b922f10c65262cc34b710eea26ff928129a736be791")
SHELL_IMAGE_WIN = ("mcr.microsoft.com/powershell:nanoserver@sha256:"
                   "b6d5ff841b78bdf2dfed7550000fd4f3437385b8fa686ec0f010be24777654d6")


def log(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- PKI ---------------------------------------------------------------------------------------


def _name(common_name: str, orgs: Iterable[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    return x509.Name(attributes)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class ClusterCA:
    """The cluster's CA: signs the API server's serving certificate and every client."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        self.key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("e2e-cluster-ca")).issuer_name(_name("e2e-cluster-ca"))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now).not_valid_after(self.now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.crt"
        self.cert_path.write_bytes(_cert_pem(self.cert))
        (directory / "ca.key").write_bytes(_key_pem(self.key))

    def issue(self, stem: str, name: x509.Name, *, server: bool = False,
              sans: Iterable[x509.GeneralName] = ()) -> tuple[pathlib.Path, pathlib.Path]:
        """Write <stem>.crt and <stem>.key, signed by this CA; return their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = (ExtendedKeyUsageOID.SERVER_AUTH if server
                 else ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now).not_valid_after(self.now + datetime.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        sans = list(sans)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        crt, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        crt.write_bytes(_cert_pem(cert))
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        return crt, key_path


# --- processes ---------------------------------------------------------------------------------


class Process:
    """A child process with its log file; stopped by PID (terminate, wait, kill)."""

    def __init__(self, name: str, argv: list[str], workdir: pathlib.Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=workdir, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see "
                               f"{self.log_path}:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        try:
            os.kill(self.pid, sig)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        except ProcessLookupError:
            pass


def _listeners(port: int) -> str:
    result = subprocess.run(["ss", "-tanp", f"( sport = :{port} or dport = :{port} )"],
                            capture_output=True, text=True, check=False)
    return result.stdout or result.stderr


def tail(path: pathlib.Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http(url: str, context: ssl.SSLContext | None, deadline_s: float,
              process: Process | None = None) -> float:
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < deadline_s:
        if process is not None:
            process.check_alive()
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (OSError, urllib.error.URLError) as error:
            last = error
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {deadline_s}s ({last})")


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a log (gunicorn's own lines and partial lines are left out)."""
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def wait_for(what: str, predicate: Any, timeout: float = 60.0, interval: float = 0.25) -> Any:
    """Poll predicate() until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd[2:]))} exited with {self.returncode}: {self.stderr}"


# --- the control plane -------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager (+ the Tekton controller)."""

    def __init__(self, workdir: pathlib.Path, binaries: Mapping[str, pathlib.Path], *,
                 admission_config: pathlib.Path | None = None) -> None:
        self.workdir = workdir
        self.bins = dict(binaries)
        self.pki = workdir / "pki"
        self.pki.mkdir(parents=True, exist_ok=True)
        # The API server's webhook client certificate comes from a CA of its own, as it should
        # in production: the cluster CA also signs every user's (every tool's) certificate, so a
        # suite trusting it would take a review from any of them.
        self.webhook_client_pki = self.pki / "webhook-client"
        self.webhook_client_pki.mkdir(exist_ok=True)
        self.webhook_client_ca = self.webhook_client_pki / "ca.crt"
        """The CA a suite started with `--client-ca` trusts for the API server's certificate."""
        self.webhook_client_cert = self.webhook_client_pki / "apiserver.crt"
        self.webhook_client_key = self.webhook_client_pki / "apiserver.key"
        # The harness's own (which presents that certificate) unless a test brings another.
        self._own_admission_config = admission_config is None
        self.admission_config = admission_config or workdir / "admission-config.yaml"
        self.processes: list[Process] = []
        self.server = ""
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.tekton_kubeconfig = workdir / "tekton-controller.kubeconfig"
        """The Tekton controller's own credentials (its ServiceAccount token), for a test that
        must act as the controller."""
        self.timings: dict[str, float] = {}
        self._api_client: Any = None

    # -- start / stop

    def start(self) -> None:
        t0 = time.monotonic()
        self._make_pki()
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig(self.kubeconfig, "admin", self.pki / "admin.crt",
                               self.pki / "admin.key")
        self._start_controller_manager()
        self.timings["control plane"] = time.monotonic() - t0
        log(f"control plane ready after {self.timings['control plane']:.1f}s at {self.server}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def _start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None,
               ) -> Process:
        process = Process(name, argv, self.workdir, env)
        self.processes.append(process)
        return process

    def _make_pki(self) -> None:
        self.ca = ClusterCA(self.pki)
        self.ca.issue("apiserver", _name("kube-apiserver"), server=True, sans=[
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc")])
        # O=system:masters: the group RBAC always lets do everything.
        self.ca.issue("admin", _name("e2e-admin", ["system:masters"]))
        self.webhook_client_issuer = ClusterCA(self.webhook_client_pki)
        self.webhook_client_issuer.issue("apiserver", _name(WEBHOOK_CLIENT_NAME))
        if self._own_admission_config:
            self._write_admission_config()
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.pki / "sa.key").write_bytes(_key_pem(sa_key))
        (self.pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write_admission_config(self) -> None:
        """The API server presents the webhook client certificate to every webhook: `*` matches
        any host, and the suite's port is only chosen later."""
        kubeconfig = self.workdir / "webhook-client.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "users": [{"name": "*", "user": {
                "client-certificate": str(self.webhook_client_cert),
                "client-key": str(self.webhook_client_key)}}],
        }))
        kubeconfig.chmod(0o600)
        plugins = [{"name": plugin, "configuration": {
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(kubeconfig)}}
            for plugin in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")]
        self.admission_config.write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": plugins}))

    def _start_etcd(self) -> None:
        etcd_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self.etcd_url = etcd_url
        etcd = self._start("etcd", [
            str(self.bins["etcd"]), "--name=e2e", f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        took = wait_http(f"{etcd_url}/health", None, 30, etcd)
        log(f"etcd healthy after {took:.1f}s")

    def _start_apiserver(self) -> None:
        port = free_port()
        pki = self.pki
        argv = [
            str(self.bins["kube-apiserver"]),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        argv.append(f"--admission-control-config-file={self.admission_config}")
        apiserver = self._start("kube-apiserver", argv)
        self.server = f"https://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        took = wait_http(f"{self.server}/readyz", context, 120, apiserver)
        log(f"kube-apiserver ready after {took:.1f}s")

    def _start_controller_manager(self) -> None:
        kubeconfig = str(self.kubeconfig)
        self._start("kube-controller-manager", [
            str(self.bins["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--leader-elect=false",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
        ])

    # -- kubeconfigs and clients

    def _write_kubeconfig(self, path: pathlib.Path, user: str, cert: pathlib.Path | None,
                          key: pathlib.Path | None, token: str | None = None) -> pathlib.Path:
        credentials: dict[str, str] = (
            {"token": token} if token is not None
            else {"client-certificate": str(cert), "client-key": str(key)})
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def user_kubeconfig(self, username: str, groups: Iterable[str] = ()) -> pathlib.Path:
        """A kubeconfig for a client certificate CN=<username>, O=<each group>."""
        groups = list(groups)
        stem = "user-" + re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join([username, *groups]))
        cert, key = self.ca.issue(stem, _name(username, groups))
        return self._write_kubeconfig(self.workdir / f"{stem}.kubeconfig", username, cert, key)

    def tool_kubeconfig(self, tool: str) -> pathlib.Path:
        """A tool's account: CN=<tool>, O=toolforge, as Toolforge's maintain-kubeusers issues;
        it may manage workloads in tool-<tool> and create PipelineRuns there and in the build
        namespace."""
        self.grant(tool, [f"tool-{tool}", BUILD_NAMESPACE])
        return self.user_kubeconfig(tool, ["toolforge"])

    def grant(self, username: str, namespaces: Iterable[str]) -> None:
        """RBAC for a user to create the objects the tests use in these namespaces: workloads,
        ConfigMaps and Secrets in a tool's namespace (`e2e-workloads`); in the build namespace
        far more than a tool should have (docs/security.md), but no Secrets, ConfigMaps or
        Tekton definitions (`e2e-builds`): pods, their ephemeral containers, runs and TaskRuns,
        all verbs, so that the tests prove the suite refuses what that RBAC would allow."""
        runs = {"apiGroups": ["tekton.dev"], "resources": ["pipelineruns", "taskruns"],
                "verbs": ["*"]}
        definitions = {"apiGroups": ["tekton.dev"], "resources": ["pipelines", "tasks"],
                       "verbs": ["get", "list", "watch"]}
        roles = [{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": WORKLOADS_ROLE},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/ephemeralcontainers",
                                                  "configmaps", "secrets"],
                 "verbs": ["*"]},
                {"apiGroups": ["apps", "batch"], "resources": ["*"], "verbs": ["*"]},
                runs, definitions,
            ],
        }, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": BUILDS_ROLE},
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "pods/ephemeralcontainers"],
                 "verbs": ["*"]},
                runs, definitions,
            ],
        }]
        bindings: list[dict[str, Any]] = [{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"e2e-{username}", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": BUILDS_ROLE if namespace == BUILD_NAMESPACE else WORKLOADS_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": username}],
        } for namespace in namespaces]
        self.apply([*roles, *bindings])
        # The API server authorises from an informer's cache: a RoleBinding just made may not be
        # in force yet, and a create refused by RBAC would never reach the suite.
        for binding in bindings:
            namespace = binding["metadata"]["namespace"]
            wait_for(f"RBAC to let {username} create in {namespace}", lambda ns=namespace: (
                self.kubectl("auth", "can-i", "create", "pipelineruns.tekton.dev", "-n", ns,
                             f"--as={username}", check=False).stdout.strip() == "yes"), 30)

    def service_account_kubeconfig(self, namespace: str, name: str) -> pathlib.Path:
        """A kubeconfig with a token of the ServiceAccount, so requests carry its userInfo
        (`system:serviceaccount:<namespace>:<name>`, its groups) as in a cluster."""
        self.wait_service_account(namespace, name)
        token = self.kubectl("-n", namespace, "create", "token", name,
                             "--duration=12h").stdout.strip()
        return self._write_kubeconfig(self.workdir / f"sa-{namespace}-{name}.kubeconfig",
                                      f"system:serviceaccount:{namespace}:{name}", None, None,
                                      token=token)

    def human_kubeconfig(self, username: str) -> pathlib.Path:
        """A person (not a tool): no O=toolforge."""
        self.grant(username, ["tool-mytool", "tool-other", BUILD_NAMESPACE])
        return self.user_kubeconfig(username, ["people"])

    def kubectl(self, *args: str, input: str | bytes | None = None, check: bool = True,
                user: pathlib.Path | None = None, timeout: float = 60,
                ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl as the admin (or with the kubeconfig `user`)."""
        argv = [str(self.bins["kubectl"]), f"--kubeconfig={user or self.kubeconfig}", *args]
        text = input.decode() if isinstance(input, bytes) else input
        result = subprocess.run(argv, input=text, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def apply(self, manifest: str | pathlib.Path | Iterable[Mapping[str, Any]],
              *args: str) -> subprocess.CompletedProcess[str]:
        if isinstance(manifest, pathlib.Path):
            return self.kubectl("apply", *args, "-f", str(manifest))
        if not isinstance(manifest, str):
            manifest = yaml.safe_dump_all(list(manifest))
        return self.kubectl("apply", *args, "-f", "-", input=manifest)

    def api_client(self) -> Any:
        """The official Python client, as the admin."""
        if self._api_client is None:
            from kubernetes import config

            self._api_client = config.new_client_from_config(str(self.kubeconfig))
        return self._api_client

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})}}
        self.apply([body])

    def wait_service_account(self, namespace: str, name: str = "default",
                             timeout: float = 60) -> None:
        """Pods are refused until the ServiceAccount they run as exists."""
        def exists() -> bool:
            for process in self.processes:
                process.check_alive()
            return self.kubectl("-n", namespace, "get", "serviceaccount", name,
                                check=False).returncode == 0
        wait_for(f"serviceaccount {namespace}/{name}", exists, timeout)

    # -- Tekton

    def install_tekton(self) -> None:
        """CRDs (conversion None), namespace, RBAC, ConfigMaps; then the controller process."""
        t0 = time.monotonic()
        config = self.bins["tekton-config"]
        documents: list[dict[str, Any]] = []
        for path in [config / "100-namespace", *sorted(config.glob("200-*.yaml")),
                     *sorted(config.glob("201-*.yaml"))]:
            documents += _load_documents(path)
        crds = []
        for path in sorted(self.bins["tekton-crds"].glob("*.yaml")):
            for crd in _load_documents(path):
                # Tekton's conversion webhook does not run here (it would have to run as a pod);
                # with strategy None the API server only rewrites apiVersion.
                crd["spec"]["conversion"] = {"strategy": "None"}
                crds.append(crd)
        configmaps = [doc for path in sorted(config.glob("config-*.yaml"))
                      for doc in _load_documents(path)]
        self.apply(documents + crds + configmaps, "--server-side")
        for crd in crds:
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         f"crd/{crd['metadata']['name']}")
        self.wait_service_account(TEKTON_NAMESPACE, "tekton-pipelines-controller")
        # The controller authenticates as its ServiceAccount, as in a cluster, so the pods it
        # creates carry its real userInfo.
        token = self.kubectl("-n", TEKTON_NAMESPACE, "create", "token",
                             "tekton-pipelines-controller", "--duration=12h").stdout.strip()
        controller_kubeconfig = self._write_kubeconfig(
            self.tekton_kubeconfig, TEKTON_CONTROLLER_USER, None, None, token=token)
        image = f"{TEKTON_IMAGE_PREFIX}/{{}}:{TEKTON_VERSION}"
        self.tekton = self._start("tekton-controller", [
            str(self.bins["tekton-controller"]),
            f"--kubeconfig={controller_kubeconfig}",
            "-disable-ha",
            f"-entrypoint-image={image.format('entrypoint')}",
            f"-nop-image={image.format('nop')}",
            f"-sidecarlogresults-image={image.format('sidecarlogresults')}",
            f"-workingdirinit-image={image.format('workingdirinit')}",
            f"-shell-image={SHELL_IMAGE}",
            f"-shell-image-win={SHELL_IMAGE_WIN}",
        ], env={
            "SYSTEM_NAMESPACE": TEKTON_NAMESPACE,
            "CONFIG_DEFAULTS_NAME": "config-defaults",
            "CONFIG_SPIRE": "config-spire",
            "CONFIG_LOGGING_NAME": "config-logging",
            "CONFIG_OBSERVABILITY_NAME": "config-observability",
            "CONFIG_FEATURE_FLAGS_NAME": "feature-flags",
            "CONFIG_LEADERELECTION_NAME": "config-leader-election-controller",
            "METRICS_DOMAIN": "tekton.dev/pipeline",
            "KUBERNETES_MIN_VERSION": "v1.28.0",
            "PROBES_PORT": str(free_port()),
            "PROFILING_PORT": str(free_port()),
            "METRICS_PROMETHEUS_PORT": str(free_port()),
            "METRICS_PROMETHEUS_HOST": "127.0.0.1",
        })
        self.timings["tekton"] = time.monotonic() - t0
        log(f"Tekton installed, controller pid {self.tekton.pid} "
            f"({self.timings['tekton']:.1f}s)")


def _load_documents(path: pathlib.Path) -> list[dict[str, Any]]:
    paths = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [doc for p in paths for doc in yaml.safe_load_all(p.read_text()) if doc]


# --- the suite ---------------------------------------------------------------------------------


WEBHOOK_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")


def project_webhook_configurations() -> list[dict[str, Any]]:
    """The webhook configurations of manifests/base, as the project ships them."""
    configurations = []
    for path in sorted(MANIFESTS.glob("webhook-*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in WEBHOOK_KINDS:
                configurations.append(doc)
    return configurations


def point_at(configuration: Mapping[str, Any], base_url: str, ca_pem: bytes,
             ) -> dict[str, Any]:
    """A copy with only each webhook's clientConfig swapped for {url, caBundle}."""
    result = copy.deepcopy(dict(configuration))
    for webhook in result["webhooks"]:
        path = webhook["clientConfig"]["service"].get("path", "/")
        webhook["clientConfig"] = {"url": f"{base_url}{path}",
                                   "caBundle": base64.b64encode(ca_pem).decode()}
    return result


def policy_digest(text: str | bytes) -> str:
    from policies.model import parse_policy

    return parse_policy(text.encode() if isinstance(text, str) else text).digest


class Suite:
    """`toolforge-admission serve` as a subprocess, registered with the control plane."""

    def __init__(self, control_plane: ControlPlane, workdir: pathlib.Path, *,
                 policy: pathlib.Path = TEST_POLICY, workers: int = 2, threads: int = 2,
                 kubeconfig: pathlib.Path | None = None) -> None:
        from certs.issue import new_ca, new_serving_cert

        self.cp = control_plane
        self.workdir = workdir
        self.workers = workers
        self.threads = threads
        # Where the suite reaches the API server for the active-run check (a fault-injecting
        # proxy's kubeconfig in the fault tests); the admin's by default.
        self.kubeconfig = kubeconfig or control_plane.kubeconfig
        self.cert_dir = workdir / "suite-certs"
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        ca = new_ca("toolforge-admission e2e CA", now, datetime.timedelta(days=2))
        leaf = new_serving_cert(ca, ["localhost"], now, datetime.timedelta(days=2),
                                ip_addresses=("127.0.0.1",))
        self.ca_pem = ca.cert_pem
        (self.cert_dir / "ca.crt").write_bytes(ca.cert_pem)
        (self.cert_dir / "tls.crt").write_bytes(leaf.cert_pem)
        (self.cert_dir / "tls.key").write_bytes(leaf.key_pem)
        (self.cert_dir / "tls.key").chmod(0o600)
        self.default_policy = policy.read_text()
        self.policy_path = workdir / "policy" / "policy.yaml"
        self.policy_path.parent.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(self.default_policy)
        self.port = free_port()
        self.base_url = f"https://127.0.0.1:{self.port}"
        # Probes and /metrics: with mutual TLS the review port closes clients without a
        # certificate, and the tests read these as kubelet and Prometheus do, without one.
        self.status_port = free_port()
        self.status_url = f"https://127.0.0.1:{self.status_port}"
        self.log_path = workdir / "toolforge-admission.log"
        self.process: Process | None = None
        self.timings: dict[str, float] = {}
        self._context = ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))
        self.mutual_tls = True
        """With `--client-ca` (as the harness runs it); False runs the shipped default, which
        serves any client that completes a handshake (takes effect at the next start)."""

    # -- the server

    def command(self) -> list[str]:
        script = pathlib.Path(sys.executable).parent / "toolforge-admission"
        prefix = [str(script)] if script.exists() else [sys.executable, "-m", "webhooks.cli"]
        return [*prefix, "serve", f"--bind=127.0.0.1:{self.port}",
                f"--cert-dir={self.cert_dir}", f"--policy={self.policy_path}",
                f"--workers={self.workers}", f"--threads={self.threads}",
                *([f"--client-ca={self.cp.webhook_client_ca}",
                   f"--client-name={WEBHOOK_CLIENT_NAME}"] if self.mutual_tls else []),
                f"--status-bind=127.0.0.1:{self.status_port}"]

    def start(self) -> None:
        if self.process is not None and self.process.alive():
            return
        t0 = time.monotonic()
        self.process = Process("toolforge-admission", self.command(), self.workdir, env={
            "KUBECONFIG": str(self.kubeconfig),
            "POD_NAMESPACE": SUITE_NAMESPACE,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),
        })
        took = wait_http(f"{self.status_url}/readyz", self._context, 60, self.process)
        self.timings["suite"] = time.monotonic() - t0
        log(f"toolforge-admission ready after {took:.1f}s on {self.base_url} "
            f"(pid {self.process.pid}, log {self.log_path})")

    def stop(self) -> None:
        """Stop at once (SIGINT: gunicorn's quick shutdown), as a crashed deployment would be."""
        if self.process is not None:
            self.process.stop(timeout=10, sig=signal.SIGINT)
            # The workers too (they share the master's process group): no orphan keeps the port.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            # The port must be closed before a test relies on the server being gone.
            try:
                wait_for("the suite's port to close", lambda: not self._port_open(), 10)
            except TimeoutError:
                log(f"port {self.port} still accepts connections after the suite stopped: "
                    f"{_listeners(self.port)}")
                raise

    def _port_open(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def client_context(self) -> ssl.SSLContext:
        """TLS as the API server connects: the suite's CA, and the webhook client certificate
        that the suite requires on its review port. Probes and /metrics need none on the status
        port (`get`)."""
        context = ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))
        context.load_cert_chain(self.cp.webhook_client_cert, self.cp.webhook_client_key)
        return context

    def post(self, path: str, body: Any, context: ssl.SSLContext | None = None,
             ) -> tuple[int, Any]:
        """POST JSON on a new connection, as the API server by default (`client_context`);
        the status and the decoded JSON answer (the text if it is not JSON)."""
        request = urllib.request.Request(f"{self.base_url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=context or self.client_context(),
                                        timeout=10) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.status_url}{path}",
                                        context=self._context, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, text
        return text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)", line)
            if not match or match.group(1) != name:
                continue
            sample = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
            if all(sample.get(k) == v for k, v in labels.items()):
                total += float(match.group(4))
        return total

    # -- logs

    def log_entries(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path.read_text(errors="replace"))

    def reviews(self, **match: Any) -> list[dict[str, Any]]:
        """The log's review lines (with uid and endpoint) whose fields equal `match`."""
        return [entry for entry in self.log_entries()
                if "uid" in entry and "endpoint" in entry
                and all(entry.get(k) == v for k, v in match.items())]

    def wait_review(self, timeout: float = 30, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_for(f"a review {match} in {self.log_path}",
                                               lambda: self.reviews(**match), timeout)
        return found[-1]

    # -- policy

    def set_policy(self, text: str, timeout: float = 30) -> str:
        """Replace the policy file; wait until every worker serves it. Returns its digest."""
        digest = policy_digest(text)
        temporary = self.policy_path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.policy_path)  # atomic, as a ConfigMap volume update is
        self.wait_policy(digest, timeout)
        return digest

    def restore_policy(self) -> None:
        if self.policy_path.read_text() != self.default_policy:
            self.set_policy(self.default_policy)

    def wait_policy(self, digest: str, timeout: float = 30) -> None:
        """/readyz from every worker reports the digest: many fresh connections in a row agree
        (each new connection goes to whichever worker accepts it)."""
        needed = 6 * self.workers
        streak = 0
        deadline = time.monotonic() + timeout
        while streak < needed:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the suite did not load policy {digest[:12]} in {timeout}s")
            status, text = self.get("/readyz")
            # Exactly: "ok: policy X (policy file refused: ...)" serves X but refused the file.
            if status == 200 and text.strip() == f"ok: policy {digest[:12]}":
                streak += 1
            else:
                streak = 0
                time.sleep(0.2)

    # -- registration

    def configurations(self, base_url: str | None = None,
                       ca_pem: bytes | None = None) -> list[dict[str, Any]]:
        return [point_at(c, base_url or self.base_url, ca_pem or self.ca_pem)
                for c in project_webhook_configurations()]

    def register(self) -> None:
        t0 = time.monotonic()
        self.cp.apply(self.configurations())
        self.timings["register"] = time.monotonic() - t0

    def unregister(self) -> None:
        for configuration in project_webhook_configurations():
            kind = configuration["kind"].lower()
            self.cp.kubectl("delete", kind, configuration["metadata"]["name"],
                            "--ignore-not-found")


def ensure_namespaces(cp: ControlPlane, names: Iterable[str] = TEST_NAMESPACES) -> None:
    for name in names:
        cp.create_namespace(name)
    for name in names:
        cp.wait_service_account(name)


def digest_of_file(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
