"""The policy reference, written from the model: every key, its default and what it means.

Each key's meaning is its field's docstring in `policies/model.py`, so the reference cannot miss
a key or keep one that is gone. `make generate` writes docs/policy-reference.md with
`markdown()`; a unit test fails while that file differs from it.
"""

from __future__ import annotations

import datetime
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from policies.durations import format_duration
from policies.identity import ToolPattern
from policies.images import ImageReference
from policies.model import Policy

HEADER = """\
# Policy reference

<!-- Generated from policies/model.py by `make generate`; edit the field docstrings there. -->

Every key of the policy (the ConfigMap `toolforge-admission-policy`, key `policy.yaml`; see
[policy.md](policy.md)), with its default and its meaning. Every key has a default, so `{}` is a
valid (strict, empty) policy; an unknown key is an error. `[]` after a key stands for each entry
of its list, `<name>` for each key of its mapping.
"""


def markdown() -> str:
    """The reference as Markdown: one table per section of the policy."""
    parts = [HEADER]
    top = [name for name, field in _fields(Policy) if _section(field) is None]
    if top:
        parts.append(_table("Top level", "Keys outside any section.",
                            [row for name, field in _fields(Policy) if name in top
                             for row in _rows(field, _key("", field))]))
    for _, field in _fields(Policy):
        section = _section(field)
        if section is not None:
            key = _key("", field)
            parts.append(_table(f"`{key}`", _description(section.__doc__ or ""),
                                list(_section_rows(section, key))))
    return "\n".join(parts)


def _table(title: str, about: str, rows: list[tuple[str, str, str]]) -> str:
    lines = [f"## {title}", "", about, "", "| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {default} | {meaning} |" for key, default, meaning in rows]
    return "\n".join(lines) + "\n"


def _fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        if not field.exclude:
            yield name, field


def _section_rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str]]:
    for _, field in _fields(model):
        key = _key(prefix, field)
        section = _section(field)
        if section is not None:
            yield from _section_rows(section, key)
        else:
            yield from _rows(field, key)


def _rows(field: FieldInfo, key: str) -> Iterator[tuple[str, str, str]]:
    """The row of one key, then a row for each key of the entries it holds, if any."""
    yield key, _default(field), _meaning(field)
    entry = _entry_model(field.annotation)
    if entry is not None:
        keyed = typing.get_origin(field.annotation) in (Mapping, dict)
        yield from _section_rows(entry, f"{key}.<name>[]" if keyed else f"{key}[]")


def _key(prefix: str, field: FieldInfo) -> str:
    name = field.alias or ""
    return f"{prefix}.{name}" if prefix else name


def _section(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a nested section (`builds.params`), None for a key that holds a value."""
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _entry_model(annotation: object) -> type[BaseModel] | None:
    """The model of the entries of a list or mapping (`credentials.trustedSteps`), if any."""
    for argument in typing.get_args(annotation):
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
        found = _entry_model(argument)
        if found is not None:
            return found
    return None


def _meaning(field: FieldInfo) -> str:
    meaning = _description(field.description or "")
    choices = _choices(field.annotation)
    if choices and not any(f"`{choice}`" in meaning for choice in choices):
        listed = ", ".join(f"`{choice}`" for choice in choices)
        meaning = f"{meaning} One of {listed}." if meaning else f"One of {listed}."
    return meaning


def _choices(annotation: object) -> tuple[str, ...]:
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(value) for value in typing.get_args(annotation))
    return ()


def _description(text: str) -> str:
    # One table cell: lines joined, and a `|` would end the cell.
    return " ".join(text.split()).replace("|", "\\|")


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "required"
    extra = field.json_schema_extra
    if isinstance(extra, Mapping) and extra.get("format") == "duration":
        return f"`{format_duration(float(field.default))}`"
    return f"`{_shown(field.default)}`"


def _shown(value: Any) -> str:
    """A default as it is written in the policy's YAML (`'{tool}'` quoted, lists in flow style)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=1000)
    return text.removesuffix("\n...\n").strip()


def _plain(value: Any) -> Any:
    if isinstance(value, ToolPattern | ImageReference):
        return str(value)
    if isinstance(value, BaseModel):
        # An entry that may be written as its name alone (`buildpacks` for `{name: buildpacks}`)
        # is shown that way when nothing else is set.
        fields = value.model_dump(by_alias=True, exclude_defaults=True)
        return fields["name"] if fields.keys() == {"name"} else _plain(fields)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | int | float | datetime.date):
        return value
    raise TypeError(f"no way to show a default of type {type(value).__name__}")


if __name__ == "__main__":
    print(markdown(), end="")
