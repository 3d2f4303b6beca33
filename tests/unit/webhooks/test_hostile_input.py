"""Hostile and broken input: whatever the body, a well-formed answer, quickly, and clean logs.

Every endpoint is driven through the real WSGI app (the admission dispatcher) with the example
policy. The bodies are built by hypothesis: arbitrary JSON, real reviews (Tekton build pods,
workloads, PipelineRuns, the policy ConfigMap) with the object or the envelope mutated at a
random place (wrong types, missing fields, huge arrays and strings, nesting up to and past the
parser's limit, control characters, newlines and ANSI escapes in names and image references),
raw bytes with invalid UTF-8, bodies over the cap, and wrong content types.

The answer must be HTTP 200 with an AdmissionReview that echoes the uid and carries a printable,
capped message (and a patch that applies to the object), or a 4xx Kubernetes Status with a
reason; never a 500, never a rule that broke on the object, and each review within a CPU-time
bound. Every log record the review writes must be one line, with its detail capped.
"""

from __future__ import annotations

import base64
import copy
import datetime
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.http import parse_options_header
from werkzeug.test import EnvironBuilder

from policies.decision import MAX_MESSAGE_CHARS, MAX_WARNING_CHARS
from policies.slots import Claim, Reservation
from tests.builders import EXAMPLE_POLICY, make_review
from tests.pipelineruns import make_run
from webhooks.admission import ENDPOINTS, RULE_FAILED
from webhooks.app import EXTENSION, create_app
from webhooks.logs import JsonFormatter
from webhooks.review import MAX_BODY_BYTES

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "tekton"
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
PATHS = tuple(endpoint.path for endpoint in ENDPOINTS)
MUTATING = frozenset(endpoint.path for endpoint in ENDPOINTS if endpoint.mutating)
CPU_SECONDS_PER_REVIEW = 1.0
"""Generous: a review takes milliseconds; this catches quadratic paths, not slow machines."""
CPU_SECONDS_PER_POLICY_REVIEW = 2.5
"""PyYAML (pure Python: libyaml's composer overflows the C stack) spends up to ~1 s on deep
nesting before it gives up with a RecursionError; only admins can send a policy."""
ORJSON_MAX_DEPTH = 1024
"""orjson refuses deeper documents (a 400); the strategies go past it on purpose."""

# Determinism for CI: the same examples on every run, a bounded number of them per test. For a
# longer hunt: TOOLFORGE_ADMISSION_HOSTILE_EXAMPLES=5000 TOOLFORGE_ADMISSION_HOSTILE_RANDOM=1.
HOSTILE = settings(max_examples=int(os.environ.get("TOOLFORGE_ADMISSION_HOSTILE_EXAMPLES", "200")),
                   derandomize=not os.environ.get("TOOLFORGE_ADMISSION_HOSTILE_RANDOM"),
                   deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.large_base_example])


@dataclass
class MemoryRuns:
    """Active-run slots in memory, by turns free and full, so the rule takes both paths."""

    claims: int = 0

    def claim(self, tool: str, candidate: Reservation, *, limit: int, label: str,
              reserve: bool) -> Claim:
        self.claims += 1
        fits = limit > 0 and self.claims % 2 == 1
        occupants = () if fits else (f"{candidate.namespace}/an-earlier-run",)
        return Claim(fits=fits, limit=limit, occupants=occupants, reservations=(),
                     changed=False)


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    app = create_app({"POLICY_FILE": str(EXAMPLE_POLICY), "POLICY_RELOAD_SECONDS": 0,
                      "TESTING": True, "ACTIVE_RUNS": MemoryRuns(), "CLOCK": lambda: NOW})
    yield app
    app.extensions[EXTENSION].source.stop()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --- the reviews the mutations start from ------------------------------------------------------

def _fixture_reviews() -> list[dict[str, Any]]:
    return [json.loads(path.read_text())
            for path in sorted(FIXTURES.glob("*/pod.create.admissionreview.json"))]


def _workload(kind: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": pod_spec}
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, "spec": spec}


def _base_reviews() -> list[tuple[str, dict[str, Any]]]:
    """(path, review) pairs that each reach the interesting part of an endpoint's rule."""
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"}, "spec": {
        "containers": [{"name": "app", "image": "tools-harbor.wmcloud.org/tool-mytool/app:1"}],
        "initContainers": [{"name": "init", "image": "docker.io/library/bash:5"}]}}
    debug = copy.deepcopy(pod)
    debug["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox:1.36"}]
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "toolforge-admission-policy"},
                 "data": {"policy.yaml": EXAMPLE_POLICY.read_text()}}
    runs: dict[str, Any] = {"resource": "pipelineruns", "namespace": "image-build"}
    reviews: list[tuple[str, dict[str, Any]]] = []
    for review in _fixture_reviews():
        reviews += [("/mutate/build-pods", review), ("/validate/pods", review)]
    reviews += [
        ("/validate/pods", make_review(pod)),
        ("/validate/pods", make_review(pod, namespace="image-build")),
        ("/validate/pods", make_review(debug, operation="UPDATE", old=pod,
                                       sub_resource="ephemeralcontainers")),
        ("/validate/pods", make_review(_workload("Deployment", pod["spec"]),
                                       resource="deployments")),
        ("/validate/pods", make_review(_workload("CronJob", pod["spec"]), resource="cronjobs",
                                       kind=("batch", "v1", "CronJob"))),
        ("/validate/pipelineruns", make_review(make_run("v1"), **runs)),
        ("/validate/pipelineruns", make_review(make_run("v1beta1"), **runs)),
        ("/validate/pipelineruns", make_review(
            make_run("v1"), **runs, username="system:serviceaccount:image-build:builds-api",
            groups=("system:serviceaccounts",))),
        ("/validate/pipelineruns", make_review(make_run("v1"), **runs, operation="UPDATE",
                                               old=make_run("v1"))),
        ("/validate/policy", make_review(configmap, resource="configmaps",
                                         namespace="toolforge-admission")),
    ]
    return reviews


BASES = _base_reviews()


# --- hostile values ----------------------------------------------------------------------------

DEEP = "\x00deep:{depth}:{kind}\x00"
"""A placeholder for nesting deeper than orjson writes; replaced in the serialised body."""

NASTY_TEXT = st.sampled_from([
    "", " ", "\n", "a\nb", "x\r\nInjected: line", "\x1b[31mred\x1b[0m", "\x00", "\u2028\u2029",
    "\ufeff", "\u202egnp.evil", '"', "\\", "{tool}", "%s%n", "../../etc/passwd", "-", "--",
    "-basic-docker=s=h", "/tekton/creds-secrets/x", "step-build", "image-build", "tool-mytool",
    "tools-harbor.wmcloud.org/tool-mytool/app:1", "nginx", "docker.io/library/nginx:latest",
    "evil.example/x@sha256:" + "a" * 64, "UPPER/case", "a" * 5000, "é" * 3000, "1" * 50_000,
    "toolforge-admission-policy", "policy.yaml",
])
TEXT = st.one_of(NASTY_TEXT, st.text(max_size=40),
                 st.text(st.characters(codec="utf-8"), min_size=200, max_size=20_000))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), TEXT,
                    st.floats(allow_nan=False, allow_infinity=False))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(TEXT, inner, max_size=5)), max_leaves=20)


@st.composite
def huge_arrays(draw: st.DrawFn) -> list[Any]:
    item = draw(st.one_of(SCALARS, st.just({"name": "x", "image": "nginx"}),
                          st.just({"name": "v", "mountPath": "/tekton/creds-secrets/v"}),
                          st.just({"name": "E", "valueFrom": {"secretKeyRef": {"name": "s"}}})))
    return [copy.deepcopy(item) for _ in range(draw(st.integers(1_000, 20_000)))]


HOSTILE_VALUES = st.one_of(
    JSON, TEXT, huge_arrays(),
    st.builds(DEEP.format, kind=st.sampled_from(["list", "dict"]), depth=st.one_of(
        # Around orjson's output limit (255), Python's recursion limit (1000) and orjson's
        # input limit (1024), where a recursive step in the webhook would break.
        st.sampled_from([254, 256, 600, 950, 990, 1000, 1010, 1020, 1024, 1025, 5000]),
        st.integers(1, ORJSON_MAX_DEPTH + 100))),
)


def _keys(node: dict[str, Any] | list[Any]) -> list[Any]:
    return list(node) if isinstance(node, dict) else list(range(len(node)))


@st.composite
def mutated(draw: st.DrawFn, node: Any, values: st.SearchStrategy[Any] = HOSTILE_VALUES) -> Any:
    """`node` with one place (drawn by walking down from the top) replaced or removed."""
    if isinstance(node, dict | list) and node and draw(st.integers(0, 9)) < 8:
        node = copy.copy(node)
        key = draw(st.sampled_from(_keys(node)))
        if isinstance(node, dict) and draw(st.integers(0, 9)) == 0:
            del node[key]
        else:
            node[key] = draw(mutated(node[key], values))
        return node
    return draw(values)


def serialise(review: Any) -> bytes:
    """orjson's text of the review, with each DEEP placeholder replaced by its nesting."""
    body = orjson.dumps(review)
    marker, end_marker = b'"\\u0000deep:', b'\\u0000"'
    while (at := body.find(marker)) >= 0:
        end = body.index(end_marker, at)
        depth, kind = body[at + len(marker):end].split(b":")
        opening, leaf, closing = (b"[", b"", b"]") if kind == b"list" else (b'{"a":', b"1", b"}")
        nested = opening * int(depth) + leaf + closing * int(depth)
        body = body[:at] + nested + body[end + len(end_marker):]
    return body


@st.composite
def object_mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real review whose object (or old object) is broken at one to three places."""
    path, review = draw(st.sampled_from(BASES))
    review = copy.deepcopy(review)
    request = review["request"]
    key = "oldObject" if request.get("oldObject") and draw(st.booleans()) else "object"
    for _ in range(draw(st.integers(1, 3))):
        request[key] = draw(mutated(request[key]))
    return path, serialise(review)


@st.composite
def envelope_mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real review broken anywhere, the envelope included (wrong types, missing fields)."""
    path, review = draw(st.sampled_from(BASES))
    return path, serialise(draw(mutated(copy.deepcopy(review), JSON)))


TENANT_TEXT = st.one_of(
    NASTY_TEXT, st.text(st.characters(codec="utf-8"), max_size=3000),
    # Long text with line breaks and escapes all along it, for the caps.
    st.builds(lambda piece, times: f"{piece}\n\x1b[0m" * times, st.text(max_size=20),
              st.integers(100, 2000)))


@st.composite
def tenant_strings(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real review with one tenant-chosen string full of control characters, escapes, length.

    One kind of place per example (container names, images, mount paths, credential flags...),
    so that the message which quotes it is not hidden behind another denial.
    """
    path, review = draw(st.sampled_from(BASES))
    review = copy.deepcopy(review)
    request = review["request"]
    obj = request["object"]
    places = _tenant_places(request)
    holder, key = draw(st.sampled_from(places))
    value = draw(TENANT_TEXT)
    if key == "args":  # a credential flag whose value is the tenant's
        holder[key] = [f"-basic-docker={value}=h", *holder.get(key, ())]
    elif key == "env":  # a variable that reads a credential Secret, under the tenant's name
        secrets = [v["secret"]["secretName"] for v in obj["spec"].get("volumes", ())
                   if "secret" in v] or ["s"]
        holder.setdefault("env", []).append(
            {"name": value, "valueFrom": {"secretKeyRef": {"name": secrets[0], "key": "k"}}})
    else:
        holder[key] = value
    return path, serialise(review)


def _tenant_places(request: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, key) pairs whose string a tenant (or a hostile client) chooses."""
    obj = request["object"]
    places: list[tuple[dict[str, Any], str]] = [(request, "namespace"), (request, "name"),
                                                (request["userInfo"], "username")]
    metadata = obj.setdefault("metadata", {})
    places.append((metadata.setdefault("labels", {}), "toolforge.org/tool"))
    for spec in _pod_specs(obj):
        for key in ("containers", "initContainers", "ephemeralContainers"):
            for container in spec.get(key) or ():
                places += [(container, "name"), (container, "image"), (container, "args"),
                           (container, "env")]
                places += [(mount, field) for mount in container.get("volumeMounts") or ()
                           for field in ("name", "mountPath")]
        places += [(volume, "name") for volume in spec.get("volumes") or ()]
    spec = obj.get("spec") or {}
    places += [(param, "value") for param in spec.get("params") or ()]
    places += [(workspace, field) for workspace in spec.get("workspaces") or ()
               for field in ("name", "subPath")]
    for key in ("pipelineRef", "taskRunTemplate", "timeouts"):
        if isinstance(spec.get(key), dict):
            places += [(spec[key], field) for field in ("name", "serviceAccountName", "pipeline")]
    if isinstance(obj.get("data"), dict):
        places.append((obj["data"], "policy.yaml"))
    return places


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec") or {}
    yield spec
    for holder in (spec, spec.get("jobTemplate", {}).get("spec", {})):
        template = holder.get("template") if isinstance(holder, dict) else None
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            yield template["spec"]


# --- what every answer must be -----------------------------------------------------------------

class Records(logging.Handler):
    """Every log record written while a review is answered."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def post(client: FlaskClient, path: str, body: bytes,
         content_type: str = "application/json") -> dict[str, Any]:
    """Send one body and check the answer, its time and its logs; the decoded answer."""
    handler = Records()
    logger = logging.getLogger("webhooks")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        started = time.process_time()
        response = client.post(path, data=body, content_type=content_type)
        seconds = time.process_time() - started
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    bound = CPU_SECONDS_PER_POLICY_REVIEW if path == "/validate/policy" else CPU_SECONDS_PER_REVIEW
    assert seconds < bound, f"{seconds:.2f} s of CPU for one review"
    assert response.status_code != 500
    answer = orjson.loads(response.data)
    if response.status_code == 200:
        check_verdict(path, body, answer)
    else:
        check_status(response.status_code, answer)
    check_logs(handler.records)
    return answer


def check_verdict(path: str, body: bytes, answer: dict[str, Any]) -> None:
    sent = orjson.loads(body)  # the server read it, so it is JSON within orjson's limits
    assert set(answer) == {"apiVersion", "kind", "response"}
    assert (answer["apiVersion"], answer["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    response = answer["response"]
    assert response["uid"] == sent["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    assert response.get("status", {}).get("reason") != RULE_FAILED
    if not response["allowed"]:
        status = response["status"]
        assert status["code"] == 403
        assert status["reason"] == "Forbidden"
        check_message(status["message"], MAX_MESSAGE_CHARS)
    for warning in response.get("warnings", ()):
        check_message(warning, MAX_WARNING_CHARS)
    for key, value in response.get("auditAnnotations", {}).items():
        assert isinstance(key, str)
        assert isinstance(value, str)
    if "patch" in response:
        assert path in MUTATING
        assert response["allowed"]
        assert response["patchType"] == "JSONPatch"
        patch = orjson.loads(base64.b64decode(response["patch"], validate=True))
        jsonpatch.apply_patch(sent["request"]["object"], patch, in_place=True)


def check_status(code: int, answer: dict[str, Any]) -> None:
    assert 400 <= code < 500
    assert answer["kind"] == "Status"
    assert answer["apiVersion"] == "v1"
    assert answer["status"] == "Failure"
    assert answer["code"] == code
    assert isinstance(answer["reason"], str)
    assert answer["reason"]
    check_message(answer["message"], MAX_MESSAGE_CHARS)


def check_message(message: object, limit: int) -> None:
    """Printable (no newline, control character or escape sequence), not empty, capped."""
    assert isinstance(message, str)
    assert message
    assert len(message) <= limit, f"a message of {len(message)} characters"
    assert message.isprintable(), f"unescaped text in {message[:300]!r}"


def check_logs(records: list[logging.LogRecord]) -> None:
    assert not [r for r in records if r.getMessage() == "rule failed"], "a rule broke"
    messages = [record.getMessage() for record in records]
    assert messages.count("review") + messages.count("bad request") == 1, messages  # once each
    formatter = JsonFormatter()
    for record in records:
        line = formatter.format(record)
        assert "\n" not in line
        assert "\r" not in line
        fields = orjson.loads(line)
        for key in ("detail", "error"):
            if key in fields:
                assert len(fields[key]) <= MAX_MESSAGE_CHARS


# --- the properties ----------------------------------------------------------------------------

@pytest.mark.slow
@HOSTILE
@given(case=object_mutations())
def test_a_broken_object_gets_a_verdict_or_a_4xx(client: FlaskClient,
                                                  case: tuple[str, bytes]) -> None:
    post(client, *case)


@pytest.mark.slow
@HOSTILE
@given(case=envelope_mutations())
def test_a_broken_envelope_gets_a_verdict_or_a_4xx(client: FlaskClient,
                                                    case: tuple[str, bytes]) -> None:
    post(client, *case)


@pytest.mark.slow
@HOSTILE
@given(case=tenant_strings())
def test_tenant_names_and_images_are_quoted_and_capped(client: FlaskClient,
                                                        case: tuple[str, bytes]) -> None:
    post(client, *case)


@pytest.mark.slow
@HOSTILE
@given(path=st.sampled_from(PATHS), value=JSON)
def test_any_json_document_gets_an_answer(client: FlaskClient, path: str, value: Any) -> None:
    post(client, path, orjson.dumps(value))


@pytest.mark.slow
@HOSTILE
@given(path=st.sampled_from(PATHS), body=st.binary(max_size=2000))
def test_any_bytes_get_an_answer(client: FlaskClient, path: str, body: bytes) -> None:
    post(client, path, body)


@pytest.mark.slow
@HOSTILE
@given(base=st.sampled_from(BASES), at=st.integers(0, 10**6),
       junk=st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b))
def test_invalid_utf8_inside_a_review_is_a_bad_review(
        client: FlaskClient, base: tuple[str, dict[str, Any]], at: int, junk: bytes) -> None:
    path, review = base
    body = orjson.dumps(review)
    at %= len(body)
    answer = post(client, path, body[:at] + junk + body[at:])
    assert answer["reason"] == "BadReview"


@pytest.mark.slow
@settings(HOSTILE, max_examples=6)
@given(base=st.sampled_from(BASES), over=st.integers(1, 64 * 1024))
def test_a_body_over_the_cap_is_refused(client: FlaskClient,
                                         base: tuple[str, dict[str, Any]],
                                         over: int) -> None:
    path, review = base
    review = copy.deepcopy(review)
    body = orjson.dumps(review)
    review["request"]["object"]["padding"] = "x" * (MAX_BODY_BYTES - len(body) + over)
    body = orjson.dumps(review)
    assert len(body) > MAX_BODY_BYTES
    assert post(client, path, body)["reason"] == "BodyTooLarge"


def test_a_body_at_the_cap_is_judged(client: FlaskClient) -> None:
    path, review = BASES[0]
    review = copy.deepcopy(review)
    review["request"]["object"]["padding"] = ""
    review["request"]["object"]["padding"] = "x" * (MAX_BODY_BYTES - len(orjson.dumps(review)))
    body = orjson.dumps(review)
    assert len(body) == MAX_BODY_BYTES
    assert post(client, path, body)["kind"] == "AdmissionReview"


@pytest.mark.slow
@HOSTILE
@given(path=st.sampled_from(PATHS), content_type=st.one_of(st.sampled_from([
    "", "text/plain", "application/json; charset=utf-8", "APPLICATION/JSON", "text/json",
    "application/json-patch+json", "application/yaml", "multipart/form-data; boundary=x",
    "application/json, text/plain", "application/jsonx", " application/json"]),
    st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=40)))
def test_a_wrong_content_type_is_refused(client: FlaskClient, path: str,
                                          content_type: str) -> None:
    body = orjson.dumps(make_review(namespace="kube-system"))
    answer = post(client, path, body, content_type)
    if parse_options_header(content_type)[0].lower() == "application/json":
        assert answer["kind"] == "AdmissionReview"
    else:
        assert answer["reason"] == "UnsupportedMediaType"


def test_the_strategies_reach_past_the_parsers_nesting_limit() -> None:
    deep = serialise({"x": DEEP.format(depth=ORJSON_MAX_DEPTH + 1, kind="list")})
    with pytest.raises(orjson.JSONDecodeError, match="depth"):
        orjson.loads(deep)
    assert orjson.loads(serialise([DEEP.format(depth=3, kind="dict")])) == [
        {"a": {"a": {"a": 1}}}]


def test_a_json_line_per_record_survives_a_hostile_message() -> None:
    """The log formatter is what keeps tenant text from forging log lines; prove it does."""
    record = logging.LogRecord("webhooks.app", logging.INFO, __file__, 1, "review", None, None)
    record.fields = {"name": "x\n{\"level\": \"error\"}\x1b[2J"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert orjson.loads(line)["name"] == record.fields["name"]  # type: ignore[attr-defined]


# --- what the properties found, pinned --------------------------------------------------------

def first_base(path: str) -> dict[str, Any]:
    """A copy of the first review for an endpoint (for PipelineRuns: a CREATE by a tool)."""
    return copy.deepcopy(next(review for at, review in BASES if at == path))


def _build_pod_review() -> tuple[dict[str, Any], dict[str, Any]]:
    review = copy.deepcopy(_fixture_reviews()[0])
    containers = review["request"]["object"]["spec"]["containers"]
    return review, next(c for c in containers if c["name"] == "step-build")


@pytest.mark.parametrize("depth", [990, ORJSON_MAX_DEPTH])
@pytest.mark.parametrize("path", ["/mutate/build-pods", "/validate/pods"])
def test_a_build_pod_nested_as_deep_as_the_parser_allows_is_judged(
        client: FlaskClient, path: str, depth: int) -> None:
    # The mutation used to deep-copy the whole pod: RecursionError past ~1000 levels.
    review, _ = _build_pod_review()
    # The review, request, object and metadata are four levels already.
    review["request"]["object"]["metadata"]["x"] = DEEP.format(depth=depth - 4, kind="list")
    answer = post(client, path, serialise(review))
    assert answer["response"]["allowed"] is (path in MUTATING)


def test_thousands_of_credential_mounts_are_stripped_quickly(client: FlaskClient) -> None:
    # Each mount was looked up in a tuple (quadratic), then diffed by jsonpatch: 2.4 s at 20k.
    review, step = _build_pod_review()
    step["volumeMounts"] += [{"name": f"v{i}", "mountPath": f"/tekton/creds-secrets/v{i}"}
                             for i in range(20_000)]
    step["args"] = [f"-basic-docker=s{i}=h" for i in range(20_000)] + step["args"]
    answer = post(client, "/mutate/build-pods", serialise(review))
    assert answer["response"]["allowed"]
    assert len(answer["response"]["auditAnnotations"]["credentials-stripped"]) < 200


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a: " + "{b: " * 3000 + "1" + "}" * 3000,
                                  "- " * 3000 + "x"], ids=["flow-list", "flow-map", "block"])
def test_a_policy_nested_deeper_than_the_yaml_parser_goes_is_invalid(
        client: FlaskClient, text: str) -> None:
    # PyYAML recursed into a RecursionError, which the rule turned into RuleFailed.
    review = first_base("/validate/policy")
    review["request"]["object"]["data"]["policy.yaml"] = text
    answer = post(client, "/validate/policy", serialise(review))["response"]
    assert answer["allowed"] is False
    assert answer["auditAnnotations"]["reason"] == "PolicyInvalid"
    assert "nested too deeply" in answer["status"]["message"]


def test_a_policy_with_hundreds_of_problems_is_refused_within_the_cap(
        client: FlaskClient) -> None:
    # The "policy.yaml is not a valid policy: " prefix went on after the cap.
    review = first_base("/validate/policy")
    review["request"]["object"]["data"]["policy.yaml"] = "".join(
        f"unknown{i:04}: 1\n" for i in range(500))
    answer = post(client, "/validate/policy", serialise(review))["response"]
    assert answer["status"]["message"].startswith("policy.yaml is not a valid policy: ")
    assert len(answer["status"]["message"]) == MAX_MESSAGE_CHARS


def test_a_credential_env_name_is_escaped_in_the_denial(client: FlaskClient) -> None:
    review, step = _build_pod_review()
    step.setdefault("env", []).append({"name": "X\n\x1b[31mInjected", "valueFrom": {
        "secretKeyRef": {"name": "basic-user-pass", "key": "password"}}})
    answer = post(client, "/validate/pods", serialise(review))["response"]
    assert "env X\\n\\x1b[31mInjected" in answer["status"]["message"]


def test_a_namespace_is_escaped_in_a_pipelinerun_denial(client: FlaskClient) -> None:
    review = first_base("/validate/pipelineruns")
    review["request"]["namespace"] = "evil\r\nX"
    answer = post(client, "/validate/pipelineruns", serialise(review))["response"]
    assert "; not in evil\\r\\nX. " in answer["status"]["message"]


@pytest.mark.parametrize("path", ["/mutate/build-pods", "/validate/pods"])
def test_a_container_name_of_any_json_type_is_judged(client: FlaskClient, path: str) -> None:
    # Found by the properties: an unhashable name broke the lookup of trusted steps.
    review, step = _build_pod_review()
    step["name"] = []
    post(client, path, serialise(review))


@pytest.mark.parametrize("where", ["create", "update"])
def test_a_timeout_of_many_digits_is_judged_quickly(client: FlaskClient, where: str) -> None:
    # Durations were parsed by searching ahead from every digit: 10 s for 20k digits.
    review = first_base("/validate/pipelineruns")
    request = review["request"]
    request["object"]["spec"]["timeouts"] = {"pipeline": "1" * 20_000}
    if where == "update":
        request["operation"], request["oldObject"] = "UPDATE", request["object"]
    post(client, "/validate/pipelineruns", serialise(review))


@pytest.mark.parametrize("sent", [b"", b'{"kind":"AdmissionReview"'])
def test_a_body_shorter_than_its_content_length_is_a_bad_review(app: Flask, sent: bytes) -> None:
    # The short read raised ClientDisconnected, which Flask's handler answered with a 500.
    environ = EnvironBuilder(path="/validate/pods", method="POST",
                             content_type="application/json").get_environ()
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(sent), "100"
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None,
                       ) -> Callable[[bytes], object]:
        statuses.append(status)
        return io.BytesIO().write

    body = b"".join(app.wsgi_app(environ, start_response))
    assert statuses == ["400 BAD REQUEST"]
    check_status(400, orjson.loads(body))


def test_a_long_list_changed_all_along_is_patched_quickly(client: FlaskClient) -> None:
    # Credential mounts among others, and the trusted steps' home shared: removals and an
    # in-place change in one list, which difflib aligned in quadratic time (7 s at 6000).
    review, step = _build_pod_review()
    containers = review["request"]["object"]["spec"]["containers"]
    trusted = next(c for c in containers if c["name"] == "step-analyze")
    home = next(m["name"] for m in trusted["volumeMounts"] if m["mountPath"] == "/tekton/home")
    for mount in step["volumeMounts"]:
        if mount["mountPath"] == "/tekton/home":
            mount["name"] = home
    step["volumeMounts"] = [mount for i in range(6000) for mount in (
        {"name": f"v{i}", "mountPath": f"/tekton/creds-secrets/v{i}"},
        {"name": "empty-dir", "mountPath": f"/keep/v{i}"})] + step["volumeMounts"]
    answer = post(client, "/mutate/build-pods", serialise(review))
    assert answer["response"]["allowed"]


def test_a_changed_list_holding_an_item_deeper_than_orjson_writes_is_patched(
        client: FlaskClient) -> None:
    # Aligning the list serialised every item with orjson, which stops at 255 levels: a 500.
    review, step = _build_pod_review()
    containers = review["request"]["object"]["spec"]["containers"]
    trusted = next(c for c in containers if c["name"] == "step-analyze")
    home = next(m["name"] for m in trusted["volumeMounts"] if m["mountPath"] == "/tekton/home")
    for mount in step["volumeMounts"]:
        if mount["mountPath"] == "/tekton/home":
            mount["name"] = home
    step["volumeMounts"][0]["x"] = DEEP.format(depth=300, kind="list")
    answer = post(client, "/mutate/build-pods", serialise(review))
    assert answer["response"]["allowed"]
