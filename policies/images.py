"""Container image references, parsed by the distribution grammar and normalised like Docker does.

The grammar (github.com/distribution/reference, `reference.go`):

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [domain "/"] path-component ["/" path-component]*
    domain      := host [":" port]          host: DNS name, IPv4, or "[" IPv6 "]"
    path-component := [a-z0-9]+ (separator [a-z0-9]+)*    separator: "." | "_" | "__" | "-"+
    tag         := [\\w][\\w.-]{0,127}                 (ASCII word characters only)
    digest      := algorithm ":" hex{32,}

A digest must also be one the runtimes can verify (go-digest's `Validate`, which containerd and
the kubelet apply): sha256, sha384 or sha512, in lower-case hex of exactly that length. Anything
else would never pull, so it is refused here rather than allowed on a technicality.

Docker's normalisation decides whether the first component is a registry: it is when it holds a
"." or a ":", is "localhost", or has an upper-case letter; otherwise the image is on Docker Hub
(`nginx` is `docker.io/library/nginx`). Registry hosts compare case-insensitively, so they are
lower-cased here; repository paths must already be lower case.

Matching is on boundaries: a prefix covers a repository only if it is equal to it or ends where a
"/" follows, so `harbor.example` never covers `harbor.example.evil/x` or `harbor.examplex/y`.
A registry with a port is a different registry: `harbor.example` does not cover
`harbor.example:5000/x`.

An allow-list prefix is read literally, never with Docker's `library/` rule: its first component
is always the registry, and its path is compared as written. So `docker.io/bitnami` is the
`bitnami` organisation, and `docker.io/nginx` covers `docker.io/nginx/...` (a user called
`nginx`), not the official image; to allow that, write `docker.io/library/nginx`. Reading the
entry like an image reference would turn every one-component Docker Hub organisation into a
`library/` image, and the two meanings cannot be told apart. A denial always shows the
normalised repository (`docker.io/library/nginx`), so the entry to write is visible.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
NAME_MAX_LENGTH = 255
# Longer than any valid reference: a name (with slack for `registry-1.docker.io`, which
# normalises to the shorter `docker.io`), ":" tag and "@sha512:" digest. Longer input is refused
# before any regular expression sees it, which also bounds the work a tenant can cause.
REFERENCE_MAX_LENGTH = NAME_MAX_LENGTH + 16 + 1 + 128 + 1 + 7 + 128

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
# Python's \w also matches non-ASCII letters; Go's (the grammar's) does not.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX = re.compile(r"[0-9a-f]+")


class ImageReferenceError(ValueError):
    """A string is not a valid image reference."""


@dataclass(frozen=True)
class ImageReference:
    """A normalised image reference."""

    registry: str
    """Host and optional port, lower case: `docker.io`, `harbor.example:5000`, `[::1]:5000`."""
    path: str
    """Repository path inside the registry: `library/nginx`, `tool-foo/app`."""
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """Registry and path, without tag or digest."""
        return f"{self.registry}/{self.path}"

    @property
    def canonical(self) -> str:
        """The full reference; `:latest` is implied only when there is neither tag nor digest."""
        tag = self.tag if self.tag is not None or self.digest is not None else "latest"
        text = self.repository
        if tag is not None:
            text += f":{tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_image(text: str) -> ImageReference:
    """Parse and normalise an image reference, or raise ImageReferenceError saying why."""
    if not isinstance(text, str) or not text:
        raise ImageReferenceError("an image reference must be a non-empty string")
    return _parse_image_text(text)


# Every rule parses images (the registry rule each container's, the PipelineRun rule APP_IMAGE
# and BUILDER_IMAGE, the credential analysis each step's), and a cluster's pods and runs keep
# naming the same few images, so parses are cached here for all of them: a parse costs 5-10 µs,
# a hit 0.1 µs. Only successful parses are kept (an exception is not cached), and input longer
# than any valid reference is refused before it is parsed, so the cache holds at most 4,096
# small references whatever tenants send.
@functools.lru_cache(maxsize=4096)
def _parse_image_text(text: str) -> ImageReference:
    if len(text) > REFERENCE_MAX_LENGTH:
        raise ImageReferenceError(f"an image reference is at most {REFERENCE_MAX_LENGTH} "
                                  "characters long")
    if text != text.strip():
        raise ImageReferenceError("an image reference must not contain spaces")
    rest, digest = _split_digest(text)
    rest, tag = _split_tag(rest)
    registry, path = _split_registry(rest)
    _check_path(path)
    if len(f"{registry}/{path}") > NAME_MAX_LENGTH:
        raise ImageReferenceError(f"the repository name is over {NAME_MAX_LENGTH} characters")
    return ImageReference(registry=registry, path=path, tag=tag, digest=digest)


@dataclass(frozen=True)
class RepositoryPrefix:
    """An allow-list entry: a registry host, or a registry and the start of a repository path."""

    registry: str
    path: str = ""

    def covers(self, image: ImageReference) -> bool:
        """True when the image's repository is this prefix or lies below it."""
        if image.registry != self.registry:
            return False
        if not self.path:
            return True
        return image.path == self.path or image.path.startswith(self.path + "/")

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}" if self.path else self.registry


def parse_prefix(text: str) -> RepositoryPrefix:
    """Parse an allow-list entry; its first component is always the registry host."""
    if not isinstance(text, str) or not text:
        raise ImageReferenceError("a registry prefix must be a non-empty string")
    if any(c in text for c in "@ ") or text != text.strip():
        raise ImageReferenceError("a registry prefix names a registry or repository, without tag "
                                  "or digest")
    host, _, path = text.rstrip("/").partition("/")
    if not _HOST.fullmatch(host):
        raise ImageReferenceError(f"{host[:80]!r} is not a registry host")
    registry = _normal_registry(host)
    if path:
        _check_path(path)
    return RepositoryPrefix(registry=registry, path=path)


def _split_digest(text: str) -> tuple[str, str | None]:
    name, at, digest = text.partition("@")
    if not at:
        return text, None
    if not _DIGEST.fullmatch(digest):
        raise ImageReferenceError(f"invalid digest {digest[:80]!r}")
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise ImageReferenceError(f"unsupported digest algorithm {algorithm[:20]!r} (use sha256, "
                                  "sha384 or sha512)")
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        raise ImageReferenceError(f"a {algorithm} digest is {length} lower-case hex characters")
    return name, digest


def _split_tag(text: str) -> tuple[str, str | None]:
    # A ":" after the last "/" starts a tag; one before it belongs to the registry port.
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon <= slash:
        return text, None
    tag = text[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise ImageReferenceError(f"invalid tag {tag[:80]!r}")
    return text[:colon], tag


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_registry = bool(slash) and (
        any(c in first for c in ".:[") or first == "localhost" or first.lower() != first
    )
    if not is_registry:
        path = name if "/" in name else f"library/{name}"
        return DOCKER_HUB, path
    if not _HOST.fullmatch(first):
        raise ImageReferenceError(f"invalid registry host {first[:80]!r}")
    registry = _normal_registry(first)
    if registry == DOCKER_HUB and "/" not in rest:
        rest = f"library/{rest}"
    return registry, rest


def _normal_registry(host: str) -> str:
    host = host.lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _check_path(path: str) -> None:
    if not path:
        raise ImageReferenceError("the repository path is empty")
    for component in path.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            if component.lower() != component:
                raise ImageReferenceError("repository names must be lower case")
            raise ImageReferenceError(f"invalid repository path component {component[:80]!r}")
