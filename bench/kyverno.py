"""Build (once) and cache Kyverno's admission controller for bench/e2e.py's `kyverno` mode.

    .venv/bin/python bench/kyverno.py          # build if needed, print the paths (make bench)

    from kyverno import ensure_kyverno         # from bench/
    paths = ensure_kyverno()                   # dict[str, pathlib.Path]

Kyverno comes from its published Go module, github.com/kyverno/kyverno at VERSION, the way
tests/e2e/build.py makes the e2e binaries: `go mod download` puts the module in the Go module
cache, and `go build ./cmd/kyverno` runs inside a writable copy of the module's own directory, so
that its go.mod (and its `replace` line for k8s.io/pod-security-admission) decides every
dependency. Nothing of Kyverno is committed here, and `make test` never builds it (only `make
bench` and `bench/e2e.py --modes ...kyverno...` do).

The first build takes about 6 minutes on 2 cores (more while other builds run) and makes a
140 MB binary; it goes to a cache directory keyed by the version, the Go version and the build
flags, beside the e2e binaries, with what the benchmark needs from the module besides the
binary:

    kyverno              the admission controller (cmd/kyverno)
    crds/                the module's config/crds (kyverno.io, policies.kyverno.io, reports, ...)
    configmaps.yaml      the ConfigMaps `kyverno` and `kyverno-metrics` of the module's
                         config/install-latest-testing.yaml (resource filters, webhook
                         namespaceSelector: Kyverno as installed)

Environment: TFA_KYVERNO_CACHE (cache root; default ~/.cache/toolforge-admission/kyverno),
TFA_E2E_VERBOSE=1 passes every line of `go build -v` through.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.e2e.build import locked, watch_go_build

MODULE = "github.com/kyverno/kyverno"
VERSION = "v1.19.1"
PACKAGE = "./cmd/kyverno"
# As Kyverno's Makefile builds it (LD_FLAGS, CGO_ENABLED=0), plus -trimpath as build.py does.
BUILD_FLAGS = ["-trimpath"]
LDFLAGS = ["-s", "-w", f"-X={MODULE}/pkg/version.BuildVersion={VERSION}"]
INSTALL_MANIFEST = "config/install-latest-testing.yaml"
CONFIGMAPS = ("kyverno", "kyverno-metrics")


def log(message: str) -> None:
    print(f"[kyverno-build] {message}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    return dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false",
                CGO_ENABLED="0")


def _go(args: list[str], cwd: pathlib.Path) -> str:
    try:
        result = subprocess.run(["go", *args], cwd=cwd, env=_go_env(), capture_output=True,
                                text=True, check=False)
    except FileNotFoundError:
        raise SystemExit("`go` is not on PATH: the kyverno mode needs Go >= 1.26 to build "
                         "Kyverno") from None
    if result.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{result.stderr}")
    return result.stdout


def cache_root() -> pathlib.Path:
    configured = os.environ.get("TFA_KYVERNO_CACHE")
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path.home() / ".cache" / "toolforge-admission" / "kyverno"


def cache_dir() -> pathlib.Path:
    go_version = _go(["env", "GOVERSION"], pathlib.Path.cwd()).strip()
    digest = hashlib.sha256(json.dumps([MODULE, VERSION, go_version, BUILD_FLAGS, LDFLAGS,
                                        INSTALL_MANIFEST, CONFIGMAPS]).encode()).hexdigest()
    return cache_root() / f"{VERSION}-{digest[:12]}"


def _paths(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    return {"kyverno": directory / "kyverno", "crds": directory / "crds",
            "configmaps": directory / "configmaps.yaml"}




def _module_dir(scratch: pathlib.Path) -> pathlib.Path:
    """The module, downloaded into the Go module cache (read-only there)."""
    info = json.loads(_go(["mod", "download", "-json", f"{MODULE}@{VERSION}"], scratch))
    if info.get("Error"):
        raise RuntimeError(f"go mod download {MODULE}@{VERSION}: {info['Error']}")
    return pathlib.Path(info["Dir"])


def _writable_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    """Plain file copies (module-cache files are read-only): `go build -mod=mod` may add a
    missing go.sum line, and the copy must be deletable afterwards."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


def _build(source: pathlib.Path, output: pathlib.Path) -> None:
    command = ["go", "build", "-v", *BUILD_FLAGS, f"-ldflags={' '.join(LDFLAGS)}",
               "-o", str(output), PACKAGE]
    code, output_text = watch_go_build("kyverno", command, source, _go_env(), log)
    if code != 0:
        tail = "\n".join(output_text.splitlines()[-60:])
        raise RuntimeError(f"building Kyverno failed (exit {code}):\n{tail}")


def _configmaps(manifest: pathlib.Path) -> str:
    wanted = []
    for document in yaml.safe_load_all(manifest.read_text()):
        if (document and document.get("kind") == "ConfigMap"
                and document["metadata"].get("name") in CONFIGMAPS):
            wanted.append(document)
    found = sorted(d["metadata"]["name"] for d in wanted)
    if found != sorted(CONFIGMAPS):
        raise RuntimeError(f"{manifest}: ConfigMaps {CONFIGMAPS} expected, found {found}")
    return yaml.safe_dump_all(wanted, sort_keys=False)


def ensure_kyverno() -> dict[str, pathlib.Path]:
    """The paths of the Kyverno binary, its CRDs and its ConfigMaps, building on first use."""
    directory = cache_dir()
    paths = _paths(directory)
    if all(path.exists() for path in paths.values()):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory):
        if all(path.exists() for path in paths.values()):
            return paths
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kyverno-build-") as scratch_name:
            scratch = pathlib.Path(scratch_name)
            module = _module_dir(scratch)
            source = scratch / "kyverno"
            _writable_copy(module, source)
            if not paths["kyverno"].exists():
                log(f"building Kyverno {VERSION} ({MODULE}/cmd/kyverno) into {directory}; "
                    "the first build takes about 6 minutes on 2 cores")
                temporary = directory / f".kyverno.tmp-{os.getpid()}"
                try:
                    _build(source, temporary)
                    os.replace(temporary, paths["kyverno"])
                finally:
                    temporary.unlink(missing_ok=True)
                size = paths["kyverno"].stat().st_size / 1e6
                log(f"built Kyverno in {time.monotonic() - started:.0f}s ({size:.0f} MB)")
            if not paths["crds"].exists():
                temporary = directory / f".crds.tmp-{os.getpid()}"
                shutil.rmtree(temporary, ignore_errors=True)
                shutil.copytree(source / "config" / "crds", temporary)
                os.replace(temporary, paths["crds"])
            if not paths["configmaps"].exists():
                text = _configmaps(source / INSTALL_MANIFEST)
                temporary = directory / f".configmaps.tmp-{os.getpid()}"
                temporary.write_text(text)
                os.replace(temporary, paths["configmaps"])
    return paths


def main() -> None:
    for name, path in ensure_kyverno().items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
