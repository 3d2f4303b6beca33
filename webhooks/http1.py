"""HTTP/1.1 as the webhook speaks it: a strict request reader and the response it writes.

The callers are the API server (a POST with a Content-Length and a JSON body), kubelet probes and
Prometheus (GETs without a body), and an admin's curl. Everything else is refused with a status
and a Kubernetes `Status` body that say why, and the connection is closed, since where the next
request would start is unknown:

- only `Content-Length` frames a body: a `Transfer-Encoding` alone is 411 (Length Required), with a
  Content-Length as well 400 (the two together are how requests are smuggled); a POST without
  either is 411; a length over the body cap is 413, refused before a byte of the body is read;
- one Content-Length, digits only, and one `Host` (RFC 9112 requires it of HTTP/1.1); lines end
  in CRLF, no obsolete line folding, no whitespace before a header's colon, no control
  characters; the request line and headers together at most `MAX_HEAD_BYTES` (431 beyond), at
  most `MAX_HEADERS` fields;
- HTTP/1.0 and 1.1 only (505 otherwise), origin-form targets only (`/path?query`);
- `Expect: 100-continue` is honoured (curl sends it for large bodies), any other expectation is
  417;
- pipelined requests are answered one after the other, in order: the bytes after a body are
  the next request's.

Nothing here touches a socket: the worker (webhooks.worker) feeds bytes in and writes out what
comes back, which keeps this testable byte for byte.
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import orjson

MAX_HEAD_BYTES = 16 * 1024
"""The request line and headers (the API server sends about 300 bytes)."""
MAX_HEADERS = 64
HEAD_END = b"\r\n\r\n"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - RFC 9110's token, not a secret
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (/[\x21-\x7e]*) (HTTP/\d\.\d)")
# A field line: name, colon, optional whitespace, a value without control characters (HTAB
# allowed inside), optional whitespace. Obsolete folding (a line that starts with whitespace)
# fails the name.
_FIELD = re.compile(rf"({_TOKEN}):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*")
_HAS_CONTROL = re.compile(r"[\r\n\x00]")

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 415: "Unsupported Media Type", 417: "Expectation Failed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestError(Exception):
    """A request refused before the application sees it: the status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    """A request line and its headers, checked."""

    method: str
    target: str
    path: str
    """Percent-decoded, as WSGI's PATH_INFO (latin-1)."""
    query: str
    version: str
    headers: list[tuple[str, str]]
    """(NAME as in a WSGI key: upper case, `-` as `_`; value), in order."""
    content_length: int
    keep_alive: bool
    expect_continue: bool


def parse_head(data: bytes, max_body: int) -> RequestHead:
    """The request line and headers in `data` (without the blank line that ends them);
    RequestError if the request must be refused."""
    if len(data) > MAX_HEAD_BYTES:
        raise RequestError(431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
    # A bare CR or LF, or a NUL, stays inside a line and fails the patterns below.
    lines = data.decode("latin-1").split("\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        if lines[0].startswith("PRI * HTTP/2"):
            raise RequestError(505, "HTTP/2 is not served here (HTTP/1.1 only)")
        raise RequestError(400, "the request line is not `METHOD /path HTTP/1.1`")
    method, target, version = request_line.groups()
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise RequestError(505, f"{version} is not served here (HTTP/1.1 only)")
    if len(lines) - 1 > MAX_HEADERS:
        raise RequestError(431, f"more than {MAX_HEADERS} header fields")
    fields = _Fields(lines[1:])
    if fields.transfer_encoding:
        if fields.length is not None:
            raise RequestError(400, "both Transfer-Encoding and Content-Length")
        raise RequestError(411, "a body must be sent with a Content-Length (no chunked "
                                "transfer coding)")
    if version == "HTTP/1.1" and fields.hosts != 1:
        raise RequestError(400, "an HTTP/1.1 request needs exactly one Host header")
    if fields.length is None:
        if method == "POST":
            raise RequestError(411, "a POST needs a Content-Length")
        content_length = 0
    else:
        content_length = int(fields.length)
    if content_length > max_body:
        raise RequestError(413, f"the body is larger than {max_body} bytes")
    path, _, query = target.partition("?")
    if "%" in path:
        path = unquote_to_bytes(path).decode("latin-1")
    return RequestHead(method, target, path, query, version, fields.headers, content_length,
                       version == "HTTP/1.1" and not fields.close, fields.expect_continue)


class _Fields:
    """The header lines, checked, and what the reader needs from them."""

    __slots__ = ("close", "expect_continue", "headers", "hosts", "length", "transfer_encoding")

    def __init__(self, lines: list[str]) -> None:
        self.headers: list[tuple[str, str]] = []
        self.length: str | None = None
        self.hosts = 0
        self.transfer_encoding = False
        self.close = False
        self.expect_continue = False
        for line in lines:
            field = _CHECKED_LINES.get(line)
            if field is None:
                field = _checked_line(line)
            key, value, wsgi_name = field
            if key in _FRAMING:
                self._framing(key, value)
            if wsgi_name:
                self.headers.append((wsgi_name, value))

    def _framing(self, key: str, value: str) -> None:
        if key == "CONTENT-LENGTH":
            if self.length is not None:
                raise RequestError(400, "more than one Content-Length")
            if not value.isdigit() or not value.isascii():
                raise RequestError(400, "Content-Length is not a number")
            self.length = value
        elif key == "TRANSFER-ENCODING":
            self.transfer_encoding = True
        elif key == "HOST":
            self.hosts += 1
        elif key == "CONNECTION":
            self.close |= "close" in {option.strip(" \t").lower() for option in value.split(",")}
        elif value.lower() == "100-continue":  # EXPECT
            self.expect_continue = True
        else:
            raise RequestError(417, "only `Expect: 100-continue` is understood")


_FRAMING = frozenset({"CONTENT-LENGTH", "TRANSFER-ENCODING", "HOST", "CONNECTION", "EXPECT"})

# The API server sends the same few header lines on every review (Host, User-Agent, Accept,
# Content-Type, Accept-Encoding; Content-Length in a few values): each is checked once, then
# looked up (six lines: ~6 µs a request by the pattern, ~1 µs so; bench/HISTORY.md, entry 31).
# Bounded, and never evicted: lines that only a flood sends cannot push out the API server's.
_CHECKED_LINES: dict[str, tuple[str, str, str]] = {}
_MAX_CHECKED_LINES = 512
_MAX_CHECKED_LINE = 256


def _checked_line(line: str) -> tuple[str, str, str]:
    """A header line's name as a key (upper case), its value, and its WSGI name (`""` for a name
    with `_`, dropped as gunicorn drops it: HTTP_X_A would be both X-A and X_A)."""
    field = _FIELD.fullmatch(line)
    if field is None:
        raise RequestError(400, "a header line is malformed (no folding, no space before the "
                                "colon, no control characters)")
    name, value = field.groups()
    key = name.upper()
    checked = (key, value, "" if "_" in key else key.replace("-", "_"))
    if len(_CHECKED_LINES) < _MAX_CHECKED_LINES and len(line) <= _MAX_CHECKED_LINE:
        _CHECKED_LINES[line] = checked
    return checked


class HttpDate:
    """The Date header's value, formatted once a second (RFC 9110 wants one on every answer)."""

    def __init__(self) -> None:
        self._cached = (0, "")

    def now(self) -> str:
        second = int(time.time())
        cached_second, text = self._cached  # one tuple: threads never see a torn pair
        if cached_second != second:
            text = email.utils.formatdate(second, usegmt=True)
            self._cached = (second, text)
        return text


def response(status: str, headers: list[tuple[str, str]], body: bytes, *, date: str,
             close: bool, head_only: bool = False) -> bytes:
    """The bytes of an answer: `status` as WSGI gives it ("200 OK"), the application's headers
    with the Content-Length of `body`, a Date, and `Connection: close` when the connection will
    be closed after it. ValueError for a header that would split the response."""
    lines = [f"HTTP/1.1 {status}\r\n"]
    length_given = False
    for name, value in headers:
        if _HAS_CONTROL.search(name) or _HAS_CONTROL.search(value):
            raise ValueError(f"response header {name!r} holds a line break")
        if name.lower() == "content-length":
            if not head_only:
                continue  # replaced by the body's own length below
            length_given = True
        lines.append(f"{name}: {value}\r\n")
    if not head_only or not length_given:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append(f"Date: {date}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1")
    return head if head_only else head + body


# Kubernetes' names where the application uses them for the same refusal (webhooks.errors,
# webhooks.app); else the HTTP reason phrase in one word.
_STATUS_REASONS = {413: "BodyTooLarge", 500: "InternalError"}


def refusal(status: int, reason: str, *, date: str) -> bytes:
    """The answer to a request refused before the application: a Kubernetes `Status`, as the
    application answers a bad request (what the API server relays and kubectl shows), then a
    close."""
    phrase = REASONS.get(status, "Error")
    body = orjson.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "code": status,
                         "reason": _STATUS_REASONS.get(status, phrase.replace(" ", "")),
                         "message": reason})
    return response(f"{status} {phrase}", [("Content-Type", "application/json")], body,
                    date=date, close=True)
