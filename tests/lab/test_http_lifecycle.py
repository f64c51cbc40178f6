"""The HTTP proxy's life: graceful SIGTERM, following its list file, reusing server connections."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress_router.lab import Lab
from tests.lab.http_helpers import open_connection, origin_lab, read_all, read_head, start_proxy, start_scripted_server, status_of
from tests.lab.waiting import eventually

ROLE = "lo"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with origin_lab(ROLE) as built:
        yield built


def get(lab: Lab, path: str, close: bool = True) -> bytes:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(f"GET http://127.0.0.1:8000{path} HTTP/1.1\r\nHost: x\r\n{'Connection: close' if close else ''}\r\n\r\n".encode())
        return read_all(sock)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_in_flight_requests_then_exits(lab: Lab, workers: str) -> None:
    proxy = start_proxy(
        lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS=workers, EGRESS_HTTP_PROXY_DRAIN_TIMEOUT="5s"
    )
    slow = open_connection(lab, ROLE, "127.0.0.1", 8080)
    slow.sendall(b"GET http://127.0.0.1:8000/slow/1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = open_connection(lab, ROLE, "127.0.0.1", 8080)
    time.sleep(0.3)
    started = time.monotonic()
    os.killpg(proxy.popen.pid, signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        open_connection(lab, ROLE, "127.0.0.1", 8080)
    assert read_all(idle, timeout=2) == b""  # an idle keep-alive connection is closed at once
    response = read_all(slow, timeout=5)
    assert status_of(response) == 200 and response.endswith(b"slow\n")
    assert b"Connection: close" in response
    assert proxy.popen.wait(10) == 0
    assert time.monotonic() - started < 4
    assert "draining" in proxy.stderr()


def test_sigterm_cuts_what_outlives_the_drain_timeout(lab: Lab) -> None:
    proxy = start_proxy(
        lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="1", EGRESS_HTTP_PROXY_DRAIN_TIMEOUT="500ms"
    )
    slow = open_connection(lab, ROLE, "127.0.0.1", 8080)
    slow.sendall(b"GET http://127.0.0.1:8000/slow/5 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    started = time.monotonic()
    os.killpg(proxy.popen.pid, signal.SIGTERM)
    assert proxy.popen.wait(5) == 0
    assert time.monotonic() - started < 2
    assert read_all(slow, timeout=2) == b""
    assert "1 connection(s) cut at the drain deadline" in proxy.stderr()


def test_list_file_is_followed_and_a_bad_version_is_ignored(lab: Lab, tmp_path: Path) -> None:
    rules = tmp_path / "destination"
    rules.write_text("!127.0.0.1\n")
    tmp_path.chmod(0o755)
    proxy = start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION_FILE=str(rules), EGRESS_HTTP_PROXY_WORKERS="2")
    assert status_of(get(lab, "/")) == 403
    replacement = tmp_path / "destination.new"
    replacement.write_text("# now allowed\n127.0.0.1\n")
    replacement.rename(rules)  # an atomic swap, as Kubernetes does for ConfigMap volumes
    # every worker has it (each checks every second)
    eventually(lambda: all(status_of(get(lab, "/")) == 200 for _ in range(6)), 5, "the new list was not picked up")
    time.sleep(2.5)  # every worker polls each second; connections are spread by hash, so wait rather than probe
    rules.write_text("*\nexample.com\n")
    eventually(lambda: "keeping the previous list" in proxy.stderr(), 5, proxy.stderr)
    assert "EGRESS_HTTP_PROXY_DESTINATION line 2: Wildcard must be last rule" in proxy.stderr()
    assert status_of(get(lab, "/")) == 200


def test_server_connections_are_reused(lab: Lab) -> None:
    start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="1")
    ports = set()
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        for _ in range(3):
            sock.sendall(b"GET http://127.0.0.1:8000/ HTTP/1.1\r\nHost: x\r\n\r\n")
            head = read_head(sock)
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
            body = b""
            while len(body) < length:
                body += sock.recv(length - len(body))
            ports.add(json.loads(body)["client_port"])
    assert len(ports) == 1
    for _ in range(3):  # new client connections share the pooled server connection too
        ports.add(json.loads(get(lab, "/").split(b"\r\n\r\n", 1)[1])["client_port"])
    assert len(ports) == 1


FORGETFUL = """
served = 0
while True:
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        break
    if served == 1:  # as if its keep-alive timeout struck just as the next request came in
        break
    served += 1
    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
    await writer.drain()
writer.close()
"""


def test_a_pooled_connection_closed_by_the_server_is_retried_once(lab: Lab) -> None:
    start_scripted_server(lab, ROLE, 8002, FORGETFUL)
    start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="1")

    def ask(method: str = "GET", body: bytes = b"") -> int:
        with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
            length = f"Content-Length: {len(body)}\r\n" if body else ""
            sock.sendall(f"{method} http://127.0.0.1:8002/ HTTP/1.1\r\nHost: x\r\n{length}Connection: close\r\n\r\n".encode() + body)
            return status_of(read_all(sock))

    assert [ask(), ask(), ask()] == [200, 200, 200]  # the 2nd and 3rd went out on a pooled connection first
    assert ask("POST", b"data") == 502  # a request with a body is never sent twice


AMBIGUOUS = """
await reader.readuntil(b"\\r\\n\\r\\n")
writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n\\r\\n")
await writer.drain()
writer.close()
"""


def test_an_ambiguous_response_is_not_passed_on(lab: Lab) -> None:
    start_scripted_server(lab, ROLE, 8003, AMBIGUOUS)
    start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="1")
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(b"GET http://127.0.0.1:8003/ HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_all(sock)
    assert status_of(response) == 502 and b"bad response from the server" in response
    assert b"hello" not in response


def test_a_client_that_goes_away_is_logged_as_499(lab: Lab) -> None:
    proxy = start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="1")
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(b"GET http://127.0.0.1:8000/slow/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # gone: a reset, not a half-close
    eventually(lambda: "status=499" in proxy.stdout(), 5, proxy.stdout)
    line = next(line for line in proxy.stdout().splitlines() if "status=499" in line)
    assert "target=http://127.0.0.1:8000/slow/1" in line and 'rule="client went away"' in line
