"""The request reader: what the API server, probes and Prometheus send is read; anything else is
refused with the status that says why (webhooks.http1)."""

from __future__ import annotations

import json

import pytest

from webhooks import http1
from webhooks.http1 import RequestError, parse_head

MAX_BODY = 3 * 1024 * 1024
# What kube-apiserver sends for a review (its webhook client, HTTP/1.1 to a service URL).
API_SERVER = (b"POST /validate/pods?timeout=3s HTTP/1.1\r\n"
              b"Host: toolforge-admission.toolforge-admission.svc:443\r\n"
              b"User-Agent: kube-apiserver-admission\r\n"
              b"Content-Length: 13452\r\n"
              b"Accept: application/json, */*\r\n"
              b"Content-Type: application/json\r\n"
              b"Accept-Encoding: gzip")


def test_the_api_servers_request() -> None:
    head = parse_head(API_SERVER, MAX_BODY)
    assert (head.method, head.path, head.query, head.version) == \
        ("POST", "/validate/pods", "timeout=3s", "HTTP/1.1")
    assert head.content_length == 13452
    assert head.keep_alive is True
    assert head.expect_continue is False
    assert ("CONTENT_TYPE", "application/json") in head.headers
    assert ("USER_AGENT", "kube-apiserver-admission") in head.headers


def test_a_probe() -> None:
    head = parse_head(b"GET /readyz HTTP/1.1\r\nHost: 10.0.0.5:8444\r\nUser-Agent: kube-probe/1.31"
                      b"\r\nAccept: */*\r\nConnection: close", MAX_BODY)
    assert (head.method, head.path, head.content_length, head.keep_alive) == \
        ("GET", "/readyz", 0, False)


def test_http_1_0_is_answered_then_closed() -> None:
    head = parse_head(b"GET /healthz HTTP/1.0", MAX_BODY)
    assert head.keep_alive is False


def test_a_percent_encoded_path_is_decoded_as_wsgi_wants() -> None:
    head = parse_head(b"GET /va%6cidate/pods HTTP/1.1\r\nHost: x", MAX_BODY)
    assert head.path == "/validate/pods"
    assert head.target == "/va%6cidate/pods"


def test_expect_100_continue() -> None:
    head = parse_head(API_SERVER + b"\r\nExpect: 100-continue", MAX_BODY)
    assert head.expect_continue is True


def test_headers_with_an_underscore_are_dropped() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4", MAX_BODY)
    assert [name for name, _ in head.headers] == ["HOST"]


def test_header_values_are_trimmed_and_may_be_empty() -> None:
    head = parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nX-A:  \t a b \t\r\nX-B:", MAX_BODY)
    assert head.headers[1:] == [("X_A", "a b"), ("X_B", "")]


def test_a_header_line_seen_before_reads_the_same_and_is_judged_in_its_request() -> None:
    assert parse_head(API_SERVER, MAX_BODY) == parse_head(API_SERVER, MAX_BODY)
    # Its lines are known now; what they mean together is still judged per request.
    with pytest.raises(RequestError) as refused:
        parse_head(API_SERVER + b"\r\nContent-Length: 13452", MAX_BODY)
    assert refused.value.status == 400


def test_the_header_lines_kept_are_bounded() -> None:
    for n in range(2 * http1._MAX_CHECKED_LINES):
        head = parse_head(f"GET / HTTP/1.1\r\nHost: x\r\nX-Flood-{n}: {n}".encode(), MAX_BODY)
        assert head.headers[-1] == (f"X_FLOOD_{n}", str(n))
    assert len(http1._CHECKED_LINES) == http1._MAX_CHECKED_LINES
    head = parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 300, MAX_BODY)
    assert head.headers[-1] == ("X_LONG", "a" * 300)


@pytest.mark.parametrize(("data", "status"), [
    # framing: Content-Length only
    (b"POST /validate/pods HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked", 411),
    (b"POST /validate/pods HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked", 411),
    (b"POST /validate/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked", 400),
    (b"POST /validate/pods HTTP/1.1\r\nHost: x", 411),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10", 400),
    ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ١٢".encode(), 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3145729", 413),
    # the request line
    (b"GET http://example.org/ HTTP/1.1\r\nHost: x", 400),
    (b"OPTIONS * HTTP/1.1\r\nHost: x", 400),
    (b"CONNECT example.org:443 HTTP/1.1\r\nHost: x", 400),
    (b"GET  / HTTP/1.1\r\nHost: x", 400),
    (b"GET / HTTP/1.1 \r\nHost: x", 400),
    (b"GET /a b HTTP/1.1\r\nHost: x", 400),
    (b"G(T / HTTP/1.1\r\nHost: x", 400),
    (b"GET / HTTP/2.0\r\nHost: x", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM", 505),
    (b"GET / HTTP/1.2\r\nHost: x", 505),
    (b"GET / FTP/1.1\r\nHost: x", 400),
    (b"\r\nGET / HTTP/1.1\r\nHost: x", 400),
    # header lines
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tfolded", 400),
    (b"GET / HTTP/1.1\r\nHost : x", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nNo colon", 400),
    (b"GET / HTTP/1.1\r\nHost: x\nX-Bare: lf", 400),
    (b"GET / HTTP/1.1\r\nHost: x\rX-Bare: cr", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Esc: \x1b[31m", 400),
    (b"GET / HTTP/1.1", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: something-else", 417),
    # sizes
    (b"GET / HTTP/1.1\r\nHost: x" + b"\r\nX-A: a" * http1.MAX_HEADERS, 431),
    (b"GET /" + b"a" * http1.MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x", 431),
])
def test_refused(data: bytes, status: int) -> None:
    with pytest.raises(RequestError) as refused:
        parse_head(data, MAX_BODY)
    assert refused.value.status == status, refused.value
    assert str(refused.value)


@pytest.mark.parametrize(("status", "reason"), [
    (411, "LengthRequired"), (404, "NotFound"), (408, "RequestTimeout"), (413, "BodyTooLarge"),
    (431, "RequestHeaderFieldsTooLarge"), (500, "InternalError"), (503, "ServiceUnavailable")])
def test_a_refusal_is_a_kubernetes_status_and_closes(status: int, reason: str) -> None:
    answer = http1.refusal(status, "a POST needs a Content-Length",
                           date="Wed, 02 Dec 2026 09:00:00 GMT")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        f"HTTP/1.1 {status} {http1.REASONS[status]}".encode(),
        b"Content-Type: application/json", f"Content-Length: {len(body)}".encode(),
        b"Date: Wed, 02 Dec 2026 09:00:00 GMT", b"Connection: close"]
    # As the application answers a bad request (webhooks.app): what the API server relays.
    assert json.loads(body) == {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "code": status, "reason": reason,
                                "message": "a POST needs a Content-Length"}


def test_a_response_carries_the_length_of_its_body() -> None:
    answer = http1.response("200 OK", [("Content-Type", "application/json"),
                                       ("Content-Length", "999")], b"{}", date="D", close=False)
    assert answer == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 2\r\nDate: D\r\n\r\n{}")


def test_a_head_response_keeps_the_applications_length_and_sends_no_body() -> None:
    answer = http1.response("200 OK", [("Content-Length", "12")], b"", date="D", close=False,
                            head_only=True)
    assert answer == b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nDate: D\r\n\r\n"


def test_a_header_that_would_split_the_response_is_an_error() -> None:
    with pytest.raises(ValueError, match="line break"):
        http1.response("200 OK", [("X-A", "a\r\nSet-Cookie: b")], b"", date="D", close=False)
