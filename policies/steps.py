"""What a Tekton step container runs, read as Tekton's entrypoint reads it.

Tekton rewrites every step to `command: [/tekton/bin/entrypoint]` with `args: [<entrypoint
flags>, --, <the step's own args>]` (tekton.md §3). The entrypoint (cmd/entrypoint, v1.15):

- splits its arguments at the first `--`, if that is not the first argument, and parses only
  those before it with Go's `flag` package (`extractArgs`); a parse error ends the step;
- leftover positional arguments may name a subcommand (`init`, `cp`, `decode-script`,
  `step-init`), which runs instead of the step;
- runs `[-entrypoint value] + <the arguments after the first -->`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies import flags

ENTRYPOINT_BINARY = "/tekton/bin/entrypoint"

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
    parsed = flags.parse(own, booleans=ENTRYPOINT_BOOLEANS, known=ENTRYPOINT_FLAGS)
    return StepCommand(entrypoint_flags=parsed, command_args=tuple(rest))


def runs_entrypoint(container: Mapping[str, Any]) -> bool:
    """Whether the container's command is Tekton's entrypoint, which reads `args` as above."""
    return container.get("command") == [ENTRYPOINT_BINARY]
