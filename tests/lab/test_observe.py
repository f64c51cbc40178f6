"""/healthz, /readyz and /metrics of the long-running commands, probed as the kubelet and Prometheus would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab.topology import Process, environment
from tests.lab.http_helpers import http_get, open_connection, origin_lab, read_all, samples, start_proxy, status_of
from tests.lab.waiting import eventually

ROLE = "lo"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with origin_lab(ROLE) as built:
        yield built


def stop(proxy: Process) -> None:
    if proxy.popen.poll() is None:
        os.killpg(proxy.popen.pid, signal.SIGTERM)
        proxy.popen.wait(15)


def probe(lab: Lab, path: str, port: int = 9191) -> tuple[int, str]:
    return http_get(lab, ROLE, "127.0.0.1", port, path)


def request(lab: Lab, target: str, method: str = "GET") -> int:
    with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return status_of(read_all(sock))


def requests_total(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str, code: str, decision: str) -> float:
    key = ("egress_router_http_requests_total", (("code", code), ("decision", decision), ("method", method)))
    return scrape.get(key, 0.0)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_http_proxy_probes_and_metrics(lab: Lab, workers: str) -> None:
    proxy = start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="!*.blocked.test\n127.0.0.1", EGRESS_HTTP_PROXY_WORKERS=workers)
    try:
        lab.wait_for_port(ROLE, "127.0.0.1", 9191, process=proxy)
        assert probe(lab, "/healthz") == (200, "ok\n")
        eventually(lambda: probe(lab, "/readyz") == (200, "ok\n"), 5, lambda: str(probe(lab, "/readyz")))
        for _ in range(10):  # separate connections: spread over the workers
            assert request(lab, "http://127.0.0.1:8000/x") == 200
        assert request(lab, "http://a.blocked.test/") == 403
        assert request(lab, "127.0.0.1:22", method="CONNECT") == 403  # a port CONNECT may not reach

        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            scrape = samples(probe(lab, "/metrics")[1])
            return scrape if requests_total(scrape, "GET", "200", "allow") == 10 else {}

        scrape = eventually(counted, 5, lambda: probe(lab, "/metrics")[1])  # workers report once a second
        assert requests_total(scrape, "GET", "403", "deny") == 1
        assert requests_total(scrape, "CONNECT", "403", "deny") == 1
        assert scrape[("egress_router_build_info", (("mode", "http-proxy"), ("version", "0.1.0")))] == 1
        assert scrape[("egress_router_http_list_decisions_total", (("decision", "allow"), ("line", "2")))] == 10
        assert scrape[("egress_router_http_list_decisions_total", (("decision", "deny"), ("line", "1")))] == 1
        assert scrape[("egress_router_http_request_duration_seconds_count", ())] == 12
        assert scrape[("egress_router_http_bytes_total", (("direction", "out"),))] > 0
        assert ("egress_router_http_client_connections", ()) in scrape
        assert not any("client" in dict(labels) or "target" in dict(labels) for _, labels in scrape)  # bounded labels only
    finally:
        stop(proxy)


def test_readiness_fails_while_draining(lab: Lab) -> None:
    proxy = start_proxy(
        lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="2", EGRESS_HTTP_PROXY_DRAIN_TIMEOUT="5s"
    )
    try:
        lab.wait_for_port(ROLE, "127.0.0.1", 9191, process=proxy)
        eventually(lambda: probe(lab, "/readyz")[0] == 200, 5)
        with open_connection(lab, ROLE, "127.0.0.1", 8080) as sock:
            sock.sendall(b"GET http://127.0.0.1:8000/slow/2 HTTP/1.1\r\nHost: x\r\n\r\n")  # in flight through the drain
            time.sleep(0.3)
            os.killpg(proxy.popen.pid, signal.SIGTERM)
            assert eventually(lambda: probe(lab, "/readyz")[0] == 503, 3)
            assert probe(lab, "/readyz") == (503, "draining: stopping on SIGTERM\n")
            assert probe(lab, "/healthz")[0] == 200  # live, just not taking new work
            assert status_of(read_all(sock)) == 200
    finally:
        stop(proxy)


def children(pid: int) -> set[int]:
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: the parent
            found.add(int(entry))
    return found


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def listener(lab: Lab, port: int) -> int:
    """The process that listens on `port` in the namespace."""
    out = lab.run_in(ROLE, ["ss", "-Hltnp", f"sport = :{port}"]).stdout
    return int(out.split("pid=")[1].split(",")[0])


def test_the_supervisor_forks_from_a_single_thread_and_replaces_what_dies(lab: Lab) -> None:
    """The endpoints of several workers run in a process of their own: the supervisor never has a second thread (a
    fork would copy it mid-operation), not at start, not when it replaces a dead worker or a dead endpoints' process."""
    proxy = start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="2")
    started = time.monotonic()
    try:
        lab.wait_for_port(ROLE, "127.0.0.1", 9191, process=proxy)
        supervisor = proxy.popen.pid
        endpoints = listener(lab, 9191)
        workers = children(supervisor) - {endpoints}
        assert len(workers) == 2 and endpoints in children(supervisor)
        assert threads(supervisor) == 1
        eventually(lambda: probe(lab, "/readyz") == (200, "ok\n"), 5, lambda: str(probe(lab, "/readyz")))

        time.sleep(max(0.0, started + 2.5 - time.monotonic()))  # past the start, when a dying worker stops them all
        os.kill(min(workers), signal.SIGKILL)
        replaced = eventually(lambda: len(children(supervisor) - {endpoints} - workers) == 1, 5)
        assert replaced and threads(supervisor) == 1
        eventually(lambda: probe(lab, "/readyz") == (200, "ok\n"), 5, lambda: str(probe(lab, "/readyz")))
        assert request(lab, "http://127.0.0.1:8000/x") == 200

        os.kill(endpoints, signal.SIGKILL)  # should never happen; if it does, the probes come back
        eventually(lambda: probe(lab, "/readyz") == (200, "ok\n"), 5)
        assert listener(lab, 9191) != endpoints and threads(supervisor) == 1
        assert "the endpoints' process exited with -9; starting a new one" in proxy.stderr()
    finally:
        stop(proxy)
    assert children(supervisor) == set()


def run(lab: Lab, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return lab.run_in(ROLE, [sys.executable, "-m", "egress_router", command], env=environment(**env))


def test_a_metrics_port_that_clashes_is_a_clear_error(lab: Lab) -> None:
    done = run(lab, "http-proxy", EGRESS_HTTP_PROXY_DESTINATION="*", EGRESS_METRICS_PORT="8080")
    assert done.returncode == 1
    assert "EGRESS_METRICS_PORT: port 8080 is EGRESS_HTTP_PROXY_LISTEN_PORT too" in done.stderr and "Traceback" not in done.stderr


def test_metrics_off_listens_on_nothing_more(lab: Lab) -> None:
    proxy = start_proxy(lab, ROLE, EGRESS_HTTP_PROXY_DESTINATION="127.0.0.1", EGRESS_HTTP_PROXY_WORKERS="1", EGRESS_METRICS_PORT="off")
    try:
        with pytest.raises(ConnectionRefusedError):
            open_connection(lab, ROLE, "127.0.0.1", 9191)
        assert request(lab, "http://127.0.0.1:8000/x") == 200
    finally:
        stop(proxy)
