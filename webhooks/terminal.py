"""Output for people: aligned tables, and what a mutation changed as a readable diff."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import yaml


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned as kubectl aligns them; the last column (a message) is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers[:-1])]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def as_yaml(document: Any) -> str:
    """A document in YAML, its keys in the order they were written."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)


def diff(before: Any, after: Any) -> str:
    """What changed between two objects, one line per change at its path:

        - spec.containers[step-build].args[12]: "-basic-docker=..."     removed
        + spec.volumes[home]: {"name":"home","emptyDir":{}}              added
        ~ spec.containers[step-build].env[HOME].value: "/a" -> "/b"      changed

    List items that all have distinct names are matched by name (`containers[step-build]`),
    others by position; "" when nothing changed.
    """
    return "".join(f"{line}\n" for line in _changes(before, after, ""))


def _changes(before: Any, after: Any, path: str) -> Iterator[str]:
    if before == after:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            child = f"{path}.{key}" if path else str(key)
            if key not in after:
                yield f"- {child}: {_short(before[key])}"
            elif key not in before:
                yield f"+ {child}: {_short(after[key])}"
            else:
                yield from _changes(before[key], after[key], child)
    elif isinstance(before, list) and isinstance(after, list):
        yield from _list_changes(before, after, path)
    else:
        yield f"~ {path}: {_short(before)} -> {_short(after)}"


def _list_changes(before: list[Any], after: list[Any], path: str) -> Iterator[str]:
    old_names, new_names = _names(before), _names(after)
    if old_names is not None and new_names is not None:
        old_items, new_items = dict(zip(old_names, before, strict=True)), \
            dict(zip(new_names, after, strict=True))
        for name in [*old_names, *(n for n in new_names if n not in old_items)]:
            child = f"{path}[{name}]"
            if name not in new_items:
                yield f"- {child}: {_short(old_items[name])}"
            elif name not in old_items:
                yield f"+ {child}: {_short(new_items[name])}"
            else:
                yield from _changes(old_items[name], new_items[name], child)
        return
    keys = [orjson.dumps(item, option=orjson.OPT_SORT_KEYS) for item in before]
    new_keys = [orjson.dumps(item, option=orjson.OPT_SORT_KEYS) for item in after]
    matcher = difflib.SequenceMatcher(a=keys, b=new_keys, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "replace" and i2 - i1 == j2 - j1:
            for offset in range(i2 - i1):
                yield from _changes(before[i1 + offset], after[j1 + offset],
                                    f"{path}[{i1 + offset}]")
            continue
        if tag in ("replace", "delete"):
            yield from (f"- {path}[{i}]: {_short(before[i])}" for i in range(i1, i2))
        if tag in ("replace", "insert"):
            yield from (f"+ {path}[{j}]: {_short(after[j])}" for j in range(j1, j2))


def _names(items: list[Any]) -> list[str] | None:
    """The items' names when every item is a mapping with a distinct string name."""
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        return None
    return names  # type: ignore[return-value]  # checked: all are str


def _short(value: Any, limit: int = 160) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str) -> str:
    """Text with its line breaks and runs of blanks as single spaces, for a table cell."""
    return " ".join(text.split())
