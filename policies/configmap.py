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
        parse_policy(text)
    except PolicyError as error:
        decision = decide([Finding(POLICY_INVALID, problem) for problem in error.problems],
                          "enforce")
        # Capped again: the prefix would take a message at the cap over it.
        return replace(decision, message=cap(f"{POLICY_KEY} is not a valid policy: "
                                             f"{decision.message}", MAX_MESSAGE_CHARS))
    return allow()


POLICY_EDITS = Rule(check_policy_configmap, operations=frozenset({"CREATE", "UPDATE"}))
