"""Faults in the mounted files while the suite serves: the last good state keeps serving.

The policy file of the suite that the API server calls is deleted, truncated, filled with garbage
or swapped, as a ConfigMap volume update does, for a bad one. Reviews through the API server must
go on being decided by the last good policy (not by defaults, not by no policy), every worker's
`/readyz` must stay ready and say why the file is refused, the refusal must be logged and
counted, and a good file must then be picked up again.

The certificate faults run on a server of their own (no API server needed, and the session's
suite keeps its certificate): its cert dir is laid out as a Secret volume (`..data` symlink) and
is swapped for a key that does not match, a truncated key, a missing file. Every new TLS
connection must still present the last good certificate (compared by fingerprint) and answer
reviews, the refusal must show in the log and the metrics, and a correct pair must then be served.
A worker killed while the files are bad is replaced by one that serves the last good pair too
(saved in the server's state dir), unless that pair has expired; a brand-new server with bad
files serves nothing.

A server that never had a good policy is not ready and refuses every review (`NoPolicy`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from certs.issue import new_ca, new_serving_cert
from tests.e2e.cluster import (
    REPO,
    TEST_POLICY,
    ControlPlane,
    Process,
    Suite,
    free_port,
    policy_digest,
    wait_for,
    wait_http,
)
from tests.e2e.faults import children
from tests.e2e.objects import TOOL_IMAGE, pod_manifest, unique
from tests.volumes import link_keys, swap_data

VALID = "toolforge_admission_policy_valid"
POLICY_ERRORS = "toolforge_admission_policy_reload_errors_total"
GENERATION = "toolforge_admission_policy_generation"
CERT_VALID = "toolforge_admission_certificate_valid"
CERT_ERRORS = "toolforge_admission_certificate_reload_errors_total"
CERT_NOT_AFTER = "toolforge_admission_certificate_not_after_timestamp_seconds"
REFUSED = "policy refused; keeping the last good policy"

# Only the last good policy allows this registry: the test policy does not, and neither would a
# policy of defaults (no registry at all).
LAST_GOOD_IMAGE = "registry.last-good.example/apps/web:1"
DENIED_IMAGE = "docker.io/library/nginx"


def last_good_policy(extra_registry: str = "registry.last-good.example/apps") -> str:
    policy = yaml.safe_load(TEST_POLICY.read_text())
    policy["registries"]["allowed"].append(extra_registry)
    return yaml.safe_dump(policy)


def mentions(text: str, problem: str) -> bool:
    """Whether `text` has `problem`, or one of its `|`-separated alternatives."""
    return any(alternative in text for alternative in problem.split("|"))


def entries_since(entries: list[dict[str, Any]], count: int, message: str,
                  ) -> list[dict[str, Any]]:
    return [entry for entry in entries[count:] if entry.get("message") == message]


# --- the policy file of the suite the API server calls --------------------------------------


def replace_atomically(path: pathlib.Path, data: bytes) -> None:
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    staged.write_bytes(data)
    staged.replace(path)


def truncate(path: pathlib.Path, data: bytes) -> None:
    """Cut the file short in place, as a write that stopped half-way leaves it."""
    path.write_bytes(data)


def _cut_mid_key(text: str) -> bytes:
    # A write that stopped in the middle of a key: still YAML, but `registries` is now a string.
    # (A cut that happens to fall on a line boundary can leave a valid, shorter policy; no parser
    # can tell that apart. The kubelet's atomic writer never shows a half-written file.)
    return text[:text.index("registries:") + len("registries:\n  allo")].encode()


POLICY_FAULTS: dict[str, tuple[Callable[[pathlib.Path, str], None], str]] = {
    "deleted": (lambda path, _: path.unlink(), "cannot read"),
    "truncated": (lambda path, text: truncate(path, _cut_mid_key(text)),
                  "registries: must be a mapping with the keys allowed"),
    "empty": (lambda path, _: truncate(path, b""), "the policy is empty"),
    "binary-garbage": (lambda path, _: replace_atomically(path, os.urandom(4096)),
                       "not valid YAML"),
    "invalid-yaml": (lambda path, _: replace_atomically(path, b"registries: [allowed: {\n"),
                     "not valid YAML"),
    # Beyond Python's recursion limit: refused by the parser ("nested too deeply") or, failing
    # that, by the policy source ("RecursionError"); never raised out of the poll.
    "deeply-nested": (lambda path, _: replace_atomically(path, b"[" * 5000),
                      "nested too deeply|RecursionError"),
    "fails-the-schema": (lambda path, _: replace_atomically(
        path, b"builds: {maxActiveRuns: 0}\nregistries: {allowed: [docker.io]}\n"),
        "builds.maxActiveRuns: must be an integer >= 1"),
    "not-a-mapping": (lambda path, _: replace_atomically(path, b"- docker.io\n"),
                      "the policy must be a YAML mapping"),
}


def readyz_everywhere(suite: Suite, expected: str, timeout: float = 30) -> None:
    """Fresh connections in a row (each lands on whichever worker accepts it) all answer 200
    with exactly this /readyz body."""
    needed, streak = 6 * suite.workers, 0
    last: tuple[int, str] = (0, "")

    def agreed() -> bool:
        nonlocal streak, last
        last = suite.get("/readyz")
        streak = streak + 1 if last == (200, expected) else 0
        return streak >= needed

    try:
        wait_for(f"/readyz {expected!r} from every worker", agreed, timeout, interval=0.05)
    except TimeoutError as error:
        raise AssertionError(f"{error}; last answer {last}") from None


def assert_last_good_decides(cp: ControlPlane, suite: Suite, tool: pathlib.Path) -> None:
    """Through the API server: what only the last good policy allows is allowed, the rest is
    refused for its registry (not for lack of a policy)."""
    for _ in range(2 * suite.workers):  # the API server spreads reviews over connections
        name = unique("lastgood")
        result = cp.kubectl("create", "--dry-run=server", "-f", "-",
                            input=pod_manifest(name, "tool-mytool", LAST_GOOD_IMAGE), user=tool,
                            check=False)
        assert result.returncode == 0, result.stderr
        assert suite.wait_review(endpoint="validate-pods", name=name)["decision"] == "allowed"
    name = unique("denied")
    result = cp.kubectl("create", "--dry-run=server", "-f", "-",
                        input=pod_manifest(name, "tool-mytool", DENIED_IMAGE), user=tool,
                        check=False)
    assert 'admission webhook "pods.toolforge-admission.toolforge.org" denied the request' \
        in result.stderr, result.stderr
    entry = suite.wait_review(endpoint="validate-pods", name=name)
    assert entry["decision"] == "denied"
    assert entry["reason"] != "NoPolicy", entry


def put_in_force(suite: Suite, text: str) -> str:
    """The policy `text` in force on every worker, the file on disk accepted."""
    digest = suite.set_policy(text)
    readyz_everywhere(suite, f"ok: policy {digest[:12]}\n")
    return digest


def assert_refused_and_last_good_serves(cp: ControlPlane, suite: Suite, tool: pathlib.Path,
                                        digest: str, problem: str, log_count: int,
                                        errors_before: float, generation: float) -> None:
    # /readyz: still ready on every worker, with the last good digest and the reason.
    prefix = f"ok: policy {digest[:12]} (policy file refused: "

    def noted() -> bool:
        for _ in range(6 * suite.workers):
            status, text = suite.get("/readyz")
            assert status == 200, text
            assert text.startswith(f"ok: policy {digest[:12]}"), text
            if not (text.startswith(prefix) and mentions(text, problem)):
                return False
        return True

    wait_for(f"every worker to note {problem!r} in /readyz", noted, 30, interval=0.2)
    assert suite.metric(VALID) == 0
    assert suite.metric(POLICY_ERRORS) >= errors_before + 1
    assert suite.metric(GENERATION) == generation
    refusals = entries_since(suite.log_entries(), log_count, REFUSED)
    assert any(mentions(entry["error"], problem) for entry in refusals), \
        f"no {REFUSED!r} line for {problem!r} in {suite.log_path}: {refusals}"
    for entry in refusals:
        assert entry["level"] == "error"
        assert entry["path"] == str(suite.policy_path)
        assert entry["in_force"] == digest[:12]
    assert_last_good_decides(cp, suite, tool)


def assert_picked_up_again(suite: Suite, text: str, log_count: int, generation: float) -> None:
    digest = put_in_force(suite, text)
    assert suite.metric(VALID) == 1
    assert suite.metric(GENERATION) > generation
    loaded = entries_since(suite.log_entries(), log_count, "policy loaded")
    assert any(entry["digest"] == digest[:12] for entry in loaded), loaded


@pytest.mark.parametrize("fault", list(POLICY_FAULTS))
def test_a_damaged_policy_file_leaves_the_last_good_policy_serving(
        control_plane: ControlPlane, default_policy: Suite, mytool: pathlib.Path,
        fault: str) -> None:
    suite = default_policy
    good = last_good_policy()
    digest = put_in_force(suite, good)
    log_count = len(suite.log_entries())
    errors_before, generation = suite.metric(POLICY_ERRORS), suite.metric(GENERATION)
    damage, problem = POLICY_FAULTS[fault]

    try:
        damage(suite.policy_path, good)
        assert_refused_and_last_good_serves(control_plane, suite, mytool, digest, problem,
                                            log_count, errors_before, generation)
    finally:
        # The same good text again (also so that default_policy finds a file to restore).
        replace_atomically(suite.policy_path, good.encode())
    # Accepted without a reload, and said so.
    readyz_everywhere(suite, f"ok: policy {digest[:12]}\n")
    assert suite.metric(VALID) == 1
    assert entries_since(suite.log_entries(), log_count,
                         "policy file valid again; the policy in force is unchanged")
    # A new good policy is put in force.
    assert_picked_up_again(suite, last_good_policy("registry.next.example"), log_count,
                           generation)


class ConfigMapVolume:
    """The suite's policy dir turned into what the kubelet makes of a ConfigMap volume:
    policy.yaml -> ..data/policy.yaml, ..data -> ..<version>/, swapped by one rename."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.root = path.parent

    def update(self, files: dict[str, bytes]) -> None:
        swap_data(self.root, files)
        link_keys(self.root, [self.path.name])

    def remove(self, fallback: str) -> None:
        """Back to a plain file (the suite's own layout), with what the volume held."""
        data = self.path.read_bytes() if self.path.exists() else fallback.encode()
        self.path.unlink(missing_ok=True)
        self.path.write_bytes(data)
        current = self.root / "..data"
        if current.is_symlink():
            shutil.rmtree(current.resolve(), ignore_errors=True)
            current.unlink()


@pytest.mark.parametrize("bad", ["garbage", "key-missing"])
def test_a_configmap_volume_update_to_a_bad_policy_is_refused_then_a_good_one_is_taken(
        control_plane: ControlPlane, default_policy: Suite, mytool: pathlib.Path,
        bad: str) -> None:
    suite = default_policy
    volume = ConfigMapVolume(suite.policy_path)
    try:
        # The first update brings the same policy: in force throughout, nothing to reload.
        good = last_good_policy()
        digest = put_in_force(suite, good)
        volume.update({"policy.yaml": good.encode()})
        readyz_everywhere(suite, f"ok: policy {digest[:12]}\n")
        log_count = len(suite.log_entries())
        errors_before, generation = suite.metric(POLICY_ERRORS), suite.metric(GENERATION)

        if bad == "garbage":
            volume.update({"policy.yaml": b"registries:\n  allowed: [docker.io\n"})
            problem = "not valid YAML"
        else:  # the ConfigMap lost its key: the symlink dangles
            volume.update({"other.yaml": b"{}\n"})
            problem = "cannot read"
        assert_refused_and_last_good_serves(control_plane, suite, mytool, digest, problem,
                                            log_count, errors_before, generation)

        following = last_good_policy("registry.next.example")
        volume.update({"policy.yaml": following.encode()})
        following_digest = policy_digest(following)
        readyz_everywhere(suite, f"ok: policy {following_digest[:12]}\n")
        assert suite.metric(VALID) == 1
        assert suite.metric(GENERATION) > generation
        assert any(entry["digest"] == following_digest[:12] for entry in
                   entries_since(suite.log_entries(), log_count, "policy loaded"))
    finally:
        volume.remove(fallback=suite.default_policy)


# --- a server of the test's own: the serving certificate, and a start without a policy -------


class LoneServer:
    """`toolforge-admission serve` with no API server behind it: a cert dir laid out as a Secret
    volume, a policy file, a kubeconfig that points nowhere (only PipelineRuns would use it)."""

    def __init__(self, workdir: pathlib.Path, workers: int = 2) -> None:
        self.workdir = workdir
        self.workers = workers
        self.port = free_port()
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        self.ca = new_ca("file-faults CA", now, datetime.timedelta(days=2))
        self.ca_file = workdir / "ca.crt"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.cert_dir = workdir / "certs"
        self.cert_dir.mkdir()
        link_keys(self.cert_dir, ["tls.crt", "tls.key"])
        self.policy_path = workdir / "policy.yaml"
        self.kubeconfig = workdir / "nowhere.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
            "users": [{"name": "none", "user": {"token": "none"}}],
            "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
            "current-context": "none"}))
        self.process: Process | None = None
        self.start_timeout = 60.0
        self.name = f"lone-server-{self.port}"
        self.log_path = workdir / f"{self.name}.log"

    def issue(self, days: int = 2) -> Any:
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        return new_serving_cert(self.ca, ["localhost"], now, datetime.timedelta(days=days),
                                ip_addresses=("127.0.0.1",))

    def mount(self, files: dict[str, bytes]) -> None:
        """Swap the Secret volume's files at once, as the kubelet's atomic writer does."""
        swap_data(self.cert_dir, files)

    def start(self) -> None:
        script = pathlib.Path(sys.executable).parent / "toolforge-admission"
        prefix = [str(script)] if script.exists() else [sys.executable, "-m", "webhooks.cli"]
        self.process = Process(self.name, [
            *prefix, "serve", f"--bind=127.0.0.1:{self.port}", f"--cert-dir={self.cert_dir}",
            f"--policy={self.policy_path}", f"--workers={self.workers}", "--threads=2",
        ], self.workdir, env={"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1",
                              "PYTHONPATH": str(REPO), "POD_NAMESPACE": "toolforge-admission"})
        wait_http(f"https://127.0.0.1:{self.port}/healthz", self.context(), self.start_timeout,
                  self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10, sig=signal.SIGINT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             ) -> tuple[str, int, str]:
        """On a new connection: the served certificate's SHA-256, the status and the body."""
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(),
                                                 timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=json.dumps(body) if body else None,
                               headers=headers)
            assert connection.sock is not None
            der = connection.sock.getpeercert(binary_form=True)
            assert der is not None
            response = connection.getresponse()
            return hashlib.sha256(der).hexdigest(), response.status, response.read().decode()
        finally:
            connection.close()

    def metric(self, name: str) -> float:
        _, status, text = self.call("GET", "/metrics")
        assert status == 200
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split("{")[0].split(" ")[0] == name)

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if line.startswith("{"):
                    entries.append(json.loads(line))
        return entries


def fingerprint(cert_pem: bytes) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode())).hexdigest()


def pod_review(image: str) -> dict[str, Any]:
    from tests.builders import make_review

    return make_review({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": unique("app"), "namespace": "tool-mytool"},
                        "spec": {"containers": [{"name": "app", "image": image}]}})


def assert_reviews_answered(server: LoneServer, served: str) -> None:
    """One new connection each: the expected certificate, and the policy deciding."""
    for image, allowed in ((TOOL_IMAGE, True), (DENIED_IMAGE, False)):
        review = pod_review(image)
        seen, status, text = server.call("POST", "/validate/pods", review)
        assert seen == served, "a new connection got another certificate than the last good one"
        assert status == 200, text
        response = json.loads(text)["response"]
        assert response["uid"] == review["request"]["uid"]
        assert response["allowed"] is allowed, response


def loaded_everywhere(server: LoneServer, cert_pem: bytes, log_count: int,
                      timeout: float = 30) -> None:
    """Every worker has put this certificate in force (each logs it once). A worker checks the
    files only on a new connection it accepts, so keep connecting until then."""
    served = fingerprint(cert_pem)

    def loaded() -> bool:
        server.call("GET", "/readyz")
        return len([entry for entry in entries_since(server.log_entries(), log_count,
                                                     "serving certificate loaded")
                    if entry["sha256"] == served]) >= server.workers

    wait_for("every worker to load the certificate", loaded, timeout, interval=0.1)


@pytest.fixture(scope="module")
def lone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneServer]:
    server = LoneServer(tmp_path_factory.mktemp("file-faults"))
    first = server.issue()
    server.mount({"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    server.policy_path.write_text(TEST_POLICY.read_text())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _mismatched(server: LoneServer) -> tuple[dict[str, bytes], str]:
    one, other = server.issue(), server.issue()
    return {"tls.crt": one.cert_pem, "tls.key": other.key_pem}, "is not the key of"


def _truncated_key(server: LoneServer) -> tuple[dict[str, bytes], str]:
    pair = server.issue()
    return ({"tls.crt": pair.cert_pem, "tls.key": pair.key_pem[:len(pair.key_pem) // 2]},
            "tls.key is not an unencrypted PEM private key")


def _missing_key(server: LoneServer) -> tuple[dict[str, bytes], str]:
    return {"tls.crt": server.issue().cert_pem}, "No such file or directory"


def _missing_cert(server: LoneServer) -> tuple[dict[str, bytes], str]:
    return {"tls.key": server.issue().key_pem}, "No such file or directory"


CERT_FAULTS = {"mismatched-key": _mismatched, "truncated-key": _truncated_key,
               "missing-key": _missing_key, "missing-cert": _missing_cert}


@pytest.mark.parametrize("fault", list(CERT_FAULTS))
def test_a_damaged_certificate_leaves_the_last_good_one_serving(
        lone_server: LoneServer, fault: str) -> None:
    server = lone_server
    good = server.issue(days=2)
    log_count = len(server.log_entries())
    server.mount({"tls.crt": good.cert_pem, "tls.key": good.key_pem})
    loaded_everywhere(server, good.cert_pem, log_count)
    served = fingerprint(good.cert_pem)
    log_count = len(server.log_entries())
    errors_before = server.metric(CERT_ERRORS)
    not_after = server.metric(CERT_NOT_AFTER)

    files, problem = CERT_FAULTS[fault](server)
    server.mount(files)
    # Each worker checks the files on a new connection, at most once a second, and counts a bad
    # pair once: keep connecting until every worker has refused it.
    def refused_everywhere() -> bool:
        assert_reviews_answered(server, served)
        return server.metric(CERT_ERRORS) >= errors_before + server.workers

    wait_for("every worker to refuse the certificate files", refused_everywhere, 30,
             interval=0.3)
    assert server.metric(CERT_VALID) == 0
    assert server.metric(CERT_NOT_AFTER) == not_after
    # Readiness is the policy's: a pod that serves its last good certificate is fine to route to
    # (every replica sees the same Secret; unready ones would be an outage).
    _, status, text = server.call("GET", "/readyz")
    assert status == 200, text
    refusals = entries_since(server.log_entries(), log_count, "keeping the last good certificate")
    assert len(refusals) >= server.workers, refusals
    for entry in refusals:
        assert entry["level"] == "error"
        assert problem in entry["error"], entry
        assert entry["cert_file"] == str(server.cert_dir / "tls.crt")
        assert entry["key_file"] == str(server.cert_dir / "tls.key")
        assert entry["serving_not_after"] == int(not_after)
    for _ in range(4 * server.workers):  # and it stays so
        assert_reviews_answered(server, served)

    # A correct pair is served by every worker again.
    renewed = server.issue(days=1)
    log_count = len(server.log_entries())
    server.mount({"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem})
    loaded_everywhere(server, renewed.cert_pem, log_count)
    assert_reviews_answered(server, fingerprint(renewed.cert_pem))
    assert server.metric(CERT_VALID) == 1
    assert server.metric(CERT_NOT_AFTER) == int(renewed.certificate.not_valid_after_utc.timestamp())


LAST_GOOD_SERVED = "serving the last good certificate of this server while the files are refused"
EXPIRED_REFUSED = "not serving the last good certificate: it has expired"


def test_a_worker_restarted_while_the_certificate_is_bad_serves_the_last_good_one(
        tmp_path: pathlib.Path) -> None:
    server = LoneServer(tmp_path)
    good = server.issue()
    server.mount({"tls.crt": good.cert_pem, "tls.key": good.key_pem})
    server.policy_path.write_text(TEST_POLICY.read_text())
    server.start()
    try:
        loaded_everywhere(server, good.cert_pem, 0)
        served = fingerprint(good.cert_pem)
        not_after = int(good.certificate.not_valid_after_utc.timestamp())
        files, problem = _mismatched(server)
        server.mount(files)
        assert server.process is not None
        master = server.process.pid
        workers = children(master)
        assert len(workers) == server.workers, workers
        log_count = len(server.log_entries())
        os.kill(workers[0], signal.SIGKILL)
        wait_for("gunicorn to replace the killed worker", lambda: (
            len(now := children(master)) == server.workers and workers[0] not in now), 30)

        # Every new connection, whichever worker takes it, presents the last good certificate
        # and is answered; keep going until the new worker has taken some of them.
        connections = 0

        def new_worker_served() -> bool:
            nonlocal connections
            assert_reviews_answered(server, served)
            connections += 2
            # The new worker logs as it starts; it counts in /metrics once it serves.
            return connections >= 40 and bool(
                entries_since(server.log_entries(), log_count, LAST_GOOD_SERVED)) and \
                server.metric("toolforge_admission_threads") == 2 * server.workers

        wait_for("the new worker to serve the last good certificate", new_worker_served, 60,
                 interval=0)
        [entry] = entries_since(server.log_entries(), log_count, LAST_GOOD_SERVED)
        assert entry["level"] == "warning"
        assert entry["cert_file"] == str(server.cert_dir / "tls.crt")
        assert entry["key_file"] == str(server.cert_dir / "tls.key")
        assert problem in entry["error"], entry
        assert entry["serving_not_after"] == not_after
        assert entry["sha256"] == served
        assert server.metric(CERT_VALID) == 0
        assert server.metric(CERT_NOT_AFTER) == not_after

        # The new worker goes on checking the files: a correct pair is served by every worker.
        renewed = server.issue(days=1)
        log_count = len(server.log_entries())
        server.mount({"tls.crt": renewed.cert_pem, "tls.key": renewed.key_pem})
        loaded_everywhere(server, renewed.cert_pem, log_count)
        for _ in range(4 * server.workers):
            assert_reviews_answered(server, fingerprint(renewed.cert_pem))
        assert server.metric(CERT_VALID) == 1
    finally:
        server.stop()


def test_a_restarted_worker_does_not_serve_an_expired_last_good_certificate(
        tmp_path: pathlib.Path) -> None:
    server = LoneServer(tmp_path)
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    brief = new_serving_cert(server.ca, ["localhost"], start,
                             datetime.timedelta(minutes=5, seconds=20),
                             ip_addresses=("127.0.0.1",))
    server.mount({"tls.crt": brief.cert_pem, "tls.key": brief.key_pem})
    server.policy_path.write_text(TEST_POLICY.read_text())
    server.start()  # a worker has served it, so the state dir holds it
    try:
        files, problem = _mismatched(server)
        server.mount(files)
        expiry = brief.certificate.not_valid_after_utc
        wait_for("the last good certificate to expire",
                 lambda: datetime.datetime.now(datetime.UTC) > expiry, 60, interval=0.5)
        assert server.process is not None
        master = server.process.pid
        workers = children(master)
        log_count = len(server.log_entries())
        os.kill(workers[0], signal.SIGKILL)
        wait_for("gunicorn to replace the killed worker", lambda: (
            len(now := children(master)) == server.workers and workers[0] not in now), 30)

        # Not verified: the certificate has expired. A connection that the new worker takes
        # fails its handshake; the old worker still presents what it has.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        seen: set[str] = set()

        def refused_to_serve_it() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                        context.wrap_socket(raw) as connection:
                    der = connection.getpeercert(binary_form=True)
                    assert der is not None
                    seen.add(hashlib.sha256(der).hexdigest())
            except (ssl.SSLError, OSError):
                pass
            return bool(entries_since(server.log_entries(), log_count, EXPIRED_REFUSED))

        wait_for("the new worker to refuse the expired pair", refused_to_serve_it, 60,
                 interval=0)
        assert seen <= {fingerprint(brief.cert_pem)}
        [entry] = entries_since(server.log_entries(), log_count, EXPIRED_REFUSED)
        assert entry["level"] == "error"
        assert problem in entry["error"], entry
        assert entry["last_good_not_after"] == int(expiry.timestamp())
        assert not entries_since(server.log_entries(), log_count, LAST_GOOD_SERVED)
    finally:
        server.stop()


def test_a_new_server_with_a_bad_certificate_serves_nothing(tmp_path: pathlib.Path) -> None:
    """No last good pair yet (the state dir is the server's own): every handshake fails, and
    the log says why; in a pod the startup probe then restarts the container."""
    server = LoneServer(tmp_path)
    files, problem = _mismatched(server)
    server.mount(files)
    server.policy_path.write_text(TEST_POLICY.read_text())
    server.start_timeout = 5.0
    try:
        with pytest.raises(TimeoutError):
            server.start()
        assert server.process is not None
        assert server.process.alive()
        refusals = entries_since(server.log_entries(), 0, "keeping the last good certificate")
        assert refusals
        assert all(problem in entry["error"] and entry["serving_not_after"] is None
                   for entry in refusals), refusals
        assert not entries_since(server.log_entries(), 0, LAST_GOOD_SERVED)
    finally:
        server.stop()


def test_a_server_that_never_had_a_good_policy_is_not_ready_and_refuses_everything(
        tmp_path: pathlib.Path) -> None:
    server = LoneServer(tmp_path)
    pair = server.issue()
    server.mount({"tls.crt": pair.cert_pem, "tls.key": pair.key_pem})
    server.policy_path.write_bytes(b"registries: {allowed: [docker.io\n")
    server.start()
    try:
        served = fingerprint(pair.cert_pem)
        for _ in range(4 * server.workers):
            _, status, text = server.call("GET", "/readyz")
            assert status == 503, text
            assert text.startswith("not ready: no valid policy: not valid YAML"), text
            review = pod_review(TOOL_IMAGE)
            seen, status, text = server.call("POST", "/validate/pods", review)
            assert (seen, status) == (served, 200), text
            response = json.loads(text)["response"]
            assert response["allowed"] is False
            assert "no valid policy loaded" in response["status"]["message"]
        assert server.metric(VALID) == 0
        assert server.metric("toolforge_admission_reviews_total") >= 4 * server.workers
        refusals = [e for e in server.log_entries() if e.get("message") == REFUSED]
        assert refusals
        assert all(e["in_force"] is None and "not valid YAML" in e["error"] for e in refusals)

        # A good file makes it ready, and reviews are decided by it.
        replace_atomically(server.policy_path, TEST_POLICY.read_bytes())
        digest = policy_digest(TEST_POLICY.read_text())

        # Each worker polls the file on its own, and a run of ready answers may all come from
        # one of them: wait until every worker has logged the load.
        def loaded_everywhere() -> bool:
            return len([entry for entry in server.log_entries()
                        if entry.get("message") == "policy loaded"
                        and entry["digest"] == digest[:12]]) >= server.workers

        wait_for("every worker to take the good policy", loaded_everywhere, 30, interval=0.2)
        for _ in range(4 * server.workers):
            assert server.call("GET", "/readyz")[1:] == (200, f"ok: policy {digest[:12]}\n")
        assert_reviews_answered(server, served)
        assert server.metric(VALID) == 1
    finally:
        server.stop()
