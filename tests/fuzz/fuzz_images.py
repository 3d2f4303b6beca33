"""Fuzz target: any text as an image reference or an allow-list prefix.

The first byte picks the parser. Invariant: a parse succeeds or raises ImageReferenceError with
a short, printable message; what it returns is normalised (parsing its text again gives the
same value), and a prefix covers any image below it on its own registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from policies.images import (
    REFERENCE_MAX_LENGTH,
    ImageReferenceError,
    parse_image,
    parse_prefix,
)

MAX_ERROR_CHARS = 1000
"""Messages quote at most 80 characters of the input, each at most 10 once escaped."""
CPU_SECONDS = 0.5
"""The most one input may take; a parse takes microseconds (long input is refused first)."""


def check(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", "replace")
    try:
        if data[0] % 2:
            check_prefix(text)
        else:
            check_image(text)
    except ImageReferenceError as error:
        message = str(error)
        assert len(message) <= MAX_ERROR_CHARS, len(message)
        assert message.isprintable(), message


def check_image(text: str) -> None:
    image = parse_image(text)
    assert image.registry == image.registry.lower()
    assert len(str(image)) <= REFERENCE_MAX_LENGTH
    if _reads_as_host(image.registry):
        assert parse_image(str(image)) == image, str(image)
        assert parse_image(image.canonical).repository == image.repository


def _reads_as_host(registry: str) -> bool:
    """Whether the lower-cased registry still reads as one, so that the text round-trips.

    Upper case alone makes a first component a registry (`liBrary/x` is on the host `library`,
    as Docker and the runtimes read it); lower-cased, `library/x` is a Docker Hub path instead.
    """
    return registry == "docker.io" or registry == "localhost" or any(c in registry for c in ".:[")


def check_prefix(text: str) -> None:
    prefix = parse_prefix(text)
    assert parse_prefix(str(prefix)) == prefix, str(prefix)
    try:
        below = parse_image(f"{prefix}/x")
    except ImageReferenceError:
        return
    if below.registry == prefix.registry:  # Docker Hub's rules may put it elsewhere
        assert prefix.covers(below), (str(prefix), str(below))


def seeds() -> Iterator[bytes]:
    # Inputs that once broke an invariant come first, so that the seeds alone catch a regression.
    yield b"\x01" + b"\x00" * 300 + b"er?.io"
    yield b"\x00liBrary/fginx"
    images = [
        "nginx", "nginx:1.25", "library/nginx", "docker.io/library/nginx:latest",
        "index.docker.io/bitnami/redis:7", "registry-1.docker.io/x/y",
        "tools-harbor.wmcloud.org/tool-mytool/app:1",
        "tools-harbor.wmcloud.org/toolforge/heroku-builder:22",
        "localhost:5000/a/b-c__d.e:tag", "[::1]:5000/x:tag", "Upper.Example/x",
        "ghcr.io/tektoncd/pipeline/cmd/entrypoint:v1.0@sha256:" + "0" * 64,
        "quay.io/x/y@sha512:" + "a" * 128, "a/b@md5:" + "1" * 32,
    ]
    prefixes = ["tools-harbor.wmcloud.org/tool-x", "docker.io", "docker.io/library/nginx",
                "harbor.example:5000", "[::1]:5000/a", "quay.io/example-org/"]
    for text in images:
        yield b"\x00" + text.encode()
    for text in prefixes:
        yield b"\x01" + text.encode()
