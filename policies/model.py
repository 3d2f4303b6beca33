"""The policy an admin writes in the `toolforge-admission-policy` ConfigMap, parsed and checked.

`parse_policy` turns YAML text into a frozen `Policy`, or raises `PolicyError` listing every
problem with its path (`builds.maxActiveRuns: must be an integer >= 1`). Unknown keys are errors,
so a typo never silently turns a rule off.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import types
import typing
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from policies.allowlist import AllowLists
from policies.decision import Mode, cap
from policies.durations import format_duration, parse_seconds
from policies.harbor import PROJECT_PLACEHOLDER
from policies.identity import ToolPattern
from policies.images import (
    ImageReference,
    ImageReferenceError,
    RepositoryPrefix,
    parse_image,
    parse_prefix,
)
from policies.patterns import AnchoredPattern

# The kubelet and the API server limit a ConfigMap to 1 MiB; a policy file larger than that did not
# come from one, and parsing megabytes of YAML in every worker is not worth allowing.
MAX_POLICY_BYTES = 1024 * 1024
MAX_PROBLEM_CHARS = 500


class PolicyError(ValueError):
    """A policy that cannot be used; `problems` lists each one with its path."""

    def __init__(self, problems: list[str]) -> None:
        # Problems quote keys and names from the file; each stays one printable, bounded line
        # in kubectl's answer, the logs and /readyz.
        shown = tuple(cap(_printable(problem), MAX_PROBLEM_CHARS) for problem in problems)
        super().__init__("; ".join(shown))
        self.problems = shown


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _tool_pattern(value: object) -> object:
    if isinstance(value, ToolPattern):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string with one {tool} placeholder")
    return ToolPattern.parse(value)


def _image(value: object) -> object:
    if isinstance(value, ImageReference):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an image reference string")
    try:
        return parse_image(value)
    except ImageReferenceError as error:
        raise ValueError(str(error)) from None


def _prefix(value: object) -> object:
    if isinstance(value, RepositoryPrefix):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a registry host or repository prefix string")
    # `{tool}` and `{harborProject}` are expanded per namespace at check time; validate the entry
    # with a sample tool name.
    try:
        parse_prefix(value.replace("{tool}", "x").replace(PROJECT_PLACEHOLDER, "tool-x"))
    except ImageReferenceError as error:
        raise ValueError(str(error)) from None
    return value


def _duration(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("must be a duration string with a unit, e.g. 1h or 90m")
    if not isinstance(value, str):
        raise ValueError("must be a duration string such as 1h or 90m")
    seconds = parse_seconds(value)
    if seconds <= 0:
        raise ValueError("must be longer than 0")
    return seconds


def _value_pattern(value: object) -> object:
    if isinstance(value, AnchoredPattern):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a regular expression string (RE2 syntax)")
    return AnchoredPattern.parse(value)


def _at_least(minimum: int) -> AfterValidator:
    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        return value

    return AfterValidator(check)


def _host(value: str) -> str:
    try:
        prefix = parse_prefix(value)
    except ImageReferenceError as error:
        raise ValueError(str(error)) from None
    if prefix.path:
        raise ValueError("must be a registry host (with an optional port), not a repository")
    return prefix.registry


def _name(value: str) -> str:
    if not value or len(value) > 253 or value != value.strip():
        raise ValueError("must be a non-empty name")
    return value


Name = Annotated[StrictStr, AfterValidator(_name)]
Pattern = Annotated[ToolPattern, BeforeValidator(_tool_pattern)]
Image = Annotated[ImageReference, BeforeValidator(_image)]
Prefix = Annotated[str, BeforeValidator(_prefix)]
Host = Annotated[StrictStr, AfterValidator(_host)]
Seconds = Annotated[float, BeforeValidator(_duration)]
ValuePattern = Annotated[AnchoredPattern, BeforeValidator(_value_pattern)]
PositiveInt = Annotated[object, _at_least(1)]
Count = Annotated[object, _at_least(0)]


class _Section(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        arbitrary_types_allowed=True,
        # Each field's docstring is its description: docs/policy-reference.md is written from
        # them (`make generate`), so a new key is documented where it is declared.
        use_attribute_docstrings=True,
    )

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        # A cached_property is derived from the fields it was computed from; a copy with other
        # fields computes its own.
        for name, member in vars(type(self)).items():
            if isinstance(member, cached_property):
                copied.__dict__.pop(name, None)
        return copied


class ToolsPolicy(_Section):
    """How tools are recognised."""

    namespace_pattern: Pattern = ToolPattern.parse("tool-{tool}")
    """A tool's own namespace."""
    username_pattern: Pattern = ToolPattern.parse("{tool}")
    """The username of a tool's account (the CN of its client certificate)."""
    groups: tuple[Name, ...] = ("toolforge",)
    """A requester is a tool account only when it is in one of these groups."""
    system_users: tuple[Name, ...] = ()
    """Exact usernames that may act for any tool."""


class ParamSpec(_Section):
    """A PipelineRun parameter a tool may set, and the JSON type of its value."""

    name: Name
    """The parameter's name; an entry that is only a name is `{name: <name>}`."""
    type: Literal["string", "array"] = "string"
    """The JSON type its value must have."""
    pattern: ValuePattern | None = None
    """An RE2 expression the whole value (each item of an array) must match."""
    values: tuple[StrictStr, ...] | None = None
    """The only values allowed (for each item of an array)."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_rule_for_values(self) -> ParamSpec:
        if self.pattern is not None and self.values is not None:
            raise ValueError("give a pattern or a list of values, not both")
        if self.values is not None and not self.values:
            raise ValueError("values must list at least one value")
        return self

    def refuses(self, value: str) -> bool:
        """True when `value` (a string, or one item of an array) breaks the entry's rule."""
        if self.pattern is not None:
            return not self.pattern.matches(value)
        return self.values is not None and value not in self.values


class ParamsPolicy(_Section):
    """The parameters a PipelineRun may set; any other parameter is refused."""

    required: tuple[ParamSpec, ...] = ()
    """Parameters every run must set."""
    optional: tuple[ParamSpec, ...] = ()
    """Parameters a run may set."""

    @model_validator(mode="after")
    def _unique(self) -> ParamsPolicy:
        names = [p.name for p in (*self.required, *self.optional)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"parameters listed more than once: {', '.join(repeated)}")
        return self

    @cached_property
    def by_name(self) -> Mapping[str, ParamSpec]:
        return {p.name: p for p in (*self.required, *self.optional)}


class ApprovedPipeline(_Section):
    """A Pipeline runs may reference, and the tasks a `taskRunSpecs` entry may name."""

    name: Name
    """The Pipeline's name, as a run's `pipelineRef.name` gives it."""
    tasks: tuple[Name, ...] = ()
    """Pipeline tasks a run may give a `taskRunSpecs` entry; the entry may only name the build
    ServiceAccount (the builds API names it for `build-from-git`). Empty: no entry at all."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class WorkspacesPolicy(_Section):
    """What a run's workspaces may be besides emptyDir (the only kind the builds API uses).

    Each other kind reads or keeps data of the shared build namespace, so it is refused unless
    named here. `projected` and `csi` are always refused: a projected volume can hold a token of
    the build ServiceAccount, and a CSI driver takes attributes no rule here can judge.
    """

    persistent_volume_claims: tuple[Name, ...] = ()
    """Claims a run may mount by `persistentVolumeClaim.claimName`."""
    volume_claim_templates: bool = False
    """Whether a run may ask for a new claim; never one filled from another (`dataSource`,
    `dataSourceRef`) or bound to a chosen volume (`volumeName`, `selector`)."""
    config_maps: tuple[Name, ...] = ()
    """ConfigMaps a run may mount as a workspace, by name."""
    secrets: tuple[Name, ...] = ()
    """Secrets a run may mount as a workspace, by name."""


def _metadata_key(value: str) -> str:
    if not value or value != value.strip() or "*" in value[:-1] or value == "*":
        raise ValueError("must be a label or annotation key, or the start of one followed by *")
    return value


MetadataKey = Annotated[StrictStr, AfterValidator(_metadata_key)]


class RunMetadataPolicy(_Section):
    """The labels and annotations a tool may give its PipelineRuns, besides `toolLabel`.

    Tekton copies a run's labels and annotations onto its TaskRuns and build pods, where they mean
    something: an AppArmor or seccomp annotation changes how a step is confined, a label puts a
    pod under a NetworkPolicy. So a tool may set (at creation, or add or change later) only the
    keys listed here; the keys a run already has (Tekton's own, written by its controller) may stay.
    The system users, the run managers and the Tekton controller may set any. An entry is a key
    (`example.org/note`) or the start of keys followed by `*` (`example.org/*`)."""

    labels: tuple[MetadataKey, ...] = ()
    """Label keys a tool may set, besides `toolLabel` (always allowed)."""
    annotations: tuple[MetadataKey, ...] = ("kubectl.kubernetes.io/last-applied-configuration",)
    """Annotation keys a tool may set; by default the one `kubectl apply` writes."""

    def allows(self, kind: Literal["labels", "annotations"], key: str) -> bool:
        """Whether a tool may set the label or annotation `key`."""
        entries = self.labels if kind == "labels" else self.annotations
        return any(key == entry or (entry.endswith("*") and key.startswith(entry[:-1]))
                   for entry in entries)


class BuildsPolicy(_Section):
    """What a PipelineRun may contain, and how many may be active per tool."""

    namespace: Name = "image-build"
    """The shared namespace where builds run, and the only one where PipelineRuns may be created:
    build pods are made safe only here, so a run elsewhere (a tool's namespace included) is
    refused unless its namespace is exempt."""
    harbor_hosts: tuple[Host, ...] = ()
    """Registry hosts a run's APP_IMAGE may push to."""
    harbor_project: Pattern = ToolPattern.parse("tool-{tool}")
    """The tool's Harbor project, the only one its APP_IMAGE may name. Harbor allows no two
    separators in a row, so between adjacent `-`, `_`, `.` the builds API inserts `char.sep`, and
    so does the suite (`policies/harbor.py`: `a--b` pushes to `tool-a-char.sep-b`)."""
    pipelines: tuple[ApprovedPipeline, ...] = (ApprovedPipeline(name="buildpacks"),)
    """The pipelines a run may name in `pipelineRef`, each a name or `{name, tasks}`; `tasks`
    lists the tasks a `taskRunSpecs` entry may name, to set the build ServiceAccount and nothing
    else (pod templates, step and sidecar specs, compute resources, metadata and timeouts there are
    refused)."""
    builders: tuple[Image, ...] = ()
    """The BUILDER_IMAGE references a run may use, compared after normalisation."""
    run_images: tuple[Image, ...] = ()
    """RUN_IMAGE references a run may use besides the tool's own images (the trusted exporter
    pulls the run image with the registry credentials, so another tool's private image is
    refused). An empty RUN_IMAGE is refused: the exporter would then read the run image from
    files under /layers that the untrusted build steps can write; list RUN_IMAGE in
    `params.required` so that a run cannot leave it out either."""
    params: ParamsPolicy = ParamsPolicy()
    """The parameters a run may set; an entry is a name or `{name, type, pattern, values}`."""
    workspaces: WorkspacesPolicy = WorkspacesPolicy()
    """What a run's workspaces may be besides `emptyDir`."""
    run_metadata: RunMetadataPolicy = RunMetadataPolicy()
    """The labels and annotations a tool may give a run (Tekton copies them onto its pods)."""
    max_active_runs: PositiveInt = 1
    """Active runs per tool (an integer >= 1)."""
    max_active_runs_overrides: Mapping[Name, Count] = {}
    """Per-tool limits, tool name -> integer >= 0; 0 stops a tool from building at all."""
    max_timeout: Seconds = Field(default=3600.0, json_schema_extra={"format": "duration"})
    """The longest timeout a run may ask for (`timeouts.pipeline`, `.tasks`, `.finally`, v1beta1
    `timeout`). Each is read exactly as Go's `time.ParseDuration` reads it, and one that Go reads
    as 0 (`0s`, `0.5ns`) is refused, since 0 means no timeout at all."""
    tool_label: Name = "toolforge.org/tool"
    """The label every run must carry with its tool's name: checked against the tool derived from
    the requester, never trusted, never changed afterwards; it counts a tool's active runs and
    says who may change or delete the run. Toolforge's builds API writes `user`."""
    service_account: Name = "default"
    """The only ServiceAccount a run may name (`taskRunTemplate.serviceAccountName`, v1beta1
    `serviceAccountName`, and in `taskRunSpecs`)."""
    tekton_controller: Name = "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller"
    """The Tekton controller's username: the only requester that may create TaskRuns, CustomRuns
    and pods in the build namespace, or change those pods."""
    run_managers: tuple[Name, ...] = (
        "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller",
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:serviceaccount:kube-system:namespace-controller",
        "system:kube-controller-manager",
    )
    """Exact usernames that, besides the system users, may update and delete any tool's run (not
    create one): Tekton's controller writes runs and their status, Kubernetes' garbage collector
    and namespace controller delete them (without it, deleting a namespace with runs hangs).
    Anyone else may update (cancel, release, relabel) or delete only a run of their own tool, and
    only these and the system users may write `pipelineruns/status`, orphan a run's TaskRuns
    (delete it with `propagationPolicy: Orphan`, or give it the `orphan` finalizer), or give a run
    labels and annotations beyond `runMetadata`. TaskRuns and CustomRuns in the build namespace
    (and their status) only these, the system users and the Tekton controller may update or
    delete at all: list here any other controller that writes them (Tekton Chains, Tekton
    Results)."""
    tekton_default_service_account: Name = "default"
    """Tekton's config-defaults `default-service-account`. Tekton writes it into every run that
    names none, so a run may carry it too: naming it grants nothing that leaving it out does not."""
    mode: Mode = "enforce"
    """`enforce` refuses a run with findings; `warn` admits it and returns them as warnings."""

    @cached_property
    def pipeline_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pipelines)

    @cached_property
    def builder_canonicals(self) -> frozenset[str]:
        """`builders`, normalised (`ImageReference.canonical`), as a run's are compared."""
        return frozenset(b.canonical for b in self.builders)

    @cached_property
    def run_image_canonicals(self) -> frozenset[str]:
        """`run_images`, normalised, as a run's RUN_IMAGE is compared."""
        return frozenset(i.canonical for i in self.run_images)

    def pipeline(self, name: object) -> ApprovedPipeline | None:
        return next((p for p in self.pipelines if p.name == name), None)

    def max_active_runs_for(self, tool: str) -> int:
        limit = self.max_active_runs_overrides.get(tool, self.max_active_runs)
        assert isinstance(limit, int)  # checked by _at_least
        return limit

    @property
    def max_timeout_text(self) -> str:
        return format_duration(self.max_timeout)


class RegistryException(_Section):
    """An extra allowed prefix for one namespace, optionally until a date (exclusive)."""

    prefix: Prefix
    """A registry host or repository prefix, as in `registries.allowed`; an entry that is only a
    prefix is `{prefix: <prefix>}`."""
    expires: datetime.date | None = None
    """The first day (UTC, `YYYY-MM-DD`) on which the exception no longer applies; without it,
    the exception does not end."""

    @model_validator(mode="before")
    @classmethod
    def _from_prefix(cls, value: Any) -> Any:
        return {"prefix": value} if isinstance(value, str) else value

    @field_validator("expires", mode="before")
    @classmethod
    def _date_only(cls, value: Any) -> Any:
        if isinstance(value, datetime.datetime):
            raise ValueError("must be a date (YYYY-MM-DD)")
        return value


class RegistriesPolicy(_Section):
    """Where a tool's containers may come from."""

    allowed: tuple[Prefix, ...] = ()
    """Registry hosts or repository prefixes, matched on `/` boundaries; `{tool}` stands for the
    tool in its own namespace and `{harborProject}` for its Harbor project (`builds.harborProject`
    after Harbor's separator rule); an entry with either applies in tool namespaces only."""
    exceptions: Mapping[Name, tuple[RegistryException, ...]] = {}
    """Namespace -> extra prefixes allowed there, each until an optional date."""
    mode: Mode = "enforce"
    """`enforce` refuses an object with an image from elsewhere; `warn` admits it and returns
    the findings as warnings."""


class TrustedStep(_Section):
    """A Tekton step that may keep registry credentials: name, image and entrypoint must match."""

    name: Name
    """The step's name in the Task (the container is `step-<name>`)."""
    images: tuple[Image, ...] = Field(min_length=1)
    """The images the step may run, compared after normalisation (at least one)."""
    entrypoint: Name
    """The program Tekton's entrypoint runs for the step (its `-entrypoint` argument)."""


class CredentialsPolicy(_Section):
    """Which steps of a build pod keep the registry credentials Tekton hands to every step."""

    trusted_steps: tuple[TrustedStep, ...] = ()
    """The build steps that keep registry credentials; every other container loses them."""
    mode: Mode = "enforce"
    """`enforce` strips credentials from untrusted containers; `warn` leaves them and returns
    warnings."""


class Policy(_Section):
    """The whole policy; every section has defaults, so `{}` is a (strict, empty) policy."""

    tools: ToolsPolicy = ToolsPolicy()
    exempt_namespaces: tuple[Name, ...] = ("kube-system",)
    """Namespaces no rule checks; never `builds.namespace`, whose PipelineRuns would then go
    unchecked."""
    builds: BuildsPolicy = BuildsPolicy()
    registries: RegistriesPolicy = RegistriesPolicy()
    credentials: CredentialsPolicy = CredentialsPolicy()

    digest: str = Field(default="", exclude=True)
    """sha256 of the text the policy was parsed from, for logs and metrics."""

    @model_validator(mode="before")
    @classmethod
    def _no_digest_in_file(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "digest" in value:
            raise ValueError("unknown key 'digest'")
        return value

    @model_validator(mode="after")
    def _build_namespace_is_judged(self) -> Policy:
        # Exempt, the build namespace would lose the PipelineRun rule (who builds, what, how
        # many) while it stays the namespace where runs are created: a policy that loads but
        # switches a rule off.
        if self.builds.namespace in self.exempt_namespaces:
            raise ValueError(f"exemptNamespaces lists the build namespace "
                             f"{self.builds.namespace} (builds.namespace), which would leave its "
                             "PipelineRuns unchecked; remove it from exemptNamespaces")
        return self

    @property
    def warn_modes(self) -> tuple[str, ...]:
        """The `mode` keys set to `warn`: rules that admit what they would refuse."""
        sections = (("builds", self.builds.mode), ("registries", self.registries.mode),
                    ("credentials", self.credentials.mode))
        return tuple(f"{name}.mode" for name, mode in sections if mode == "warn")

    @cached_property
    def allow_lists(self) -> AllowLists:
        """The registry section prepared for lookups, once per policy rather than per review."""
        exceptions = {namespace: tuple((e.prefix, e.expires) for e in entries)
                      for namespace, entries in self.registries.exceptions.items()}
        return AllowLists(self.tools.namespace_pattern, self.builds.harbor_project,
                          self.registries.allowed, exceptions)


def parse_policy(text: str | bytes) -> Policy:
    """Parse policy YAML into a Policy, or raise PolicyError with every problem found."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([f"policy is {len(raw)} bytes; the limit is {MAX_POLICY_BYTES}"])
    try:
        data = yaml.load(raw, Loader=_PolicyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise PolicyError([_yaml_problem(error)]) from None
    except RecursionError:
        # PyYAML builds nested collections recursively; a few thousand levels exhaust the stack.
        raise PolicyError(["the policy is nested too deeply"]) from None
    if data is None:
        # An empty file is far more often a truncated write than a wish for every default.
        raise PolicyError(["the policy is empty; write {} to use every default"])
    if not isinstance(data, dict):
        raise PolicyError(["the policy must be a YAML mapping"])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as error:
        raise PolicyError([_problem(e) for e in error.errors()]) from None
    return policy.model_copy(update={"digest": hashlib.sha256(raw).hexdigest()})


class _PolicyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which also says where a value is that it cannot construct, and
    refuses a key given twice in one mapping (PyYAML keeps the last one silently, so the first
    would look in force and not be)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            # Keys brought in by a merge (`<<: *anchor`) may be overridden: that is what a merge
            # is for. Only keys written in this mapping itself are compared.
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: construct_mapping says so below
                if earlier is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice in one mapping (first at "
                        f"line {earlier.start_mark.line + 1}); YAML would keep only the last",
                        key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError) as error:
            # A well-formed but impossible value (the date 2027-13-45, `!!int x`) raises a bare
            # ValueError with no position; the innermost node is the one to point at.
            kind = _YAML_TAGS.get(node.tag, node.tag)
            value = node.value if isinstance(node.value, str) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{value!r} is not {kind}: {error}", node.start_mark) from None


_YAML_TAGS = {
    "tag:yaml.org,2002:timestamp": "a date (quote it to make it a string)",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
}


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.reader.ReaderError):
        # Its text ends with the position in "<byte string>"; say it in the policy's words.
        return f"not valid YAML (byte {error.position}): {_one_line(str(error).split(chr(10))[0])}"
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f"not valid YAML: {_one_line(str(error))}"
    mark = error.problem_mark
    text = f"not valid YAML (line {mark.line + 1}, column {mark.column + 1}): {error.problem}"
    if error.context and error.context_mark is not None:
        context = error.context.removeprefix("while ")
        text += (f" (while {context} that starts at line {error.context_mark.line + 1}, column "
                 f"{error.context_mark.column + 1})")
    return _one_line(text)


# What a list or mapping of the policy holds, in the policy's words, by key.
_SHAPES = {
    "groups": "a list of group names",
    "systemUsers": "a list of usernames",
    "exemptNamespaces": "a list of namespace names",
    "harborHosts": "a list of registry hosts",
    "pipelines": "a list of pipeline names",
    "builders": "a list of image references",
    "images": "a list of image references",
    "required": "a list of parameters (a name, or {name, type})",
    "optional": "a list of parameters (a name, or {name, type})",
    "allowed": "a list of registry prefixes",
    "exceptions": "a mapping from a namespace to a list of registry prefixes",
    "maxActiveRunsOverrides": "a mapping from a tool's name to a number of runs",
    "trustedSteps": "a list of steps ({name, images, entrypoint})",
    "labels": "a list of label keys (a key, or its start followed by *)",
    "annotations": "a list of annotation keys (a key, or its start followed by *)",
    "exceptions.*": "a list of registry prefixes (a prefix, or {prefix, expires})",
}


def _problem(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if loc[-1:] == ("[key]",):
        return (f"{_path(loc[:-2]) or 'policy'}: the key {error['input']!r} must be a string "
                "(quote names such as yes, no, on, off in YAML)")
    path = _path(loc) or "policy"
    if kind == "extra_forbidden":
        return f"{path}: unknown key; {_known_keys(_section_at(loc[:-1]), str(loc[-1]))}"
    if kind == "missing":
        return f"{path}: required"
    if kind in ("tuple_type", "dict_type", "list_type"):
        field_name, depth = _field_at(loc)
        shape = _SHAPES.get(field_name + ".*" * depth)
        return f"{path}: must be {shape or ('a mapping' if kind == 'dict_type' else 'a list')}"
    if kind == "model_type":
        section = _section_at(loc)
        keys = ", ".join(_aliases(section)) if section is not None else ""
        return f"{path}: must be a mapping" + (f" with the keys {keys}" if keys else "")
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_type":
        message = "must be a string (quote names such as yes, no, on, off in YAML)"
    elif kind == "literal_error":
        message = f"must be one of {error['ctx']['expected']}"
    elif kind.startswith(("date_", "datetime_")):
        message = "must be a date (YYYY-MM-DD)"
    elif kind == "too_short":
        count = error["ctx"]["min_length"]
        message = f"must list at least {count} {'entry' if count == 1 else 'entries'}"
    elif message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return f"{path}: {message}"


def _path(loc: tuple[Any, ...]) -> str:
    """`builds.params.required[0].type`: keys joined with dots, list positions in brackets."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The policy section (model) that the mapping at `loc` is read into, if any."""
    return _walk(loc)[0]


def _field_at(loc: tuple[Any, ...]) -> tuple[str, int]:
    """The key of the last section field on the way to `loc`, and how many list positions or
    mapping keys below that field `loc` is."""
    return _walk(loc)[1:]


def _walk(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str, int]:
    section: type[BaseModel] | None = Policy
    annotation: Any = None
    field_name, depth = "", 0
    for part in loc:
        if section is not None:
            field = next((f for f in section.model_fields.values() if f.alias == part), None)
            if field is None:
                return None, "", 0
            annotation, field_name, depth = field.annotation, str(part), 0
        else:
            annotation, depth = _contained(annotation), depth + 1  # a position or a mapping key
        section = _model_in(annotation)
    return section, field_name, depth


def _contained(annotation: Any) -> Any:
    """What a tuple or mapping annotation holds (its values, for a mapping)."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[-1] if typing.get_origin(annotation) is not None and args else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section an annotation is, when it is one (not a container of them)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := _model_in(a))), None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _aliases(section: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in section.model_fields.items() if not f.exclude]


def _known_keys(section: type[BaseModel] | None, key: str) -> str:
    if section is None:
        return "see docs/policy.md for the keys"
    known = _aliases(section)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == key.lower()]
    if close:
        return f"did you mean {close[0]}?"
    return f"the keys here are {', '.join(known)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
