"""What a Tekton step container runs, read as Tekton's entrypoint and the CNB lifecycle read it.

Tekton rewrites every step to `command: [/tekton/bin/entrypoint]` with `args: [<entrypoint
flags>, --, <the step's own args>]` (real pods in tests/fixtures/tekton/). The entrypoint
(cmd/entrypoint, v1.15):

- splits its arguments at the first `--`, if that is not the first argument, and parses only
  those before it with Go's `flag` package (`extractArgs`); a parse error ends the step;
- leftover positional arguments may name a subcommand (`init`, `cp`, `decode-script`,
  `step-init`), which runs instead of the step;
- runs `[-entrypoint value] + <the arguments after the first -->`.

A lifecycle phase (`/cnb/lifecycle/exporter` …) then parses the step's own args with its own
flag set: `exporter [flags] <image> [<tag>…]` pushes to every positional argument, and the
`-cache-image`, `-tag`, `-previous-image`, `-run-image`, `-build-image` flags (or their `CNB_*`
environment defaults) name the other images it reads or writes with the registry credentials
(buildpacks/lifecycle cmd/lifecycle/cli/flags.go, platform/defaults.go). A phase given no run
image takes one from a file: the stack file (`-stack`, platform API < 0.7 for the exporter) or the
run file (`-run`, the analyzer from 0.12), or analyzed.toml (the exporter from 0.7), which
platform/resolve_inputs.go reads.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies import flags

ENTRYPOINT_BINARY = "/tekton/bin/entrypoint"
LIFECYCLE_DIR = "/cnb/lifecycle/"

ENTRYPOINT_BOOLEANS = frozenset({
    "wait_file_content", "breakpoint_on_failure", "debug_before_step",
    "compress_termination_message", "enable_spire",
})
ENTRYPOINT_FLAGS = ENTRYPOINT_BOOLEANS | frozenset({
    "entrypoint", "wait_file", "post_file", "termination_path", "results", "step_results",
    "when_expressions", "timeout", "stdout_path", "stderr_path", "on_error",
    "step_metadata_dir", "result_from", "spire_socket_path",
    # pkg/credentials/dockercreds and gitcreds add these.
    "basic-docker", "docker-config", "docker-cfg", "basic-git", "ssh-git",
})
"""Every flag of Tekton v1.15's entrypoint (cmd/entrypoint/main.go, spire.go)."""

LIFECYCLE_BOOLEANS = frozenset({
    "daemon", "layout", "no-color", "parallel", "skip-layers", "skip-restore", "version",
    "force",
})
"""The lifecycle's boolean flags (cmd/lifecycle/cli/flags.go); any other flag of a phase run with
credentials must be written `-name=value`."""


@dataclass(frozen=True)
class StepCommand:
    """What the entrypoint makes of a step container's args."""

    entrypoint_flags: flags.ParsedArgs
    """The entrypoint's own flags, as Go parses them."""
    command_args: tuple[object, ...]
    """The arguments after the first `--`: the step's own, passed to `-entrypoint`."""

    @property
    def entrypoint(self) -> str | None:
        """The program the step runs; None when the entrypoint would not run one as given."""
        parsed = self.entrypoint_flags
        if parsed.error is not None or parsed.positional:
            # A parse error ends the step; leftovers may be a subcommand that runs instead.
            return None
        return parsed.last("entrypoint") or None


def step_command(args: Sequence[object]) -> StepCommand:
    """Split and parse a step container's args exactly as the entrypoint does."""
    items = list(args)
    at = items.index(flags.TERMINATOR) if flags.TERMINATOR in items else -1
    own, rest = (items[:at], items[at + 1:]) if at > 0 else (items, [])
    parsed = (_entrypoint_flags(tuple(own)) if flags.keepable(own)
              else flags.parse(own, booleans=ENTRYPOINT_BOOLEANS, known=ENTRYPOINT_FLAGS))
    return StepCommand(entrypoint_flags=parsed, command_args=tuple(rest))


# Tekton writes the same entrypoint flags into the same step of every pod of a task (the run
# directories, the result names, the credential flags, the program); only the step's own args,
# after `--`, name the tool. Parsed once per distinct list, the same few come back every build.
@functools.lru_cache(maxsize=256)
def _entrypoint_flags(own: tuple[str, ...]) -> flags.ParsedArgs:
    return flags.parse(own, booleans=ENTRYPOINT_BOOLEANS, known=ENTRYPOINT_FLAGS)


def runs_entrypoint(container: Mapping[str, Any]) -> bool:
    """Whether the container's command is Tekton's entrypoint, which reads `args` as above."""
    return container.get("command") == [ENTRYPOINT_BINARY]


# --- lifecycle phases ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryUse:
    """The images a lifecycle phase reads or writes with the credentials it is given.

    Each field lists the non-empty values given (a flag's last value, or its `CNB_*` default).
    """

    outputs: tuple[str, ...] = ()
    """Positional arguments and `-tag` values: images it pushes (or checks it may push)."""
    cache_images: tuple[str, ...] = ()
    previous_images: tuple[str, ...] = ()
    run_images: tuple[str, ...] = ()
    """`-run-image` and the deprecated `-image`."""
    build_images: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    run_image_files: tuple[str, ...] = ()
    """The stack and run files (`-stack`, `-run`, their `CNB_*` defaults, else the lifecycle's
    `/cnb/stack.toml` and `/cnb/run.toml`): where the phase reads a run image when it is given
    none."""
    error: str | None = None
    """Why the phase's command line cannot be read unambiguously (it is then refused)."""


_ENV_DEFAULTS = {
    "cache-image": "CNB_CACHE_IMAGE",
    "previous-image": "CNB_PREVIOUS_IMAGE",
    "run-image": "CNB_RUN_IMAGE",
    "build-image": "CNB_BUILD_IMAGE",
    "insecure-registry": "CNB_INSECURE_REGISTRIES",
    "stack": "CNB_STACK_PATH",
    "run": "CNB_RUN_PATH",
}
_DEFAULT_FILES = {"stack": "/cnb/stack.toml", "run": "/cnb/run.toml"}
"""Where the lifecycle looks when neither flag nor variable names the file (platform/defaults.go):
in the phase's own image."""


def is_lifecycle_phase(entrypoint: str | None) -> bool:
    return entrypoint is not None and entrypoint.startswith(LIFECYCLE_DIR)


def registry_use(command_args: Sequence[object], env: Mapping[str, str]) -> RegistryUse:
    """The images a lifecycle phase names, flags first and their `CNB_*` defaults second.

    `env` maps the container's variables to their values; one set from a source the pod does
    not show should map to a text that names no image.
    """
    parsed = flags.parse(command_args, booleans=LIFECYCLE_BOOLEANS, bare_values=False)

    def given(name: str) -> tuple[str, ...]:
        value = parsed.last(name)
        if value is None:
            variable = _ENV_DEFAULTS.get(name)
            value = (env.get(variable) or _DEFAULT_FILES.get(name, "")) if variable else ""
        return (value,) if value else ()

    error = parsed.error
    if error is None and any(not isinstance(p, str) for p in parsed.positional):
        error = "an argument is not a string"
    outputs = tuple(str(p) for p in parsed.positional)
    outputs += tuple(tag for tag in parsed.values("tag") if tag)
    return RegistryUse(
        outputs=outputs, cache_images=given("cache-image"),
        previous_images=given("previous-image"),
        run_images=given("run-image") + given("image"),
        build_images=given("build-image"), insecure_registries=given("insecure-registry"),
        run_image_files=given("stack") + given("run"), error=error)
