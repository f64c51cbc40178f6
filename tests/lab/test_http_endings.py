"""How each HTTP exchange ends when it does not end as planned: origins that die mid-body, clients that go
away, HTTP/1.0 framing, response heads too large. Raw bytes in and out, in one namespace with only lo: the
proxy, the lab origin server on 127.0.0.1:8000 and a scripted origin on 127.0.0.1:8004 whose behaviour the
request path picks.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab.topology import Process
from tests.lab.http_helpers import (
    log_line,
    open_connection,
    origin_lab,
    read_head,
    read_until_closed,
    start_proxy,
    start_scripted_server,
    status_of,
)
from tests.lab.waiting import eventually

ROLE = "lo"
LIMIT = 3  # EGRESS_HTTP_PROXY_MAX_CONNECTIONS: a leaked connection soon shows as 503s

#: The scripted origin: one request per connection, the path says how the answer goes wrong.
SCRIPTED = """
import socket, struct
try:
    head = await reader.readuntil(b"\\r\\n\\r\\n")
except (asyncio.IncompleteReadError, ConnectionError):
    writer.close()
    return
path = head.split(b" ", 2)[1].decode().lstrip("/").split("?")[0]

async def send(data, pause=0.2):
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(pause)

def reset():
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

if path == "length-short":  # 5 of 10 bytes, then a clean close
    await send(b"HTTP/1.1 200 OK\\r\\nContent-Length: 10\\r\\n\\r\\nhello")
elif path == "length-short-at-once":  # the same in one write, the close right behind it
    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 10\\r\\n\\r\\nhello")
elif path == "chunked-cut":  # a chunk, then a clean close without the last chunk
    await send(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n")
elif path == "length-reset":
    await send(b"HTTP/1.1 200 OK\\r\\nContent-Length: 10\\r\\n\\r\\nhello")
    reset()
    return
elif path == "until-close-reset":  # a body delimited by the close, cut by a reset: not a complete body
    await send(b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\n\\r\\nhello")
    reset()
    return
elif path == "bad-chunk":
    await send(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n")
    await send(b"zz\\r\\nmore\\r\\n0\\r\\n\\r\\n", pause=2)
elif path == "chunked":  # complete, and the close comes later: the proxy must not wait for it (nor pool this)
    await send(b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n6\\r\\n world\\r\\n0\\r\\n\\r\\n", pause=2)
elif path == "long-header":
    await send(b"HTTP/1.1 200 OK\\r\\nX-Big: " + b"a" * 70000 + b"\\r\\nContent-Length: 2\\r\\n\\r\\nok")
elif path == "many-headers":  # each line well under the limit, the head over it
    await send(b"HTTP/1.1 200 OK\\r\\n" + b"".join(b"X-H%d: %s\\r\\n" % (i, b"b" * 2000) for i in range(40)) + b"Content-Length: 2\\r\\n\\r\\nok")
elif path == "upload":  # reads the request body until the proxy ends the connection, then says so
    total = 0
    try:
        while data := await reader.read(65536):
            total += len(data)
    except ConnectionError:
        pass
    print(f"upload connection ended after {total} bytes", flush=True)
writer.close()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with origin_lab(ROLE) as built:
        built.origin = start_scripted_server(built, ROLE, 8004, SCRIPTED)  # type: ignore[attr-defined]
        built.proxy = start_proxy(  # type: ignore[attr-defined]
            built,
            ROLE,
            EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1",
            EGRESS_HTTP_PROXY_WORKERS="1",
            EGRESS_HTTP_PROXY_MAX_CONNECTIONS=str(LIMIT),
        )
        yield built


@pytest.fixture
def proxy(lab: Lab) -> Process:
    return lab.proxy  # type: ignore[attr-defined,no-any-return]


def ask(lab: Lab, raw: bytes, timeout: float = 5) -> bytes:
    """Send `raw`, return all the proxy says until it closes the connection (a TimeoutError if it never does)."""
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(raw)
        return read_until_closed(sock, timeout)


def scripted(path: str, version: str = "1.1", headers: str = "") -> bytes:
    return f"GET http://127.0.0.1:8004/{path} HTTP/{version}\r\nHost: 127.0.0.1:8004\r\n{headers}\r\n".encode()


CUT = [
    # path, what the client gets after the head, the reason logged
    ("length-short", b"hello", "server closed mid-body"),
    ("length-short-at-once", b"hello", "server closed mid-body"),
    ("chunked-cut", b"5\r\nhello\r\n", "server closed mid-body"),
    ("length-reset", b"hello", "server reset mid-body"),
    ("until-close-reset", b"5\r\nhello\r\n", "server reset mid-body"),
    ("bad-chunk", b"5\r\nhello\r\n", "bad response body from the server: "),
]


@pytest.mark.parametrize(("path", "body", "reason"), CUT, ids=[case[0] for case in CUT])
def test_a_body_the_server_cuts_short_ends_the_client_connection(lab: Lab, proxy: Process, path: str, body: bytes, reason: str) -> None:
    started = time.monotonic()
    response = ask(lab, scripted(path))  # a keep-alive request: only the cut may close it
    head, _, received = response.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert received == body  # what the server sent, no more: fewer bytes than announced, or no last chunk
    assert time.monotonic() - started < 3
    line = log_line(proxy, f"target=http://127.0.0.1:8004/{path} ")
    assert "status=200" in line and f"out={len(b'hello')}" in line and reason in line, line


def test_cut_bodies_free_their_connection_slot(lab: Lab) -> None:
    for _ in range(2 * LIMIT):
        response = ask(lab, scripted("length-short"))
        assert status_of(response) == 200 and response.endswith(b"\r\n\r\nhello")
    response = ask(lab, b"GET http://127.0.0.1:8000/after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 200 and b'"/after"' in response


def test_a_body_ending_with_the_connection_that_the_server_cuts_is_reset(lab: Lab) -> None:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:  # HTTP/1.0: the client's copy too ends with the connection
        sock.sendall(scripted("until-close-reset", "1.0"))
        with pytest.raises(ConnectionResetError):  # a plain close would say "complete"
            while sock.recv(65536):
                pass


def test_http_1_0_client_gets_a_chunked_body_de_chunked_and_closed(lab: Lab) -> None:
    for extra in ("", "Connection: keep-alive\r\n"):
        response = ask(lab, scripted("chunked", "1.0", extra))
        head, _, body = response.partition(b"\r\n\r\n")
        assert status_of(head) == 200
        assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
        assert b"\r\nConnection: close\r\n" in head + b"\r\n"
        assert body == b"hello world"


def test_http_1_0_keep_alive_is_announced_when_kept(lab: Lab) -> None:
    def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
        head = read_head(sock)
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
        return head, body

    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        for path in ("/one", "/two"):
            sock.sendall(f"GET http://127.0.0.1:8000{path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            head, body = read_response(sock)
            assert status_of(head) == 200 and b"\r\nConnection: keep-alive\r\n" in head
            assert json.loads(body)["path"] == path
        sock.sendall(b"GET http://198.51.100.1/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")  # the proxy's own answers too
        head, _ = read_response(sock)
        assert status_of(head) == 403 and b"\r\nConnection: keep-alive\r\n" in head
        sock.sendall(b"GET http://127.0.0.1:8000/last HTTP/1.0\r\n\r\n")  # without keep-alive: closed after the answer
        response = read_until_closed(sock)
    assert status_of(response) == 200 and b"\r\nConnection: close\r\n" in response and b'"/last"' in response


@pytest.mark.parametrize("how", ["half-close", "reset"])
def test_a_client_that_goes_away_mid_upload_is_logged_as_499_at_once(lab: Lab, proxy: Process, how: str) -> None:
    origin: Process = lab.origin  # type: ignore[attr-defined]
    ended = origin.stdout().count("upload connection ended")
    started = time.monotonic()
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(
            f"POST http://127.0.0.1:8004/upload?{how} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 1000
        )
        time.sleep(0.3)
        if how == "half-close":
            sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) == b""
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    line = log_line(proxy, f"target=http://127.0.0.1:8004/upload?{how} ")
    assert "status=499" in line and 'rule="client went away"' in line and "in=1000 " in line, line
    eventually(lambda: origin.stdout().count("upload connection ended") > ended, 3, origin.stdout)  # the server connection is not kept
    assert time.monotonic() - started < 3


def test_an_aborted_download_logs_the_bytes_sent(lab: Lab, proxy: Process) -> None:
    received = 0
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(b"GET http://127.0.0.1:8000/bytes/12000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        while received < 2_000_000 and (data := sock.recv(65536)):
            received += len(data)
        assert received >= 2_000_000
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    line = log_line(proxy, "target=http://127.0.0.1:8000/bytes/12000000 ")
    assert "status=499" in line, line
    out = int(line.split(" out=", 1)[1].split(" ", 1)[0])
    assert received - 1000 <= out < 12_000_000, line  # the head is not counted, the body bytes are


@pytest.mark.parametrize("path", ["long-header", "many-headers"])
def test_a_response_head_too_large_gets_a_clear_502(lab: Lab, proxy: Process, path: str) -> None:
    response = ask(lab, scripted(path, headers="Connection: close\r\n"))
    assert status_of(response) == 502 and b"response head from the server larger than 65536 bytes" in response, response[:300]
    line = log_line(proxy, f"target=http://127.0.0.1:8004/{path} ")
    assert "status=502" in line and 'rule="response head from the server larger than 65536 bytes"' in line, line
