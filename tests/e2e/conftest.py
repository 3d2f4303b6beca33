"""Fixtures for the end-to-end tests: a real control plane, Tekton, and the suite serving it.

Every test under tests/e2e is marked `e2e` (so `make test-unit`, `pytest -m "not e2e"`, skips
them). The session's work dir (PKI, kubeconfigs, every process's log) is printed at the start;
it is kept when a test failed (or with TFA_E2E_KEEP=1) and deleted otherwise.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator

import pytest

from tests.e2e.cluster import (
    BUILD_NAMESPACE,
    TEST_MANIFESTS,
    ControlPlane,
    Suite,
    ensure_namespaces,
    log,
)

HERE = pathlib.Path(__file__).resolve().parent
FAILED = pytest.StashKey[bool]()
TIMINGS = pytest.StashKey[dict[str, float]]()
WORKDIR = pytest.StashKey[pathlib.Path]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in pathlib.Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and HERE in pathlib.Path(str(item.path)).resolve().parents:
        item.config.stash[FAILED] = True
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    timings = config.stash.get(TIMINGS, None)
    if timings:
        text = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
        terminalreporter.write_line(f"e2e startup: {text}")
    workdir = config.stash.get(WORKDIR, None)
    if workdir is not None and workdir.exists():
        terminalreporter.write_line(f"e2e logs kept in {workdir}")


@pytest.fixture(scope="session")
def e2e_workdir(pytestconfig: pytest.Config) -> Iterator[pathlib.Path]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tfa-e2e-"))
    pytestconfig.stash[WORKDIR] = workdir
    log(f"work dir (PKI, kubeconfigs, logs): {workdir}")
    yield workdir
    if pytestconfig.stash.get(FAILED, False) or os.environ.get("TFA_E2E_KEEP") == "1":
        log(f"keeping {workdir} (a test failed or TFA_E2E_KEEP=1)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def binaries() -> dict[str, pathlib.Path]:
    from tests.e2e.build import ensure_binaries

    t0 = time.monotonic()
    paths = ensure_binaries()  # waits on build.py's lock if a build is running
    log(f"binaries ready after {time.monotonic() - t0:.1f}s")
    return paths


@pytest.fixture(scope="session")
def control_plane(e2e_workdir: pathlib.Path, binaries: dict[str, pathlib.Path],
                  pytestconfig: pytest.Config) -> Iterator[ControlPlane]:
    """The cluster with the test namespaces, Tekton and the build namespace's fixtures."""
    cp = ControlPlane(e2e_workdir, binaries)
    timings = pytestconfig.stash.setdefault(TIMINGS, {})
    try:
        cp.start()
        ensure_namespaces(cp)
        cp.install_tekton()
        cp.apply(TEST_MANIFESTS / "buildpacks-phases-0.2.yaml", f"--namespace={BUILD_NAMESPACE}")
        cp.apply(TEST_MANIFESTS / "image-build.yaml")
        timings.update(cp.timings)
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def suite(control_plane: ControlPlane, e2e_workdir: pathlib.Path,
          pytestconfig: pytest.Config) -> Iterator[Suite]:
    """toolforge-admission serving the cluster, its webhook configurations registered."""
    running = Suite(control_plane, e2e_workdir)
    try:
        running.start()
        running.register()
        pytestconfig.stash.setdefault(TIMINGS, {}).update(running.timings)
        yield running
    finally:
        running.stop()


@pytest.fixture
def live_suite(suite: Suite) -> Iterator[Suite]:
    """The suite, running at the start and at the end of the test (restarted if it stopped)."""
    suite.start()
    yield suite
    suite.start()


@pytest.fixture
def default_policy(live_suite: Suite) -> Iterator[Suite]:
    """For tests that change the policy: the test policy is back in force afterwards."""
    yield live_suite
    live_suite.restore_policy()


@pytest.fixture(scope="session")
def mytool(control_plane: ControlPlane) -> pathlib.Path:
    """kubeconfig of the tool mytool (CN=mytool, O=toolforge)."""
    return control_plane.tool_kubeconfig("mytool")


@pytest.fixture(scope="session")
def person(control_plane: ControlPlane) -> pathlib.Path:
    """kubeconfig of a person, not a tool (CN=mytool, no O=toolforge)."""
    return control_plane.human_kubeconfig("mytool")
