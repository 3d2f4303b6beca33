"""Orphaned builds: a PipelineRun deleted so that its TaskRuns and build pods live on.

A tool's active runs are counted from its PipelineRuns (`policies.slots`). A run deleted with
`propagationPolicy: Orphan` (`kubectl delete --cascade=orphan`), with the legacy
`orphanDependents: true`, or carrying the `orphan` finalizer when the request says nothing else,
leaves its TaskRuns to the garbage collector's mercy: it strips their owner reference and they
run on, pods and all, with no run left to count. The tool could then start build after build
beside them. So only the system users and the run managers may orphan a run's dependents, and a
tool may neither delete its run that way nor put the `orphan` finalizer on it (at creation or by
an update).

A tool's unfinished TaskRuns are not counted as active runs as well, because with orphaning
refused a TaskRun outlives its run only
- when a system user or run manager orphans it on purpose (counting it would then hold the
  tool's slot until an admin cleans up, for something the tool did not do);
- between a run's deletion and the garbage collector's deletion of its TaskRuns and pods (the
  default background propagation: seconds, then the pods' termination grace). The run's own
  reservation holds its slot for `RESERVATION_GRACE` after its creation, and a tool that deletes
  and recreates runs still has at most one build stopping beside each running one, never an
  unbounded number; a TaskRun count would not close that either, since the TaskRun is deleted
  before its pod stops.
Counting them would cost a second list of every new run's CREATE for neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.decision import Finding, escape
from policies.objects import mapping
from policies.rule import ORPHAN_FINALIZER, DeleteOptions

ORPHANING_NOT_ALLOWED = "OrphaningNotAllowed"

_WHY = ("would leave its TaskRuns and build pods running with no PipelineRun to count against "
        "the tool's active-run limit")


def orphaning_delete(run: Mapping[str, Any], options: DeleteOptions) -> Finding | None:
    """Why deleting the stored `run` with `options` is refused: it would orphan the run's
    TaskRuns (None when it would not)."""
    finalizers = mapping(run.get("metadata")).get("finalizers")
    if not options.orphans(finalizers):
        return None
    name = escape(str(mapping(run.get("metadata")).get("name") or "(unnamed)"))
    if options.orphan_dependents:
        how, fix = "with orphanDependents: true", "leave orphanDependents out"
    elif options.propagation_policy == "Orphan":
        how, fix = ("with propagationPolicy Orphan (kubectl delete --cascade=orphan)",
                    "delete it without --cascade=orphan (kubectl's default, background, deletes "
                    "them too)")
    else:
        how, fix = (f"while it carries the {ORPHAN_FINALIZER} finalizer",
                    "delete it with propagationPolicy Background or Foreground (kubectl delete "
                    "sends Background)")
    return Finding(ORPHANING_NOT_ALLOWED, f"deleting the PipelineRun {name} {how} {_WHY}; {fix}")


def orphan_finalizer_added(old: Mapping[str, Any] | None,
                           new: Mapping[str, Any]) -> Finding | None:
    """Why `new` may not be stored: it gains the `orphan` finalizer (None when it does not; a
    run that already had it keeps it, and deleting it is judged by `orphaning_delete`)."""
    if not _has_orphan_finalizer(new) or (old is not None and _has_orphan_finalizer(old)):
        return None
    return Finding(ORPHANING_NOT_ALLOWED, (
        f"metadata.finalizers may not contain {ORPHAN_FINALIZER}: deleting the run {_WHY}; "
        "remove it"))


def _has_orphan_finalizer(run: Mapping[str, Any]) -> bool:
    finalizers = mapping(run.get("metadata")).get("finalizers")
    return isinstance(finalizers, list) and ORPHAN_FINALIZER in finalizers
