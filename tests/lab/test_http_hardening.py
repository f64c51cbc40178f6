"""The HTTP proxy against malformed, ambiguous and hostile clients: raw bytes in, exact statuses out.

Runs in one namespace with only lo: the proxy, and the lab origin server on 127.0.0.1:8000.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from tests.http_cases import REFUSED
from tests.lab.http_helpers import open_connection, origin_lab, read_all, read_head, start_proxy, status_of

ROLE = "lo"
ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with origin_lab(ROLE) as built:
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
