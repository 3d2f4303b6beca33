"""CRDs the harness installs besides Tekton's, taken from a pinned, published Go module.

The Policy Working Group's PolicyReport CRD (wgpolicyk8s.io/v1alpha2), which `audit --publish`
writes, is the one Kyverno ships (Kyverno serves and fills PolicyReports); its module is fetched
with `go mod download` through the Go module proxy, verified against the checksum database, and
the CRD file is cached.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

KYVERNO = "github.com/kyverno/kyverno"
KYVERNO_VERSION = "v1.19.1"
POLICY_REPORT_CRD = "config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml"


def cache_dir() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "toolforge-admission" / "crds" / KYVERNO_VERSION


def policy_report_crd() -> pathlib.Path:
    """The PolicyReport CRD file (downloaded once)."""
    target = cache_dir() / pathlib.Path(POLICY_REPORT_CRD).name
    if target.exists():
        return target
    result = subprocess.run(["go", "mod", "download", "-json", f"{KYVERNO}@{KYVERNO_VERSION}"],
                            capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"go mod download {KYVERNO}@{KYVERNO_VERSION} failed: "
                           f"{result.stderr or result.stdout}")
    source = pathlib.Path(json.loads(result.stdout)["Dir"]) / POLICY_REPORT_CRD
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_suffix(".tmp")
    shutil.copyfile(source, staged)
    staged.replace(target)
    return target
