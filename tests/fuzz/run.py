"""Run the coverage-guided fuzz targets (atheris, libFuzzer) for a bounded time each.

    python tests/fuzz/run.py [--seconds N] [TARGET ...]     every target (or the ones named)
    python tests/fuzz/run.py --exec TARGET [LIBFUZZER ARGS]  one target in this process

A target is `tests/fuzz/fuzz_<name>.py`: `check(data)` raises on a broken invariant and
`seeds()` gives its starting corpus, built from the project's own fixtures. Each run starts
from a fresh temporary corpus and writes crash files to a temporary directory, never into the
repository; a crash is printed with its input and the run exits 1. To reproduce one:
`python tests/fuzz/run.py --exec review /tmp/.../crash-<sha1>`.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("review", "images", "policy")
INSTRUMENTED = ["policies", "webhooks"]
"""Only the project's code is instrumented; all of it, flask and pydantic included, took 80 s."""
INPUT_TIMEOUT_SECONDS = 60
"""libFuzzer's wall-clock limit for one input, which reports a hang; slowness is checked in CPU
time (each target's CPU_SECONDS), which a busy machine does not inflate."""
SHOWN_BYTES = 2000


def main(argv: list[str]) -> int:
    if argv[:1] == ["--exec"] and len(argv) > 1:
        return _exec(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[],
                        metavar="TARGET", help=f"some of {', '.join(TARGETS)} (default all)")
    options = parser.parse_args(argv)
    failed = [t for t in options.targets or TARGETS if not fuzz(t, options.seconds)]
    if failed:
        print(f"fuzzing found crashes in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def fuzz(target: str, seconds: int) -> bool:
    """Fuzz one target in a child process for `seconds`; False (and the input) on a crash."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        corpus, artifacts = Path(scratch, "corpus"), Path(scratch, "artifacts")
        corpus.mkdir()
        artifacts.mkdir()
        for index, seed in enumerate(_target(target).seeds()):
            (corpus / f"seed-{index}").write_bytes(seed)
        command = [sys.executable, str(Path(__file__).resolve()), "--exec", target, str(corpus),
                   f"-max_total_time={seconds}", f"-timeout={INPUT_TIMEOUT_SECONDS}",
                   f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                errors="replace", check=False)
        found = sorted(artifacts.iterdir())
        if result.returncode == 0 and not found:
            stats = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
            print(f"{target}: no crash ({stats[-1] if stats else 'done'})")
            return True
        # libFuzzer's progress lines say nothing about the crash; the rest does.
        report = [line for line in result.stderr.splitlines() if not line.startswith("#")]
        print(f"{target}: FAILED (exit {result.returncode})", *report[-80:], sep="\n",
              file=sys.stderr)
        for path in found:
            data = path.read_bytes()
            print(f"{path} ({len(data)} bytes): {data[:SHOWN_BYTES]!r}", file=sys.stderr)
            try:  # again here, for the Python traceback
                _target(target).check(data)
            except Exception:  # whatever it raises is the finding
                traceback.print_exc()
        return False


def _exec(target: str, libfuzzer_args: list[str]) -> int:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        module = _target(target)
    atheris.Setup([sys.argv[0], *libfuzzer_args], _timed(module))
    atheris.Fuzz()
    return 0


def _timed(module: ModuleType) -> Callable[[bytes], None]:
    """The target's check, which also fails when one input takes more than its CPU_SECONDS."""
    def check(data: bytes) -> None:
        started = time.process_time()
        module.check(data)
        seconds = time.process_time() - started
        assert seconds < module.CPU_SECONDS, f"{seconds:.2f} s of CPU for one input"

    return check


def _target(name: str) -> ModuleType:
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; the targets are {', '.join(TARGETS)}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"tests.fuzz.fuzz_{name}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
