"""Files written from another source in the repository, so that the two cannot drift apart.

- docs/policy-reference.md: every policy key, its default and its meaning, from the model
  (`policies/reference.py` writes it from the field docstrings in `policies/model.py`).
- manifests/monitoring/prometheusrule.yaml: the alerting rules of rules.yaml (the one file to
  edit) wrapped in a PrometheusRule for the Prometheus Operator.

`make generate` (`python tests/generate.py`) rewrites them; tests/unit/test_generated.py fails
while one of them is stale, naming the command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from policies import reference

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "manifests" / "monitoring"

PROMETHEUS_RULE_HEADER = """\
# Generated from rules.yaml by `make generate`: edit rules.yaml, not this file.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: toolforge-admission
  namespace: toolforge-admission
  labels:
    app.kubernetes.io/name: toolforge-admission
    app.kubernetes.io/component: monitoring
spec:
"""


def prometheus_rule() -> str:
    """rules.yaml, without its leading comment, as the spec of a PrometheusRule."""
    lines = (MONITORING / "rules.yaml").read_text().splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    # Indenting the text, rather than dumping parsed YAML, keeps the rules' comments and layout.
    return PROMETHEUS_RULE_HEADER + "".join(f"  {line}\n" if line else "\n" for line in lines)


GENERATED: Mapping[Path, Callable[[], str]] = {
    REPO / "docs" / "policy-reference.md": reference.markdown,
    MONITORING / "prometheusrule.yaml": prometheus_rule,
}
"""Each generated file, and what writes its content."""


def main(argv: list[str]) -> int:
    """Rewrite every generated file; with --check, only say which are stale (exit 1)."""
    stale = [path for path, render in GENERATED.items()
             if not path.exists() or path.read_text() != render()]
    for path in stale:
        if "--check" in argv:
            print(f"stale: {path.relative_to(REPO)}", file=sys.stderr)
        else:
            path.write_text(GENERATED[path]())
            print(f"wrote {path.relative_to(REPO)}")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
