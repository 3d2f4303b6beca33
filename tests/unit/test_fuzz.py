"""The fuzz targets in tests/fuzz: their seeds pass, and a bounded fuzzing run finds no crash.

Each target runs for TOOLFORGE_ADMISSION_FUZZ_SECONDS (default 15) in a child process
(`tests/fuzz/run.py`), from its seeds, with crash files in a temporary directory; a crash fails
the test with the input and the traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent.parent / "fuzz"
TARGETS = ("review", "images", "policy")
SECONDS = int(os.environ.get("TOOLFORGE_ADMISSION_FUZZ_SECONDS", "15"))


def test_the_runner_knows_every_target() -> None:
    found = {path.stem.removeprefix("fuzz_") for path in FUZZ.glob("fuzz_*.py")}
    assert found == set(TARGETS)
    assert importlib.import_module("tests.fuzz.run").TARGETS == TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_every_seed_keeps_the_invariants(target: str) -> None:
    module = importlib.import_module(f"tests.fuzz.fuzz_{target}")
    seeds = list(module.seeds())
    assert seeds
    for seed in seeds:
        module.check(seed)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris has wheels for x86-64 Linux only")
@pytest.mark.parametrize("target", TARGETS)
def test_fuzzing_for_a_while_finds_no_crash(target: str) -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), "--seconds", str(SECONDS), target],
        capture_output=True, text=True, errors="replace", timeout=SECONDS + 180, check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"{target}: no crash" in result.stdout
