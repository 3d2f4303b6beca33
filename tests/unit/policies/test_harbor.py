"""A tool's Harbor project, as the builds API names it (`ToolNameToHarborProjectName`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.harbor import harbor_project, tool_of_project
from policies.identity import ToolPattern, is_tool_name

PROJECTS = ToolPattern.parse("tool-{tool}")


@pytest.mark.parametrize(("tool", "project"), [
    pytest.param("mytool", "tool-mytool", id="plain"),
    pytest.param("my-user--name", "tool-my-user-char.sep-name", id="double-dash"),
    pytest.param("hello---world", "tool-hello-char.sep-char.sep-world", id="triple-dash"),
    pytest.param("a_-b", "tool-a_char.sep-b", id="underscore-dash"),
    pytest.param("a__b", "tool-a_char.sep_b", id="double-underscore"),
])
def test_harbor_project_names_follow_harbors_separator_rule(tool: str, project: str) -> None:
    assert harbor_project(PROJECTS, tool) == project
    assert tool_of_project(PROJECTS, project) == tool


@pytest.mark.parametrize("project", [
    pytest.param("tool-a--b", id="raw-double-dash-is-no-harbor-name"),
    pytest.param("library", id="not-a-tool-project"),
    pytest.param("tool-a-char.sepb", id="filler-not-between-separators"),
    pytest.param("tool-", id="no-tool"),
    pytest.param("Tool-x", id="upper-case"),
])
def test_names_that_are_no_tools_project_map_to_no_tool(project: str) -> None:
    assert tool_of_project(PROJECTS, project) is None


@pytest.mark.slow
@given(st.from_regex(r"[a-z](?:[-_a-z0-9]{0,20}[a-z0-9])?", fullmatch=True))
def test_every_tool_name_maps_to_a_harbor_name_and_back(tool: str) -> None:
    assert is_tool_name(tool)
    project = harbor_project(PROJECTS, tool)
    assert tool_of_project(PROJECTS, project) == tool
