"""The decisions of one proxied exchange, as small pure functions on plain values (the h11 way).

`server.py` moves bytes and keeps the connection's state; every *choice* it makes about framing,
keep-alive, retries and reuse is made here, where a unit test reaches it without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, int]
HTTP_11: Version = (1, 1)
HTTP_10: Version = (1, 0)

#: Requests that may be sent again when a pooled connection turns out closed (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Answer:
    """A response the proxy makes itself: a status, one line saying why, and whether the connection ends with it."""

    status: int
    reason: str
    close: bool = True


# requests ------------------------------------------------------------------------------------------


def version_problem(version: Version, transfer_encoding: str | None) -> Answer | None:
    """Versions we speak, and the one framing HTTP/1.0 cannot have (RFC 9112 6.1)."""
    if version not in (HTTP_11, HTTP_10):
        return Answer(505, f"HTTP/{version[0]}.{version[1]} is not supported (HTTP/1.1 or 1.0 only)")
    if version == HTTP_10 and transfer_encoding is not None:
        return Answer(400, "Transfer-Encoding in an HTTP/1.0 request: framing is ambiguous (RFC 9112 6.1)")
    return None


def framing_problem(transfer_encoding: str | None) -> Answer | None:
    """Only chunked is a transfer coding we can pass on; anything else cannot be framed safely (RFC 9112 6.1)."""
    if transfer_encoding is not None and transfer_encoding.strip().lower() != "chunked":
        return Answer(501, f"Transfer-Encoding '{transfer_encoding}' is not supported (only chunked)")
    return None


def request_has_body(chunked: bool, content_length: str | None) -> bool:
    return chunked or int(content_length or 0) > 0


def denied(reason: str, *, has_body: bool, client_asked_close: bool) -> Answer:
    """403 for the ACL; the connection survives only if no unread body sits in front of the next request."""
    return Answer(403, reason, close=has_body or client_asked_close)


def connect_port_problem(port: int, allowed: frozenset[int]) -> Answer | None:
    if port in allowed:
        return None
    listed = ",".join(str(p) for p in sorted(allowed))
    return Answer(403, f"CONNECT to port {port} is not allowed (EGRESS_HTTP_PROXY_CONNECT_PORTS={listed})")


# responses -----------------------------------------------------------------------------------------


def is_interim(status: int) -> bool:
    """1xx other than 101: another head follows (RFC 9110 15.2)."""
    return 100 <= status < 200 and status != 101


def forward_interim(client_version: Version) -> bool:
    """HTTP/1.0 clients do not expect 1xx responses (RFC 9110 15.2): they are dropped for them."""
    return client_version >= HTTP_11


@dataclass(frozen=True, slots=True)
class ResponseFraming:
    """How the response body reaches the client."""

    body: bool  # a body follows the head at all
    rechunk: bool  # we send it chunked (the server's length is unknown to the client otherwise)
    ends_with_close: bool  # the body is delimited by closing the connection (HTTP/1.0 client, no length)

    @property
    def cut_needs_reset(self) -> bool:
        """A body ended by the close cannot show a cut except by a reset; the others miss bytes or the last chunk."""
        return self.ends_with_close


def response_framing(method: str, client_version: Version, status: int, *, chunked: bool, has_length: bool) -> ResponseFraming:
    if method == "HEAD" or status in (204, 304):
        return ResponseFraming(body=False, rechunk=False, ends_with_close=False)
    if chunked or not has_length:
        if client_version >= HTTP_11:
            return ResponseFraming(body=True, rechunk=True, ends_with_close=False)
        return ResponseFraming(body=True, rechunk=False, ends_with_close=True)  # HTTP/1.0 has no chunked coding (RFC 9112 7)
    return ResponseFraming(body=True, rechunk=False, ends_with_close=False)


def keep_client(*, client_asked_close: bool, draining: bool, upload_complete: bool, framing: ResponseFraming) -> bool:
    """Whether the client connection carries another request after this response."""
    return not client_asked_close and not draining and upload_complete and not framing.ends_with_close


def connection_header(keep: bool, client_version: Version) -> tuple[str, str] | None:
    """Said when it differs from the version's default: an HTTP/1.0 client closes unless told otherwise (RFC 9112 9.3)."""
    if not keep:
        return ("Connection", "close")
    if client_version < HTTP_11:
        return ("Connection", "keep-alive")
    return None


# the upstream connection ---------------------------------------------------------------------------


def may_retry(*, attempt: int, reused: bool, lost: bool, answered: bool, has_body: bool, method: str) -> bool:
    """Once, on a fresh connection, when a pooled one turned out closed by the server before it said anything,
    and only for a request that is safe to send twice and whose body we do not have to replay."""
    return attempt == 1 and reused and lost and not answered and not has_body and method in IDEMPOTENT


def reusable(*, complete: bool, upload_complete: bool, server_asked_close: bool, lost: bool) -> bool:
    """An upstream connection goes back to the pool only when both messages ended on their framing."""
    return complete and upload_complete and not server_asked_close and not lost
