"""Owner references between Tekton objects: how a pod names its TaskRun, a TaskRun its PipelineRun.

Each reference carries the owner's uid, so a run deleted and created again under the same name is
not the one referred to; `matches` checks both when the edge has looked the owner up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEKTON_GROUP = "tekton.dev"
PIPELINERUN = "PipelineRun"
TASKRUN = "TaskRun"


@dataclass(frozen=True)
class OwnerRef:
    """A controlling owner reference to a Tekton object."""

    kind: str
    name: str
    uid: str


def controller_owner(obj: Mapping[str, Any] | None, kind: str) -> OwnerRef | None:
    """The object's controlling owner reference, if it is a tekton.dev object of `kind`."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    owners = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    for owner in owners if isinstance(owners, list) else ():
        if not isinstance(owner, dict) or owner.get("controller") is not True:
            continue
        group = str(owner.get("apiVersion", "")).partition("/")[0]
        name, uid = owner.get("name"), owner.get("uid")
        if (group == TEKTON_GROUP and owner.get("kind") == kind and isinstance(name, str)
                and name and isinstance(uid, str) and uid):
            return OwnerRef(kind=kind, name=name, uid=uid)
    return None


def matches(obj: Mapping[str, Any] | None, owner: OwnerRef) -> bool:
    """Whether a looked-up object is the one the reference names (same name, same uid)."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    return (isinstance(metadata, dict) and metadata.get("name") == owner.name
            and metadata.get("uid") == owner.uid)
