"""Manual smoke check: start etcd + kube-apiserver + kube-controller-manager.

Not a pytest test (pytest does not collect this file); it shows, in runnable
form, the flag set the e2e fixtures should use, and checks it works here:

    python tests/e2e/smoke_controlplane.py            # start, check, stop
    python tests/e2e/smoke_controlplane.py --tekton   # also install Tekton
    python tests/e2e/smoke_controlplane.py --keep     # leave it running

Everything listens on 127.0.0.1 only, on free ports, with a temporary
directory for the etcd data, the certificates and the logs.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.e2e.build import ensure_binaries

SERVICE_CIDR = "10.0.0.0/24"  # never routed: there is no kube-proxy
ISSUER = "https://kubernetes.default.svc.cluster.local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a throwaway PKI -------------------------------------------------------


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attributes)


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: pathlib.Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(cert: x509.Certificate, path: pathlib.Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: pathlib.Path) -> None:
    """CA, apiserver serving cert, admin client cert, service-account keys."""
    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("e2e-ca"))
        .issuer_name(_name("e2e-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(ca_key, directory / "ca.key")
    _write_cert(ca, directory / "ca.crt")

    def leaf(name: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    serving_key, serving = leaf(
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # first IP of SERVICE_CIDR
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
        ],
    )
    _write_key(serving_key, directory / "apiserver.key")
    _write_cert(serving, directory / "apiserver.crt")

    # O=system:masters is the group RBAC always lets do everything.
    admin_key, admin = leaf(
        _name("e2e-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    _write_key(admin_key, directory / "admin.key")
    _write_cert(admin, directory / "admin.crt")

    # Signs and verifies service-account tokens (RSA, as kube expects).
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(sa_key, directory / "sa.key")
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_kubeconfig(directory: pathlib.Path, server: str) -> pathlib.Path:
    path = directory / "admin.kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority: {directory / "ca.crt"}
users:
- name: admin
  user:
    client-certificate: {directory / "admin.crt"}
    client-key: {directory / "admin.key"}
contexts:
- name: e2e
  context: {{cluster: e2e, user: admin}}
current-context: e2e
"""
    )
    return path


# --- processes -------------------------------------------------------------


def start(name: str, argv: list[str], workdir: pathlib.Path, **env: str) -> subprocess.Popen:
    print(f"$ {' '.join(argv)}", flush=True)
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=workdir
    )


def wait_ready(url: str, context: ssl.SSLContext | None, deadline_s: float, proc) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tekton", action="store_true", help="also install and run Tekton")
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()

    bins = ensure_binaries()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tfa-e2e-"))
    print(f"workdir {workdir}")
    make_pki(workdir)
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.monotonic()
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        # fmt: off
        etcd = start("etcd", [
            str(bins["etcd"]),
            "--name=e2e",
            f"--data-dir={workdir / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            # The peer port must be free too: the default 2380 may be taken.
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            "--unsafe-no-fsync=true",  # test data: speed over durability
            "--log-level=warn",
        ], workdir)
        # fmt: on
        procs.append(etcd)
        took = wait_ready(f"{etcd_url}/health", None, 30, etcd)
        print(f"etcd healthy after {took:.1f}s")

        t1 = time.monotonic()
        # fmt: off
        apiserver = start("kube-apiserver", [
            str(bins["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # kube 1.37 refuses a loopback advertise address for the endpoint
            # reconciler (which maintains the "kubernetes" Service's
            # endpoints); with no kube-proxy nothing uses them anyway.
            "--endpoint-reconciler-type=none",
            f"--secure-port={api_port}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={workdir / 'apiserver.crt'}",
            f"--tls-private-key-file={workdir / 'apiserver.key'}",
            f"--client-ca-file={workdir / 'ca.crt'}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={workdir / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",  # Tekton's pods ask for it
            "--profiling=false",
        ], workdir)
        # fmt: on
        procs.append(apiserver)
        context = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
        context.load_cert_chain(workdir / "admin.crt", workdir / "admin.key")
        server = f"https://127.0.0.1:{api_port}"
        took = wait_ready(f"{server}/readyz", context, 120, apiserver)
        print(
            f"kube-apiserver ready after {took:.1f}s (control plane {time.monotonic() - t0:.1f}s)"
        )
        del t1

        kubeconfig = write_kubeconfig(workdir, server)
        # fmt: off
        kcm = start("kube-controller-manager", [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--cert-dir={workdir / 'kcm-certs'}",
            "--leader-elect=false",
            # Publishes the kube-root-ca.crt ConfigMap into every namespace.
            f"--root-ca-file={workdir / 'ca.crt'}",
            f"--service-account-private-key-file={workdir / 'sa.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
        ], workdir)
        # fmt: on
        procs.append(kcm)

        kubectl = [str(bins["kubectl"]), f"--kubeconfig={kubeconfig}"]
        subprocess.run([*kubectl, "version"], check=True)
        subprocess.run([*kubectl, "create", "namespace", "smoke"], check=True)
        # The serviceaccount controller (in kube-controller-manager) makes the
        # "default" ServiceAccount; pods are refused until it exists.
        started = time.monotonic()
        while subprocess.run(
            [*kubectl, "-n", "smoke", "get", "serviceaccount", "default"],
            capture_output=True,
            check=False,
        ).returncode:
            if kcm.poll() is not None:
                raise RuntimeError("kube-controller-manager exited")
            time.sleep(0.2)
        print(f"default ServiceAccount after {time.monotonic() - started:.1f}s")
        subprocess.run(
            [*kubectl, "-n", "smoke", "run", "p", "--image=busybox", "--privileged=true"],
            check=True,
        )
        subprocess.run([*kubectl, "-n", "smoke", "get", "pods"], check=True)

        if args.tekton:
            install_tekton(bins, kubectl, kubeconfig, workdir, procs)

        if args.keep:
            print(f"KUBECONFIG={kubeconfig}; Ctrl-C to stop")
            while True:
                time.sleep(3600)
    finally:
        # One at a time, newest first: kube-apiserver's graceful shutdown
        # hangs if etcd is already gone, so etcd must stop last.
        for proc in reversed(procs):
            stopping = time.monotonic()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(
                f"stopped {pathlib.Path(proc.args[0]).name} in {time.monotonic() - stopping:.1f}s"
            )


def install_tekton(bins, kubectl, kubeconfig, workdir, procs) -> None:
    config = bins["tekton-config"]
    # Namespace, RBAC, CRDs and the controller's ConfigMaps; not the
    # Deployments (we run the controller as a local process) nor the webhook.
    files = [
        config / "100-namespace",
        *sorted(config.glob("200-*.yaml")),
        *sorted(config.glob("201-*.yaml")),
        bins["tekton-crds"],
        *sorted(config.glob("config-*.yaml")),
    ]
    for path in files:
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(path)], check=True)
    started = time.monotonic()
    controller = start(
        "tekton-controller",
        [
            str(bins["tekton-controller"]),
            f"--kubeconfig={kubeconfig}",
            "-disable-ha",  # one replica: no leader election to wait for
            # Image names are only written into the pods it creates.
            "-entrypoint-image=example.invalid/entrypoint",
            "-nop-image=example.invalid/nop",
            "-sidecarlogresults-image=example.invalid/sidecarlogresults",
            "-workingdirinit-image=example.invalid/workingdirinit",
            "-shell-image=example.invalid/busybox",
            "-shell-image-win=example.invalid/powershell",
        ],
        workdir,
        # The same environment as Tekton's config/controller.yaml gives it.
        SYSTEM_NAMESPACE="tekton-pipelines",
        CONFIG_DEFAULTS_NAME="config-defaults",
        CONFIG_SPIRE="config-spire",
        CONFIG_LOGGING_NAME="config-logging",
        CONFIG_OBSERVABILITY_NAME="config-observability",
        CONFIG_FEATURE_FLAGS_NAME="feature-flags",
        CONFIG_LEADERELECTION_NAME="config-leader-election-controller",
        METRICS_DOMAIN="tekton.dev/pipeline",
        KUBERNETES_MIN_VERSION="v1.28.0",
        # Its probe, profiling and metrics servers default to the fixed ports
        # 8080, 8008 and 9090 on all interfaces; use free ones instead.
        PROBES_PORT=str(free_port()),
        PROFILING_PORT=str(free_port()),
        METRICS_PROMETHEUS_PORT=str(free_port()),
        METRICS_PROMETHEUS_HOST="127.0.0.1",
    )
    procs.append(controller)
    taskrun = """apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: hello, namespace: smoke}
spec:
  taskSpec:
    steps:
    - name: hello
      image: busybox
      script: echo hello
"""
    subprocess.run([*kubectl, "apply", "-f", "-"], input=taskrun.encode(), check=True)
    while True:
        if controller.poll() is not None:
            raise RuntimeError(f"tekton controller exited; see {workdir}/tekton-controller.log")
        pods = subprocess.run(
            [
                *kubectl,
                "-n",
                "smoke",
                "get",
                "pods",
                "-l",
                "tekton.dev/taskRun=hello",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if pods:
            print(f"Tekton made pod {pods} after {time.monotonic() - started:.1f}s")
            return
        if time.monotonic() - started > 120:
            raise TimeoutError("Tekton made no pod for the TaskRun")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
