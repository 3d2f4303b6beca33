"""The end-to-end benchmark's target verdicts (bench/targets.py), judged on made-up figures, and
carried into the report's JSON and tables by bench/e2e.py."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import pytest

from bench.targets import Verdict, judge


def pooled(**p99: float) -> dict[str, dict[str, Any]]:
    return {mode: {"p99_ms": ms} for mode, ms in p99.items()}


def suite_to_none(pooled_ratio: float, *per_round: float) -> dict[str, dict[str, Any]]:
    return {"suite/none": {"p99": pooled_ratio, "p99_per_round": list(per_round)}}


def test_open_loop_is_met_when_every_round_and_the_pool_are_within_ten_percent():
    [verdict] = judge("open", pooled(none=100, suite=104), suite_to_none(1.04, 1.02, 1.10, 0.97))

    assert verdict.met is True
    assert verdict.text() == ("suite p99 within x1.10 of no policy, pooled and in every round: "
                              "met (pooled x1.04, per round x1.02, x1.10, x0.97)")


def test_open_loop_is_not_met_when_one_round_is_over_though_the_pool_is_within():
    [verdict] = judge("open", pooled(none=100, suite=105), suite_to_none(1.05, 0.95, 1.11, 1.00))

    assert verdict.met is False
    assert "not met (pooled x1.05, per round x0.95, x1.11, x1.00)" in verdict.text()


def test_open_loop_is_not_met_when_the_pool_is_over():
    [verdict] = judge("open", pooled(none=100, suite=112), suite_to_none(1.12, 1.09, 1.08))

    assert verdict.met is False


@pytest.mark.parametrize("modes", [pooled(none=100), pooled(suite=100)])
def test_open_loop_is_not_judged_without_the_suite_or_none(modes):
    [verdict] = judge("open", modes, {})

    assert verdict.met is None
    assert verdict.text().endswith("not judged (suite or none not measured)")


def test_closed_loop_compares_the_suite_with_the_go_reference_and_kyverno():
    verdicts = judge("closed", pooled(none=400, suite=560, goref=600, vap=420, kyverno=540),
                     suite_to_none(1.40, 1.6, 1.3))

    assert [v.text() for v in verdicts] == [
        "suite p99 at or below the Go reference's: met (560.0 ms against 600.0 ms)",
        "suite p99 at or below Kyverno's: not met (560.0 ms against 540.0 ms)",
    ]


def test_closed_loop_counts_a_tie_as_met_and_a_peer_left_out_as_not_judged():
    verdicts = judge("closed", pooled(none=400, suite=600, goref=600), {})

    assert [v.met for v in verdicts] == [True, None]
    assert verdicts[1].figures == "kyverno not measured"


def test_a_verdict_survives_the_json_of_the_report():
    verdict = Verdict("suite p99 at or below Kyverno's", False, "560.0 ms against 540.0 ms")

    assert Verdict(**verdict.as_json()) == verdict


def row(mode: str, round_: int, p99: float) -> dict[str, Any]:
    latencies = [p99 / 2] * 98 + [p99] * 2
    return {"regime": "open", "round": round_, "mode": mode, "late_creates": 0,
            "creates": 100, "created": 100, "wall_s": 1.0, "creates_per_s": 100.0,
            "p50_ms": p99 / 2, "p90_ms": p99 / 2, "p99_ms": p99, "p99.9_ms": p99,
            "errors": {}, "cores": {}, "cpu_ms_per_create": {"suite": 1.0}, "rss_mb": {},
            "webhook_connections_closed": 0, "admission_calls": {},
            "admission_call_mean_ms": None, "latencies_ms": latencies}


def test_the_report_carries_the_verdicts_of_its_regime():
    # Imported by name at run time: the script puts bench/ on sys.path for its own imports.
    e2e = importlib.import_module("bench.e2e")
    args = argparse.Namespace(modes=["none", "suite"], clients=50, creates=100, warmup=0,
                              rounds=2)
    rows = [row("none", 0, 100), row("suite", 0, 105), row("none", 1, 100), row("suite", 1, 120)]

    pods = e2e.summarise_pods(rows, args, "open", 50.0)

    assert pods["targets"] == [{
        "target": "suite p99 within x1.10 of no policy, pooled and in every round",
        "met": False, "figures": "pooled x1.05, per round x1.05, x1.20"}]
    assert ("- Target: suite p99 within x1.10 of no policy, pooled and in every round: not met "
            "(pooled x1.05, per round x1.05, x1.20).") in e2e.pods_markdown(pods)
