"""Command lines as Go's `flag` package reads them, and as Tekton's entrypoint then uses them."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from policies.flags import parse
from policies.steps import ENTRYPOINT_BOOLEANS, ENTRYPOINT_FLAGS, step_command

ENTRYPOINT = {"booleans": ENTRYPOINT_BOOLEANS, "known": ENTRYPOINT_FLAGS}


def outcome(args: list[Any], **flag_set: Any) -> tuple[list[tuple[str, str]], list[Any],
                                                       str | None]:
    parsed = parse(args, **(flag_set or ENTRYPOINT))
    return [(f.name, f.value) for f in parsed.flags], list(parsed.positional), parsed.error


@pytest.mark.parametrize(("args", "flags", "positional"), [
    (["-entrypoint", "/a", "x", "-entrypoint", "/b"], [("entrypoint", "/a")],
     ["x", "-entrypoint", "/b"]),
    (["-entrypoint=/a", "--entrypoint", "/b"], [("entrypoint", "/a"), ("entrypoint", "/b")], []),
    (["-results", "-entrypoint", "/x"], [("results", "-entrypoint")], ["/x"]),
    (["-results", "--", "-entrypoint", "/x"], [("results", "--"), ("entrypoint", "/x")], []),
    (["-wait_file_content", "-entrypoint", "/x"],
     [("wait_file_content", "true"), ("entrypoint", "/x")], []),
    (["-wait_file_content", "false"], [("wait_file_content", "true")], ["false"]),
    (["-wait_file_content=false", "x"], [("wait_file_content", "false")], ["x"]),
    (["--", "-entrypoint", "/x"], [], ["-entrypoint", "/x"]),
    (["-", "-entrypoint", "/x"], [], ["-", "-entrypoint", "/x"]),
    (["-basic-docker=s=https://h=x"], [("basic-docker", "s=https://h=x")], []),
    ([], [], []),
], ids=["stops-at-first-non-flag", "last-one-wins", "value-swallows-a-flag",
        "value-swallows-the-terminator", "bare-boolean-takes-no-value",
        "boolean-never-takes-the-next-argument", "boolean-with-value", "terminator-first",
        "single-dash-is-positional", "value-keeps-later-equals", "empty"])
def test_arguments_parse_as_go_flag_parses_them(args: list[str], flags: list[tuple[str, str]],
                                                 positional: list[str]) -> None:
    assert outcome(args) == (flags, positional, None)


@pytest.mark.parametrize(("args", "error"), [
    (["-entrypoint"], "flag needs an argument: -entrypoint"),
    (["-nosuchflag=1"], "flag provided but not defined: -nosuchflag"),
    (["-help"], "help requested: -help"),
    (["---entrypoint", "/x"], "bad flag syntax: ---entrypoint"),
    (["-=x"], "bad flag syntax: -=x"),
    (["-wait_file_content=maybe"], "invalid boolean value 'maybe' for -wait_file_content"),
    (["-entrypoint", 7], "argument 1 is not a string"),
], ids=["missing-value", "undefined", "help", "three-dashes", "no-name", "bad-boolean",
        "not-a-string"])
def test_what_go_refuses_is_an_error(args: list[Any], error: str) -> None:
    assert outcome(args)[2] == error


# --- Tekton's entrypoint -----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "entrypoint", "command"), [
    (["-wait_file", "/a", "-basic-docker=s=h", "-entrypoint", "/cnb/lifecycle/exporter", "--",
      "-app=/w", "img"], "/cnb/lifecycle/exporter", ["-app=/w", "img"]),
    (["-entrypoint", "/cnb/lifecycle/exporter", "x", "-entrypoint", "/bin/sh", "--", "-c", "id"],
     None, ["-c", "id"]),
    (["-entrypoint", "/bin/sh", "x", "-entrypoint", "/cnb/lifecycle/exporter", "--"], None, []),
    (["-entrypoint", "/bin/sh", "-results", "-entrypoint", "/cnb/lifecycle/exporter", "--"],
     None, []),
    (["-entrypoint", "/cnb/lifecycle/exporter", "cp", "/tekton/creds-secrets/s/password",
      "/workspace/x", "--"], None, []),
    (["--", "-entrypoint", "/cnb/lifecycle/exporter"], None, []),
    (["-entrypoint", "/cnb/lifecycle/exporter", "-unknown_flag=1", "--"], None, []),
    (["-entrypoint=", "--"], None, []),
    (["-entrypoint", "/a", "--", "--", "x"], "/a", ["--", "x"]),
], ids=["tekton-shape", "twice-around-a-non-flag", "twice-around-a-non-flag-reversed",
        "value-swallows-the-second-entrypoint", "leftover-subcommand", "terminator-first",
        "unknown-flag-ends-the-step", "empty", "only-the-first-terminator-splits"])
def test_the_step_runs_what_the_entrypoint_makes_of_its_args(
        args: list[str], entrypoint: str | None, command: list[str]) -> None:
    step = step_command(args)
    assert step.entrypoint == entrypoint
    assert list(step.command_args) == command


# --- against Go itself ---------------------------------------------------------------------------

GO_REFERENCE = Path(__file__).parent / "goflag" / "main.go"
TOKENS = ("-entrypoint", "--entrypoint", "-entrypoint=/a", "/a", "/b", "x", "--", "-",
          "-results", "--results=v", "-results=", "-wait_file_content",
          "-wait_file_content=false", "-wait_file_content=maybe", "-wait_file_content=1",
          "---x", "-=x", "--=", "-help", "-h", "-unknown", "-basic-docker=s=h",
          "-basic-docker", "s=h", "")


def random_cases(count: int) -> list[list[str]]:
    chooser = random.Random(15)  # a fixed, reproducible spread of inputs
    return [[chooser.choice(TOKENS) for _ in range(chooser.randint(0, 6))]
            for _ in range(count)]


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (as tests/e2e)")
def test_the_parser_agrees_with_go_on_thousands_of_command_lines(tmp_path: Path) -> None:
    booleans = sorted(ENTRYPOINT_BOOLEANS)
    strings = sorted(ENTRYPOINT_FLAGS - ENTRYPOINT_BOOLEANS)
    cases = random_cases(3000)
    lines = "".join(json.dumps({"args": args, "booleans": booleans, "strings": strings}) + "\n"
                    for args in cases)
    result = subprocess.run(["go", "run", str(GO_REFERENCE)], input=lines, capture_output=True,
                            text=True, check=True, timeout=300,
                            env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "",
                                 "GO111MODULE": "off"},
                            cwd=tmp_path)
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(cases)
    disagreements = []
    for args, go in zip(cases, answers, strict=True):
        parsed = parse(args, **ENTRYPOINT)
        ours = {"error": parsed.error is not None, "values": {}, "positional": []}
        if parsed.error is None:
            ours["values"] = {flag.name: flag.value for flag in parsed.flags}
            ours["positional"] = list(parsed.positional)
        if ours != go:
            disagreements.append((args, ours, go))
    assert disagreements == []
