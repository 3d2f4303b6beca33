"""The end-to-end targets of issue 18, judged on the figures of one run of bench/e2e.py, per
regime:

- open loop (below saturation, paced at half of what `none` reached): the suite's p99 within
  x1.10 of `none`'s, pooled and in every round;
- closed loop (saturation): the suite's p99 (pooled) at or below the Go reference's and at or
  below Kyverno's. `vap` is the floor of any policy: shown, not a target.

A target whose figures were not measured (its mode left out with --modes) is not judged: its
verdict is None, and the report says so, rather than counting it met or not met.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OPEN_LIMIT = 1.10
PEERS = {"goref": "the Go reference", "kyverno": "Kyverno"}


@dataclass(frozen=True)
class Verdict:
    target: str
    met: bool | None  # None: a figure it needs was not measured
    figures: str  # what it was judged on

    def text(self) -> str:
        verdict = {True: "met", False: "not met", None: "not judged"}[self.met]
        return f"{self.target}: {verdict} ({self.figures})"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def judge(regime: str, modes: dict[str, dict[str, Any]],
          ratios: dict[str, dict[str, Any]]) -> list[Verdict]:
    """The verdicts of `regime` ("open" or "closed"); `modes` are the pooled figures by mode
    (p99_ms) and `ratios` the ratios by pair (suite/none: p99 pooled and p99_per_round), as
    bench/e2e.py summarises them."""
    if regime == "open":
        return [_within(modes, ratios)]
    return [_at_or_below(modes, peer) for peer in PEERS]


def _within(modes: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]]) -> Verdict:
    target = f"suite p99 within x{OPEN_LIMIT:.2f} of no policy, pooled and in every round"
    ratio = ratios.get("suite/none")
    if "suite" not in modes or "none" not in modes or ratio is None \
            or not ratio["p99_per_round"]:
        return Verdict(target, None, "suite or none not measured")
    rounds = ratio["p99_per_round"]
    met = ratio["p99"] <= OPEN_LIMIT and all(x <= OPEN_LIMIT for x in rounds)
    return Verdict(target, met, f"pooled x{ratio['p99']:.2f}, per round "
                                + ", ".join(f"x{x:.2f}" for x in rounds))


def _at_or_below(modes: dict[str, dict[str, Any]], peer: str) -> Verdict:
    target = f"suite p99 at or below {PEERS[peer]}'s"
    if "suite" not in modes or peer not in modes:
        return Verdict(target, None, f"{'suite' if 'suite' not in modes else peer} not measured")
    suite, other = modes["suite"]["p99_ms"], modes[peer]["p99_ms"]
    return Verdict(target, suite <= other, f"{suite:.1f} ms against {other:.1f} ms")
