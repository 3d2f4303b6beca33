"""Harbor project names: the one mapping from a tool to the project its images live in.

Toolforge's builds API creates a tool's project from `builds.harborProject` (`tool-{tool}`) with
Harbor's rule applied: Harbor allows no two separators in a row, so between two adjacent `-`,
`_` or `.` it inserts the literal `char.sep` (the builds API's `ToolNameToHarborProjectName`).
The tool `a--b` therefore pushes to `tool-a-char.sep-b`. The PipelineRun rule (where APP_IMAGE and
RUN_IMAGE may point) and the registry rule (`{harborProject}` in `registries.allowed`) both ask
this module, so a tool can run what it built whatever its name.
"""

from __future__ import annotations

import functools
import re

from policies.identity import ToolPattern

PROJECT_PLACEHOLDER = "{harborProject}"
"""In a registry allow-list entry: the namespace's tool's Harbor project."""

_SEPARATORS = "._-"
_FILLER = "char.sep"
_PROJECT_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_SEPARATOR_CLASS = f"[{re.escape(_SEPARATORS)}]"
_BETWEEN_SEPARATORS = re.compile(f"(?<={_SEPARATOR_CLASS})(?={_SEPARATOR_CLASS})")
"""Where Harbor's rule puts the filler: between two separators in a row."""
_FILLED = re.compile(f"(?<={_SEPARATOR_CLASS}){re.escape(_FILLER)}(?={_SEPARATOR_CLASS})")


# A pure function of a policy's pattern and a tool, asked several times by every PipelineRun
# review and by the registry rule for every tool pod; a platform's tools are bounded, and so is
# the cache.
@functools.lru_cache(maxsize=4096)
def harbor_project(pattern: ToolPattern, tool: str) -> str:
    """The tool's Harbor project: the pattern expanded, with Harbor's separator rule applied."""
    return _BETWEEN_SEPARATORS.sub(_FILLER, pattern.expand(tool))


@functools.lru_cache(maxsize=4096)
def tool_of_project(pattern: ToolPattern, project: str) -> str | None:
    """The tool whose Harbor project this is, or None."""
    if not _PROJECT_NAME.fullmatch(project):
        return None
    tool = pattern.tool_of(_FILLED.sub("", project))
    if tool is None or harbor_project(pattern, tool) != project:
        return None
    return tool
