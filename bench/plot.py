"""Plot latency against concurrency, ours vs the Go reference, from a run.py result file.

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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
