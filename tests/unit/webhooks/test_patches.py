"""Patches from an object and its mutated copy: applying one gives exactly the copy."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.patches import make_patch

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "tekton"

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
keys = st.sampled_from(["a", "b", "c/d", "e~f", "-"])
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(keys, inner, max_size=4), max_leaves=20)


@pytest.mark.slow
@given(old=st.dictionaries(keys, documents, max_size=4),
       new=st.dictionaries(keys, documents, max_size=4))
@settings(max_examples=300, deadline=None)
def test_applying_the_patch_gives_the_new_document(old: dict[str, Any],
                                                   new: dict[str, Any]) -> None:
    assert jsonpatch.apply_patch(old, make_patch(old, new)) == new


def test_equal_documents_give_an_empty_patch() -> None:
    document = {"spec": {"containers": [{"name": "a", "args": ["x"]}]}}
    assert make_patch(document, copy.deepcopy(document)) == []


def test_only_changed_branches_are_touched() -> None:
    old: dict[str, Any] = {"spec": {"containers": [{"name": "a", "args": ["-x", "--", "y"]},
                                                   {"name": "b"}]}}
    new = copy.deepcopy(old)
    new["spec"]["containers"][0]["args"] = ["--", "y"]
    patch = make_patch(old, new)
    assert all(op["path"].startswith("/spec/containers/0/args") for op in patch)
    assert jsonpatch.apply_patch(old, patch) == new


@pytest.mark.parametrize("review", sorted(FIXTURES.glob("*/pod.create.admissionreview.json")),
                         ids=lambda p: p.parent.name)
def test_a_stripped_tekton_pod_round_trips(review: Path) -> None:
    pod = json.loads(review.read_text())["request"]["object"]
    stripped = copy.deepcopy(pod)
    for container in stripped["spec"]["containers"]:
        container["volumeMounts"] = [m for m in container.get("volumeMounts", [])
                                     if not m["mountPath"].startswith("/tekton/creds")]
    stripped["spec"]["volumes"].append({"name": "extra", "emptyDir": {}})
    assert jsonpatch.apply_patch(pod, make_patch(pod, stripped)) == stripped


@pytest.mark.slow
@given(old=st.lists(documents, max_size=8), keep=st.lists(st.booleans(), min_size=8, max_size=8))
@settings(max_examples=200, deadline=None)
def test_a_list_that_only_lost_items_is_patched_with_removals(old: list[Any],
                                                              keep: list[bool]) -> None:
    new = [item for item, kept in zip(old, keep, strict=False) if kept]
    patch = make_patch({"l": old}, {"l": new})
    assert all(op["op"] == "remove" for op in patch)
    assert jsonpatch.apply_patch({"l": old}, patch) == {"l": new}


def test_a_renamed_item_among_removed_ones_is_changed_in_place() -> None:
    # The stripped build step's volumeMounts: two credential mounts go, the HOME mount is renamed.
    mounts = [{"name": n, "mountPath": f"/{n}"} for n in ("a", "creds", "b", "home", "c", "dkr")]
    new_mounts = [mounts[0], mounts[2], {"name": "private-home", "mountPath": "/home"}, mounts[4]]
    patch = make_patch({"m": mounts}, {"m": new_mounts})
    assert patch == [{"op": "remove", "path": "/m/1"},
                     {"op": "replace", "path": "/m/2/name", "value": "private-home"},
                     {"op": "remove", "path": "/m/4"}]
    assert jsonpatch.apply_patch({"m": mounts}, patch) == {"m": new_mounts}


def test_items_added_to_the_end_are_additions_only() -> None:
    volumes = [{"name": f"v{i}"} for i in range(30)]
    patch = make_patch({"v": volumes}, {"v": [*volumes, {"name": "x"}, {"name": "y"}]})
    assert patch == [{"op": "add", "path": "/v/30", "value": {"name": "x"}},
                     {"op": "add", "path": "/v/31", "value": {"name": "y"}}]


@pytest.mark.slow
@given(old=st.lists(st.integers(0, 6), max_size=10), new=st.lists(st.integers(0, 6), max_size=10))
@settings(max_examples=300, deadline=None)
def test_lists_with_repeated_and_moved_items_round_trip(old: list[int], new: list[int]) -> None:
    assert jsonpatch.apply_patch({"l": old}, make_patch({"l": old}, {"l": new})) == {"l": new}


def test_thousands_of_removals_take_linear_time() -> None:
    old = {"args": [f"-basic-docker=s{i}=h" for i in range(40_000)] + ["--", "run"]}
    started = time.process_time()
    patch = make_patch(old, {"args": ["--", "run"]})
    assert time.process_time() - started < 1.0  # jsonpatch's list diff took over 1 s here
    assert len(patch) == 40_000
    assert patch[0] == {"op": "remove", "path": "/args/39999"}


def test_a_long_list_changed_all_along_is_replaced_whole_in_linear_time() -> None:
    old = {"l": [{"n": i} for i in range(4000)]}
    new = {"l": [{"n": i} for i in range(0, 4000, 2)] + [{"n": "new"}]}
    started = time.process_time()
    patch = make_patch(old, new)
    assert time.process_time() - started < 1.0  # difflib took about 10 s here
    assert patch == [{"op": "replace", "path": "/l", "value": new["l"]}]
    assert jsonpatch.apply_patch(old, patch) == new
