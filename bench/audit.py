"""How long `audit` takes on a few thousand objects, on the e2e harness's real API server.

    .venv/bin/python bench/audit.py                          # 200 tools: about 3600 objects
    .venv/bin/python bench/audit.py --tools 50 --runs 1     # a smoke run

Starts the control plane of tests/e2e (etcd, kube-apiserver, kube-controller-manager) and
installs Tekton's CRDs (its controller is stopped: nothing runs the builds). For each of N tools
it creates, as the admin and with no webhook registered (the audit judges what is stored, however
it got there): a namespace tool-<tool> with 10 pods, 2 Deployments of 0 replicas (the
controller-manager adds a ReplicaSet to each), 1 CronJob; and 2 PipelineRuns in the build
namespace, pending. Then it times `toolforge-admission audit --policy
policies/example-policy.yaml -o json` as a subprocess (what an admin runs: process start, the
kubernetes client, every list page, judging, the report), R times, and prints the objects judged
and the wall time of each run. The result is in docs/operations.md ("Audit").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

PODS, DEPLOYMENTS, RUNS = 10, 2, 2
IMAGE = "tools-harbor.wmcloud.org/tool-{tool}/app:1"
CHUNK = 500


def objects_of(tool: str) -> list[dict[str, Any]]:
    namespace = f"tool-{tool}"
    image = IMAGE.format(tool=tool)
    containers = [{"name": "app", "image": image, "command": ["app"],
                   "env": [{"name": "PORT", "value": "8000"}]}]
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": namespace},
         "spec": {"containers": containers}} for i in range(PODS)]
    documents += [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": f"d{i}", "namespace": namespace},
         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": f"d{i}"}},
                  "template": {"metadata": {"labels": {"app": f"d{i}"}},
                               "spec": {"containers": containers}}}} for i in range(DEPLOYMENTS)]
    documents.append({"apiVersion": "batch/v1", "kind": "CronJob",
                      "metadata": {"name": "nightly", "namespace": namespace},
                      "spec": {"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": {
                          "spec": {"restartPolicy": "Never", "containers": containers}}}}}})
    from tests.e2e.objects import pipelinerun

    for i in range(RUNS):
        run = pipelinerun(f"{tool}-build-{i}", tool)
        run["spec"]["status"] = "PipelineRunPending"
        documents.append(run)
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="audit runs to time")
    args = parser.parse_args()

    from tests.e2e.build import ensure_binaries
    from tests.e2e.cluster import BUILD_NAMESPACE, ControlPlane, ensure_namespaces, log, wait_for

    workdir = Path(tempfile.mkdtemp(prefix="tfa-bench-audit-"))
    cp = ControlPlane(workdir, ensure_binaries())
    try:
        cp.start()
        tools = [f"t{i:04d}" for i in range(args.tools)]
        ensure_namespaces(cp, [BUILD_NAMESPACE, *(f"tool-{t}" for t in tools)])
        cp.install_tekton()
        cp.tekton.stop()
        started = time.monotonic()
        documents = [d for tool in tools for d in objects_of(tool)]
        for i in range(0, len(documents), CHUNK):
            cp.apply(documents[i:i + CHUNK], "--server-side")
        wait_for("a ReplicaSet for every Deployment", lambda: len(
            cp.get_json("replicasets", "--all-namespaces")["items"]) >= DEPLOYMENTS * len(tools),
            600, 2.0)
        log(f"{len(documents)} objects created in {time.monotonic() - started:.0f}s")
        command = [str(Path(sys.executable).parent / "toolforge-admission"), "audit",
                   "--policy", str(ROOT / "policies" / "example-policy.yaml"), "-o", "json"]
        timings = []
        for _ in range(args.runs):
            t0 = time.monotonic()
            result = subprocess.run(command, capture_output=True, text=True, check=False,
                                    env={"KUBECONFIG": str(cp.kubeconfig), "PATH": "/usr/bin"})
            timings.append(time.monotonic() - t0)
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            log(f"audit: {report['judged']} objects, {report['workloads']} workloads, "
                f"{report['namespaces']} namespaces; {timings[-1]:.2f}s wall "
                f"({report['seconds']:.2f}s listing and judging)")
        print(json.dumps({"objects": report["judged"], "namespaces": report["namespaces"],
                          "wall_seconds": [round(t, 2) for t in timings],
                          "median_seconds": round(statistics.median(timings), 2)}))
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
