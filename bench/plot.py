"""Plot latency against concurrency, ours vs the Go reference, from a run.py result file; or,
from a bench/e2e.py result file, pod create latency in every mode (no policy, the suite, the Go
reference, ValidatingAdmissionPolicy, Kyverno) and both regimes.

Runs in bench/.venv (matplotlib is not a dependency of the project).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(result_file: str, png: str) -> None:
    data = json.loads(Path(result_file).read_text())
    if "pods" in data:
        plot_e2e(data, png)
        return
    summary = data["summary"]
    payloads = list(dict.fromkeys(e["payload"] for e in summary))
    fig, axes = plt.subplots(1, len(payloads), figsize=(4.2 * len(payloads), 4), squeeze=False)
    for ax, payload in zip(axes[0], payloads, strict=True):
        cells = sorted((e for e in summary if e["payload"] == payload), key=lambda e: e["conns"])
        conns = [e["conns"] for e in cells]
        for server, color in (("ours", "tab:blue"), ("go", "tab:orange")):
            if not all(server in e for e in cells):
                continue
            label = "toolforge-admission" if server == "ours" else "Go reference"
            ax.plot(conns, [e[server]["p50_ms"] for e in cells], "o-", color=color,
                    label=f"{label} p50")
            ax.plot(conns, [e[server]["p99_ms"] for e in cells], "s--", color=color,
                    label=f"{label} p99")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(conns, [str(c) for c in conns])
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("latency (ms)")
        ratios = ", ".join(f"c{e['conns']}: {e['rps_ratio']:.2f}"
                           for e in cells if "rps_ratio" in e)
        ax.set_title(f"{payload}\nrps ours/Go {ratios}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{data['meta']['machine']} — {data['meta']['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


E2E_MODES = (("none", "no policy", "tab:gray"),
             ("suite", "suite", "tab:blue"),
             ("goref", "Go reference", "tab:orange"),
             ("vap", "ValidatingAdmissionPolicy", "tab:green"),
             ("kyverno", "Kyverno", "tab:purple"))


def plot_e2e(data: dict, png: str) -> None:
    """Pod create latency percentiles per mode, one panel per regime (closed loop, open loop);
    PipelineRun review times."""
    regimes, runs = data["pods"], data.get("pipelineruns")
    if "modes" in regimes:  # a result file from before the regimes: one closed loop
        regimes = {"closed": {**regimes, "regime": "closed"}}
    panels = len(regimes) + (1 if runs else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), squeeze=False)
    quantiles = ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms"]
    for ax, pods in zip(axes[0], regimes.values(), strict=False):
        modes = [m for m in E2E_MODES if m[0] in pods["modes"]]
        width = 0.8 / len(modes)
        for offset, (mode, label, color) in enumerate(modes):
            values = [pods["modes"][mode][q] for q in quantiles]
            shift = (offset - (len(modes) - 1) / 2) * width
            ax.bar([i + shift for i in range(len(quantiles))], values, width,
                   label=f"{label} ({pods['modes'][mode]['creates_per_s']:.0f}/s)", color=color)
        ax.set_xticks(range(len(quantiles)), [q.removesuffix("_ms") for q in quantiles])
        ax.set_ylabel("pod create latency (ms)")
        ratios = ", ".join(f"{pair.split('/')[0]} ×{r['p99']:.2f}"
                           for pair, r in pods["ratios"].items() if pair.endswith("/none"))
        how = (f"paced at {pods['rate']:g}/s" if pods.get("rate")
               else f"{pods['clients']} clients, closed loop")
        ax.set_title(f"pod creates through kube-apiserver, {how}\np99 / none: {ratios}",
                     fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    if runs:
        ax = axes[0][-1]
        rows = [("admitted", "client"), ("admitted", "suite"), ("denied", "client"),
                ("denied", "suite")]
        for i, (kind, where) in enumerate(rows):
            entry = runs[kind] if where == "client" else runs[kind]["suite"]
            ax.bar([i - 0.2], [entry["p50_ms"]], 0.4, color="tab:green",
                   label="p50" if i == 0 else None)
            ax.bar([i + 0.2], [entry["p99_ms"]], 0.4, color="tab:red",
                   label="p99" if i == 0 else None)
        ax.axhline(50, color="black", linestyle=":", linewidth=1, label="target p99 50 ms")
        ax.set_xticks(range(len(rows)), [f"{k}\n{w}" for k, w in rows], fontsize=7)
        ax.set_ylabel("ms")
        ax.set_title(f"PipelineRun creates, {runs['tools']} tools, c={runs['clients']}",
                     fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{data['meta']['machine']} — {data['meta']['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
