"""Starting the HTTP proxy and talking raw HTTP to it from inside lab namespaces."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

from egress_router.lab import Lab
from egress_router.lab.netns import socket_in
from egress_router.lab.topology import Process, environment
from tests.lab.waiting import eventually


def start_proxy(lab: Lab, role: str, *, user: int | None = None, **env: str) -> Process:
    """`egress-router http-proxy` in a namespace (as `user`, with no capabilities, when given)."""
    argv = [sys.executable, "-m", "egress_router", "http-proxy"]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", *argv]
    proc = lab.start_in(role, argv, env=environment(**env))
    lab.wait_for_port(role, "127.0.0.1", int(env.get("EGRESS_HTTP_PROXY_LISTEN_PORT", "8080")), process=proc)
    return proc


def open_connection(lab: Lab, role: str, host: str, port: int, timeout: float = 5) -> socket.socket:
    sock = socket_in(lab.ns(role))
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything until the peer closes (or `timeout` passes without a byte)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything until the peer closes; raises TimeoutError if it is still open after `timeout` (a hang is not an end)."""
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(1)
        if not more:
            break
        data += more
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def log_line(proxy: Process, needle: str, timeout: float = 5) -> str:
    """The first access-log line containing `needle`, waiting for the proxy's periodic flush."""
    return eventually(
        lambda: next((line for line in proxy.stdout().splitlines() if needle in line), ""),
        timeout,
        lambda: f"no log line with {needle!r} in:\n{proxy.stdout()}",
    )


def start_scripted_server(lab: Lab, role: str, port: int, handle: str) -> Process:
    """A raw asyncio origin on 127.0.0.1:`port` whose connection handler body is `handle` (reader, writer in scope)."""
    body = "\n".join("    " + line for line in handle.strip("\n").splitlines())
    script = (
        f"import asyncio\n\nasync def handle(reader, writer):\n{body}\n\n"
        f"async def main():\n    await asyncio.start_server(handle, '127.0.0.1', {port})\n"
        "    print('ready', flush=True)\n    await asyncio.Event().wait()\n\nasyncio.run(main())\n"
    )
    return lab.start_in(role, ["python3", "-c", script], ready_line="ready")


def http_get(lab: Lab, role: str, host: str, port: int, path: str) -> tuple[int, str]:
    """A probe's GET from `role`: the status and the body."""
    with open_connection(lab, role, host, port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode())
        response = read_all(sock)
    return status_of(response), response.partition(b"\r\n\r\n")[2].decode()


Sample = tuple[str, tuple[tuple[str, str], ...]]


def get_through(lab: Lab, proxy: str, url: str) -> tuple[int, str]:
    """curl's GET of `url` from the client pod through the HTTP proxy at `proxy` (host:port, an IPv6 host in brackets):
    the status (0: no answer) and the body."""
    argv = ["curl", "-sS", "--max-time", "10", "-g", "-x", f"http://{proxy}", "-w", "\n%{http_code}", url]
    done = subprocess.run(lab.exec_argv("client", argv), capture_output=True, text=True, timeout=30)
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def samples(text: str) -> dict[Sample, float]:
    """Every sample of a scrape by (name, sorted labels); the text must parse as Prometheus' format."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@contextlib.contextmanager
def origin_lab(role: str) -> Iterator[Lab]:
    """A lab of one namespace with only lo, the lab origin server on 127.0.0.1:8000 in it."""
    with Lab() as built:
        built.add_namespace(role)
        built.python_in(role, "egress_router.lab.http_server", "--http", "127.0.0.1:8000", ready_line="ready")
        yield built
