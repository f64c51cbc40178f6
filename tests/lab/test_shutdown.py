"""SIGTERM to a proxy, as the kubelet's runtime sends it (to the container's main process only): /readyz says 503 at
once, new connections are still served for EGRESS_SHUTDOWN_DELAY (while every node's Service rules drop the pod),
then the proxy stops accepting, drains and exits."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab.topology import Process, environment
from tests.lab.http_helpers import http_get, open_connection, origin_lab, read_all, start_proxy, status_of
from tests.lab.waiting import eventually

ROLE = "lo"
DELAY = 1.5


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with origin_lab(ROLE) as built:
        yield built


def request(port: int, path: str) -> bytes:
    target = f"http://127.0.0.1:8000{path}" if port == 8080 else path
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def served(lab: Lab, port: int) -> bool:
    """A new connection to `port` that gets its answer from the origin (through the proxy)."""
    try:
        with open_connection(lab, ROLE, "127.0.0.1", port, timeout=2) as sock:
            sock.sendall(request(port, "/x"))
            return status_of(read_all(sock, timeout=2)) == 200
    except OSError:
        return False


def assert_unready_then_serving_then_gone(lab: Lab, proxy: Process, port: int) -> None:
    eventually(lambda: http_get(lab, ROLE, "127.0.0.1", 9191, "/readyz")[0] == 200, 5)
    assert served(lab, port)
    sent = time.monotonic()
    proxy.popen.send_signal(signal.SIGTERM)
    eventually(lambda: http_get(lab, ROLE, "127.0.0.1", 9191, "/readyz") == (503, "draining: stopping on SIGTERM\n"), 1)
    with open_connection(lab, ROLE, "127.0.0.1", port) as in_flight:  # accepted in the delay, answered in the drain
        in_flight.sendall(request(port, "/slow/2"))
        last_served = sent
        while time.monotonic() - sent < DELAY + 3 and proxy.popen.poll() is None:
            if served(lab, port):
                last_served = time.monotonic()
            time.sleep(0.1)
        assert DELAY - 0.4 <= last_served - sent < DELAY + 0.5, last_served - sent  # new connections: through the delay only
        assert status_of(read_all(in_flight)) == 200
    assert proxy.popen.wait(10) == 0
    assert f"still accepting for {DELAY:g} s" in proxy.stderr() and "Traceback" not in proxy.stderr()


def stop(proxy: Process) -> None:
    if proxy.popen.poll() is None:
        os.killpg(proxy.popen.pid, signal.SIGKILL)
        proxy.popen.wait(10)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_http_proxy_serves_through_the_delay_unready_then_drains(lab: Lab, workers: str) -> None:
    proxy = start_proxy(
        lab,
        ROLE,
        EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1",
        EGRESS_HTTP_PROXY_WORKERS=workers,
        EGRESS_SHUTDOWN_DELAY=f"{DELAY}s",
        EGRESS_HTTP_PROXY_DRAIN_TIMEOUT="5s",
    )
    try:
        assert_unready_then_serving_then_gone(lab, proxy, 8080)
    finally:
        stop(proxy)


def test_dns_proxy_serves_through_the_delay_unready_then_drains(lab: Lab) -> None:
    argv = [sys.executable, "-m", "egress_router", "dns-proxy"]
    env = environment(
        EGRESS_DNS_PROXY_DESTINATION="9000 127.0.0.1 8000", EGRESS_SHUTDOWN_DELAY=f"{DELAY}s", EGRESS_DNS_PROXY_DRAIN_TIMEOUT="5s"
    )
    proxy = lab.start_in(ROLE, argv, env=env)
    try:
        lab.wait_for_port(ROLE, "127.0.0.1", 9000, process=proxy)
        assert_unready_then_serving_then_gone(lab, proxy, 9000)
    finally:
        stop(proxy)
