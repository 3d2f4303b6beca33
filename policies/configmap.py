"""The policy ConfigMap: where the policy lives, and the rule that refuses an edit that would not
load (`POLICY_EDITS`, served at /validate/policy)."""

from __future__ import annotations

from dataclasses import replace

from policies.decision import MAX_MESSAGE_CHARS, Decision, Finding, allow, cap, decide
from policies.model import PolicyError, parse_policy
from policies.rule import Facts, Review, Rule

POLICY_CONFIGMAP = "toolforge-admission-policy"
POLICY_KEY = "policy.yaml"

POLICY_MISSING = "PolicyMissing"
POLICY_INVALID = "PolicyInvalid"


def check_policy_configmap(review: Review, facts: Facts) -> Decision:
    """The policy ConfigMap itself: refuse an edit that would not load. Other ConfigMaps pass."""
    if review.name != POLICY_CONFIGMAP:
        return allow()
    data = (review.object or {}).get("data") or {}
    if not isinstance(data, dict) or POLICY_KEY not in data:
        return decide([Finding(POLICY_MISSING, f"ConfigMap {POLICY_CONFIGMAP} must have the "
                                               f"key {POLICY_KEY}")], "enforce")
    text = data[POLICY_KEY]
    if not isinstance(text, str):
        return decide([Finding(POLICY_INVALID, f"{POLICY_KEY} must be a string")], "enforce")
    try:
        policy = parse_policy(text)
    except PolicyError as error:
        decision = decide([Finding(POLICY_INVALID, problem) for problem in error.problems],
                          "enforce")
        # Capped again: the prefix would take a message at the cap over it.
        return replace(decision, message=cap(f"{POLICY_KEY} is not a valid policy: "
                                             f"{decision.message}", MAX_MESSAGE_CHARS))
    if policy.warn_modes:
        # Admitted (a rollout may want it), but whoever applies it hears what it switches off.
        return allow(warnings=(warn_mode_warning(policy.warn_modes),))
    return allow()


def warn_mode_warning(keys: tuple[str, ...]) -> str:
    """The warning for a policy that puts rules in warn mode: which, and what that means."""
    if len(keys) == 1:
        return (f"{keys[0]} is warn: that rule admits what it would refuse and only warns; set "
                "enforce once its warnings are understood")
    return (f"{', '.join(keys)} are warn: those rules admit what they would refuse and only "
            "warn; set enforce once their warnings are understood")


POLICY_EDITS = Rule(check_policy_configmap, operations=frozenset({"CREATE", "UPDATE"}))
