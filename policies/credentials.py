"""Registry credentials in Tekton build pods: only trusted steps may keep them.

Tekton's creds-init hands the registry Secrets of the build ServiceAccount to **every** step of a
TaskRun pod (tests/fixtures/tekton/ holds real ones): a `secret` volume mounted at
`/tekton/creds-secrets/<secret>`, a credential flag such as `-basic-docker=<secret>=<host>` before
`--` in the entrypoint's args, and a private `/tekton/creds` emptyDir the entrypoint writes the
docker config to before copying it into `$HOME`. In buildpacks-phases the detect, build and
extender steps run the tool's code, so `strip_build_credentials` takes all of that away from every
container that is not a trusted step.

A container is trusted only in a pod Tekton made (its label and its TaskRun owner), when it is a
step (`step-<name>`) whose name, image and program all match one `credentials.trustedSteps`
entry, and when nothing else in it can run code or move the credentials: its command is Tekton's
entrypoint, its args are read exactly as that entrypoint reads them (`policies.steps`: Go's flag
parsing, so `-entrypoint /a x -entrypoint /b` runs `/a`, and leftovers such as a `cp` subcommand
mean no program of ours runs), it has no lifecycle hooks or probes, and its HOME (and
DOCKER_CONFIG) is a literal path in `env`, not from envFrom, valueFrom or `$(VAR)`. Everything else
is untrusted: other steps, init containers, sidecars, ephemeral containers, and every container
of a pod Tekton did not make.

What counts as a credential, since a pod does not say which Secret holds what:

- credential volumes: every pod volume backed by a Secret (a `secret` volume, or a `projected`
  volume with a `secret` source), every `projected` volume with a `serviceAccountToken` source
  (the `kube-api-access-*` volume Kubernetes adds unless the ServiceAccount or pod sets
  `automountServiceAccountToken: false`: the build ServiceAccount's API token, with whatever
  RBAC grants it), and every volume any container mounts at or under `/tekton/creds` (where the
  entrypoint writes a step's credentials, wherever else another container mounts it).
  Matching is by source and path, never by volume name: Tekton named the secret volumes
  `tekton-internal-secret-volume-<secret>-<random>` before v1.11 and `tekton-creds-<hash>` since;
- an untrusted container loses: mounts under `/tekton/creds-secrets/` and `/tekton/creds`, mounts
  of credential volumes anywhere, credential flags before the first `--` (`-flag=value`,
  `--flag=value`, `-flag value`), and `env`/`envFrom` entries that read any Secret;
- shared home: trusted steps find their credentials in `$HOME/.docker/config.json`
  (`DOCKER_CONFIG` is treated the same). The volume a trusted step has mounted
  there is a *credential home*. An untrusted container that mounts a credential home gets a private
  emptyDir (`toolforge-untrusted-home-<index>`, medium Memory) at the same path instead, when it
  mounts it exactly at its own HOME or DOCKER_CONFIG and the volume is an emptyDir; in any other
  shape (a PVC, a sub-path, a directory that also holds other data) the pod is refused.

The mutation (`BUILD_POD_CREDENTIALS`) acts on CREATE; the validator (`BUILD_PODS`:
`find_credential_leaks`, `check_build_pod`) judges the pod as it would be stored on CREATE and
UPDATE, so an ephemeral container or a changed image meets the same rules. What a trusted step
does with the credentials is judged too: a lifecycle phase may push only to its PipelineRun's
APP_IMAGE, and may not take its run image from a file on a volume the other steps can write
(`trusted_step_findings`).

Pod-level volumes stay: trusted steps still need them. A pod whose only way to build is an
untrusted step that needs the credentials itself (the `buildpacks` task's single
`/cnb/lifecycle/creator` step) cannot be made safe and is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from policies.buildruns import check_pod_requester, param, runs_unavailable
from policies.decision import MAX_MESSAGE_CHARS, Decision, Finding, cap, decide, escape, quote
from policies.flags import keepable
from policies.identity import User
from policies.images import ImageReference, ImageReferenceError, parse_image
from policies.model import Policy, TrustedStep
from policies.objects import mapping
from policies.owners import TEKTON_GROUP
from policies.questions import Answer, FoundRun, PodRunLookup, Unavailable
from policies.rule import Ask, Facts, Review, Rule, Verdict
from policies.steps import (
    RegistryUse,
    StepCommand,
    is_lifecycle_phase,
    registry_use,
    runs_entrypoint,
    step_command,
)

CREDENTIALS_STRIPPED = "BuildCredentialsStripped"
"""Untrusted containers of a build pod carry credentials (stripped in enforce, warned in warn)."""
CREDENTIAL_LEAK = "BuildCredentialLeak"
"""A stored build pod would let an untrusted container read a credential (the validator's view)."""
SHARED_CREDENTIAL_HOME = "SharedCredentialHome"
"""An untrusted container shares trusted steps' HOME in a shape a private mount cannot fix."""
SINGLE_PROCESS_BUILD = "SingleProcessBuildRefused"
"""An untrusted step both needs the push credentials and runs the tool's code."""
TRUSTED_STEP_TARGET = "TrustedStepTarget"
"""A trusted step would use the credentials on an image its PipelineRun does not name."""
BUILD_RUN_UNKNOWN = "BuildRunUnknown"
"""A pod whose trusted steps keep the credentials belongs to no PipelineRun that exists."""
APP_IMAGE = "APP_IMAGE"
RUN_IMAGE = "RUN_IMAGE"
BUILDER_IMAGE = "BUILDER_IMAGE"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TEKTON_MANAGER = "tekton-pipelines"
STEP_PREFIX = "step-"
CREDS_SECRETS_DIR = "/tekton/creds-secrets"
CREDS_DIR = "/tekton/creds"
DEFAULT_HOME = "/tekton/home"
HOME = "HOME"
DOCKER_CONFIG = "DOCKER_CONFIG"
RUNS_COMMANDS = ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe")
"""Container fields that make the kubelet run commands inside a container."""
SEPARATOR = "--"
CREATOR = "/cnb/lifecycle/creator"
SAFE_TASK = "buildpacks-phases"
UNTRUSTED_HOME_VOLUME = "toolforge-untrusted-home-{index}"
CREDENTIAL_FLAGS = frozenset({"basic-docker", "docker-config", "docker-cfg", "basic-git",
                              "ssh-git"})
"""Entrypoint flags that make a step read a Secret (`pkg/credentials/{dockercreds,gitcreds}`)."""



# --- reading the pod ---------------------------------------------------------------------------


def is_tekton_build_pod(pod: Mapping[str, Any], namespace: str, policy: Policy) -> bool:
    """A pod the Tekton controller made for a TaskRun, in the build namespace."""
    metadata = mapping(pod.get("metadata"))
    labels = mapping(metadata.get("labels"))
    owners = metadata.get("ownerReferences")
    owned_by_taskrun = isinstance(owners, list) and any(
        isinstance(o, dict) and o.get("kind") == "TaskRun"
        and str(o.get("apiVersion", "")).startswith(TEKTON_GROUP + "/")
        for o in owners
    )
    return (namespace == policy.builds.namespace
            and labels.get(MANAGED_BY_LABEL) == TEKTON_MANAGER
            and owned_by_taskrun)


def split_args(args: Sequence[object]) -> tuple[list[object], list[object]]:
    """The entrypoint's own flags, and everything from the first `--` on (never touched)."""
    items = list(args)
    if SEPARATOR in items:
        at = items.index(SEPARATOR)
        return items[:at], items[at:]
    return items, []


def entrypoint_of(args: Sequence[object]) -> str | None:
    """The program Tekton's entrypoint runs for these args, parsed as it parses them.

    Go's `flag` stops at the first argument that is not a flag, so in `-entrypoint /a x
    -entrypoint /b --` the program is `/a`; leftovers (`x`) or a parse error mean the step runs
    no program of ours (a leftover may be a subcommand such as `cp`), and give None.
    """
    return step_command(args).entrypoint


def strip_credential_flags(args: Sequence[object]) -> tuple[list[object], list[str]]:
    """Args without credential flags before `--`, and the flags removed (each as one string).

    Wider than Go's parse on purpose: every credential flag before the first `--` goes, even
    one that Go would take as another flag's value or never reach, so that an entrypoint with
    a flag this suite does not know still finds no credential flag.
    """
    flags, rest = split_args(args)
    kept, removed = (_stripped_flags(tuple(flags)) if keepable(flags)
                     else _stripped_flags.__wrapped__(flags))
    return [*kept, *rest], list(removed)


# The flags before `--` are the same in the same step of every pod of a task (see
# policies.steps._entrypoint_flags): stripped once per distinct list.
@functools.lru_cache(maxsize=256)
def _stripped_flags(flags: Sequence[object]) -> tuple[tuple[object, ...], tuple[str, ...]]:
    """The flags kept, and the credential flags removed (each as one string)."""
    kept: list[object] = []
    removed: list[str] = []
    i = 0
    while i < len(flags):
        token = flags[i]
        name, has_value = "", False
        if isinstance(token, str) and token.startswith("-"):  # most tokens are values
            name, has_value, _ = _flag(token)
        if name in CREDENTIAL_FLAGS:
            if has_value or i + 1 >= len(flags):
                removed.append(str(token))
                i += 1
            else:
                removed.append(f"{token} {flags[i + 1]}")
                i += 2
            continue
        kept.append(token)
        i += 1
    return tuple(kept), tuple(removed)


def _flag(token: str) -> tuple[str, bool, str]:
    """`-name=value` → (name, True, value); `-name` / `--name` → (name, False, ""); else ""."""
    if not token.startswith("-") or token in ("-", SEPARATOR):
        return "", False, ""
    body = token[2:] if token.startswith("--") else token[1:]
    name, eq, value = body.partition("=")
    return name, bool(eq), value


def image_matches(allowed: ImageReference, image: ImageReference) -> bool:
    """Whether a pod's image is one a trusted step may run.

    The repository must be the same. A policy entry with a digest pins content, so the pod must
    use exactly that digest. A policy entry with only a tag trusts whatever the repository's
    publisher serves under that tag; a pod that adds a digest to the same tag
    (`lifecycle:0.10.2@sha256:…`, as the catalog tasks do) still matches, because only that
    publisher can push content to the repository at all, and the digest only narrows which of
    its images runs. A pod with a digest but no tag does not match a tag-only entry: nothing in
    it says which release it is.
    """
    if allowed.repository != image.repository:
        return False
    if allowed.digest is not None:
        tags_agree = allowed.tag is None or image.tag is None or allowed.tag == image.tag
        return image.digest == allowed.digest and tags_agree
    wanted_tag = allowed.tag or "latest"
    if image.tag is None:
        return image.digest is None and wanted_tag == "latest"
    return image.tag == wanted_tag


def trusted_step(container: Mapping[str, Any], policy: Policy) -> TrustedStep | None:
    """The policy entry a step container matches, if any.

    Its name, image and the program the entrypoint runs must match one entry; and nothing else
    in the container may run code or move the credentials: its command is Tekton's entrypoint
    (which reads the args as judged here), it has no lifecycle hooks or probes (which run
    commands in the container), and where the entrypoint copies the credentials (HOME, or
    DOCKER_CONFIG) is written in the pod, not taken from envFrom, valueFrom or `$(VAR)`.
    """
    return _PodSteps(policy).trusted(container)


class _PodSteps:
    """What the containers of one pod run, and which are trusted steps, each worked out once.

    A review asks about the same containers several times (the analysis, whether the pod needs
    its PipelineRun, what its trusted steps push), and reading a step's args as the entrypoint
    does is the costly part. One of these lives for one review of one pod; containers are known
    by identity, which holds while the pod is being judged.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._commands: dict[int, StepCommand] = {}
        self._trusted: dict[int, TrustedStep | None] = {}
        self._stripped: dict[int, tuple[list[object], list[str]]] = {}

    def command(self, container: Mapping[str, Any]) -> StepCommand:
        """`step_command` of the container's args (a list)."""
        key = id(container)
        command = self._commands.get(key)
        if command is None:
            command = self._commands[key] = step_command(container["args"])
        return command

    def stripped(self, container: Mapping[str, Any]) -> tuple[list[object], list[str]]:
        """`strip_credential_flags` of the container's args (a list): what the analysis finds
        and what the mutation writes."""
        key = id(container)
        stripped = self._stripped.get(key)
        if stripped is None:
            stripped = self._stripped[key] = strip_credential_flags(container["args"])
        return stripped

    def trusted(self, container: Mapping[str, Any]) -> TrustedStep | None:
        """`trusted_step` of the container."""
        key = id(container)
        if key not in self._trusted:
            self._trusted[key] = self._trusted_entry(container)
        return self._trusted[key]

    def _trusted_entry(self, container: Mapping[str, Any]) -> TrustedStep | None:
        name = container.get("name")
        image_text = container.get("image")
        args = container.get("args")
        if not (isinstance(name, str) and name.startswith(STEP_PREFIX)
                and isinstance(image_text, str) and isinstance(args, list)
                and runs_entrypoint(container)):
            return None
        step_name = name[len(STEP_PREFIX):]
        entries = [entry for entry in self.policy.credentials.trusted_steps
                   if entry.name == step_name]
        if not entries:  # most steps: nothing else needs reading
            return None
        if any(container.get(key) is not None for key in RUNS_COMMANDS) \
                or not _home_is_literal(container):
            return None
        try:
            image = parse_image(image_text)
        except ImageReferenceError:
            return None
        entrypoint = self.command(container).entrypoint
        for entry in entries:
            if (entry.entrypoint == entrypoint
                    and any(image_matches(allowed, image) for allowed in entry.images)):
                return entry
        return None


def _home_is_literal(container: Mapping[str, Any]) -> bool:
    """HOME is set, and it and DOCKER_CONFIG (if set) are plain absolute paths in `env`."""
    if _list(container.get("envFrom")):
        return False  # it may set HOME or DOCKER_CONFIG, and the pod does not say to what
    env = {e.get("name"): e for e in _list(container.get("env")) if isinstance(e, dict)}
    for variable in (HOME, DOCKER_CONFIG):
        entry = env.get(variable)
        if entry is None and variable == DOCKER_CONFIG:
            continue
        value = entry.get("value") if entry is not None else None
        if (entry is None or "valueFrom" in entry or not isinstance(value, str)
                or not value.startswith("/") or "$(" in value):
            return False
    return True


# --- the analysis ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerChanges:
    """What one untrusted container carries that it must lose."""

    kind: str
    """`containers`, `initContainers` or `ephemeralContainers`."""
    index: int
    name: str
    mounts: tuple[str, ...] = ()
    """mountPaths to remove."""
    flags: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    env_from: tuple[str, ...] = ()
    """Secret names of envFrom entries to remove."""
    home_mounts: tuple[str, ...] = ()
    """mountPaths of a credential home to replace with a private emptyDir."""
    tokens: tuple[str, ...] = ()
    """Those of `mounts` that show a Kubernetes API token (named so in messages)."""

    @property
    def empty(self) -> bool:
        return not (self.mounts or self.flags or self.env or self.env_from or self.home_mounts)

    def describe(self) -> str:
        # Names and paths come from the pod, so each is escaped and bounded for the message.
        parts = [f"mount {escape(p, 120)}" + (" (Kubernetes API token)" if p in self.tokens else "")
                 for p in self.mounts]
        parts += [f"flag {quote(f, 120)}" for f in self.flags]
        parts += [f"env {escape(e, 80)}" for e in self.env]
        parts += [f"envFrom secret {escape(s, 80)}" for s in self.env_from]
        parts += [f"shared home {escape(p, 120)}" for p in self.home_mounts]
        return f"{escape(self.name, 80)}: " + ", ".join(parts)


@dataclass(frozen=True)
class Analysis:
    """Where credentials are in a build pod and which untrusted containers can reach them."""

    changes: tuple[ContainerChanges, ...] = ()
    refusals: tuple[Finding, ...] = ()
    trusted: tuple[str, ...] = ()


def analyse(pod: Mapping[str, Any], policy: Policy, *, trust: bool = True) -> Analysis:
    """Find every credential an untrusted container of a build pod can read; change nothing.

    With `trust` False (a pod Tekton did not make) no container is trusted, so every Secret the
    pod mounts or reads is a leak.
    """
    return _analyse(pod, _PodSteps(policy), trust=trust)


def _analyse(pod: Mapping[str, Any], steps: _PodSteps, *, trust: bool) -> Analysis:
    spec = mapping(pod.get("spec"))
    volumes = {v["name"]: v for v in _list(spec.get("volumes"))
               if isinstance(v, dict) and isinstance(v.get("name"), str)}
    all_containers = list(_containers(spec))
    trusted = [c for kind, _, c in all_containers
               if trust and kind == "containers" and steps.trusted(c) is not None]
    trusted_names = {c.get("name") for c in trusted}
    trusted_ids = {id(c) for c in trusted}

    # Any Secret a build pod shows may be a credential (nothing says which one the robot
    # account's is), and so is a step's /tekton/creds, wherever another container mounts it.
    # A ServiceAccount token lets its holder act in the cluster with the build ServiceAccount's
    # RBAC: tenant code gets none either.
    token_volumes = {name for name, volume in volumes.items() if _shows_token(volume)}
    credential_volumes = {name for name, volume in volumes.items() if _volume_secrets(volume)}
    credential_volumes |= _creds_dir_volumes(all_containers) | token_volumes
    homes = _credential_homes(trusted, volumes)

    changes: list[ContainerChanges] = []
    refusals: list[Finding] = []
    for kind, index, container in all_containers:
        if id(container) in trusted_ids:  # the container itself: its name may be any JSON
            continue
        change = _untrusted_changes(kind, index, container, volumes=volumes,
                                    credential_volumes=credential_volumes, homes=homes,
                                    token_volumes=token_volumes, refusals=refusals,
                                    steps=steps)
        if change.empty:
            continue
        changes.append(change)
        if _may_run(container, CREATOR) and steps.command(container).entrypoint == CREATOR:
            refusals.append(Finding(SINGLE_PROCESS_BUILD, (
                f"container {escape(change.name, 80)} runs {CREATOR}, which builds the tool's "
                f"code and pushes the image in one process, so it cannot get registry credentials "
                f"safely; use the {SAFE_TASK} task, which runs the push in a separate trusted "
                "step")))
    return Analysis(changes=tuple(changes), refusals=tuple(refusals),
                    trusted=tuple(str(n) for n in trusted_names))


def _may_run(container: Mapping[str, Any], program: str) -> bool:
    """False when the entrypoint cannot run `program`: its args are no list, or none holds its
    path (the entrypoint takes it from `-entrypoint <path>` or `-entrypoint=<path>`), which is
    cheaper to see than to parse the args."""
    args = container.get("args")
    return isinstance(args, list) and any(isinstance(a, str) and program in a for a in args)


def _creds_dir_volumes(containers: Iterable[tuple[str, int, Mapping[str, Any]]]) -> set[str]:
    """Volumes any container mounts at or under /tekton/creds, where the entrypoint writes."""
    return {str(mount.get("name")) for _, _, container in containers
            for mount in _list(container.get("volumeMounts"))
            if isinstance(mount, dict) and isinstance(path := mount.get("mountPath"), str)
            and _credential_dir_of(path) == CREDS_DIR}


def _volume_secrets(volume: Mapping[str, Any]) -> set[str]:
    """Names of the Secrets a pod volume shows files of."""
    found: set[str] = set()
    secret = volume.get("secret")
    if isinstance(secret, dict) and isinstance(secret.get("secretName"), str):
        found.add(secret["secretName"])
    projected = volume.get("projected")
    if isinstance(projected, dict):
        for source in _list(projected.get("sources")):
            ref = source.get("secret") if isinstance(source, dict) else None
            if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                found.add(ref["name"])
    return found


def _shows_token(volume: Mapping[str, Any]) -> bool:
    """A `projected` volume with a `serviceAccountToken` source."""
    projected = volume.get("projected")
    return isinstance(projected, dict) and any(
        isinstance(source, dict) and source.get("serviceAccountToken") is not None
        for source in _list(projected.get("sources")))


def _credential_homes(trusted: Iterable[Mapping[str, Any]],
                      volumes: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Volumes on which a trusted step keeps `$HOME` or `$DOCKER_CONFIG`."""
    homes: set[str] = set()
    for container in trusted:
        for path in _home_paths(container):
            mount = _covering_mount(container, path)
            if mount is not None and str(mount.get("name")) in volumes:
                homes.add(str(mount.get("name")))
    return homes


def _home_paths(container: Mapping[str, Any]) -> set[str]:
    env = {e.get("name"): e for e in _list(container.get("env")) if isinstance(e, dict)}
    home = env.get("HOME")
    paths = set()
    if home is None:
        paths.add(DEFAULT_HOME)
    elif isinstance(home.get("value"), str) and home["value"]:
        paths.add(_normal_path(home["value"]))
    elif "valueFrom" in home:
        paths.add(DEFAULT_HOME)
    docker_config = env.get("DOCKER_CONFIG")
    if docker_config is not None and isinstance(docker_config.get("value"), str) \
            and docker_config["value"]:
        paths.add(_normal_path(docker_config["value"]))
    return paths


def _covering_mount(container: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    """The mount a path lies on: the longest mountPath equal to it or above it."""
    target = _normal_path(path)
    best: Mapping[str, Any] | None = None
    best_length = -1
    for mount in _list(container.get("volumeMounts")):
        if not isinstance(mount, dict) or not isinstance(mount_path := mount.get("mountPath"), str):
            continue
        directory = _normal_path(mount_path)
        if len(directory) > best_length and (
                target == directory or target.startswith(directory.rstrip("/") + "/")):
            best, best_length = mount, len(directory)
    return best


def _untrusted_changes(kind: str, index: int, container: Mapping[str, Any], *,
                       volumes: Mapping[str, Mapping[str, Any]],
                       credential_volumes: set[str], homes: set[str],
                       token_volumes: set[str], refusals: list[Finding],
                       steps: _PodSteps) -> ContainerChanges:
    name = str(container.get("name", f"{kind}[{index}]"))
    mounts: list[str] = []
    home_mounts: list[str] = []
    tokens: list[str] = []
    for mount in _list(container.get("volumeMounts")):
        if not isinstance(mount, dict):
            continue
        path = str(mount.get("mountPath", ""))
        volume_name = str(mount.get("name", ""))
        if _credential_dir_of(path) is not None or volume_name in credential_volumes:
            mounts.append(path)
            if volume_name in token_volumes:
                tokens.append(path)
        elif volume_name in homes:
            volume = volumes.get(volume_name, {})
            fixable = ("emptyDir" in volume and not mount.get("subPath")
                       and not mount.get("subPathExpr")
                       and _normal_path(path) in _home_paths(container))
            replacement = volumes.get(_home_volume_name(kind, index))
            if replacement is not None and replacement != _home_volume(kind, index):
                fixable = False
            if fixable:
                home_mounts.append(path)
            else:
                refusals.append(Finding(SHARED_CREDENTIAL_HOME, (
                    f"container {escape(name, 80)} mounts volume {escape(volume_name, 80)} at "
                    f"{escape(path, 120)}, where trusted steps "
                    f"keep their registry credentials ($HOME/.docker); keep HOME of trusted steps "
                    f"on a volume that only they mount (the task default is /tekton/home)")))
    flags: list[str] = []
    if isinstance(container.get("args"), list):
        _, flags = steps.stripped(container)
    env = [str(e.get("name")) for e in _list(container.get("env"))
           if isinstance(e, dict) and _secret_ref(e.get("valueFrom"), "secretKeyRef") is not None]
    env_from = [ref for e in _list(container.get("envFrom"))
                if (ref := _secret_ref(e, "secretRef")) is not None]
    return ContainerChanges(kind=kind, index=index, name=name, mounts=tuple(mounts),
                            flags=tuple(flags), env=tuple(env), env_from=tuple(env_from),
                            home_mounts=tuple(home_mounts), tokens=tuple(tokens))


def _secret_ref(holder: object, key: str) -> str | None:
    if not isinstance(holder, dict):
        return None
    ref = holder.get(key)
    if isinstance(ref, dict) and isinstance(ref.get("name"), str):
        return str(ref["name"])
    return None


# --- the rules ---------------------------------------------------------------------------------


def strip_build_credentials(pod: Mapping[str, Any] | None, namespace: str,
                            policy: Policy) -> Decision:
    """Mutate a Tekton build pod so that only trusted steps can read registry credentials.

    `Decision.patched` is the pod as it should be stored (a new object that shares the unchanged
    parts with `pod`, which is never changed), or None when nothing changes. In warn mode the pod
    is admitted unchanged, with what would be stripped.
    """
    if not isinstance(pod, dict) or not is_tekton_build_pod(pod, namespace, policy):
        return Decision(allowed=True)
    steps = _PodSteps(policy)
    analysis = _analyse(pod, steps, trust=True)
    if policy.credentials.mode == "warn":
        stripped = [Finding(CREDENTIALS_STRIPPED,
                            f"registry credentials would be removed from {c.describe()}")
                    for c in analysis.changes]
        return decide([*analysis.refusals, *stripped], "warn")
    if analysis.refusals:
        return decide(analysis.refusals, "enforce")
    if not analysis.changes:
        return Decision(allowed=True)
    stripped_from = ",".join(escape(c.name, 80) for c in analysis.changes)
    audit = (("credentials-stripped", cap(stripped_from, MAX_MESSAGE_CHARS)),)
    return Decision(allowed=True, audit=audit, patched=_apply(pod, analysis.changes, steps))


def mutate_build_pod(review: Review, facts: Facts) -> Decision:
    """Tekton build pods: registry credentials only in trusted steps."""
    return strip_build_credentials(review.object, review.namespace, facts.policy)


BUILD_POD_CREDENTIALS = Rule(mutate_build_pod, operations=frozenset({"CREATE"}),
                             kinds=frozenset({"Pod"}), build_namespace=True)
"""The mutation acts on CREATE only: a pod's containers cannot be changed afterwards, and what
an UPDATE may add (an ephemeral container, a new image) `BUILD_PODS` judges."""


def find_credential_leaks(pod: Mapping[str, Any] | None, namespace: str,
                          policy: Policy) -> Decision:
    """Refuse a build-namespace pod in which an untrusted container can still read a credential.

    Every pod of the build namespace is looked at, not only those with Tekton's label and owner:
    the mutating webhook is scoped to those, so a pod that escapes its scope must be stopped here,
    and in such a pod no container is trusted. Run on CREATE and UPDATE: an UPDATE may add an
    ephemeral container or change a trusted step's image, which the mutation never sees.
    """
    if not isinstance(pod, dict) or namespace != policy.builds.namespace:
        return Decision(allowed=True)
    return decide(_leak_findings(pod, namespace, _PodSteps(policy)), policy.credentials.mode)


def _leak_findings(pod: Mapping[str, Any], namespace: str, steps: _PodSteps) -> list[Finding]:
    tekton = is_tekton_build_pod(pod, namespace, steps.policy)
    analysis = _analyse(pod, steps, trust=tekton)
    remedy = ("the build-pod mutating webhook must remove them before the pod is stored" if tekton
              else "only Tekton's build pods may carry Secrets in the build namespace")
    leaks = [Finding(CREDENTIAL_LEAK, f"untrusted container {c.describe()} can read registry "
                                      f"credentials; {remedy}") for c in analysis.changes]
    return [*analysis.refusals, *leaks]


def needs_build_run(pod: Mapping[str, Any] | None, namespace: str, operation: str,
                    policy: Policy) -> bool:
    """Whether `check_build_pod` needs the pod's PipelineRun: a new Tekton pod in the build
    namespace in which a step keeps the credentials."""
    return _needs_build_run(pod, namespace, operation, _PodSteps(policy))


def _needs_build_run(pod: Mapping[str, Any] | None, namespace: str, operation: str,
                     steps: _PodSteps) -> bool:
    return (operation == "CREATE" and isinstance(pod, dict)
            and is_tekton_build_pod(pod, namespace, steps.policy)
            and any(steps.trusted(c) is not None
                    for c in _list(mapping(pod.get("spec")).get("containers"))
                    if isinstance(c, dict)))


def check_build_pod(pod: Mapping[str, Any] | None, namespace: str, operation: str, user: User,
                    *, policy: Policy, run: FoundRun | None, run_unknown: bool = False,
                    ) -> Decision:
    """A pod of the build namespace, as stored on CREATE or UPDATE: who makes it, what it leaks,
    where it pushes.

    `run` is the PipelineRun the pod belongs to when `needs_build_run` asked for it. With
    `run_unknown` it was asked for but not looked up (no cluster: the offline review), which
    skips only the comparison with the run and says so.
    """
    if not isinstance(pod, dict):
        return Decision(allowed=True)
    return _check_build_pod(pod, namespace, operation, user, _PodSteps(policy), run=run,
                            run_unknown=run_unknown)


def _check_build_pod(pod: Mapping[str, Any], namespace: str, operation: str, user: User,
                     steps: _PodSteps, *, run: FoundRun | None, run_unknown: bool) -> Decision:
    policy = steps.policy
    findings = [*check_pod_requester(operation, user, policy),
                *_leak_findings(pod, namespace, steps)]
    warnings: list[str] = []
    if operation == "CREATE" and is_tekton_build_pod(pod, namespace, policy):
        if run_unknown:
            warnings.append("the PipelineRun of this pod was not looked up (no cluster "
                            "connection), so the images its trusted steps push to were not "
                            "compared with the run's")
        findings += _trusted_step_findings(pod, steps, run)
    decision = decide(findings, policy.credentials.mode)
    if warnings:
        decision = replace(decision, warnings=(*decision.warnings, *warnings))
    return decision


def check_build_namespace_pod(review: Review, facts: Facts) -> Verdict:
    """Pods of the build namespace: only from the Tekton controller, no credential where it
    does not belong, and trusted steps that push only their PipelineRun's image (which the
    cluster is asked for)."""
    policy = facts.policy
    pod, namespace, operation = review.object, review.namespace, review.operation
    if not isinstance(pod, dict):
        return Decision(allowed=True)
    # One reading of the steps for the whole review, the cluster's answer included: whether the
    # run is needed, the analysis and the trusted steps' targets ask about the same containers.
    steps = _PodSteps(policy)
    if not _needs_build_run(pod, namespace, operation, steps):
        return _check_build_pod(pod, namespace, operation, review.user, steps, run=None,
                                run_unknown=False)

    def with_run(answer: Answer) -> Decision:
        if isinstance(answer, Unavailable):
            return runs_unavailable("pod", answer.cause, policy.credentials.mode)
        if answer is not None and not isinstance(answer, FoundRun):
            raise TypeError(f"PodRunLookup answered with a {type(answer).__name__}")
        return _check_build_pod(pod, namespace, operation, review.user, steps, run=answer,
                                run_unknown=answer is None)

    return Ask(PodRunLookup(namespace=namespace, pod=pod), with_run)


BUILD_PODS = Rule(check_build_namespace_pod, operations=frozenset({"CREATE", "UPDATE"}),
                  kinds=frozenset({"Pod"}), build_namespace=True)


def trusted_step_findings(pod: Mapping[str, Any], policy: Policy,
                          run: FoundRun | None) -> list[Finding]:
    """What each trusted lifecycle step of a Tekton pod does with the credentials it keeps.

    Its own command line must read the same to the lifecycle whatever its flags' types (every
    flag `-name=value`), name no cache image and no insecure registry, and name a run image
    unless its stack and run files are its image's own; and, with the run known,
    every image it pushes is the run's APP_IMAGE (also `-tag` and `-previous-image`), its run
    image the run's RUN_IMAGE and its build image the run's BUILDER_IMAGE.
    """
    return _trusted_step_findings(pod, _PodSteps(policy), run)


def _trusted_step_findings(pod: Mapping[str, Any], steps: _PodSteps,
                           run: FoundRun | None) -> list[Finding]:
    findings: list[Finding] = []
    for container in _list(mapping(pod.get("spec")).get("containers")):
        if not isinstance(container, dict) or steps.trusted(container) is None:
            continue
        command = steps.command(container)
        if not is_lifecycle_phase(command.entrypoint):
            continue
        name = escape(container["name"], 80)
        if run is not None and run.run is None:
            findings.append(Finding(BUILD_RUN_UNKNOWN, (
                f"trusted step {name} keeps the registry credentials, but the pod belongs to no "
                f"PipelineRun that exists: {run.problem}")))
            continue
        use = registry_use(command.command_args, _literal_env(container))
        findings += _run_image_file_findings(name, container, use)
        findings += _target_findings(name, use, run.run if run is not None else None)
    return findings


def _run_image_file_findings(name: str, container: Mapping[str, Any],
                             use: RegistryUse) -> list[Finding]:
    """A phase given no run image reads one from its stack or run file: that file must be its
    image's own, not one on a volume, which the build's other steps (the tool's code) can write
    (buildpacks-phases 0.2 passes `-stack=/layers/stack.toml` and `-run-image=$(params.RUN_IMAGE)`
    to the exporter)."""
    if use.error is not None or use.run_images:
        return []
    findings = []
    for path in use.run_image_files:
        if not path.startswith("/") or "$(" in path:
            where = "a path the pod does not fix"
        elif (mount := _covering_mount(container, path)) is not None:
            where = f"volume {escape(str(mount.get('name')), 80)}"
        else:
            continue
        findings.append(Finding(TRUSTED_STEP_TARGET, (
            f"trusted step {name} names no run image, so the lifecycle would pull the one named "
            f"in {quote(path, 200)}, which is on {where}, where the build's other steps can "
            "write it; set the run's RUN_IMAGE (the task passes it as -run-image)")))
    return findings


def _target_findings(name: str, use: RegistryUse,
                     run: Mapping[str, Any] | None) -> list[Finding]:
    def wrong(what: str, value: str, expected: str) -> Finding:
        return Finding(TRUSTED_STEP_TARGET, f"trusted step {name} would use the registry "
                                            f"credentials on {what} {quote(value, 200)}; "
                                            f"{expected}")

    if use.error is not None:
        return [Finding(TRUSTED_STEP_TARGET, (
            f"trusted step {name}: its lifecycle arguments cannot be read unambiguously "
            f"({escape(use.error, 200)}); give every flag as -name=value"))]
    findings = [wrong("cache image", v, "a build may not write a cache image")
                for v in use.cache_images]
    findings += [wrong("insecure registry", v, "registries are reached over TLS only")
                 for v in use.insecure_registries]
    if run is None:
        return findings
    expected = {APP_IMAGE: param(run, APP_IMAGE), RUN_IMAGE: param(run, RUN_IMAGE),
                BUILDER_IMAGE: param(run, BUILDER_IMAGE)}
    checks = [("image", v, APP_IMAGE) for v in (*use.outputs, *use.previous_images)]
    checks += [("run image", v, RUN_IMAGE) for v in use.run_images]
    checks += [("build image", v, BUILDER_IMAGE) for v in use.build_images]
    for what, value, param_name in checks:
        wanted = expected[param_name]
        if not _same_image(value, wanted):
            shown = quote(wanted, 200) if isinstance(wanted, str) else "unset"
            findings.append(wrong(what, value, f"its PipelineRun's {param_name} is {shown}"))
    return findings


def _same_image(value: str, wanted: object) -> bool:
    if not isinstance(wanted, str):
        return False
    try:
        return parse_image(value).canonical == parse_image(wanted).canonical
    except ImageReferenceError:
        return False


def _literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's variables as the lifecycle sees them; one from elsewhere names no image."""
    env: dict[str, str] = {}
    for entry in _list(container.get("env")):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            value = entry.get("value")
            env[entry["name"]] = (value if isinstance(value, str) and "valueFrom" not in entry
                                  else "<valueFrom>")
    return env


def _apply(pod: Mapping[str, Any], changes: Iterable[ContainerChanges],
           steps: _PodSteps) -> dict[str, Any]:
    # Only the spec, the container lists and the containers that change are copied; the rest is
    # shared with `pod`. A deep copy of the whole pod would cost more than the mutation, and
    # fails on nesting deeper than Python's recursion limit, which any field could carry.
    patched: dict[str, Any] = dict(pod)
    spec = patched["spec"] = dict(pod["spec"])
    for change in changes:
        containers = spec[change.kind] = list(spec[change.kind])
        container = containers[change.index] = dict(containers[change.index])
        if change.flags:
            container["args"], _ = steps.stripped(pod["spec"][change.kind][change.index])
        if change.env:
            env = frozenset(change.env)
            container["env"] = [e for e in container["env"]
                                if not (isinstance(e, dict) and isinstance(e.get("name"), str)
                                        and e["name"] in env and "valueFrom" in e)]
        if change.env_from:
            container["envFrom"] = [e for e in container["envFrom"]
                                    if _secret_ref(e, "secretRef") not in change.env_from]
        if change.mounts or change.home_mounts:
            # Sets: a container may carry thousands of mounts, and each is looked up.
            removed, homes = frozenset(change.mounts), frozenset(change.home_mounts)
            home_volume = _home_volume_name(change.kind, change.index)
            mounts = []
            for mount in container.get("volumeMounts", []):
                path = mount.get("mountPath") if isinstance(mount, dict) else None
                if isinstance(path, str) and path in removed:
                    continue
                mounts.append({**mount, "name": home_volume}
                              if isinstance(path, str) and path in homes else mount)
            container["volumeMounts"] = mounts
            if change.home_mounts:
                _add_volume(spec, _home_volume(change.kind, change.index))
    return patched


def _home_volume_name(kind: str, index: int) -> str:
    prefix = {"containers": "", "initContainers": "init-"}.get(kind, "other-")
    return UNTRUSTED_HOME_VOLUME.format(index=f"{prefix}{index}")


def _home_volume(kind: str, index: int) -> dict[str, Any]:
    """A private home for one untrusted container; a volume of that name must be exactly this."""
    return {"name": _home_volume_name(kind, index), "emptyDir": {"medium": "Memory"}}


def _add_volume(spec: dict[str, Any], volume: dict[str, Any]) -> None:
    volumes = spec.get("volumes", [])
    if not any(isinstance(v, dict) and v.get("name") == volume["name"] for v in volumes):
        spec["volumes"] = [*volumes, volume]  # a new list: the pod under review keeps its own


# --- small helpers -----------------------------------------------------------------------------


def _containers(spec: Mapping[str, Any]) -> Iterable[tuple[str, int, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(_list(spec.get(kind))):
            if isinstance(container, dict):
                yield kind, index, container


# Every mount of a build pod is looked at, and pods bring the same paths again: bounded, as
# tenants choose the paths (the same bound as _normal_path's).
@functools.lru_cache(maxsize=4096)
def _credential_dir_of(path: str) -> str | None:
    """CREDS_SECRETS_DIR or CREDS_DIR when the path is at or under it, else None: a mount there
    is one an untrusted container loses."""
    normal = _normal_path(path)
    for directory in (CREDS_SECRETS_DIR, CREDS_DIR):
        if normal == directory or normal.startswith(directory + "/"):
            return directory
    return None


# A Tekton pod's mount paths are normalised thousands of times per review, and the same few
# dozen paths come back in every pod; bounded, as tenants choose the paths.
@functools.lru_cache(maxsize=4096)
def _normal_path(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
