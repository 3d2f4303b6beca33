"""Kubernetes documents as the command line reads them: files, directories, stdin.

A file holds one JSON value or a stream of YAML documents; a directory stands for every
`*.yaml`, `*.yml` and `*.json` file below it, in name order; a kubectl `List` (or any `...List`
with `items`) stands for its items. Each document keeps where it came from (`pods.yaml#2`,
`all.json.items[3]`), so a report can point at it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from webhooks.policy_files import InputError, read_bytes

SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's parser when PyYAML was built with it: several times faster on large streams.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Document:
    """One object (or AdmissionReview) to judge, and where it came from."""

    origin: str
    body: Any


def read_documents(names: Sequence[str]) -> Iterator[Document]:
    """The documents of files, directories (recursively) and `-` (stdin), in the order given.

    Raises InputError for a path that does not exist or a file that does not parse.
    """
    for name in expand_paths(names):
        yield from read_file(name)


def expand_paths(names: Sequence[str]) -> list[str]:
    """Files and `-` as given, each directory replaced by the files below it, in name order."""
    files = []
    for name in names:
        path = Path(name)
        if name != "-" and path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{name}: no *.yaml, *.yml or *.json files in this directory")
            files += [str(p) for p in found]
        else:
            files.append(name)
    return files


def read_file(name: str) -> list[Document]:
    """The documents of one file (`-`: stdin)."""
    if name == "-":
        return parse_documents(sys.stdin.buffer.read(), "stdin")
    return parse_documents(read_bytes(name), name)


def parse_documents(data: bytes, origin: str) -> list[Document]:
    """The documents in one file's bytes (a JSON value or YAML documents), Lists expanded."""
    try:
        bodies: list[Any] = [orjson.loads(data)]
        numbered = False
    except orjson.JSONDecodeError:
        bodies = _yaml_documents(data, origin)
        numbered = len(bodies) > 1
    documents = []
    for number, body in enumerate(bodies, start=1):
        if body is None:  # an empty document, e.g. after a trailing `---`
            continue
        where = f"{origin}#{number}" if numbered else origin
        if _is_list(body):
            documents += [Document(f"{where}.items[{i}]", item)
                          for i, item in enumerate(body["items"])]
        else:
            documents.append(Document(where, body))
    if not documents:
        raise InputError(f"{origin}: no objects in this file")
    return documents


def _yaml_documents(data: bytes, origin: str) -> list[Any]:
    try:
        return list(yaml.load_all(data, Loader=_LOADER))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InputError(f"{origin}: neither JSON nor YAML{where}: {error.problem}") from None
    except (yaml.YAMLError, ValueError) as error:
        # PyYAML raises a bare ValueError for an impossible value such as the date 2027-13-45.
        raise InputError(f"{origin}: neither JSON nor YAML: {_one_line(str(error))}") from None
    except RecursionError:
        raise InputError(f"{origin}: nested too deeply") from None


def _is_list(body: Any) -> bool:
    kind = body.get("kind") if isinstance(body, dict) else None
    return isinstance(kind, str) and kind.endswith("List") and isinstance(body.get("items"), list)


def _one_line(text: str) -> str:
    return " ".join(text.split())
