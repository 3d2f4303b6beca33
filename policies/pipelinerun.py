"""PipelineRuns: whose run it is, what it may contain, and how it may change.

Five questions, each pure, and the rule that asks them (`check_pipelinerun`, `PIPELINERUNS`):

- `tool_of_requester`: which tool a CREATE is for, from trusted data only (username and groups,
  and for system users the Harbor project the run pushes to). Labels, params and annotations
  never decide identity; the tool label is checked against the derived tool. Runs are created
  only in `builds.namespace`, the one namespace where build pods are made safe.
- `check_new_run`: an ordered chain of named checks over the run's content, every finding kept.
- `run_access_refused`: who may UPDATE or DELETE a stored run: its own tool, the system users
  and the run managers; its status only the latter two.
- `check_changed_run`: an UPDATE may change status, `spec.status` only to cancel or stop (or to
  release a pending run), and metadata but never the tool label (nor, for a tool, beyond
  `kept_from_tools`).
- `kept_from_tools`: what only the system users, run managers and Tekton's controller may do,
  even to a tool's own run: orphan its TaskRuns (`policies.orphans`), give it labels and
  annotations that Tekton copies onto its pods (`policies.run_metadata`).

A new run that passes them must also fit in its tool's active-run slots (`policies.slots`): the
rule asks the cluster (`policies.questions.SlotClaim`), and takes a slot only for a run it will
admit.

Both Tekton shapes are read whatever `apiVersion` says: with `matchPolicy: Equivalent` and no
conversion webhook, a v1beta1 body arrives labelled `tekton.dev/v1` (tests/e2e/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.buildruns import param as run_param
from policies.decision import MAX_WARNING_CHARS, Decision, Finding, cap, decide, escape, quote
from policies.durations import NANOSECONDS_PER_SECOND, DurationError, parse_duration
from policies.harbor import harbor_project, tool_of_project
from policies.identity import User, is_tool_name
from policies.images import ImageReference, ImageReferenceError, parse_image
from policies.model import BuildsPolicy, ParamSpec, Policy, WorkspacesPolicy
from policies.objects import mapping
from policies.orphans import orphan_finalizer_added, orphaning_delete
from policies.questions import Answer, SlotClaim, Unavailable
from policies.rule import Ask, Facts, Review, Rule, Verdict
from policies.run_metadata import metadata_refused
from policies.slots import Claim, Reservation

# Reasons, one per condition a check detects.
NOT_A_TOOL = "NotATool"
WRONG_NAMESPACE = "NamespaceNotForBuilds"
TOOL_LABEL_WRONG = "ToolLabelWrong"
TOOL_LABEL_CHANGED = "ToolLabelChanged"
RUN_NOT_OWNED = "RunNotOwned"
SPEC_INVALID = "SpecInvalid"
FIELD_NOT_ALLOWED = "FieldNotAllowed"
PIPELINE_NOT_ALLOWED = "PipelineNotAllowed"
SERVICE_ACCOUNT_NOT_ALLOWED = "ServiceAccountNotAllowed"
WORKSPACE_NOT_ALLOWED = "WorkspaceNotAllowed"
TIMEOUT_NOT_ALLOWED = "TimeoutNotAllowed"
PARAM_NOT_ALLOWED = "ParamNotAllowed"
PARAM_MISSING = "ParamMissing"
PARAM_INVALID = "ParamInvalid"
APP_IMAGE_NOT_ALLOWED = "AppImageNotAllowed"
BUILDER_NOT_ALLOWED = "BuilderNotAllowed"
RUN_IMAGE_NOT_ALLOWED = "RunImageNotAllowed"
SPEC_CHANGED = "SpecChanged"
TOO_MANY_RUNS = "TooManyActiveRuns"
SLOTS_UNAVAILABLE = "ActiveRunsUnavailable"

APP_IMAGE = "APP_IMAGE"
BUILDER_IMAGE = "BUILDER_IMAGE"
RUN_IMAGE = "RUN_IMAGE"
ENV_VARS = "ENV_VARS"

# `spec.status` values a user may set on an existing run: they only ever stop work.
STOP_STATUSES = frozenset({"Cancelled", "CancelledRunFinally", "StoppedRunFinally",
                           "PipelineRunCancelled"})
PENDING = "PipelineRunPending"

# Spec fields that a run may set; each is checked below. Anything else (inline pipelineSpec,
# podTemplate, managedBy, resources, fields Tekton adds later) is refused by name.
ALLOWED_SPEC_FIELDS = frozenset({"params", "pipelineRef", "workspaces", "timeouts", "timeout",
                                 "taskRunTemplate", "serviceAccountName", "taskRunSpecs",
                                 "status"})
# A taskRunSpecs entry may name its task and the ServiceAccount (v1 and v1beta1 spellings).
_TASK_ACCOUNT_KEYS = ("serviceAccountName", "taskServiceAccountName")
_FIELD_HINTS = {
    "pipelineSpec": "an inline pipelineSpec runs arbitrary steps; reference an approved pipeline",
    "podTemplate": "a pod template override is not allowed",
    "taskPodTemplate": "a pod template override is not allowed",
    "stepSpecs": "step overrides (resources, images) are not allowed",
    "stepOverrides": "step overrides (resources, images) are not allowed",
    "sidecarSpecs": "sidecar overrides are not allowed",
    "sidecarOverrides": "sidecar overrides are not allowed",
    "computeResources": "compute resources are set by the pipeline, not by a run",
    "metadata": "labels and annotations for the task's pods are not allowed",
    "timeout": "a per-task timeout is not allowed; use spec.timeouts",
    "managedBy": "a run managed by another controller would never be reconciled",
    "resources": "PipelineResources are not supported",
}
# Tekton's WorkspaceBinding: one volume of these kinds, a name and a subPath.
_WORKSPACE_SOURCES = ("emptyDir", "persistentVolumeClaim", "volumeClaimTemplate", "configMap",
                      "secret", "projected", "csi")
_WORKSPACE_FIELDS = frozenset({"name", "subPath", *_WORKSPACE_SOURCES})
_NAME_AND_EMPTY_DIR = frozenset({"name", "emptyDir"})
_ALWAYS_REFUSED = {
    "projected": "one can carry a token of the build ServiceAccount",
    "csi": "a CSI driver takes attributes no rule here can judge",
}
# A claim template with one of these is filled from, or bound to, something that already exists.
_CLAIM_FROM_EXISTING = ("dataSource", "dataSourceRef", "volumeName", "selector")
_TIMEOUT_KEYS = ("pipeline", "tasks", "finally")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- Who the run is for --------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The tool a request acts for, or the finding that says why there is none."""

    tool: str | None
    finding: Finding | None = None


def tool_of_requester(policy: Policy, namespace: str, user: User,
                      run: Mapping[str, Any]) -> Identity:
    """Derive the tool from the requester or (system users) the Harbor project it pushes to."""
    if namespace != policy.builds.namespace:
        # A tool's own namespace included: build pods are made safe (credentials stripped, the
        # backstop) only in the build namespace, so a run elsewhere would either fail on the
        # registry allow-list or hand every step of it the push credentials.
        return Identity(None, Finding(
            WRONG_NAMESPACE,
            f"PipelineRuns may only be created in the build namespace {policy.builds.namespace},"
            f" where the registry credentials of their build pods are kept from the tool's "
            f"code; not in {escape(namespace)}. Start builds there (toolforge build start does)"))
    tools = policy.tools
    if user.username in tools.system_users:
        return _tool_from_app_image(policy.builds, run, user)
    in_group = any(group in tools.groups for group in user.groups)
    named_tool = tools.username_pattern.tool_of(user.username)
    if named_tool is not None and in_group:
        return Identity(named_tool)
    groups_text = ", ".join(tools.groups) or "(none configured)"
    if named_tool is not None:
        why = (f"user {quote(user.username)} is not in any of the groups {groups_text}, so "
               f"it is not the tool {named_tool}")
    else:
        why = (f"user {quote(user.username)} is not a tool account "
               f"(username {tools.username_pattern} in one of the groups {groups_text}) "
               "nor a system user")
    return Identity(None, Finding(NOT_A_TOOL, f"only tools may create PipelineRuns in "
                                              f"{namespace}: {why}"))


def _tool_from_app_image(builds: BuildsPolicy, run: Mapping[str, Any], user: User) -> Identity:
    value = run_param(run, APP_IMAGE)
    if not isinstance(value, str):
        return Identity(None, Finding(NOT_A_TOOL, f"{_acts_for(user)}, but the run has no "
                                                  f"string {APP_IMAGE} parameter"))
    try:
        image = parse_image(value)
    except ImageReferenceError as error:
        return Identity(None, Finding(NOT_A_TOOL, f"{_acts_for(user)}, but {APP_IMAGE} "
                                                  f"{quote(value)} is not an image reference: "
                                                  f"{error}"))
    project = image.path.split("/", 1)[0]
    tool = tool_of_project(builds.harbor_project, project)
    if tool is None:
        # The builds API writes the raw tool name into APP_IMAGE, while the project it creates
        # follows Harbor's rule: say which project that tool really has.
        raw = builds.harbor_project.tool_of(project)
        hint = (f"; the tool {raw}'s Harbor project is {harbor_project(builds.harbor_project, raw)}"
                if raw is not None else "")
        return Identity(None, Finding(NOT_A_TOOL, f"{_acts_for(user)}, but {quote(project)} in "
                                                  f"{APP_IMAGE} is not a tool's project "
                                                  f"({builds.harbor_project}){hint}"))
    return Identity(tool)


def _acts_for(user: User) -> str:
    # Messages are made only for a finding: most runs come from this user, and pass.
    return (f"system user {quote(user.username)} acts for the tool whose Harbor project "
            f"{APP_IMAGE} names")


# --- What a new run may contain ---------------------------------------------------------------


@dataclass(frozen=True)
class RunInput:
    """A run under review and the tool it is for."""

    tool: str
    run: Mapping[str, Any]
    builds: BuildsPolicy
    # Read once per review, not once per check (bench/HISTORY.md, entry 19), and at once: every
    # check reads them (a cached_property takes a lock on each first read).
    spec: Mapping[str, Any] = field(init=False)
    params: dict[str, Any] = field(init=False)
    """The params by name (the first of each name), as Tekton reads them."""

    def __post_init__(self) -> None:
        spec = _spec(self.run)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "params", _params(spec))

    @property
    def labels(self) -> Mapping[str, Any]:
        return mapping(mapping(self.run.get("metadata")).get("labels"))


Check = Callable[[RunInput], Iterator[Finding]]
"""A named check: yields one finding per problem it detects, nothing when the run is fine."""


def tool_label_is_wrong(run: RunInput) -> Iterator[Finding]:
    label = run.builds.tool_label
    value = run.labels.get(label)
    if value != run.tool:
        found = "is missing" if value is None else f"is {quote(value)}"
        yield Finding(TOOL_LABEL_WRONG, f"the label {label} {found}; set metadata.labels "
                                        f"{label}={run.tool} (the tool this run is for)")


def spec_has_forbidden_fields(run: RunInput) -> Iterator[Finding]:
    if not isinstance(run.run.get("spec"), dict):
        yield Finding(SPEC_INVALID, "spec must be an object")
        return
    for key, value in run.spec.items():
        if key in ALLOWED_SPEC_FIELDS or _is_empty(value):
            continue
        hint = _FIELD_HINTS.get(key, "this field is not allowed")
        yield Finding(FIELD_NOT_ALLOWED, f"spec.{escape(key)}: {hint}")
    template = run.spec.get("taskRunTemplate")
    if not _is_empty(template) and not isinstance(template, dict):
        yield Finding(SPEC_INVALID, "spec.taskRunTemplate must be an object")
        return
    for key, value in mapping(template).items():
        if key != "serviceAccountName" and not _is_empty(value):
            hint = _FIELD_HINTS.get(key, "this field is not allowed")
            yield Finding(FIELD_NOT_ALLOWED, f"spec.taskRunTemplate.{escape(key)}: {hint}")


def pipeline_is_not_approved(run: RunInput) -> Iterator[Finding]:
    ref = run.spec.get("pipelineRef")
    if not isinstance(ref, dict):
        yield Finding(PIPELINE_NOT_ALLOWED, f"spec.pipelineRef must name one of the approved "
                                            f"pipelines: {', '.join(run.builds.pipeline_names)}")
        return
    for key, value in ref.items():
        if key != "name" and not _is_empty(value):
            yield Finding(PIPELINE_NOT_ALLOWED, f"spec.pipelineRef.{escape(key)} is not allowed; "
                                                "reference an approved pipeline by name only")
    name = ref.get("name")
    if name not in run.builds.pipeline_names:
        yield Finding(PIPELINE_NOT_ALLOWED, f"pipeline {quote(name)} is not approved; use one "
                                            f"of: {', '.join(run.builds.pipeline_names)}")


def service_account_is_not_allowed(run: RunInput) -> Iterator[Finding]:
    allowed = run.builds.service_account
    # Tekton writes its default into a run that names none, so a run may carry it as well.
    default = run.builds.tekton_default_service_account
    places = (("spec.taskRunTemplate.serviceAccountName",
               mapping(run.spec.get("taskRunTemplate")).get("serviceAccountName")),
              ("spec.serviceAccountName", run.spec.get("serviceAccountName")))
    for path, value in places:
        if not _is_empty(value) and value not in (allowed, default):
            yield Finding(SERVICE_ACCOUNT_NOT_ALLOWED, f"{path} {quote(value)} is not allowed; "
                                                       f"leave it out or use {allowed}")


def task_run_specs_are_not_allowed(run: RunInput) -> Iterator[Finding]:
    """taskRunSpecs: an entry per task the approved pipeline lists, naming only the build SA."""
    specs = run.spec.get("taskRunSpecs")
    if _is_empty(specs):
        return
    if not isinstance(specs, list):
        yield Finding(SPEC_INVALID, "spec.taskRunSpecs must be a list")
        return
    name = mapping(run.spec.get("pipelineRef")).get("name")
    pipeline = run.builds.pipeline(name)
    tasks = pipeline.tasks if pipeline is not None else ()
    listed = ", ".join(tasks) or "none"
    seen: set[object] = set()
    for index, entry in enumerate(specs):
        where = f"spec.taskRunSpecs[{index}]"
        if not isinstance(entry, dict):
            yield Finding(SPEC_INVALID, f"{where} must be an object")
            continue
        task = entry.get("pipelineTaskName")
        if not isinstance(task, str) or task not in tasks:
            yield Finding(FIELD_NOT_ALLOWED, f"{where}.pipelineTaskName {_shown(task)} is not a "
                                             f"task of the pipeline {_shown(name)} that a run "
                                             f"may give a taskRunSpecs entry (tasks: {listed})")
        elif task in seen:
            yield Finding(SPEC_INVALID, f"{where}: the task {task} has more than one entry")
        seen.add(task)
        for key, value in entry.items():
            if key == "pipelineTaskName" or _is_empty(value):
                continue
            if key in _TASK_ACCOUNT_KEYS:
                if value != run.builds.service_account:
                    yield Finding(SERVICE_ACCOUNT_NOT_ALLOWED, (
                        f"{where}.{key} {quote(value)} is not allowed; leave it out or use "
                        f"{run.builds.service_account}"))
                continue
            hint = _FIELD_HINTS.get(key, "only pipelineTaskName and serviceAccountName may be set")
            yield Finding(FIELD_NOT_ALLOWED, f"{where}.{escape(key)}: {hint}")


def workspace_is_not_allowed(run: RunInput) -> Iterator[Finding]:
    workspaces = run.spec.get("workspaces")
    if _is_empty(workspaces):
        return
    if not isinstance(workspaces, list):
        yield Finding(SPEC_INVALID, "spec.workspaces must be a list")
        return
    for index, workspace in enumerate(workspaces):
        if not isinstance(workspace, dict):
            yield Finding(SPEC_INVALID, f"spec.workspaces[{index}] must be an object")
            continue
        if workspace.keys() <= _NAME_AND_EMPTY_DIR and workspace.get("emptyDir") is not None:
            continue  # what the builds API binds: nothing to find, without looking further
        for problem in _workspace_problems(workspace, run.builds.workspaces):
            # The workspace's name is quoted only for a finding (most runs have none).
            yield Finding(WORKSPACE_NOT_ALLOWED,
                          f"workspace {quote(workspace.get('name', index))}{problem}")


def _workspace_problems(workspace: Mapping[str, Any], allowed: WorkspacesPolicy,
                        ) -> Iterator[str]:
    """What is wrong with one workspace binding, each as the rest of a sentence about it."""
    extra = [key for key, value in workspace.items()
             if key not in _WORKSPACE_FIELDS and value is not None]
    for key in extra:
        yield f": {escape(key)} is not allowed; use an emptyDir"
    kinds = [key for key in _WORKSPACE_SOURCES if workspace.get(key) is not None]
    if len(kinds) > 1:
        yield f" names {len(kinds)} volumes ({', '.join(sorted(kinds))}); use one"
    elif kinds:
        why = _workspace_refusal(kinds[0], workspace[kinds[0]], allowed)
        if why:
            yield f": {why}"
    elif not extra:
        yield " has no volume; use an emptyDir"
    sub_path = workspace.get("subPath")
    if not _is_empty(sub_path) and escapes(sub_path):
        yield f": subPath {quote(sub_path)} must be a relative path without .."


def _workspace_refusal(kind: str, source: object, allowed: WorkspacesPolicy) -> str:
    """Why a workspace's volume is not allowed, or "" when it is."""
    if kind == "emptyDir":
        return ""
    if not isinstance(source, dict):
        return f"{kind} must be an object"
    ask = "; use an emptyDir, or ask the platform admins to allow it"
    if kind == "persistentVolumeClaim":
        name = source.get("claimName")
        if name in allowed.persistent_volume_claims:
            return ""
        return f"the claim {quote(name)} is not one a run may mount (it holds data of the " \
               f"build namespace){ask}"
    if kind == "volumeClaimTemplate":
        if not allowed.volume_claim_templates:
            return f"a volumeClaimTemplate is not allowed{ask}"
        spec = mapping(source.get("spec"))
        taken = sorted(key for key in _CLAIM_FROM_EXISTING if not _is_empty(spec.get(key)))
        if taken:
            return f"a volumeClaimTemplate may not set spec.{', spec.'.join(taken)}: a new " \
                   "claim must start empty, not from another claim, snapshot or volume"
        return ""
    if kind in ("configMap", "secret"):
        key, names = (("name", allowed.config_maps) if kind == "configMap"
                      else ("secretName", allowed.secrets))
        name = source.get(key)
        if name in names:
            return ""
        return f"the {kind} {quote(name)} is not one a run may mount{ask}"
    return f"{kind} volumes are never allowed ({_ALWAYS_REFUSED[kind]}); use an emptyDir"


def timeout_is_not_allowed(run: RunInput) -> Iterator[Finding]:
    timeouts = run.spec.get("timeouts")
    if not _is_empty(timeouts) and not isinstance(timeouts, dict):
        yield Finding(SPEC_INVALID, "spec.timeouts must be an object")
        return
    places: list[tuple[str, object]] = [("spec.timeout", run.spec.get("timeout"))]
    for key, value in mapping(timeouts).items():
        if key not in _TIMEOUT_KEYS:
            yield Finding(FIELD_NOT_ALLOWED, f"spec.timeouts.{escape(key)} is not a Tekton timeout")
            continue
        places.append((f"spec.timeouts.{key}", value))
    limit = round(run.builds.max_timeout * NANOSECONDS_PER_SECOND)
    for path, value in places:
        if value is None:
            continue
        if not isinstance(value, str):
            yield Finding(TIMEOUT_NOT_ALLOWED, f"{path} must be a duration string such as 1h")
            continue
        # Tekton reads the string with Go's time.ParseDuration; so does parse_duration.
        try:
            nanoseconds = parse_duration(value)
        except DurationError as error:
            yield Finding(TIMEOUT_NOT_ALLOWED, f"{path}: {error}")
            continue
        if nanoseconds == 0:
            yield Finding(TIMEOUT_NOT_ALLOWED, f"{path} {quote(value, 60)} is 0 as Tekton reads "
                                               "it, which means no timeout at all; use at most "
                                               f"{run.builds.max_timeout_text}")
        elif nanoseconds < 0:
            yield Finding(TIMEOUT_NOT_ALLOWED, f"{path} {quote(value, 60)} is negative; use at "
                                               f"most {run.builds.max_timeout_text}")
        elif nanoseconds > limit:
            yield Finding(TIMEOUT_NOT_ALLOWED, f"{path} {quote(value, 60)} is longer than the "
                                               f"limit {run.builds.max_timeout_text}")


def params_are_not_allowed(run: RunInput) -> Iterator[Finding]:
    params = run.spec.get("params")
    specs = run.builds.params.by_name
    if not _is_empty(params) and not isinstance(params, list):
        yield Finding(SPEC_INVALID, "spec.params must be a list")
        return
    seen: set[str] = set()
    for index, param in enumerate(params or ()):
        name = param.get("name") if isinstance(param, dict) else None
        if not isinstance(name, str):
            yield Finding(SPEC_INVALID, f"spec.params[{index}] must have a string name")
            continue
        if name in seen:
            yield Finding(PARAM_INVALID, f"parameter {quote(name)} is given more than once")
            continue
        seen.add(name)
        spec = specs.get(name)
        if spec is None:
            yield Finding(PARAM_NOT_ALLOWED, f"Pipeline parameter {quote(name)} cannot be used")
            continue
        value = param.get("value")
        if spec.type == "string" and isinstance(value, str) and not spec.refuses(value):
            continue  # the usual case, without a generator for it
        yield from _param_value_is_invalid(spec, value)
    for required in run.builds.params.required:
        if required.name not in seen:
            yield Finding(PARAM_MISSING, f"parameter {required.name} is required")


def _param_value_is_invalid(spec: ParamSpec, value: object) -> Iterator[Finding]:
    name = spec.name
    if spec.type == "string":
        if not isinstance(value, str):
            yield Finding(PARAM_INVALID, f"parameter {name} must be a string")
        elif spec.refuses(value):
            yield Finding(PARAM_INVALID, f"parameter {name} {quote(value, 80)} {_rule(spec)}")
        return
    if not isinstance(value, list):
        yield Finding(PARAM_INVALID, f"parameter {name} must be an array of strings")
        return
    for position, item in enumerate(value):
        if not isinstance(item, str):
            yield Finding(PARAM_INVALID, f"parameter {name}[{position}] must be a string")
        elif spec.refuses(item):
            yield Finding(PARAM_INVALID, f"parameter {name}[{position}] {quote(item, 80)} "
                                         f"{_rule(spec)}")


def _rule(spec: ParamSpec) -> str:
    if spec.pattern is not None:
        return f"does not match the pattern {quote(spec.pattern.text, 200)}"
    return f"is not one of {', '.join(quote(v, 80) for v in spec.values or ())}"


def app_image_is_not_own_project(run: RunInput) -> Iterator[Finding]:
    value = run.params.get(APP_IMAGE)
    if not isinstance(value, str):
        return  # reported by params_are_not_allowed
    try:
        image = parse_image(value)
    except ImageReferenceError as error:
        yield Finding(APP_IMAGE_NOT_ALLOWED, f"{APP_IMAGE} {quote(value)} is not an image "
                                             f"reference ({error}); expected "
                                             f"{_own_project_text(run)}")
        return
    why = _not_in_own_project(run, image)
    if why:
        yield Finding(APP_IMAGE_NOT_ALLOWED, f"{APP_IMAGE} {quote(value)} {why}; expected "
                                             f"{_own_project_text(run)}")


def run_image_is_not_allowed(run: RunInput) -> Iterator[Finding]:
    """The trusted exporter pulls RUN_IMAGE with the registry robot account, so it must be an
    approved run image or one of the tool's own: never another tool's private image.

    Never empty either: the exporter then takes the run image from files under /layers
    (stack.toml, analyzed.toml), which the untrusted build steps can write, so it would pull
    whatever the tool's code named. Whether a run must set it at all is the policy's
    `params.required` (the shipped policies require it; the builds API always sets it).
    """
    value = run.params.get(RUN_IMAGE)
    if not isinstance(value, str):
        return  # absent (params_are_not_allowed says whether it is required) or not a string
    if value == "":
        yield Finding(RUN_IMAGE_NOT_ALLOWED, f"{RUN_IMAGE} is empty, so the build would take its "
                                             "run image from files the build steps can write; "
                                             f"use {_run_images_text(run)}")
        return
    try:
        image = parse_image(value)
    except ImageReferenceError as error:
        yield Finding(RUN_IMAGE_NOT_ALLOWED, f"{RUN_IMAGE} {quote(value)} is not an image "
                                             f"reference ({error}); use {_run_images_text(run)}")
        return
    if image.canonical in run.builds.run_image_canonicals:
        return
    if _not_in_own_project(run, image):
        yield Finding(RUN_IMAGE_NOT_ALLOWED, f"run image {quote(value)} is neither approved "
                                             f"nor the tool's own; use {_run_images_text(run)}")


def _run_images_text(run: RunInput) -> str:
    approved = ", ".join(str(i) for i in run.builds.run_images) or "(none configured)"
    return f"an approved run image ({approved}) or an image in {_own_project_text(run)}"


def _own_project_text(run: RunInput) -> str:
    project = harbor_project(run.builds.harbor_project, run.tool)
    hosts = ", ".join(run.builds.harbor_hosts) or "(none configured)"
    return f"<harbor host>/{project}/<repository>[:tag], harbor host one of {hosts}"


def _not_in_own_project(run: RunInput, image: ImageReference) -> str:
    """Why `image` is not in the tool's own Harbor project, or "" when it is."""
    first, _, rest = image.path.partition("/")
    if image.registry not in run.builds.harbor_hosts:
        return "is not on an allowed Harbor host"
    if first != harbor_project(run.builds.harbor_project, run.tool) or not rest:
        return "is not in the tool's own Harbor project"
    return ""


def builder_is_not_approved(run: RunInput) -> Iterator[Finding]:
    value = run.params.get(BUILDER_IMAGE)
    if not isinstance(value, str):
        return
    try:
        image = parse_image(value)
    except ImageReferenceError as error:
        yield Finding(BUILDER_NOT_ALLOWED, f"{BUILDER_IMAGE} {quote(value)} is not an image "
                                           f"reference ({error}); use one of: "
                                           f"{_builders_text(run)}")
        return
    if image.canonical not in run.builds.builder_canonicals:
        yield Finding(BUILDER_NOT_ALLOWED, f"builder {quote(value)} is not approved; use one "
                                           f"of: {_builders_text(run)}")


def _builders_text(run: RunInput) -> str:
    return ", ".join(str(b) for b in run.builds.builders) or "(none configured)"


def env_var_is_invalid(run: RunInput) -> Iterator[Finding]:
    values = run.params.get(ENV_VARS)
    if not isinstance(values, list):
        return
    for position, item in enumerate(values):
        if not isinstance(item, str):
            continue
        name, equals, _ = item.partition("=")
        if not equals or not _ENV_NAME.fullmatch(name):
            yield Finding(PARAM_INVALID, f"{ENV_VARS}[{position}] must be NAME=value with a "
                                         f"valid variable name, not {quote(item, 80)}")


def path_param_escapes(run: RunInput) -> Iterator[Finding]:
    for name, value in run.params.items():
        if is_path_param(name) and isinstance(value, str) and value and escapes(value):
            yield Finding(PARAM_INVALID, f"parameter {name} {quote(value)} must be a relative "
                                         "path inside the source, without ..")


CREATE_CHECKS: tuple[Check, ...] = (
    tool_label_is_wrong,              # the label names the derived tool
    spec_has_forbidden_fields,        # no inline spec, overrides, managedBy, unknown fields
    pipeline_is_not_approved,         # pipelineRef: an approved name, no resolver or bundle
    service_account_is_not_allowed,   # only the builds ServiceAccount
    task_run_specs_are_not_allowed,   # per task of the pipeline: only the builds ServiceAccount
    workspace_is_not_allowed,         # emptyDir, or volumes the policy names
    timeout_is_not_allowed,           # 0 < timeout <= maxTimeout
    params_are_not_allowed,           # exactly the policy's params, each of its type
    app_image_is_not_own_project,     # pushes only to the tool's Harbor project
    builder_is_not_approved,          # an approved builder image
    run_image_is_not_allowed,         # an approved run image or the tool's own
    env_var_is_invalid,               # ENV_VARS items are NAME=value
    path_param_escapes,               # path params stay inside the source
)


def check_new_run(tool: str, run: Mapping[str, Any], builds: BuildsPolicy,
                  checks: Iterable[Check] = CREATE_CHECKS) -> tuple[Finding, ...]:
    """Every finding of every check on a run about to be created for `tool`."""
    subject = RunInput(tool=tool, run=run, builds=builds)
    return tuple(finding for check in checks for finding in check(subject))


# --- Who may change or delete an existing run ------------------------------------------------


def owner_of_run(policy: Policy, namespace: str, run: Mapping[str, Any]) -> str | None:
    """The tool a stored run belongs to, or None when it is no tool's.

    In the build namespace: its tool label, which was checked against the requester when the run
    was created and cannot change since. In a tool's namespace (runs made before that was
    refused): that tool.
    """
    if namespace == policy.builds.namespace:
        labels = mapping(mapping(run.get("metadata")).get("labels"))
        value = labels.get(policy.builds.tool_label)
        return value if isinstance(value, str) and is_tool_name(value) else None
    return policy.tools.namespace_pattern.tool_of(namespace)


def run_access_refused(policy: Policy, namespace: str, user: User, run: Mapping[str, Any], *,
                       operation: str, sub_resource: str = "") -> Finding | None:
    """Why `user` may not UPDATE or DELETE the stored `run` (None when they may).

    Its owner (the tool the run belongs to), the system users and the run managers may; and
    only the last two may write its status: a tool that marked its own run finished would free
    its slot while the build goes on.
    """
    builds = policy.builds
    if manages_runs(policy, user):
        return None
    name = escape(str(mapping(run.get("metadata")).get("name") or "(unnamed)"))
    if sub_resource:
        return Finding(RUN_NOT_OWNED, (
            f"only the system users and the run managers (Tekton's controller) may write "
            f"pipelineruns/{escape(sub_resource)}; user {quote(user.username)} may not, for "
            f"PipelineRun {name}"))
    tools = policy.tools
    requester = (tools.username_pattern.tool_of(user.username)
                 if any(group in tools.groups for group in user.groups) else None)
    owner = owner_of_run(policy, namespace, run)
    if owner is not None and requester == owner:
        return None
    verb = "delete" if operation == "DELETE" else "change"
    whose = (f"it belongs to the tool {owner}" if owner is not None
             else f"it belongs to no tool (no valid {builds.tool_label} label)")
    return Finding(RUN_NOT_OWNED, (
        f"user {quote(user.username)} may not {verb} the PipelineRun {name}: {whose}, and only "
        "its tool, the system users and the run managers may"))


def manages_runs(policy: Policy, user: User) -> bool:
    """The system users and the run managers: trusted with every tool's runs."""
    return (user.username in policy.tools.system_users
            or user.username in policy.builds.run_managers)


def kept_from_tools(review: Review, policy: Policy) -> list[Finding]:
    """What a tool may not do to its own run either, though the system users, the run managers
    and Tekton's controller may: orphan its TaskRuns and pods (`policies.orphans`), give it
    labels or annotations Tekton would copy onto them (`policies.run_metadata`)."""
    if manages_runs(policy, review.user) or \
            review.user.username == policy.builds.tekton_controller:
        return []
    if review.operation == "DELETE":
        orphaning = orphaning_delete(review.old_object or {}, review.delete_options)
        return [orphaning] if orphaning is not None else []
    if review.sub_resource:
        return []  # a status write changes no metadata
    run = review.object or {}
    found = metadata_refused(review.old_object, run, policy.builds)
    finalizer = orphan_finalizer_added(review.old_object, run)
    return [*found, finalizer] if finalizer is not None else found


# --- How an existing run may change ---------------------------------------------------------


def check_changed_run(old: Mapping[str, Any], new: Mapping[str, Any],
                      builds: BuildsPolicy) -> tuple[Finding, ...]:
    """UPDATE: metadata and status pass; spec only cancels, stops or releases; the label stays."""
    findings: list[Finding] = []
    label = builds.tool_label
    old_tool = mapping(mapping(old.get("metadata")).get("labels")).get(label)
    new_tool = mapping(mapping(new.get("metadata")).get("labels")).get(label)
    if old_tool != new_tool:
        findings.append(Finding(TOOL_LABEL_CHANGED, f"the label {label} cannot change (it was "
                                                    f"{_shown(old_tool)}, not {_shown(new_tool)})"))
    old_spec = _without_tekton_defaults(_spec(old), builds)
    new_spec = _without_tekton_defaults(_spec(new), builds)
    changed = sorted(k for k in set(old_spec) | set(new_spec)
                     if _comparable(k, old_spec.get(k)) != _comparable(k, new_spec.get(k))
                     and k != "status")
    if changed:
        findings.append(Finding(SPEC_CHANGED, "the spec of a PipelineRun cannot change after "
                                              f"creation (changed: {escape(', '.join(changed))}); "
                                              "create a new run instead"))
    old_status, new_status = old_spec.get("status"), new_spec.get("status")
    if old_status != new_status and not status_change_is_allowed(old_status, new_status):
        stops = ", ".join(sorted(STOP_STATUSES - {"PipelineRunCancelled"}))
        findings.append(Finding(SPEC_CHANGED, f"spec.status may only be set to one of {stops} "
                                              f"(or {PENDING} removed), not {_shown(new_status)}"))
    return tuple(findings)


def _without_tekton_defaults(spec: Mapping[str, Any], builds: BuildsPolicy,
                             ) -> Mapping[str, Any]:
    """The spec without the ServiceAccount Tekton fills in when a run names none.

    Its controller writes that default back with its first update of a run created without one
    (where no Tekton webhook defaulted it at creation): not a change the run's author made.
    """
    default = builds.tekton_default_service_account
    trimmed = dict(spec)
    template = spec.get("taskRunTemplate")
    if isinstance(template, dict) and template.get("serviceAccountName") == default:
        rest = {k: v for k, v in template.items() if k != "serviceAccountName"}
        if rest:
            trimmed["taskRunTemplate"] = rest
        else:
            del trimmed["taskRunTemplate"]
    if spec.get("serviceAccountName") == default:
        del trimmed["serviceAccountName"]
    return trimmed


def _comparable(key: str, value: object) -> object:
    """A spec field as compared on UPDATE: durations by their length, not their spelling.

    The Tekton controller writes the run back (to add its labels) from its Go structs, so a
    stored `timeouts.pipeline: 1h` comes back as `1h0m0s`, and a struct field the run left out
    comes back empty (`taskRunTemplate: {}`: omitempty does not omit a struct); neither is a
    change.
    """
    def length(duration: object) -> object:
        try:
            return parse_duration(duration) if isinstance(duration, str) else duration
        except DurationError:
            return duration

    if _is_empty(value):
        return None
    if key == "timeout":
        return length(value)
    if key == "timeouts" and isinstance(value, dict):
        return {k: length(v) for k, v in value.items()}
    return value


def status_change_is_allowed(old: object, new: object) -> bool:
    """Stopping is always allowed; releasing a pending run is too (it already holds a slot)."""
    if new in STOP_STATUSES:
        return True
    return old == PENDING and _is_empty(new)


# --- The rule --------------------------------------------------------------------------------


def check_pipelinerun(review: Review, facts: Facts) -> Verdict:
    """PipelineRuns: own Harbor project, approved builders and pipelines, N active runs."""
    policy = facts.policy
    builds = policy.builds
    run = review.object or {}
    if review.operation in ("UPDATE", "DELETE"):
        # Only the run's own tool, the system users and the run managers; a subresource (status)
        # cannot change the spec, so only who writes it is judged.
        stored = review.old_object or {}
        refusal = run_access_refused(policy, review.namespace, review.user, stored,
                                     operation=review.operation,
                                     sub_resource=review.sub_resource)
        findings = [refusal] if refusal is not None else []
        if review.operation == "UPDATE" and not review.sub_resource:
            findings += check_changed_run(stored, run, builds)
        findings += kept_from_tools(review, policy)
        return decide(findings, builds.mode)
    identity = tool_of_requester(policy, review.namespace, review.user, run)
    if identity.tool is None:
        return decide([f for f in (identity.finding,) if f is not None], builds.mode)
    tool = identity.tool
    found = list(check_new_run(tool, run, builds))
    found += kept_from_tools(review, policy)
    metadata = mapping(run.get("metadata"))
    candidate = Reservation(uid=str(metadata.get("uid") or ""), namespace=review.namespace,
                            name=review.name or str(metadata.get("name") or ""),
                            reserved_at=facts.now)
    # Reserve only for a run that will be admitted; otherwise just look, to report a full slot too.
    reserve = not review.dry_run and (not found or builds.mode == "warn")
    claim = SlotClaim(tool=tool, candidate=candidate, limit=builds.max_active_runs_for(tool),
                      label=builds.tool_label, reserve=reserve)

    def with_slots(answer: Answer) -> Decision:
        if answer is None:
            return merge_warnings(decide(found, builds.mode), (not_checked_warning(tool),))
        if isinstance(answer, Unavailable):
            return decide([*found, slots_unavailable(tool, answer.cause)], builds.mode)
        if not isinstance(answer, Claim):
            raise TypeError(f"SlotClaim answered with a {type(answer).__name__}")
        if not answer.fits:
            return decide([*found, too_many_runs(tool, answer.limit, answer.occupants)],
                          builds.mode)
        return decide(found, builds.mode)

    return Ask(claim, with_slots)


PIPELINERUNS = Rule(check_pipelinerun, operations=frozenset({"CREATE", "UPDATE", "DELETE"}),
                    exempt_namespaces=True)


# --- Messages about slots -------------------------------------------------------------------


def too_many_runs(tool: str, limit: int, occupants: Iterable[str]) -> Finding:
    """The finding for a tool that already has `limit` active runs."""
    held = list(occupants)
    if limit == 0:
        return Finding(TOO_MANY_RUNS, f"the tool {tool} may not run builds (its limit is 0)")
    example = held[0] if held else "NAMESPACE/NAME"
    namespace, _, name = example.partition("/")
    shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
    return Finding(TOO_MANY_RUNS, (
        f"the tool {tool} already has {len(held)} active PipelineRun(s) and may have at most "
        f"{limit}: {shown}; wait for one to finish or cancel it with: kubectl patch pipelinerun "
        f"{name} -n {namespace} --type merge -p '{{\"spec\":{{\"status\":\"Cancelled\"}}}}'"))


def slots_unavailable(tool: str, cause: str) -> Finding:
    """The finding for a run whose tool's active runs the cluster could not count in time."""
    # What to do comes first (users read the start); the technical cause last, for admins.
    return Finding(SLOTS_UNAVAILABLE, (
        f"could not check how many PipelineRuns the tool {tool} has running, so this run was "
        "not created: try again in a minute, and tell the platform admins if it keeps failing "
        f"(cause: {cause})"))


def not_checked_warning(tool: str) -> str:
    """The warning for a review made without a cluster (offline), where slots cannot be seen."""
    return (f"the number of active PipelineRuns of the tool {tool} was not checked: there is no "
            "cluster connection (offline review)")


def merge_warnings(decision: Decision, warnings: Iterable[str]) -> Decision:
    """The decision with more warnings after its own."""
    extra = tuple(cap(w, MAX_WARNING_CHARS) for w in warnings)
    # Not `replace` from dataclasses, which reads the fields on every call: every review
    # made without a cluster connection comes here.
    return Decision(allowed=decision.allowed, reason=decision.reason, message=decision.message,
                    warnings=(*decision.warnings, *extra), audit=decision.audit,
                    patched=decision.patched)


# --- Reading the object ---------------------------------------------------------------------


def is_path_param(name: str) -> bool:
    """Params that name a path inside the source tree (SOURCE_SUBPATH and the like)."""
    return name.endswith(("SUBPATH", "_PATH", "_DIR"))


def escapes(path: object) -> bool:
    """True for a path that is absolute or climbs out with `..`."""
    if not isinstance(path, str):
        return True
    return path.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", path)


def _params(spec: Mapping[str, Any]) -> dict[str, Any]:
    params = spec.get("params")
    found: dict[str, Any] = {}
    if isinstance(params, list):
        for param in params:
            if isinstance(param, dict) and isinstance(param.get("name"), str):
                found.setdefault(param["name"], param.get("value"))
    return found


def _spec(run: Mapping[str, Any]) -> Mapping[str, Any]:
    return mapping(run.get("spec"))


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _shown(value: object) -> str:
    return "unset" if value is None else quote(value)
