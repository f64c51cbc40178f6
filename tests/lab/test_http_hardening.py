"""The HTTP proxy against malformed, ambiguous and hostile clients: raw bytes in, exact statuses out.

Runs in one namespace with only lo: the proxy, and the lab origin server on 127.0.0.1:8000.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from tests.lab.http_helpers import open_connection, read_all, read_head, start_proxy, status_of

ROLE = "lo"
ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        built.add_namespace(ROLE)
        built.python_in(ROLE, "egress_router.lab.http_server", "--http", "127.0.0.1:8000", ready_line="ready")
        start_proxy(
            built,
            ROLE,
            EGRESS_HTTP_PROXY_DESTINATION="!*.blocked.test\n127.0.0.1",
            EGRESS_HTTP_PROXY_WORKERS="1",
            EGRESS_HTTP_PROXY_MAX_HEADER_SIZE="8192",
            EGRESS_HTTP_PROXY_HEADER_TIMEOUT="1s",
            EGRESS_HTTP_PROXY_IDLE_TIMEOUT="2s",
            EGRESS_HTTP_PROXY_MAX_CONNECTIONS="40",
            EGRESS_HTTP_PROXY_CONNECT_PORTS="8000",
        )
        yield built


def exchange(lab: Lab, data: bytes, timeout: float = 3) -> bytes:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(data)
        return read_all(sock, timeout)


def request(lab: Lab, head: str, body: bytes = b"") -> bytes:
    return exchange(lab, head.replace("\n", "\r\n").encode() + body)


def test_a_plain_request_works(lab: Lab) -> None:
    response = request(lab, f"GET {ORIGIN}/hello HTTP/1.1\nHost: 127.0.0.1:8000\nConnection: close\n\n")
    assert status_of(response) == 200
    seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert seen["path"] == "/hello" and seen["method"] == "GET"


REFUSED = [
    ("CL.TE", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
    (
        "TE.CL",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "two different Content-Length",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    ("Content-Length list", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("Content-Length with sign", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("Content-Length in hex", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    ("obs-fold", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    ("whitespace before colon", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (
        "bad chunk size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size overflow",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("TE xchunked", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (
        "TE chunked then identity",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("TE chunked, gzip", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip, chunked", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("NUL in a header", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    ("bare LF line ends", b"GET http://127.0.0.1:8000/ HTTP/1.1\nHost: a\n\n", 400),
    ("space in the target", b"GET http://127.0.0.1:8000/a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("origin-form to a proxy", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n", 400),
    ("https URL in a plain request", b"GET https://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("userinfo in URL", b"GET http://user:pw@127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("CONNECT without port", b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("CONNECT with a URL", b"CONNECT http://127.0.0.1:8000/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("CONNECT to a port not allowed", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 403),
    ("denied by the list", b"GET http://x.blocked.test/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 403),
    ("not in the list", b"GET http://198.51.100.1/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 403),
    ("TE in HTTP/1.0", b"POST http://127.0.0.1:8000/ HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE with vertical tab", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", 400),
    ("tab before colon", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400),
    ("quoted chunked", b'POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', 400),
    (
        "bare LF after chunk size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        400,
    ),
    (
        "empty chunk extension",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "space after chunk size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk longer than its size",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    ("negative Content-Length", b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (
        "overflowing Content-Length",
        b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    ("space in a header name", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX Y: 1\r\n\r\n", 400),
    ("bare CR in a value", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    ("lower-case method", b"get http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("HTTP/2.0 request line", b"GET http://127.0.0.1:8000/ HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("no Host in HTTP/1.1", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), REFUSED, ids=[case[0] for case in REFUSED])
def test_ambiguous_or_forbidden_requests_are_refused(lab: Lab, name: str, raw: bytes, status: int) -> None:
    response = exchange(lab, raw)
    assert status_of(response) == status, response[:300]
    assert b"egress-router: " in response  # a one-line reason for people
    if status == 400:
        assert response.count(b"HTTP/1.1 ") == 1  # nothing smuggled behind it


def test_header_line_too_large_gets_431(lab: Lab) -> None:
    response = request(lab, f"GET {ORIGIN}/ HTTP/1.1\nHost: a\nX-Big: {'a' * 6000}\n\n")
    assert status_of(response) == 431


def test_head_too_large_in_total_gets_431(lab: Lab) -> None:
    headers = "".join(f"X-H{i}: {'b' * 900}\n" for i in range(12))
    assert status_of(request(lab, f"GET {ORIGIN}/ HTTP/1.1\nHost: a\n{headers}\n")) == 431


def test_slowloris_gets_408(lab: Lab) -> None:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        started = time.monotonic()
        for piece in (b"GET http://127.0.0.1:8000/ HTTP/1.1\r\n", b"Host: a\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
            try:
                sock.sendall(piece)
            except OSError:
                break
            time.sleep(0.4)
        response = read_all(sock)
    assert status_of(response) == 408
    assert time.monotonic() - started < 3


def test_silent_connection_is_closed(lab: Lab) -> None:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        started = time.monotonic()
        assert read_all(sock, timeout=5) == b""
        assert time.monotonic() - started < 3


def test_idle_keep_alive_connection_is_closed(lab: Lab) -> None:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(f"GET {ORIGIN}/ HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        head = read_head(sock)
        assert status_of(head) == 200
        length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0].split(b":")[1])
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
        started = time.monotonic()
        assert read_all(sock, timeout=5) == b""
        assert 1.5 < time.monotonic() - started < 4


def test_connection_limit_answers_503(lab: Lab) -> None:
    held = [open_connection(lab, ROLE, "127.0.0.1", 8080) for _ in range(40)]
    try:
        time.sleep(0.2)
        response = exchange(lab, f"GET {ORIGIN}/ HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert status_of(response) == 503
    finally:
        for sock in held:
            sock.close()


def test_request_line_host_wins_and_hop_by_hop_headers_go(lab: Lab) -> None:
    response = request(
        lab,
        f"GET {ORIGIN}/h HTTP/1.1\nHost: evil.test\nConnection: close, X-Secret\nX-Secret: 1\n"
        "Proxy-Authorization: Basic eDp5\nProxy-Connection: keep-alive\nKeep-Alive: 5\nTE: trailers\nX-Kept: yes\n\n",
    )
    seen = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert seen["host"] == "127.0.0.1:8000"
    headers = {k.lower() for k in seen["headers"]}
    assert {"x-secret", "proxy-authorization", "proxy-connection", "keep-alive", "te", "x-forwarded-for", "via", "forwarded"}.isdisjoint(
        headers
    )
    assert seen["headers"]["X-Kept"] == "yes"


def test_pipelined_requests_are_answered_in_order(lab: Lab) -> None:
    raw = "".join(f"GET {ORIGIN}/p{i} HTTP/1.1\r\nHost: a\r\n{'Connection: close' if i == 2 else 'X-N: 1'}\r\n\r\n" for i in range(3))
    response = exchange(lab, raw.encode())
    assert response.count(b"HTTP/1.1 200") == 3
    assert [response.index(f'"/p{i}"'.encode()) for i in range(3)] == sorted(response.index(f'"/p{i}"'.encode()) for i in range(3))


def test_expect_100_continue(lab: Lab) -> None:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(
            f"POST {ORIGIN}/e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        assert status_of(read_head(sock)) == 100
        sock.sendall(b"hello")
        response = read_all(sock)
    assert status_of(response) == 200
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["body_length"] == 5


def test_http_1_0_client(lab: Lab) -> None:
    response = exchange(lab, f"GET {ORIGIN}/old HTTP/1.0\r\n\r\n".encode())
    assert status_of(response) == 200 and b'"/old"' in response


def test_chunked_upload_and_download_are_byte_exact(lab: Lab) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(body[i : i + 70000]), body[i : i + 70000]) for i in range(0, len(body), 70000))
    response = exchange(
        lab,
        f"POST {ORIGIN}/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        + chunks
        + b"0\r\n\r\n",
    )
    head, _, payload = response.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    decoded, rest = b"", payload
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded += rest[:size]
        rest = rest[size + 2 :]
    assert decoded == body


def test_connect_tunnel_through_loopback_allowed_port(lab: Lab) -> None:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(
            b"CONNECT 127.0.0.1:8000 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\nGET /tunnelled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        response = read_all(sock)
    assert response.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
    assert b'"/tunnelled"' in response


def test_upstream_refused_gets_502(lab: Lab) -> None:
    response = request(lab, "GET http://127.0.0.1:8001/ HTTP/1.1\nHost: a\n\n")
    assert status_of(response) == 502 and b"connection refused" in response


def test_listens_on_ipv6_too(lab: Lab) -> None:
    import socket

    from egress_router.lab.netns import socket_in

    with socket_in(lab.ns(ROLE), socket.AF_INET6) as sock:
        sock.settimeout(3)
        sock.connect(("::1", 8080))
        sock.sendall(f"GET {ORIGIN}/v6 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        response = read_all(sock)
    assert status_of(response) == 200 and b'"/v6"' in response
