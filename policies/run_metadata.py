"""A run's labels and annotations: Tekton copies them onto its TaskRuns and build pods.

There they mean something to others: an annotation
`container.apparmor.security.beta.kubernetes.io/step-build: unconfined` gives the step that runs
the tool's code an unconfined AppArmor profile (the build namespace cannot enforce Pod Security's
baseline: a buildpacks step is privileged), a seccomp or sidecar-injection annotation does the
like, and a label puts the pods under some NetworkPolicy's selector. So a tool may set only the
keys the policy allows (`builds.runMetadata`, and `toolLabel`), on CREATE and on UPDATE.

On UPDATE only what the request adds or changes is judged: a stored run carries the keys Tekton's
controller wrote (`tekton.dev/pipeline`, say) and `kubectl apply` or `kubectl label` sends them
back unchanged. Removing a key is always allowed (the tool label is `check_changed_run`'s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from policies.decision import Finding, quote
from policies.model import BuildsPolicy
from policies.objects import mapping

METADATA_NOT_ALLOWED = "MetadataNotAllowed"

MAX_KEYS_SHOWN = 10

_KINDS: tuple[Literal["labels", "annotations"], ...] = ("labels", "annotations")


def metadata_refused(old: Mapping[str, Any] | None, new: Mapping[str, Any],
                     builds: BuildsPolicy) -> list[Finding]:
    """One finding per kind (labels, annotations) with keys a tool may not set on `new`: those
    it adds or changes compared with `old` (every key of `new` on CREATE, where `old` is None)."""
    allowed = builds.run_metadata
    findings = []
    for kind in _KINDS:
        before = mapping(mapping((old or {}).get("metadata")).get(kind))
        after = mapping(mapping(new.get("metadata")).get(kind))
        refused = [key for key, value in after.items()
                   if (key not in before or before[key] != value)
                   and not (kind == "labels" and key == builds.tool_label)
                   and not allowed.allows(kind, str(key))]
        if refused:
            findings.append(Finding(METADATA_NOT_ALLOWED, _message(kind, refused, builds)))
    return findings


def _message(kind: Literal["labels", "annotations"], keys: list[Any],
             builds: BuildsPolicy) -> str:
    shown = ", ".join(quote(key, 80) for key in keys[:MAX_KEYS_SHOWN])
    if len(keys) > MAX_KEYS_SHOWN:
        shown += f" and {len(keys) - MAX_KEYS_SHOWN} more"
    entries = builds.run_metadata.labels if kind == "labels" else builds.run_metadata.annotations
    listed = [builds.tool_label] if kind == "labels" else []
    listed += entries
    allowed = ", ".join(listed) or "none"
    singular = kind[:-1]
    return (f"metadata.{kind} {shown}: a tool may not set {'this' if len(keys) == 1 else 'these'}"
            f" on a PipelineRun, since Tekton copies a run's {kind} onto its TaskRuns and build "
            f"pods; remove {'it' if len(keys) == 1 else 'them'}, or ask the platform admins to "
            f"allow the {singular} (builds.runMetadata.{kind}; allowed now: {allowed})")
