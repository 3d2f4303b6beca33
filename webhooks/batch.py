"""`review` for many objects: judge every document of the inputs, then report them together.

One line per object in a table (what a user would see), or the AdmissionReviews as JSON or
YAML; what mutation changed as a diff or as the stored object. A document that cannot be judged
is reported in its place and the others are still judged.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

import orjson
import yaml

from policies.model import Policy
from webhooks.documents import Document, expand_paths, read_file
from webhooks.offline import (
    NotReviewedError,
    OfflineOutcome,
    OfflineReviewError,
    Requester,
    review_offline,
)
from webhooks.policy_files import InputError
from webhooks.terminal import as_yaml, diff, one_line, table

EXIT_OK, EXIT_DENIED, EXIT_BAD_INPUT = 0, 1, 2
HEADERS = ("KIND", "NAMESPACE/NAME", "ENDPOINTS", "VERDICT", "MESSAGE")


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    output: str
    """table, json or yaml."""
    show_mutated: str | None
    """None, diff or object."""
    endpoint: str | None
    requester: Requester
    now: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Judged:
    """One document and what became of it: an outcome, or why it was not judged."""

    document: Document
    outcome: OfflineOutcome | None = None
    error: str = ""
    """Why the document is not usable input."""
    not_reviewed: str = ""
    """Why the API server would not send the object to the suite at all."""

    @property
    def verdict(self) -> str:
        if self.outcome is not None:
            return self.outcome.verdict
        return "error" if self.error else "not reviewed"


def review_inputs(names: Sequence[str], policy: Policy, options: BatchOptions, out: TextIO,
                  err: TextIO) -> int:
    """Judge every document of the inputs and report; the exit code (0, 1 or 2)."""
    judged = list(judge_inputs(names, policy, options))
    if options.requester.old is not None and len(judged) != 1:
        raise InputError(f"--old needs exactly one input object, not {len(judged)}")
    if options.output == "table":
        _write_table(judged, options, out)
    elif options.show_mutated == "object":
        _write_documents([j.outcome.mutated for j in judged
                          if j.outcome is not None and j.outcome.mutated is not None],
                         options.output, out)
    else:
        for item in judged:
            for note in item.outcome.notes if item.outcome else ():
                err.write(f"{item.document.origin}: {note}\n" if len(judged) > 1 else f"{note}\n")
        _write_documents([_answer(j) for j in judged], options.output, out)
    for item in judged:
        if item.error and options.output != "table":
            err.write(f"error: {item.document.origin}: {item.error}\n")
    return exit_code(judged)


def exit_code(judged: Sequence[Judged]) -> int:
    if any(item.error for item in judged):
        return EXIT_BAD_INPUT
    if any(item.outcome is not None and not item.outcome.allowed for item in judged):
        return EXIT_DENIED
    return EXIT_OK


def judge_inputs(names: Sequence[str], policy: Policy, options: BatchOptions,
                 ) -> Iterator[Judged]:
    """Every document of the inputs, judged; a file that cannot be read is one error."""
    try:
        files = expand_paths(names)
    except InputError as error:
        yield Judged(Document("", None), error=str(error))
        return
    for name in files:
        try:
            documents = read_file(name)
        except InputError as error:
            yield Judged(Document(name, None), error=str(error).removeprefix(f"{name}: "))
            continue
        for document in documents:
            yield judge(document, policy, options)


def judge(document: Document, policy: Policy, options: BatchOptions) -> Judged:
    try:
        outcome = review_offline(document.body, policy, endpoint=options.endpoint,
                                 requester=options.requester, now=options.now)
    except NotReviewedError as error:
        return Judged(document, not_reviewed=str(error))
    except OfflineReviewError as error:
        return Judged(document, error=str(error))
    return Judged(document, outcome)


def _answer(item: Judged) -> Mapping[str, Any]:
    if item.outcome is not None:
        return item.outcome.review
    reason = "BadInput" if item.error else "NotReviewed"
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason,
            "message": f"{item.document.origin}: {item.error or item.not_reviewed}"}


def _write_documents(documents: list[Any], output: str, out: TextIO) -> None:
    if output == "json":
        value = documents[0] if len(documents) == 1 else {
            "apiVersion": "v1", "kind": "List", "items": documents}
        out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(yaml.safe_dump_all(documents, sort_keys=False, width=100))


def _write_table(judged: Sequence[Judged], options: BatchOptions, out: TextIO) -> None:
    out.write(table(HEADERS, [_row(item) for item in judged]))
    counts: dict[str, int] = {}
    for item in judged:
        counts[item.verdict] = counts.get(item.verdict, 0) + 1
    summary = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    out.write(f"\n{len(judged)} object{'s' if len(judged) != 1 else ''}: {summary}\n")
    if not options.show_mutated:
        return
    for item in judged:
        outcome = item.outcome
        if outcome is None or outcome.mutated is None:
            continue
        label = f"{outcome.request.kind} {_name(item)}"
        out.write(f"\n# {label} ({item.document.origin})\n")
        if options.show_mutated == "object":
            out.write(as_yaml(outcome.mutated))
        else:
            out.write(diff(outcome.request.object, outcome.mutated))


def _row(item: Judged) -> tuple[str, str, str, str, str]:
    outcome = item.outcome
    if outcome is None:
        kind = item.document.body.get("kind") if isinstance(item.document.body, dict) else None
        return (kind if isinstance(kind, str) else "-", _name(item), "-", item.verdict,
                one_line(item.error or item.not_reviewed))
    return (outcome.request.kind, _name(item), ",".join(outcome.endpoints), item.verdict,
            one_line(outcome.message))


def _name(item: Judged) -> str:
    """namespace/name, or namespace/generateName* before the API server names it."""
    outcome = item.outcome
    if outcome is None:
        return item.document.origin or "-"
    request = outcome.request
    name = request.name
    if not name:
        metadata = (request.object or request.old_object or {}).get("metadata")
        generate = metadata.get("generateName") if isinstance(metadata, dict) else None
        name = f"{generate}*" if isinstance(generate, str) and generate else item.document.origin
    return f"{request.namespace}/{name}" if request.namespace else name
