"""JSON Patches from an object and its mutated copy.

`jsonpatch.make_patch` compares the two whole documents and, for lists, searches for the best
alignment; on a Tekton pod that costs more than the mutation itself (bench/HISTORY.md, entry 6).
A mutation changes a few branches, so the diff descends only where the two differ (`==` on equal
subtrees is cheap), through mappings and through lists that kept their length. A list whose
length changed is aligned item by item (difflib on each item's canonical JSON): what was removed
or added is patched as such, and an item changed in place is descended into like any other
branch.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson

ALIGNED_PAIRS_LIMIT = 1_000_000
"""difflib's alignment is quadratic on lists that differ all along (bench/HISTORY.md, entry 6);
lists with more item pairs than this are replaced whole instead."""


def make_patch(old: Any, new: Any) -> list[dict[str, Any]]:
    """The JSON Patch operations that turn `old` into `new`."""
    return list(_diff(old, new, ""))


def _diff(old: Any, new: Any, path: str) -> list[dict[str, Any]]:
    if _same(old, new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        operations: list[dict[str, Any]] = []
        for key in old.keys() - new.keys():
            operations.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            child = f"{path}/{_escape(key)}"
            if key not in old:
                operations.append({"op": "add", "path": child, "value": value})
            else:
                operations.extend(_diff(old[key], value, child))
        return operations
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            return [op for index, (a, b) in enumerate(zip(old, new, strict=True))
                    for op in _diff(a, b, f"{path}/{index}")]
        removed = _removed(old, new)
        if removed is not None:
            # Removed from the end first, so that each index still names its item.
            return [{"op": "remove", "path": f"{path}/{index}"} for index in reversed(removed)]
        return _aligned(old, new, path)
    if not path:
        raise ValueError("cannot patch a document into a different type")
    return [{"op": "replace", "path": path, "value": new}]


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


def _aligned(old: list[Any], new: list[Any], path: str) -> list[dict[str, Any]]:
    """Removals, additions and in-place changes that turn one list into the other."""
    if len(old) * len(new) > ALIGNED_PAIRS_LIMIT:
        return [{"op": "replace", "path": path, "value": new}]
    matcher = difflib.SequenceMatcher(None, [_canonical(item) for item in old],
                                      [_canonical(item) for item in new])
    operations: list[dict[str, Any]] = []
    # From the end of the list backwards, so that each index names the item it meant.
    for tag, i1, i2, j1, j2 in reversed(matcher.get_opcodes()):
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1)  # a "replace" changes that many items in place
        operations += [{"op": "remove", "path": f"{path}/{index}"}
                       for index in reversed(range(i1 + paired, i2))]
        operations += [{"op": "add", "path": f"{path}/{i1 + offset}", "value": new[j1 + offset]}
                       for offset in range(paired, j2 - j1)]
        for offset in range(paired):
            operations += _diff(old[i1 + offset], new[j1 + offset], f"{path}/{i1 + offset}")
    return operations


def _canonical(item: Any) -> bytes:
    # Equal as JSON, equal here: keys sorted, and 1, 1.0 and true stay apart.
    try:
        return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Nested deeper than orjson writes (255 levels; it reads 1024). The mutation shares the
        # items it keeps with the original, so the object itself still pairs them.
        return b"id:%d" % id(item)


def _same(old: Any, new: Any) -> bool:
    # The type too: 1 == True == 1.0 in Python, but JSON tells them apart.
    return old == new and type(old) is type(new)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
