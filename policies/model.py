"""The policy an admin writes in the `toolforge-admission-policy` ConfigMap, parsed and checked.

`parse_policy` turns YAML text into a frozen `Policy`, or raises `PolicyError` listing every
problem with its path (`builds.maxActiveRuns: must be an integer >= 1`). Unknown keys are errors,
so a typo never silently turns a rule off.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

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
    )


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
    type: Literal["string", "array"] = "string"
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
    required: tuple[ParamSpec, ...] = ()
    optional: tuple[ParamSpec, ...] = ()

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
    secrets: tuple[Name, ...] = ()


class BuildsPolicy(_Section):
    """What a PipelineRun may contain, and how many may be active per tool."""

    namespace: Name = "image-build"
    harbor_hosts: tuple[Host, ...] = ()
    harbor_project: Pattern = ToolPattern.parse("tool-{tool}")
    pipelines: tuple[ApprovedPipeline, ...] = (ApprovedPipeline(name="buildpacks"),)
    builders: tuple[Image, ...] = ()
    run_images: tuple[Image, ...] = ()
    """RUN_IMAGE references a run may use besides the tool's own images (the trusted exporter
    pulls the run image with the registry credentials)."""
    params: ParamsPolicy = ParamsPolicy()
    workspaces: WorkspacesPolicy = WorkspacesPolicy()
    max_active_runs: PositiveInt = 1
    max_active_runs_overrides: Mapping[Name, Count] = {}
    """Per-tool limits; 0 stops a tool from building at all."""
    max_timeout: Seconds = Field(default=3600.0, json_schema_extra={"format": "duration"})
    """The longest `timeouts.pipeline` a run may ask for."""
    tool_label: Name = "toolforge.org/tool"
    """The label every run must carry with its tool's name; checked, never trusted."""
    service_account: Name = "default"
    """The only ServiceAccount a run may name (Tekton's `default-service-account` fills it in)."""
    run_managers: tuple[Name, ...] = (
        "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller",
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "system:serviceaccount:kube-system:namespace-controller",
        "system:kube-controller-manager",
    )
    """Exact usernames that, besides the system users, may update and delete any tool's run (not
    create one): Tekton's controller writes runs and their status, Kubernetes' garbage collector
    and namespace controller delete them. Anyone else may change or delete only a run of their
    own tool."""
    tekton_default_service_account: Name = "default"
    """Tekton's config-defaults `default-service-account`. Tekton writes it into every run that
    names none, so a run may carry it too: naming it grants nothing that leaving it out does not."""
    mode: Mode = "enforce"

    @property
    def pipeline_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pipelines)

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
    expires: datetime.date | None = None
    """The first day on which the exception no longer applies."""

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
    exceptions: Mapping[Name, tuple[RegistryException, ...]] = {}
    mode: Mode = "enforce"


class TrustedStep(_Section):
    """A Tekton step that may keep registry credentials: name, image and entrypoint must match."""

    name: Name
    images: tuple[Image, ...] = Field(min_length=1)
    entrypoint: Name


class CredentialsPolicy(_Section):
    trusted_steps: tuple[TrustedStep, ...] = ()
    mode: Mode = "enforce"


class Policy(_Section):
    """The whole policy; every section has defaults, so `{}` is a (strict, empty) policy."""

    tools: ToolsPolicy = ToolsPolicy()
    exempt_namespaces: tuple[Name, ...] = ("kube-system",)
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


def parse_policy(text: str | bytes) -> Policy:
    """Parse policy YAML into a Policy, or raise PolicyError with every problem found."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([f"policy is {len(raw)} bytes; the limit is {MAX_POLICY_BYTES}"])
    try:
        data = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError) as error:
        # PyYAML's constructors raise ValueError for a well-formed but impossible value, such
        # as the date 2027-00-01 or `!!int x`.
        raise PolicyError([f"not valid YAML: {_one_line(str(error))}"]) from None
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


def _problem(error: Mapping[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "policy"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "missing":
        return f"{path}: required"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_type":
        message = "must be a string (quote names such as yes, no, on, off in YAML)"
    elif kind == "literal_error":
        message = f"must be one of {error['ctx']['expected']}"
    return f"{path}: {message}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
