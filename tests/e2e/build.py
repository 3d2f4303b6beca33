"""Build (once) and cache the real control-plane binaries the e2e tests run.

The binaries come from published Go modules, pinned by the small Go modules
beside this file (each with a committed go.sum, so builds are reproducible):

    kube/    k8s.io/kubernetes -> kube-apiserver, kube-controller-manager, kubectl
    tekton/  github.com/tektoncd/pipeline -> the Tekton Pipelines controller
    etcd/    go.etcd.io/etcd/server/v3 -> etcd

They are separate modules because each project pins its own k8s.io/* (and
grpc, otel, ...) versions, and one Go module can select only one version of
each dependency.

Why etcd is built from Go and not installed with apt: Debian's etcd-server
package is etcd 3.4 on bookworm, older than the 3.5.24 minimum that kubeadm of
kubernetes 1.37 accepts (it defaults to etcd 3.7.0). Building it also keeps the
harness free of apt/root: it needs only `go` and the Go module proxy.

Only the first run pays for the build (19 minutes on 2 cores, measured with
empty Go caches); the binaries go to a cache directory keyed by the go.mod and
go.sum contents, the Go version and the build flags, so later runs return at
once (0.2 s), and changing a pinned version builds into a new directory.

    python tests/e2e/build.py          # build if needed, print the paths

    from tests.e2e.build import ensure_binaries   # or import build
    paths = ensure_binaries()                       # dict[str, pathlib.Path]

Environment:
    TFA_E2E_CACHE    cache root (default ~/.cache/toolforge-admission/e2e-bin)
    TFA_E2E_VERBOSE  if set to 1, pass every line of `go build -v` through
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HERE = pathlib.Path(__file__).resolve().parent

# name of the binary -> (Go module directory beside this file, main package).
BINARIES: dict[str, tuple[str, str]] = {
    "etcd": ("etcd", "go.etcd.io/etcd/server/v3"),
    "kube-apiserver": ("kube", "k8s.io/kubernetes/cmd/kube-apiserver"),
    "kube-controller-manager": ("kube", "k8s.io/kubernetes/cmd/kube-controller-manager"),
    "kubectl": ("kube", "k8s.io/kubernetes/cmd/kubectl"),
    "tekton-controller": ("tekton", "github.com/tektoncd/pipeline/cmd/controller"),
}

TEKTON_MODULE = "github.com/tektoncd/pipeline"

# -trimpath and -s -w keep the binaries small and independent of local paths;
# CGO_ENABLED=0 (set in _go_env) makes them static and needs no C compiler.
BUILD_FLAGS = ["-trimpath"]
LDFLAGS = ["-s", "-w"]

# How often to say "still building" when go prints nothing new.
PROGRESS_EVERY_S = 30.0

# If the checksum database cannot be reached, builds fail with messages like
# these. go.sum is committed and complete, so Go normally never asks the
# checksum database; it would only if go.sum missed a line. Then we retry once
# with GOSUMDB=off: the hashes in go.sum still protect every module it lists.
# (When go.mod/go.sum were made, the default GOSUMDB was reachable and worked.)
SUMDB_ERRORS = ("sum.golang.org", "checksum database", "verifying module", "SECURITY ERROR")


def log(message: str) -> None:
    # stderr and flush: progress must show up at once, even when piped to a log.
    print(f"[e2e-build] {message}", file=sys.stderr, flush=True)


def _go_env(**extra: str) -> dict[str, str]:
    """Environment for every `go` command: unattended and reproducible."""
    env = dict(os.environ)
    env.update(
        {
            # Never download another Go toolchain (only the module proxy is
            # reachable); use the installed go or fail clearly.
            "GOTOOLCHAIN": "local",
            # Add a missing go.sum line instead of stopping to ask for
            # `go mod tidy`; with the committed go.sum nothing changes.
            "GOFLAGS": "-mod=mod -buildvcs=false",
            "CGO_ENABLED": "0",
        }
    )
    env.update(extra)
    return env


def _go(args: list[str], cwd: pathlib.Path, **extra_env: str) -> str:
    """Run a quick go command and return its stdout."""
    try:
        result = subprocess.run(
            ["go", *args],
            cwd=cwd,
            env=_go_env(**extra_env),
            capture_output=True,
            text=True,
            check=False,  # the error is reported below, with go's stderr
        )
    except FileNotFoundError:
        raise RuntimeError("`go` is not on PATH; the e2e tests need Go >= 1.26 to build") from None
    if result.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{result.stderr}")
    return result.stdout


def go_version() -> str:
    return _go(["env", "GOVERSION"], HERE).strip()


def module_version(module_dir: str, module: str) -> str:
    return _go(["list", "-m", "-f", "{{.Version}}", module], HERE / module_dir).strip()


def ldflags_for(module_dir: str) -> list[str]:
    """Linker flags for one module's binaries.

    Kubernetes binaries get their version stamped the way kubernetes' own
    hack/lib/version.sh does it. Without it they report v0.0.0-master, and
    clients that check the server version (Tekton's controller refuses a
    Kubernetes older than its minimum) would fail.
    """
    flags = list(LDFLAGS)
    if module_dir == "kube":
        version = module_version("kube", "k8s.io/kubernetes")  # e.g. v1.37.2
        major, minor = version.removeprefix("v").split(".")[:2]
        values = {
            "gitVersion": version,
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
            # A fixed date keeps the build reproducible.
            "buildDate": "1970-01-01T00:00:00Z",
        }
        for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
            flags += [f"-X={package}.{key}={value}" for key, value in values.items()]
    return flags


def cache_key() -> str:
    """Hash of everything that decides what the build produces."""
    digest = hashlib.sha256()
    digest.update(go_version().encode())
    digest.update(json.dumps([BUILD_FLAGS, LDFLAGS, BINARIES]).encode())
    for module_dir in sorted({module_dir for module_dir, _ in BINARIES.values()}):
        for name in ("go.mod", "go.sum"):
            digest.update(f"{module_dir}/{name}\n".encode())
            digest.update((HERE / module_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> pathlib.Path:
    configured = os.environ.get("TFA_E2E_CACHE")
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path.home() / ".cache" / "toolforge-admission" / "e2e-bin"


@contextmanager
def locked(directory: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock so parallel test processes build only once."""
    with open(directory / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run_go_build(
    name: str, module_dir: str, package: str, output: pathlib.Path, **extra_env: str
) -> tuple[int, str]:
    """Run `go build -v`, reporting progress; return (exit code, go's output)."""
    command = [
        "go", "build", "-v", *BUILD_FLAGS,
        f"-ldflags={' '.join(ldflags_for(module_dir))}",
        "-o", str(output), package,
    ]  # fmt: skip
    return watch_go_build(name, command, HERE / module_dir, _go_env(**extra_env), log)


def watch_go_build(
    name: str,
    command: list[str],
    cwd: pathlib.Path,
    env: dict[str, str],
    say: Callable[[str], None],
) -> tuple[int, str]:
    """Run a `go build -v` command, saying how far it is; return (exit code, go's output).

    Also builds what the benchmark compares with (bench/kyverno.py)."""
    verbose = os.environ.get("TFA_E2E_VERBOSE") == "1"
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []

    # go -v prints one line per package it compiles; read them on a thread so
    # the main thread can print a heartbeat even while go is silent (linking).
    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if verbose:
                say(f"  {name}: {line.rstrip()}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started = time.monotonic()
    while True:
        try:
            process.wait(timeout=PROGRESS_EVERY_S)
            break
        except subprocess.TimeoutExpired:
            last = lines[-1] if lines else "(resolving modules)"
            say(
                f"  still building {name}: {time.monotonic() - started:.0f}s, "
                f"{len(lines)} packages so far, last: {last}"
            )
    thread.join()
    return process.returncode, "\n".join(lines)


def _build_one(name: str, directory: pathlib.Path) -> None:
    module_dir, package = BINARIES[name]
    final = directory / name
    # Build to a temporary name and rename: a build that is interrupted or
    # fails never leaves a file under the final name, which is what marks a
    # binary as cached.
    temporary = directory / f".{name}.tmp-{os.getpid()}"
    log(f"building {name} from {package} (module {module_dir}/) ...")
    started = time.monotonic()
    try:
        code, output = _run_go_build(name, module_dir, package, temporary)
        if code != 0 and any(marker in output for marker in SUMDB_ERRORS):
            log(f"  checksum database unreachable? retrying {name} with GOSUMDB=off")
            code, output = _run_go_build(name, module_dir, package, temporary, GOSUMDB="off")
        if code != 0:
            tail = "\n".join(output.splitlines()[-60:])
            raise RuntimeError(f"building {name} failed (exit {code}):\n{tail}")
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    size_mb = final.stat().st_size / 1e6
    log(f"built {name} in {time.monotonic() - started:.0f}s ({size_mb:.0f} MB)")


def _copy_tekton_config(directory: pathlib.Path) -> None:
    """Copy Tekton's config/ (CRDs, RBAC, ConfigMaps) next to the binaries.

    A copy, not a path into the Go module cache, so `go clean -modcache` cannot
    break a warm cache. Plain file copies (no permission bits): module-cache
    files are read-only, which would make the copy awkward to delete.
    """
    info = json.loads(_go(["mod", "download", "-json", TEKTON_MODULE], HERE / "tekton"))
    source = pathlib.Path(info["Dir"]) / "config"
    final = directory / "tekton-config"
    temporary = directory / f".tekton-config.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    for path in sorted(source.rglob("*")):
        target = temporary / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    os.replace(temporary, final)
    log(f"copied Tekton {info['Version']} config/ to {final}")


def _paths(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {name: directory / name for name in BINARIES}
    paths["tekton-config"] = directory / "tekton-config"
    paths["tekton-crds"] = directory / "tekton-config" / "300-crds"
    return paths


def ensure_binaries() -> dict[str, pathlib.Path]:
    """Return the paths of the e2e binaries and Tekton's config, building on first use.

    Keys: etcd, kube-apiserver, kube-controller-manager, kubectl,
    tekton-controller, tekton-config (Tekton's config/ directory) and
    tekton-crds (its config/300-crds).
    """
    directory = cache_root() / cache_key()
    paths = _paths(directory)
    if all(path.exists() for path in paths.values()):
        return paths  # the fast path: everything is cached

    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory):
        # Another process may have finished the build while we waited.
        missing = [name for name in BINARIES if not paths[name].exists()]
        started = time.monotonic()
        if missing:
            log(f"{go_version()}: building {', '.join(missing)} into {directory}")
            log("the first build takes about 20 minutes on 2 cores; later runs reuse it")
        for name in missing:
            _build_one(name, directory)
        if not paths["tekton-config"].exists():
            _copy_tekton_config(directory)
        if missing:
            log(f"all binaries ready after {time.monotonic() - started:.0f}s")
    return paths


def main() -> None:
    paths = ensure_binaries()
    for name, path in paths.items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
