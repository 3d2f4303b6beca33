"""The registry allow-list: every image a tool's workload runs comes from an allowed prefix.

`check_pod_images` judges a Pod, or the pod template of a workload (Deployment, ReplicaSet,
StatefulSet, DaemonSet, ReplicationController, Job, CronJob, PodTemplate). It reads containers,
initContainers and ephemeralContainers, and image volumes (`volumes[].image.reference`: the
kubelet pulls those as it pulls a container's image). The `pods/ephemeralcontainers` subresource
(`kubectl debug`) arrives as an UPDATE of the whole Pod, so it needs no case of its own.

On UPDATE only images that are new or changed at their container are judged. An UPDATE that
leaves every image alone (a label, a finalizer, `kubectl scale`) therefore always passes, so
shrinking the allow-list never locks existing workloads out of ordinary edits.

Which namespaces are checked is the webhook configuration's `namespaceSelector`; this rule
(`IMAGES`) judges every namespace it is sent except `exemptNamespaces`, and only CREATE and
UPDATE of the kinds in `POD_SPEC_PATHS`. Entries with `{tool}` (the tool's name) or
`{harborProject}` (its Harbor project, `policies.harbor`) are expanded in tool namespaces and
dropped elsewhere.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from policies.allowlist import AllowList
from policies.decision import (
    MAX_MESSAGE_CHARS,
    MAX_WARNING_CHARS,
    Decision,
    Finding,
    allow,
    cap,
    decide,
    quote,
)
from policies.images import ImageReference, ImageReferenceError, parse_image
from policies.model import Policy
from policies.rule import Facts, Review, Rule

IMAGE_NOT_ALLOWED = "ImageNotAllowed"
"""An image is valid but no allowed prefix of its namespace covers it."""
IMAGE_INVALID = "ImageInvalid"
"""An image is not a valid image reference, so it cannot be judged (and would not pull)."""

CONTAINER_LISTS = (
    ("containers", "container"),
    ("initContainers", "initContainer"),
    ("ephemeralContainers", "ephemeralContainer"),
)
"""The pod spec lists that hold containers, and what a message calls one of their entries."""

IMAGE_VOLUME = "volume"
"""What a message calls an image volume."""

POD_SPEC_PATHS: Mapping[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
"""Where each kind keeps the pod spec whose containers run."""


@dataclass(frozen=True)
class PodImage:
    """One image a pod pulls, as the object states it: a container's or an image volume's."""

    list_kind: str
    """`container`, `initContainer`, `ephemeralContainer` or `volume`."""
    name: str
    image: object
    """The raw `image` value; not trusted to be a string."""


def check_pod_images(review: Review, facts: Facts) -> Decision:
    """Admit an object only if every new or changed image comes from an allowed prefix."""
    old = review.old_object if review.operation == "UPDATE" else None
    images = images_to_judge(review.kind, review.object, old)
    if not images:
        return allow()
    policy = facts.policy
    namespace = review.namespace
    allowed = allow_list(policy, namespace, _utc_day(facts.now))
    findings = [f for f in (_judge(c, allowed) for c in images) if f is not None]
    decision = decide(findings, policy.registries.mode)
    if not findings:
        return decision
    if decision.allowed:  # warn mode: one warning per container, then what would be allowed
        hint = _allowed_hint(allowed, MAX_WARNING_CHARS)
        return replace(decision, warnings=(*decision.warnings, hint))
    message = _denial(namespace, findings, allowed)
    return replace(decision, message=cap(message, MAX_MESSAGE_CHARS))


IMAGES = Rule(check_pod_images, operations=frozenset({"CREATE", "UPDATE"}),
              kinds=frozenset(POD_SPEC_PATHS), exempt_namespaces=True)
"""CREATE and UPDATE only: `pods/eviction`, `deployments/scale` or a DELETE carry no pod spec,
and must never be blocked by an image rule."""


def images_to_judge(kind: str, obj: Mapping[str, Any] | None,
                    old_obj: Mapping[str, Any] | None) -> tuple[PodImage, ...]:
    """The containers whose image is new: all of them, or on UPDATE those not in `old_obj`."""
    current = containers_of(kind, obj)
    if old_obj is None:
        return current
    before = {(c.list_kind, c.name): c.image for c in containers_of(kind, old_obj)}
    return tuple(c for c in current
                 if (c.list_kind, c.name) not in before
                 or before[(c.list_kind, c.name)] != c.image)


def containers_of(kind: str, obj: Mapping[str, Any] | None) -> tuple[PodImage, ...]:
    """Every container of an object's pod spec, in the order the spec lists them."""
    # The object is decoded JSON, so its mappings are dicts (a cheaper isinstance than Mapping).
    spec: object = obj
    for key in POD_SPEC_PATHS.get(kind, ()):
        spec = spec.get(key) if isinstance(spec, dict) else None
    if not isinstance(spec, dict):
        return ()
    return tuple(_containers(spec))


def _containers(spec: dict[str, Any]) -> Iterator[PodImage]:
    for key, list_kind in CONTAINER_LISTS:
        entries = spec.get(key)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, dict):
                yield PodImage(list_kind, _name(entry), entry.get("image"))
            else:  # the API server's schema check forbids this; fail closed if it happens
                yield PodImage(list_kind, "", None)
    volumes = spec.get("volumes")
    for volume in volumes if isinstance(volumes, list) else ():
        source = volume.get("image") if isinstance(volume, dict) else None
        if source is not None:
            reference = source.get("reference") if isinstance(source, dict) else None
            yield PodImage(IMAGE_VOLUME, _name(volume), reference)


def _name(entry: dict[str, Any]) -> str:
    name = entry.get("name")
    return name if isinstance(name, str) else ""


def allow_list(policy: Policy, namespace: str, day: datetime.date) -> AllowList:
    """The prefixes allowed in a namespace on a day (UTC), computed once per policy and day."""
    return policy.allow_lists.allow_list(namespace, day)


# -- checks on one container -------------------------------------------------------------------

def _judge(container: PodImage, allowed: AllowList) -> Finding | None:
    try:
        image = _parse_image(container.image)
    except ImageReferenceError as error:
        return Finding(IMAGE_INVALID, f"{_describe(container)} is not a valid image reference "
                                      f"({error})")
    if allowed.covers(image):
        return None
    ended = allowed.ended_exception(image)
    note = f"; the exception for {ended[0]} ended on {ended[1].isoformat()}" if ended else ""
    return Finding(IMAGE_NOT_ALLOWED, f"{_describe(container)} ({image.repository}) is not under "
                                      f"an allowed prefix{note}")


def _parse_image(value: object) -> ImageReference:
    if not isinstance(value, str):
        raise ImageReferenceError("the image is missing or not a string")
    return parse_image(value)  # cached in policies.images


def _describe(container: PodImage) -> str:
    return f"{container.list_kind} {quote(container.name, 80)} image {quote(container.image, 300)}"


def _denial(namespace: str, findings: list[Finding], allowed: AllowList) -> str:
    count = len(findings)
    head = ("1 image is" if count == 1 else f"{count} images are")
    listed = "; ".join(f.message for f in findings)
    return (f"{head} not allowed in namespace {quote(namespace, 80)}: {listed}. "
            f"{_allowed_hint(allowed, 1000)}")


def _allowed_hint(allowed: AllowList, limit: int) -> str:
    if not allowed.prefixes:
        return ("No registry is allowed in this namespace; ask the platform admins for an "
                "exception.")
    listed = ", ".join(str(p) for p in allowed.prefixes)
    return cap(f"Use images under one of: {listed}; or ask the platform admins for an exception.",
               limit)


def _utc_day(now: datetime.datetime) -> datetime.date:
    # A naive `now` is taken to be UTC already; an aware one is converted, so an exception ends
    # at midnight UTC whatever time zone the caller's clock uses.
    if now.tzinfo is None:
        return now.date()
    return now.astimezone(datetime.UTC).date()
