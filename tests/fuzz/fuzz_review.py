"""Fuzz target: any bytes as an AdmissionReview body, judged by each endpoint's rule.

The first byte picks the endpoint, the rest is the body. Invariant: the body is refused with a
BadReviewError, or the rules (called through `decision_for`, so that an exception is a crash
rather than the RuleFailed denial the service would send) return a decision whose reply serialises, echoes the
uid, carries a printable, capped message, and whose patch turns the object into the mutated one.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import orjson

from policies.decision import MAX_MESSAGE_CHARS, MAX_WARNING_CHARS
from policies.model import parse_policy
from policies.rule import Facts
from policies.slots import Claim, Reservation
from tests.builders import EXAMPLE_POLICY, make_review
from tests.buildruns import CONTROLLER, MemoryCluster, captured_pod, new_taskrun, objects_of
from tests.pipelineruns import make_run
from webhooks.admission import ENDPOINTS, Cluster, decision_for
from webhooks.errors import BadReviewError
from webhooks.patches import make_patch
from webhooks.review import build_response, parse_review
from webhooks.runs import BuildRuns

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tekton"
CPU_SECONDS = 1.0
"""The most one input may take, as in tests/unit/webhooks/test_hostile_input.py."""


class Fits:
    """Active-run slots that always have room, so the PipelineRun rule runs to its end."""

    def claim(self, tool: str, candidate: Reservation, *, limit: int, label: str,
              reserve: bool) -> Claim:
        return Claim(fits=limit > 0, limit=limit, occupants=(), reservations=(), changed=False)


RUN, TASKRUN = objects_of(captured_pod())
FACTS = Facts(parse_policy(EXAMPLE_POLICY.read_bytes()),
              datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC))
CLUSTER = Cluster(active_runs=Fits(), build_runs=BuildRuns(MemoryCluster(RUN, TASKRUN)))


def check(data: bytes) -> None:
    if not data:
        return
    endpoint = ENDPOINTS[data[0] % len(ENDPOINTS)]
    try:
        request = parse_review(data[1:])
    except BadReviewError as error:
        check_text(str(error), MAX_MESSAGE_CHARS)
        return
    decision = decision_for(endpoint, request, FACTS, CLUSTER)
    patch = None
    if endpoint.mutating and decision.allowed and decision.patched is not None:
        patch = make_patch(request.object, decision.patched)
    reply = orjson.loads(orjson.dumps(build_response(request.uid, decision, patch)))
    response = reply["response"]
    assert response["uid"] == request.uid
    assert response["allowed"] is decision.allowed
    if not decision.allowed:
        check_text(response["status"]["message"], MAX_MESSAGE_CHARS)
    for warning in response.get("warnings", ()):
        check_text(warning, MAX_WARNING_CHARS)
    if patch:
        patched = jsonpatch.apply_patch(request.object, patch, in_place=True)
        assert patched == decision.patched, "the patch does not give the mutated object"


def check_text(text: object, limit: int) -> None:
    """One printable line (no newline, control character or escape sequence), capped."""
    assert isinstance(text, str), text
    assert len(text) <= limit, f"{len(text)} characters"
    assert text.isprintable(), text[:500]


def seeds() -> Iterator[bytes]:
    """Reviews every endpoint reaches deep into: Tekton build pods, workloads, runs, policies."""
    reviews = [(0, json.loads(path.read_text()))
               for path in sorted(FIXTURES.glob("*/pod.create.admissionreview.json"))]
    reviews += [(2, review) for _, review in reviews]
    runs: dict[str, Any] = {"resource": "pipelineruns", "namespace": "image-build"}
    reviews += [
        (1, make_review(make_run("v1"), **runs)),
        (1, make_review(make_run("v1beta1"), **runs)),
        (1, make_review(make_run("v1"), **runs, operation="UPDATE", old=make_run("v1"))),
        (2, make_review()),
        (2, make_review(namespace="image-build")),
        (3, make_review({"metadata": {"name": "toolforge-admission-policy"},
                         "data": {"policy.yaml": EXAMPLE_POLICY.read_text()}},
                        resource="configmaps", namespace="toolforge-admission")),
    ]
    controller: dict[str, Any] = {"namespace": "image-build", "username": CONTROLLER,
                  "groups": ("system:serviceaccounts", "system:authenticated")}
    reviews += [
        (4, make_review(new_taskrun(RUN), resource="taskruns", **controller)),
        (4, make_review(new_taskrun(RUN), resource="customruns", **controller)),
        (4, make_review(new_taskrun(RUN), resource="taskruns", namespace="image-build",
                        operation="UPDATE", old=new_taskrun(RUN))),
    ]
    exec_options = {"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh"]}
    reviews += [(5, make_review(exec_options, resource="pods", namespace="image-build",
                                operation="CONNECT", sub_resource="exec",
                                kind=("", "v1", "PodExecOptions")))]
    # Inputs that once broke an invariant, so that the seeds alone catch a regression.
    nameless = copy.deepcopy(reviews[0][1])
    nameless["request"]["object"]["spec"]["containers"][0]["name"] = []
    reviews += [(0, nameless), (2, nameless)]
    names = [endpoint.name for endpoint in ENDPOINTS]
    assert names[:6] == ["mutate-build-pods", "validate-pipelineruns", "validate-pods",
                         "validate-policy", "validate-taskruns", "validate-build-pod-access"], names
    for index, review in reviews:
        yield bytes([index]) + orjson.dumps(review)
