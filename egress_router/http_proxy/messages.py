"""Pure HTTP/1.1 pieces of the proxy: request targets, hop-by-hop headers, heads and error replies."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from egress_router.config.hostnames import host_name_problem, normalize_host
from egress_router.config.lines import parse_port

#: Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the proxy's own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)

#: What a Connection option may not remove: without its length the body would be read as the next message.
FRAMING_BYTES = frozenset({b"content-length"})

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True)
class RequestTarget:
    """Where a request goes: the host as asked for, whether it is an address literal, the port and the origin-form path."""

    host: str
    address: IPv4Address | IPv6Address | None
    port: int
    path: str = ""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, IPv6Address) else self.host
        return f"{host}:{self.port}"

    @property
    def host_header(self) -> str:
        return self.authority if self.port != 80 else (f"[{self.host}]" if isinstance(self.address, IPv6Address) else self.host)


def _host(text: str) -> tuple[str, IPv4Address | IPv6Address | None] | None:
    if text.startswith("[") and text.endswith("]"):
        if "%" in text:
            return None  # a zone (RFC 6874) names one of the client's interfaces, not one of ours
        try:
            return text[1:-1], IPv6Address(text[1:-1])
        except ValueError:
            return None
    if not text or any(ch in text for ch in "[]@/\\ %:") or not text.isascii() or not text.isprintable():
        return None
    try:
        return text, IPv4Address(text)
    except ValueError:
        pass
    name = normalize_host(text)
    if host_name_problem(name) is not None:
        return None  # "." names nothing; 1.2.3, 012.1.1.1 or 0x7f.1: read as an address by resolvers, not a name either
    return name, None


@functools.lru_cache(maxsize=4096)
def parse_absolute_target(raw: str) -> RequestTarget | str:
    """An absolute-form http:// request target, or why it is not one we can forward."""
    if raw.startswith("/"):
        return "this is a proxy: send the absolute URL (http://host/path) in the request line"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return "malformed URL in the request line"
    if parts.scheme.lower() != "http":
        return f"only http:// URLs are proxied as requests (got '{parts.scheme}:'); use CONNECT for https"
    if parts.username is not None or parts.password is not None:
        return "user information in the URL is not forwarded"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    hostport = netloc.rsplit(":", 1)[0] if (":" in netloc and not netloc.endswith("]")) else netloc
    host = _host(hostport)
    if host is None or port == 0:
        return "bad host or port in the request line"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return RequestTarget(host[0], host[1], port or 80, path)


def parse_connect_target(raw: str) -> RequestTarget | str:
    """CONNECT takes exactly host:port (RFC 9110 9.3.6), nothing else."""
    hostport, _, port_text = raw.rpartition(":")
    port = parse_port(port_text)
    host = _host(hostport)
    if port is None or host is None:
        return "CONNECT needs host:port"
    return RequestTarget(host[0], host[1], port)


def literal_address(host: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def forwarded_headers(raw_headers: Iterable[tuple[bytes, bytes]], host_header: str | None) -> list[tuple[bytes, bytes]]:
    """End-to-end headers only; headers listed in Connection go too (but not the message's length); Host replaced when given."""
    kept: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP_BYTES:
            if lowered == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
            continue
        if host_header is not None and lowered == b"host":
            continue
        kept.append((name, value))
    named -= FRAMING_BYTES
    if named:
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return [(b"Host", host_header.encode("ascii")), *kept] if host_header is not None else kept


def wire(text: str) -> bytes:
    """Text as it came off the wire: aiohttp decodes request lines and reasons as UTF-8 with surrogateescape."""
    return text.encode("utf-8", "surrogateescape")


def head(first_line: str, headers: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """A message head: first line, headers, extra headers, blank line."""
    parts = [wire(first_line), b"\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    for name_text, value_text in extra:
        parts += [wire(name_text), b": ", wire(value_text), b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def error_response(status: int, reason: str, *, close: bool = True, announce_keep_alive: bool = False) -> bytes:
    """A short text reply that says why, in one line; an HTTP/1.0 client kept open is told so (`announce_keep_alive`)."""
    one_line = " ".join(reason.splitlines())
    body = f"egress-router: {REASONS.get(status, 'Error').lower()}: {one_line}\n".encode("utf-8", "replace")
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    if close:
        lines.append("Connection: close")
    elif announce_keep_alive:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    """`data` as one chunk; no bytes, no chunk (an empty one would be the last and end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


def error_text(error: Exception) -> str:
    """The telling line of a parser error, without aiohttp's "400, message:" preamble."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("400, message:",))]
    return (lines[0].rstrip(":") if lines else "") or type(error).__name__


def unbracketed_ipv6(target: str) -> str | None:
    """Why a request target the parser refused is wrong, when it is an IPv6 address without its brackets (RFC 3986
    3.2.2): `2001:db8::10:443` is itself an address, so the port cannot be told from it. None for anything else."""
    if "[" in target or target.count(":") < 2:
        return None
    host, _, port = target.rpartition(":")
    if literal_address(host) is not None and parse_port(port) is not None:
        example = f"[{host}]:{port}"
    elif isinstance(literal_address(target), IPv6Address):
        example = f"[{target}]:443"
    else:
        return None
    return f"an IPv6 address in a request target is written in brackets, the port after them: {example} (got {target})"
