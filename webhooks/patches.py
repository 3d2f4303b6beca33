"""JSON Patches from an object and its mutated copy.

`jsonpatch.make_patch` compares the two whole documents and, for lists, searches for the best
alignment; on a 45 KB Tekton pod that costs more than the mutation itself (bench/HISTORY.md,
entries 6 and 13). A mutation changes a few branches, so the diff descends only where the two
differ (identity or `==` on equal subtrees is cheap), through mappings and through lists that kept
their length. A list whose length changed is compared between its common head and tail only, and
that middle is aligned in one pass over each item's canonical JSON: what was removed or added is
patched as such, and an item changed in place is descended into like any other branch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

ALIGNED_PAIRS_LIMIT = 1_000_000
"""A list whose differing middle has more item pairs than this is replaced whole: a removal and
an addition for each of thousands of items would be a bigger patch than the list itself
(bench/HISTORY.md, entry 6)."""


def make_patch(old: Any, new: Any) -> list[dict[str, Any]]:
    """The JSON Patch operations that turn `old` into `new`."""
    return list(_diff(old, new, ""))


def _diff(old: Any, new: Any, path: str) -> list[dict[str, Any]]:
    if _same_item(old, new):
        return []
    return _changes(old, new, path)


def _changes(old: Any, new: Any, path: str) -> list[dict[str, Any]]:
    """_diff of two values known to differ. Children are compared before their paths are
    built: most of a mutated pod is the original's own objects, unchanged."""
    if isinstance(old, dict) and isinstance(new, dict):
        operations: list[dict[str, Any]] = []
        for key in old.keys() - new.keys():
            operations.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            if key not in old:
                operations.append({"op": "add", "path": f"{path}/{_escape(key)}",
                                   "value": value})
            elif not ((previous := old[key]) is value or _same(previous, value)):
                operations.extend(_changes(previous, value, f"{path}/{_escape(key)}"))
        return operations
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            return [op for index, (a, b) in enumerate(zip(old, new, strict=True))
                    if not (a is b or _same(a, b)) for op in _changes(a, b, f"{path}/{index}")]
        # Only what lies between the common head and tail is compared: a mutation appends a
        # volume or drops a few mounts, and the items it keeps are the original's own objects.
        start, old_end, new_end = _common_ends(old, new)
        if start == old_end:
            return [{"op": "add", "path": f"{path}/{index}", "value": new[index]}
                    for index in range(start, new_end)]
        removed = _removed(old[start:old_end], new[start:new_end])
        if removed is not None:
            # Removed from the end first, so that each index still names its item.
            return [{"op": "remove", "path": f"{path}/{start + index}"}
                    for index in reversed(removed)]
        return _aligned(old, new, path, (start, old_end, new_end))
    if not path:
        raise ValueError("cannot patch a document into a different type")
    return [{"op": "replace", "path": path, "value": new}]


def _common_ends(old: list[Any], new: list[Any]) -> tuple[int, int, int]:
    """(start, old_end, new_end): old[:start] == new[:start] and the items after old_end and
    after new_end are equal too, each side as long as it goes."""
    limit = min(len(old), len(new))
    start = 0
    while start < limit and (old[start] is new[start] or _same(old[start], new[start])):
        start += 1
    tail = 0
    while tail < limit - start and (old[-1 - tail] is new[-1 - tail]
                                    or _same(old[-1 - tail], new[-1 - tail])):
        tail += 1
    return start, len(old) - tail, len(new) - tail


def _removed(old: list[Any], new: list[Any]) -> list[int] | None:
    """The indices of `old` whose removal leaves `new`, or None when it takes more than removals.

    Stripping credentials only removes items (mounts, flags, env), and jsonpatch's list diff costs
    tens of microseconds per removed item, more than a review may take when there are thousands.
    """
    removed: list[int] = []
    kept = 0
    for index, item in enumerate(old):
        if kept < len(new) and (item is new[kept] or _same(item, new[kept])):
            kept += 1
        else:
            removed.append(index)
    return removed if kept == len(new) else None


def _aligned(old: list[Any], new: list[Any], path: str,
             span: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Removals, additions and in-place changes that turn old[start:old_end] into
    new[start:new_end], span being (start, old_end, new_end): the items around are equal.

    One pass from the front, in linear time: an item that comes later on the other side is
    waited for (what stands before it was added, or removed), and two items that occur nowhere
    on the other side are the same item changed in place. The operations apply in order: when
    new[j] is due, new[:j] is in place and old[i] stands at index j.
    """
    start, old_end, new_end = span
    if (old_end - start) * (new_end - start) > ALIGNED_PAIRS_LIMIT:
        return [{"op": "replace", "path": path, "value": new}]
    a = [_canonical(item) for item in old[start:old_end]]
    # The mutation keeps most items as the original's own objects: each is written once.
    written = {id(item): text for item, text in zip(old[start:old_end], a, strict=True)}
    b = [written.get(id(item)) or _canonical(item) for item in new[start:new_end]]
    left_in_old, left_in_new = Counter(a), Counter(b)
    operations: list[dict[str, Any]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            left_in_old[a[i]] -= 1
            left_in_new[b[j]] -= 1
            i, j = i + 1, j + 1
        elif left_in_old[b[j]] == 0 and left_in_new[a[i]] > 0:
            operations.append({"op": "add", "path": f"{path}/{start + j}",
                               "value": new[start + j]})
            left_in_new[b[j]] -= 1
            j += 1
        elif left_in_new[a[i]] == 0 and left_in_old[b[j]] == 0:
            operations += _changes(old[start + i], new[start + j], f"{path}/{start + j}")
            left_in_old[a[i]] -= 1
            left_in_new[b[j]] -= 1
            i, j = i + 1, j + 1
        else:  # old[i] is gone, or comes later (a move: removed here, added there)
            operations.append({"op": "remove", "path": f"{path}/{start + j}"})
            left_in_old[a[i]] -= 1
            i += 1
    operations += [{"op": "remove", "path": f"{path}/{start + j}"} for _ in range(i, len(a))]
    operations += [{"op": "add", "path": f"{path}/{start + k}", "value": new[start + k]}
                   for k in range(j, len(b))]
    return operations


def _canonical(item: Any) -> bytes:
    # Equal as JSON, equal here: keys sorted, and 1, 1.0 and true stay apart.
    try:
        return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Nested deeper than orjson writes (255 levels; it reads 1024). The mutation shares the
        # items it keeps with the original, so the object itself still pairs them.
        return b"id:%d" % id(item)


# The loops above test identity themselves before calling _same, as this does: most items of a
# mutated pod are the original's own objects, and a call per item would cost more than the test.
def _same_item(old: Any, new: Any) -> bool:
    return old is new or _same(old, new)


def _same(old: Any, new: Any) -> bool:
    # The type too: 1 == True == 1.0 in Python, but JSON tells them apart.
    return old == new and type(old) is type(new)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
