"""The policy file: defaults, every problem reported with its path, unknown keys refused."""

from __future__ import annotations

import datetime

import pytest

from policies.model import MAX_POLICY_BYTES, BuildsPolicy, PolicyError, parse_policy
from tests.builders import EXAMPLE_POLICY


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return caught.value.problems


def test_empty_policy_has_the_documented_defaults() -> None:
    policy = parse_policy("{}")
    assert str(policy.tools.namespace_pattern) == "tool-{tool}"
    assert str(policy.tools.username_pattern) == "{tool}"
    assert policy.tools.groups == ("toolforge",)
    assert policy.exempt_namespaces == ("kube-system",)
    assert policy.builds.namespace == "image-build"
    assert policy.builds.pipeline_names == ("buildpacks",)
    assert policy.builds.pipelines[0].tasks == ()
    assert policy.builds.max_active_runs == 1
    assert policy.builds.mode == "enforce"
    assert policy.registries.allowed == ()
    assert policy.credentials.trusted_steps == ()


def test_bundled_example_policy_is_valid() -> None:
    policy = parse_policy(EXAMPLE_POLICY.read_bytes())
    assert policy.builds.harbor_hosts == ("tools-harbor.wmcloud.org",)
    assert policy.builds.params.by_name["ENV_VARS"].type == "array"
    assert policy.registries.exceptions["tool-example-byoc"][0].expires == datetime.date(2027, 6, 30)
    for name in ("USER_ID", "GROUP_ID"):  # never root
        spec = policy.builds.params.by_name[name]
        assert spec.refuses("0")
        assert spec.refuses("00")
        assert not spec.refuses("1000")


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("builds: {maxActiveRuns: 0}", "builds.maxActiveRuns: must be an integer >= 1",
                 id="zero-active-runs"),
    pytest.param("builds: {maxActiveRuns: '2'}", "builds.maxActiveRuns: must be an integer >= 1",
                 id="string-active-runs"),
    pytest.param("builds: {maxActiveRuns: true}", "builds.maxActiveRuns: must be an integer >= 1",
                 id="bool-active-runs"),
    pytest.param("builds: {maxActiveRunsOverrides: {a: -1}}",
                 "builds.maxActiveRunsOverrides.a: must be an integer >= 0", id="negative-override"),
    pytest.param("regsitries: {}", "regsitries: unknown key; did you mean registries?", id="typo-top-level"),
    pytest.param("tools: {namespacePattern: tool-}",
                 "tools.namespacePattern: must contain {tool} exactly once", id="pattern-no-tool"),
    pytest.param("builds: {mode: audit}", "builds.mode: must be one of 'enforce' or 'warn'",
                 id="unknown-mode"),
    pytest.param("builds: {maxTimeout: 5}",
                 "builds.maxTimeout: must be a duration string with a unit, e.g. 1h or 90m",
                 id="timeout-without-unit"),
    pytest.param("builds: {harborHosts: [harbor.example/project]}",
                 "builds.harborHosts[0]: must be a registry host (with an optional port), not a "
                 "repository", id="harbor-host-with-path"),
    pytest.param("builds: {builders: [Foo/Bar]}",
                 "builds.builders[0]: repository names must be lower case", id="builder-upper-case"),
    pytest.param("builds: {params: {required: [A], optional: [A]}}",
                 "builds.params: parameters listed more than once: A", id="param-twice"),
    pytest.param("registries: {allowed: ['bad host/x']}",
                 "registries.allowed[0]: a registry prefix names a registry or repository, without "
                 "tag or digest", id="prefix-with-space"),
    pytest.param("credentials: {trustedSteps: [{name: export, images: [], entrypoint: /x}]}",
                 "credentials.trustedSteps[0].images: must list at least 1 entry",
                 id="trusted-step-without-image"),
    pytest.param("builds: {maxActiveRunsOverrides: {off: 2}}",
                 "builds.maxActiveRunsOverrides: the key False must be a string (quote names such "
                 "as yes, no, on, off in YAML)", id="yaml-boolean-tool-name"),
    pytest.param("builds: {params: {optional: [{name: A, pattern: '(a)\\1'}]}}",
                 "builds.params.optional[0].pattern: not a valid RE2 regular expression: invalid "
                 "escape sequence: \\1", id="pattern-backreference"),
    pytest.param("builds: {params: {optional: [{name: A, pattern: '(?=a)'}]}}",
                 "builds.params.optional[0].pattern: not a valid RE2 regular expression: invalid "
                 "perl operator: (?=",
                 id="pattern-lookahead"),
    pytest.param("builds: {params: {optional: [{name: A, pattern: 5}]}}",
                 "builds.params.optional[0].pattern: must be a regular expression string (RE2 "
                 "syntax)",
                 id="pattern-not-a-string"),
    pytest.param("builds: {params: {optional: [{name: A, pattern: a, values: [a]}]}}",
                 "builds.params.optional[0]: give a pattern or a list of values, not both",
                 id="pattern-and-values"),
    pytest.param("builds: {params: {optional: [{name: A, values: []}]}}",
                 "builds.params.optional[0]: values must list at least one value",
                 id="empty-values"),
    pytest.param("builds: {params: {optional: [{name: A, values: [1]}]}}",
                 "builds.params.optional[0].values[0]: must be a string (quote names such as yes, no, "
                 "on, off in YAML)", id="values-not-strings"),
    pytest.param("", "the policy is empty; write {} to use every default", id="empty"),
    pytest.param("# only a comment\n", "the policy is empty; write {} to use every default",
                 id="only-comments"),
    pytest.param("- a", "the policy must be a YAML mapping", id="not-a-mapping"),
    pytest.param("digest: abc", "policy: unknown key 'digest'", id="internal-field-not-settable"),
])
def test_invalid_policy_reports_the_problem_with_its_path(text: str, expected: str) -> None:
    assert expected in problems_of(text)


def test_an_unknown_key_far_from_any_is_answered_with_the_keys_of_its_section() -> None:
    (problem,) = problems_of("builds: {bogus: 1}")
    keys = [field.alias or name for name, field in BuildsPolicy.model_fields.items()]
    assert problem == f"builds.bogus: unknown key; the keys here are {', '.join(keys)}"
    assert "maxActiveRuns" in keys
    assert "harborHosts" in keys


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of("builds: {maxActiveRuns: 0, bogus: 1}\nregistries: {mode: x}")
    assert len(problems) == 3


def test_yaml_syntax_error_names_the_line_and_column() -> None:
    assert problems_of("tools:\n  groups: [a\nbuilds: {}\n") == (
        "not valid YAML (line 3, column 7): expected ',' or ']', but got ':' (while parsing a "
        "flow sequence that starts at line 2, column 11)",)


@pytest.mark.parametrize(("text", "expected"), [
    ("registries:\n  exceptions:\n    tool-a: [{prefix: quay.io/a, expires: 2027-13-45}]\n",
     "not valid YAML (line 3, column 43): '2027-13-45' is not a date (quote it to make it a "
     "string): month must be in 1..12"),
    ("a: 2027-00-01", "not valid YAML (line 1, column 4): '2027-00-01' is not a date"),
    ("a: !!int x", "not valid YAML (line 1, column 4): 'x' is not an integer"),
    ("a: !!float x", "not valid YAML (line 1, column 4): 'x' is not a number"),
])
def test_a_value_yaml_cannot_construct_is_a_problem_with_its_position(text: str,
                                                                       expected: str) -> None:
    # Found by tests/fuzz: PyYAML raised a bare ValueError for these, with no position.
    (problem,) = problems_of(text)
    assert problem.startswith(expected)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("tools: {groups: toolforge}", "tools.groups: must be a list of group names",
                 id="scalar-for-list"),
    pytest.param("tools: 3", "tools: must be a mapping with the keys namespacePattern, "
                 "usernamePattern, groups, systemUsers", id="scalar-for-section"),
    pytest.param("builds: {maxActiveRun: 2}",
                 "builds.maxActiveRun: unknown key; did you mean maxActiveRuns?", id="near-key"),
    pytest.param("registries: {exceptions: {tool-a: [{prefix: quay.io/a, expire: 2027-01-01}]}}",
                 "registries.exceptions.tool-a[0].expire: unknown key; did you mean expires?",
                 id="near-key-in-a-list-in-a-mapping"),
    pytest.param("registries: {exceptions: {tool-a: quay.io/a}}",
                 "registries.exceptions.tool-a: must be a list of registry prefixes (a prefix, or "
                 "{prefix, expires})", id="scalar-for-exception-list"),
    pytest.param("registries: {exceptions: [quay.io/a]}", "registries.exceptions: must be a "
                 "mapping from a namespace to a list of registry prefixes", id="list-for-mapping"),
    pytest.param("registries: {exceptions: {tool-a: [{prefix: quay.io/a, expires: soon}]}}",
                 "registries.exceptions.tool-a[0].expires: must be a date (YYYY-MM-DD)",
                 id="not-a-date"),
    pytest.param("builds: {params: {required: [{name: A, type: list}]}}",
                 "builds.params.required[0].type: must be one of 'string' or 'array'",
                 id="literal-in-a-list"),
    pytest.param("builds: {maxActiveRuns: 1.5}", "builds.maxActiveRuns: must be an integer >= 1",
                 id="float"),
])
def test_problems_speak_the_policy_words_not_the_validation_library(text: str,
                                                                   expected: str) -> None:
    assert problems_of(text) == (expected,)
    for word in ("Input should", "tuple", "dict", "[key]"):
        assert word not in expected


@pytest.mark.parametrize("text", ["[" * 5000, "a: " + "{b: " * 3000, "- " * 3000 + "x"])
def test_yaml_nested_deeper_than_the_parser_recurses_is_a_problem(text: str) -> None:
    assert problems_of(text) == ("the policy is nested too deeply",)


@pytest.mark.parametrize("text", ['"a\\nb\\e[2J": 1', 'builds: {params: {required: ["a\\nb", "a\\nb"]}}',
                                  '? "' + "k" * 3000 + '"\n: 1'])
def test_each_problem_is_one_printable_bounded_line(text: str) -> None:
    # Keys and names from the file are quoted in problems, which kubectl and the logs show.
    for problem in problems_of(text):
        assert problem.isprintable()
        assert len(problem) <= 500


def test_oversized_policy_is_refused_before_parsing() -> None:
    (problem,) = problems_of("#" * (MAX_POLICY_BYTES + 1))
    assert "limit" in problem


def test_policy_is_frozen_and_carries_the_digest_of_its_text() -> None:
    policy = parse_policy("builds: {maxActiveRuns: 2}")
    assert len(policy.digest) == 64
    assert parse_policy("builds: {maxActiveRuns: 2}").digest == policy.digest
    with pytest.raises(ValueError, match="frozen"):
        policy.builds.max_active_runs = 3  # type: ignore[misc]


def test_overrides_apply_per_tool() -> None:
    builds = parse_policy("builds: {maxActiveRuns: 2, maxActiveRunsOverrides: {big: 5, stopped: 0}}").builds
    assert (builds.max_active_runs_for("big"), builds.max_active_runs_for("stopped"),
            builds.max_active_runs_for("other")) == (5, 0, 2)


def test_durations_and_exception_dates_are_parsed() -> None:
    policy = parse_policy("builds: {maxTimeout: 1h30m}\nregistries: {exceptions: "
                          "{tool-a: [quay.io/a, {prefix: ghcr.io/b, expires: 2027-01-02}]}}")
    assert policy.builds.max_timeout == 5400
    first, second = policy.registries.exceptions["tool-a"]
    assert (first.prefix, first.expires) == ("quay.io/a", None)
    assert second.expires == datetime.date(2027, 1, 2)


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("builds:\n  mode: warn\n  maxActiveRuns: 2\n  mode: enforce\n",
                 "not valid YAML (line 4, column 3): the key 'mode' is given twice in one mapping "
                 "(first at line 2); YAML would keep only the last", id="in-a-section"),
    pytest.param("builds: {}\ntools: {}\nbuilds: {mode: warn}\n",
                 "not valid YAML (line 3, column 1): the key 'builds' is given twice in one "
                 "mapping (first at line 1)", id="a-whole-section"),
    pytest.param("registries:\n  exceptions:\n    tool-a: [quay.io/a]\n    'tool-a': [quay.io/b]\n",
                 "not valid YAML (line 4, column 5): the key 'tool-a' is given twice in one "
                 "mapping (first at line 3)", id="spelled-two-ways"),
    pytest.param("builds: {params: {optional: [{name: A, pattern: '[a-z]+', pattern: '.*'}]}}",
                 "not valid YAML (line 1, column 59): the key 'pattern' is given twice",
                 id="in-a-flow-mapping-in-a-list"),
])
def test_a_key_given_twice_is_refused_with_both_lines(text: str, expected: str) -> None:
    # PyYAML keeps the last silently: the first would look in force and not be.
    (problem,) = problems_of(text)
    assert problem.startswith(expected)


def test_a_merged_key_may_be_overridden() -> None:
    # `<<: *anchor` brings in defaults that a mapping overrides: that is not a key given twice.
    policy = parse_policy("tools: &tools {groups: [a], systemUsers: [x]}\n"
                          "builds: {mode: warn}\n"
                          "registries: {mode: enforce}\n"
                          "credentials:\n  <<: {mode: warn}\n  mode: enforce\n")
    assert policy.credentials.mode == "enforce"


def test_the_build_namespace_cannot_be_exempt() -> None:
    # Exempt, it would lose the PipelineRun rule while runs are still made there.
    assert problems_of("builds: {namespace: builds}\nexemptNamespaces: [kube-system, builds]\n") == (
        "policy: exemptNamespaces lists the build namespace builds (builds.namespace), which "
        "would leave its PipelineRuns unchecked; remove it from exemptNamespaces",)
    assert problems_of("exemptNamespaces: [image-build]\n")  # the default build namespace
    assert parse_policy("exemptNamespaces: [tekton-pipelines]\n").builds.namespace == "image-build"


def test_the_keys_in_warn_mode_are_listed() -> None:
    assert parse_policy("{}").warn_modes == ()
    assert parse_policy("builds: {mode: warn}\ncredentials: {mode: warn}\n").warn_modes == (
        "builds.mode", "credentials.mode")
