"""Command lines as Go's `flag` package reads them, and as Tekton's entrypoint and the lifecycle
then use them."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from policies.credentials import strip_credential_flags
from policies.flags import parse
from policies.steps import (
    ENTRYPOINT_BOOLEANS,
    ENTRYPOINT_FLAGS,
    LIFECYCLE_BOOLEANS,
    registry_use,
    step_command,
)

ENTRYPOINT: dict[str, Any] = {"booleans": ENTRYPOINT_BOOLEANS, "known": ENTRYPOINT_FLAGS}


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


def test_without_a_flag_set_a_bare_flag_that_is_not_a_known_boolean_is_ambiguous() -> None:
    lifecycle = {"booleans": LIFECYCLE_BOOLEANS, "bare_values": False}
    assert outcome(["-daemon", "-app=/w", "img"], **lifecycle) == (
        [("daemon", "true"), ("app", "/w")], ["img"], None)
    error = outcome(["-run-image", "victim/x", "mine/y"], **lifecycle)[2]
    assert error is not None
    assert "-run-image has no =value" in error


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


# --- the lifecycle ---------------------------------------------------------------------------


EXPORT_02 = ["-app=/workspace/source/", "-layers=/layers", "-group=/layers/group.toml",
             "-cache-dir=", "-cache-image=", "-report=/layers/report.toml",
             "-process-type=web", "-uid=1000", "-gid=1000", "-stack=/layers/stack.toml",
             "-run-image=", "tools-harbor.wmcloud.org/tool-mytool/tool-mytool:latest"]


def test_the_captured_export_step_pushes_only_its_image() -> None:
    use = registry_use(EXPORT_02, {"CNB_PLATFORM_API": "0.4", "HOME": "/tekton/home"})
    assert use.error is None
    assert use.outputs == ("tools-harbor.wmcloud.org/tool-mytool/tool-mytool:latest",)
    assert (use.cache_images, use.run_images, use.previous_images, use.build_images,
            use.insecure_registries) == ((), (), (), (), ())


@pytest.mark.parametrize(("args", "env", "field", "values"), [
    ([*EXPORT_02, "victim/app:latest"], {}, "outputs",
     ("tools-harbor.wmcloud.org/tool-mytool/tool-mytool:latest", "victim/app:latest")),
    (["-tag=victim/app", "mine/app"], {}, "outputs", ("mine/app", "victim/app")),
    (["--", "-x", "mine/app"], {}, "outputs", ("-x", "mine/app")),
    (["-cache-image=victim/cache", "mine/app"], {}, "cache_images", ("victim/cache",)),
    (["mine/app"], {"CNB_CACHE_IMAGE": "victim/cache"}, "cache_images", ("victim/cache",)),
    (["-cache-image=", "mine/app"], {"CNB_CACHE_IMAGE": "victim/cache"}, "cache_images", ()),
    (["-image=victim/run", "-run-image=x/run", "mine/app"], {}, "run_images",
     ("x/run", "victim/run")),
    (["mine/app"], {"CNB_RUN_IMAGE": "victim/run"}, "run_images", ("victim/run",)),
    (["-previous-image=victim/app", "mine/app"], {}, "previous_images", ("victim/app",)),
    (["-insecure-registry=tools-harbor.wmcloud.org", "mine/app"], {}, "insecure_registries",
     ("tools-harbor.wmcloud.org",)),
], ids=["additional-tag", "tag-flag", "terminator", "cache-image", "cache-image-from-env",
        "flag-over-env", "deprecated-run-image", "run-image-from-env", "previous-image",
        "insecure-registry"])
def test_every_image_a_phase_names_is_found(args: list[str], env: dict[str, str], field: str,
                                            values: tuple[str, ...]) -> None:
    use = registry_use(args, env)
    assert use.error is None
    assert getattr(use, field) == values


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


@pytest.mark.slow  # builds and runs Go
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



@pytest.mark.parametrize(("args", "kept", "removed"), [
    (["-entrypoint", "/x", "-wait_file", "1", "--", "y"],
     ["-entrypoint", "/x", "-wait_file", "1", "--", "y"], []),
    (["-entrypoint", "/x", "-wait_file", 1, "--", "y"],
     ["-entrypoint", "/x", "-wait_file", 1, "--", "y"], []),
    (["-entrypoint", "/x", "-wait_file", True, "--", "y"],
     ["-entrypoint", "/x", "-wait_file", True, "--", "y"], []),
    (["-entrypoint", "/x", "-basic-docker", True, "--", "y"],
     ["-entrypoint", "/x", "--", "y"], ["-basic-docker True"]),
    (["-entrypoint", "/x", "-results", "r" * 5000, "-ssh-git=k", "--", "y"],
     ["-entrypoint", "/x", "-results", "r" * 5000, "--", "y"], ["-ssh-git=k"]),
])
def test_entrypoint_flags_read_the_same_kept_or_not(args: list[Any], kept: list[Any],
                                                    removed: list[str]) -> None:
    # The readings of the flags before `--` are cached by their strings: an equal but different
    # argument (1 or true for "1") and a command line too long to keep are read afresh.
    for _ in range(2):
        assert step_command(args).entrypoint_flags == parse(args[:args.index("--")],
                                                            **ENTRYPOINT)
        stripped = strip_credential_flags(args)
        assert [(type(a), a) for a in stripped[0]] == [(type(a), a) for a in kept]
        assert stripped[1] == removed
