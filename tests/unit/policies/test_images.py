"""Image references parse by the distribution grammar and normalise like Docker; prefixes match
on "/" boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.images import (
    REFERENCE_MAX_LENGTH,
    ImageReference,
    ImageReferenceError,
    RepositoryPrefix,
    parse_image,
    parse_prefix,
)

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "0123456789abcdef" * 8


@pytest.mark.parametrize(("text", "registry", "path", "tag", "digest"), [
    pytest.param("nginx", "docker.io", "library/nginx", None, None, id="bare-name-is-docker-library"),
    pytest.param("nginx:1.25", "docker.io", "library/nginx", "1.25", None, id="bare-name-with-tag"),
    pytest.param("docker.io/nginx", "docker.io", "library/nginx", None, None,
                 id="docker-io-one-component-is-library"),
    pytest.param("index.docker.io/library/nginx", "docker.io", "library/nginx", None, None,
                 id="index-docker-io-is-docker-io"),
    pytest.param("registry-1.docker.io/nginx", "docker.io", "library/nginx", None, None,
                 id="registry-1-docker-io-is-docker-io"),
    pytest.param("bitnami/redis", "docker.io", "bitnami/redis", None, None,
                 id="user-image-on-docker-hub"),
    pytest.param("localhost", "docker.io", "library/localhost", None, None,
                 id="localhost-alone-is-a-library-image"),
    pytest.param("localhost/x", "localhost", "x", None, None, id="localhost-first-is-a-registry"),
    pytest.param("localhost:5000/x", "localhost:5000", "x", None, None, id="localhost-with-port"),
    pytest.param("localhost:5000/x:2", "localhost:5000", "x", "2", None,
                 id="port-and-tag-are-told-apart"),
    pytest.param("[::1]:5000/x", "[::1]:5000", "x", None, None, id="ipv6-host-with-port"),
    pytest.param("[::1]/x:3", "[::1]", "x", "3", None, id="ipv6-host-without-port"),
    pytest.param("10.0.0.1:5000/a/b", "10.0.0.1:5000", "a/b", None, None, id="ipv4-host"),
    pytest.param("Tools-Harbor.WMCloud.org/tool-x/app", "tools-harbor.wmcloud.org", "tool-x/app",
                 None, None, id="host-case-folds"),
    pytest.param("FOO/bar", "foo", "bar", None, None, id="upper-case-first-component-is-a-host"),
    pytest.param(f"nginx@{SHA256}", "docker.io", "library/nginx", None, SHA256, id="digest-only"),
    pytest.param(f"harbor.example/a/b:1.0@{SHA256}", "harbor.example", "a/b", "1.0", SHA256,
                 id="tag-and-digest-together"),
    pytest.param(f"harbor.example:443/a@{SHA512}", "harbor.example:443", "a", None, SHA512,
                 id="sha512-digest-and-port"),
    pytest.param("harbor.example/a__b/c.d/e---f", "harbor.example", "a__b/c.d/e---f", None, None,
                 id="path-separators"),
    pytest.param("harbor.example:5000", "docker.io", "library/harbor.example", "5000", None,
                 id="host-and-port-alone-is-a-library-image-with-a-tag"),
])
def test_references_are_normalised(text: str, registry: str, path: str, tag: str | None,
                                   digest: str | None) -> None:
    assert parse_image(text) == ImageReference(registry=registry, path=path, tag=tag,
                                               digest=digest)


@pytest.mark.parametrize(("text", "why"), [
    pytest.param("", "non-empty", id="empty"),
    pytest.param(" nginx", "spaces", id="leading-space"),
    pytest.param("nginx\n", "spaces", id="trailing-newline"),
    pytest.param("harbor.example/Tool/app", "lower case", id="upper-case-path"),
    pytest.param("Nginx", "lower case", id="upper-case-library-name"),
    pytest.param("harbor.example/a b", "invalid repository path", id="space-inside"),
    pytest.param("harbor.example//app", "invalid repository path", id="empty-component"),
    pytest.param("harbor.example/", "empty", id="registry-without-path"),
    pytest.param("harbor.example/app:", "invalid tag", id="empty-tag"),
    pytest.param("harbor.example/app:-1", "invalid tag", id="tag-starting-with-dash"),
    pytest.param("harbor.example/app:t\u00e4g", "invalid tag", id="non-ascii-tag"),
    pytest.param("harbor.example/app:" + "t" * 129, "invalid tag", id="tag-too-long"),
    pytest.param("nginx@sha256:abc", "invalid digest", id="short-digest"),
    pytest.param("nginx@" + SHA256.upper().replace("SHA256", "sha256"), "lower-case hex",
                 id="upper-case-digest-hex"),
    pytest.param("nginx@md5:" + "0" * 32, "unsupported digest algorithm", id="unknown-algorithm"),
    pytest.param("nginx@sha256:" + "0" * 65, "64 lower-case hex", id="digest-wrong-length"),
    pytest.param(f"nginx@@{SHA256}", "invalid digest", id="two-at-signs"),
    pytest.param("-bad.example/app", "invalid registry host", id="host-starting-with-dash"),
    pytest.param("bad..example/app", "invalid registry host", id="empty-host-label"),
    pytest.param("[::1]:5000", "invalid repository path", id="ipv6-host-without-path"),
    pytest.param("https://harbor.example/app", "invalid", id="url-scheme"),
    pytest.param("harbor.example/" + "a" * 256, "over 255", id="name-too-long"),
    pytest.param("a" * (REFERENCE_MAX_LENGTH + 1), "at most", id="input-too-long"),
])
def test_invalid_references_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ImageReferenceError, match=why):
        parse_image(text)


@pytest.mark.parametrize("value", [None, {"image": "nginx"}, ["nginx"], 7])
def test_a_non_string_is_refused(value: object) -> None:
    # An unhashable value too: it must be refused before the parse cache sees it.
    with pytest.raises(ImageReferenceError):
        parse_image(value)  # type: ignore[arg-type]


def test_parses_are_cached_and_refusals_are_not() -> None:
    # Rules share one parse cache; a refusal is raised every time, with its reason.
    assert parse_image("Harbor.Example/tool-a/web:1") is parse_image("Harbor.Example/tool-a/web:1")
    for _ in range(2):
        with pytest.raises(ImageReferenceError, match="lower case"):
            parse_image("harbor.example/Tool-a/web:1")


@pytest.mark.parametrize(("text", "canonical"), [
    pytest.param("nginx", "docker.io/library/nginx:latest", id="latest-implied"),
    pytest.param(f"nginx@{SHA256}", f"docker.io/library/nginx@{SHA256}",
                 id="no-latest-with-digest"),
    pytest.param("harbor.example/a:1", "harbor.example/a:1", id="tag-kept"),
])
def test_canonical_form(text: str, canonical: str) -> None:
    assert parse_image(text).canonical == canonical


@pytest.mark.parametrize(("text", "prefix"), [
    pytest.param("tools-harbor.wmcloud.org", RepositoryPrefix("tools-harbor.wmcloud.org"),
                 id="host"),
    pytest.param("Tools-Harbor.wmcloud.org/toolforge/", RepositoryPrefix(
        "tools-harbor.wmcloud.org", "toolforge"), id="host-case-folds-trailing-slash-dropped"),
    pytest.param("localhost:5000", RepositoryPrefix("localhost:5000"), id="host-with-port"),
    pytest.param("[::1]:5000/x", RepositoryPrefix("[::1]:5000", "x"), id="ipv6"),
    pytest.param("index.docker.io/library", RepositoryPrefix("docker.io", "library"),
                 id="docker-hub-alias-folds"),
    # A prefix is read literally: `docker.io/nginx` is the user `nginx`, not library/nginx.
    pytest.param("docker.io/nginx", RepositoryPrefix("docker.io", "nginx"),
                 id="docker-io-prefix-gets-no-library"),
    pytest.param("quay", RepositoryPrefix("quay"), id="first-component-is-always-the-host"),
])
def test_prefixes_parse_literally(text: str, prefix: RepositoryPrefix) -> None:
    assert parse_prefix(text) == prefix


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("harbor.example/app:1", id="tag"),
    pytest.param(f"harbor.example/app@{SHA256}", id="digest"),
    pytest.param("harbor.example/App", id="upper-case-path"),
    pytest.param("https://harbor.example", id="url"),
    pytest.param("harbor.example/{tool}", id="unexpanded-placeholder"),
])
def test_invalid_prefixes_are_refused(text: str) -> None:
    with pytest.raises(ImageReferenceError):
        parse_prefix(text)


@pytest.mark.parametrize(("prefix", "image", "covered"), [
    pytest.param("tools-harbor.wmcloud.org", "tools-harbor.wmcloud.org/tool-a/app:1", True,
                 id="host-covers-its-images"),
    pytest.param("tools-harbor.wmcloud.org", "tools-harbor.wmcloud.org.evil.com/x", False,
                 id="lookalike-longer-host"),
    pytest.param("tools-harbor.wmcloud.org", "tools-harbor.wmcloud.orgx/y", False,
                 id="lookalike-host-suffix"),
    pytest.param("tools-harbor.wmcloud.org", "evil.com/tools-harbor.wmcloud.org/x", False,
                 id="host-in-path"),
    pytest.param("tools-harbor.wmcloud.org", "TOOLS-HARBOR.wmcloud.org/x", True,
                 id="host-case-insensitive"),
    pytest.param("tools-harbor.wmcloud.org", "tools-harbor.wmcloud.org:5000/x", False,
                 id="other-port-is-another-registry"),
    pytest.param("tools-harbor.wmcloud.org:443", "tools-harbor.wmcloud.org/x", False,
                 id="port-in-prefix-needs-port-in-image"),
    pytest.param("tools-harbor.wmcloud.org/tool-a", "tools-harbor.wmcloud.org/tool-a/app", True,
                 id="project-covers-its-repositories"),
    pytest.param("tools-harbor.wmcloud.org/tool-a", "tools-harbor.wmcloud.org/tool-a", True,
                 id="prefix-equal-to-repository"),
    pytest.param("tools-harbor.wmcloud.org/tool-a", "tools-harbor.wmcloud.org/tool-ab/app", False,
                 id="project-lookalike"),
    pytest.param("tools-harbor.wmcloud.org/tool-a", "tools-harbor.wmcloud.org/tool-b/app", False,
                 id="other-project"),
    pytest.param("localhost:5000", "localhost:5000/x", True, id="localhost-port"),
    pytest.param("localhost:5000", "localhost/x", False, id="localhost-without-port"),
    pytest.param("localhost", "localhost", False, id="bare-localhost-is-docker-hub"),
    pytest.param("[::1]:5000", "[::1]:5000/x", True, id="ipv6"),
    pytest.param("docker.io/library", "nginx", True, id="library-covers-bare-name"),
    pytest.param("docker.io/library/nginx", "index.docker.io/library/nginx:1", True,
                 id="full-repository-covers-alias"),
    pytest.param("docker.io/nginx", "nginx", False, id="docker-io-nginx-is-not-library-nginx"),
    pytest.param("docker.io/nginx", "nginx/nginx-ingress", True,
                 id="docker-io-nginx-is-the-nginx-user"),
    pytest.param("docker.io", "nginx", True, id="docker-hub-host-covers-library"),
    pytest.param("docker.io", "docker.io.evil.com/x", False, id="docker-hub-lookalike"),
    pytest.param("harbor.example/a", f"harbor.example/a/b:1@{SHA256}", True,
                 id="tag-and-digest-do-not-matter"),
])
def test_prefix_covers_on_path_boundaries(prefix: str, image: str, covered: bool) -> None:
    assert parse_prefix(prefix).covers(parse_image(image)) is covered


# -- properties ---------------------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_HOSTS = st.builds(lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
                   st.lists(_LABEL, min_size=2, max_size=4),
                   st.one_of(st.none(), st.integers(1, 65535)))
_PATHS = st.lists(st.from_regex(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+){0,2}", fullmatch=True),
                  min_size=1, max_size=3).map("/".join)
_TAGS = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))


@pytest.mark.slow
@given(host=_HOSTS, path=_PATHS, tag=_TAGS)
def test_a_parsed_reference_reads_back_as_itself(host: str, path: str, tag: str | None) -> None:
    image = parse_image(f"{host}/{path}" + (f":{tag}" if tag else ""))
    assert (image.registry, image.path, image.tag) == (host, path, tag)
    assert parse_image(str(image)) == image


@pytest.mark.slow
@given(labels=st.lists(_LABEL, min_size=2, max_size=4),
       extra=st.one_of(_LABEL, _LABEL.map(lambda label: f".{label}")), path=_PATHS)
def test_a_host_prefix_never_covers_a_longer_host(labels: list[str], extra: str,
                                                  path: str) -> None:
    host = ".".join(labels)
    assert not parse_prefix(host).covers(parse_image(f"{host}{extra}/{path}"))
    assert parse_prefix(host).covers(parse_image(f"{host}/{path}"))



def test_an_invalid_prefix_host_is_quoted_in_bounded_form() -> None:
    # Found by tests/fuzz: the whole host went into the message, 4 characters per NUL.
    with pytest.raises(ImageReferenceError, match="is not a registry host") as caught:
        parse_prefix("\x00" * 1000)
    assert len(str(caught.value)) < 400
