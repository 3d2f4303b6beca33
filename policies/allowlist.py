"""The registry prefixes one namespace may pull from on one day, prepared once per policy.

A policy's `registries` section is parsed into `AllowLists` when a rule first needs it (the
policy's `allow_lists` property) and kept with that policy: a new policy brings new lists, and
nothing outlives the policy it was derived from.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policies.harbor import PROJECT_PLACEHOLDER, harbor_project
from policies.identity import PLACEHOLDER, ToolPattern
from policies.images import ImageReference, ImageReferenceError, RepositoryPrefix, parse_prefix


@dataclass(frozen=True)
class AllowList:
    """The prefixes that apply in one namespace on one day."""

    prefixes: tuple[RepositoryPrefix, ...]
    expired: tuple[tuple[RepositoryPrefix, datetime.date], ...] = ()
    """Exceptions of this namespace that no longer apply, and the day they ended."""
    _by_registry: Mapping[str, tuple[RepositoryPrefix, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_registry: dict[str, list[RepositoryPrefix]] = {}
        for prefix in self.prefixes:
            by_registry.setdefault(prefix.registry, []).append(prefix)
        object.__setattr__(self, "_by_registry",
                           {registry: tuple(p) for registry, p in by_registry.items()})

    def covers(self, image: ImageReference) -> bool:
        # Most entries name another registry; look only at those on the image's registry.
        candidates: tuple[RepositoryPrefix, ...] = self._by_registry.get(image.registry, ())
        return any(prefix.covers(image) for prefix in candidates)

    def ended_exception(self, image: ImageReference,
                        ) -> tuple[RepositoryPrefix, datetime.date] | None:
        return next(((p, day) for p, day in self.expired if p.covers(image)), None)


@dataclass(frozen=True)
class _Entry:
    """An allow-list entry: parsed now when it is fixed, kept as text when it holds `{tool}` or
    `{harborProject}`."""

    prefix: RepositoryPrefix | None
    template: str = ""

    @classmethod
    def of(cls, text: str) -> _Entry:
        if PLACEHOLDER in text or PROJECT_PLACEHOLDER in text:
            return cls(prefix=None, template=text)
        return cls(prefix=_try_prefix(text))

    def expand(self, tool: str | None, projects: ToolPattern) -> RepositoryPrefix | None:
        if self.prefix is not None or not self.template:
            return self.prefix
        # Outside a tool namespace there is no tool to put in, so the entry does not apply. A
        # tool name that makes an invalid prefix (e.g. `a-_b` in a repository path) cannot name
        # a real repository either, so that entry is dropped too.
        if not tool:
            return None
        text = self.template.replace(PROJECT_PLACEHOLDER, harbor_project(projects, tool))
        return _try_prefix(text.replace(PLACEHOLDER, tool))


@dataclass(frozen=True)
class _Exception:
    entry: _Entry
    expires: datetime.date | None


class AllowLists:
    """One policy's registry section, parsed, with a per-namespace cache of allow lists."""

    MAX_CACHED_NAMESPACES = 4096

    def __init__(self, namespace_pattern: ToolPattern, harbor_projects: ToolPattern,
                 allowed: Iterable[str],
                 exceptions: Mapping[str, Iterable[tuple[str, datetime.date | None]]]) -> None:
        self._pattern = namespace_pattern
        self._projects = harbor_projects
        self._allowed = tuple(_Entry.of(text) for text in allowed)
        self._exceptions = {
            namespace: tuple(_Exception(_Entry.of(prefix), expires) for prefix, expires in entries)
            for namespace, entries in exceptions.items()
        }
        # Threads of a worker share this cache: each dict operation is atomic, and two threads
        # that compute the same list at once store equal values.
        self._cache: dict[tuple[str, datetime.date], AllowList] = {}

    def allow_list(self, namespace: str, day: datetime.date) -> AllowList:
        """The prefixes allowed in a namespace on a day (UTC)."""
        key = (namespace, day)
        found = self._cache.get(key)
        if found is None:
            found = self._compute(namespace, day)
            if len(self._cache) >= self.MAX_CACHED_NAMESPACES:
                self._cache.clear()  # a new day or a very large cluster; recomputing is cheap
            self._cache[key] = found
        return found

    def _compute(self, namespace: str, day: datetime.date) -> AllowList:
        tool = self._pattern.tool_of(namespace)
        exceptions = self._exceptions.get(namespace, ())
        live = [e.entry for e in exceptions if e.expires is None or day < e.expires]
        ended = [(e.entry.expand(tool, self._projects), e.expires) for e in exceptions
                 if e.expires is not None and day >= e.expires]
        prefixes = _unique(entry.expand(tool, self._projects)
                           for entry in (*self._allowed, *live))
        return AllowList(prefixes=prefixes,
                         expired=tuple((p, d) for p, d in ended if p is not None and d is not None))


def _try_prefix(text: str) -> RepositoryPrefix | None:
    try:
        return parse_prefix(text)
    except ImageReferenceError:
        return None


def _unique(prefixes: Iterable[RepositoryPrefix | None]) -> tuple[RepositoryPrefix, ...]:
    return tuple(dict.fromkeys(p for p in prefixes if p is not None))
