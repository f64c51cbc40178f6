"""DNS proxy mode end to end: dnsmasq serves the names, the relay runs unprivileged in a router pod,
the whoami server reports which address was reached and from which source."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egress_router.lab import Lab, Seen
from egress_router.lab import topology as t
from egress_router.lab.dns import DNS
from egress_router.lab.dns import DnsServer as Dns
from egress_router.lab.netns import socket_in
from egress_router.lab.topology import Process, environment, run
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import http_get, samples
from tests.lab.waiting import eventually

REFUSING = "203.0.113.60"  # on the server, but nothing listens: connections are refused
TARGETS = """
5432 db.lab.test                # a name, remote port = local port
9000 203.0.113.26               # an address
8443 web.lab.test 443           # a name and another remote port
7000 late.lab.test 9000         # not in DNS when the proxy starts
6000 multi.lab.test 5432        # two addresses, one refusing
9100 203.0.113.26               # a server that resets
6100 spread.lab.test 5432       # two working addresses
6200 slow.lab.test 5432         # one address drops packets, one answers
"""
RESETTING_SERVER = """
import socket, struct
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("203.0.113.26", 9100))
listener.listen(16)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    conn.sendall(b"x")
    conn.recv(1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
"""
BLACKHOLE = "203.0.113.61"  # the site firewall drops everything to it: connecting times out
HOSTS = f"""
203.0.113.25 spread.lab.test
203.0.113.26 spread.lab.test
{BLACKHOLE} slow.lab.test
203.0.113.27 slow.lab.test
203.0.113.25 db.lab.test
203.0.113.27 web.lab.test
{REFUSING} multi.lab.test
203.0.113.25 multi.lab.test
"""


@pytest.fixture(scope="module")
def dns(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Dns:
    lab.ip("server", "addr", "add", f"{REFUSING}/24", "dev", "eth0")
    lab.ip("server", "addr", "add", f"{BLACKHOLE}/24", "dev", "eth0")
    run(lab.exec_argv("gw", ["nft", "insert", "rule", "inet", "site", "forward", "ip", "daddr", BLACKHOLE, "drop"]))
    server = Dns.site(lab, HOSTS)
    server.start()
    return server


@pytest.fixture(scope="module")
def resetting_server(lab: Lab) -> None:
    lab.start_in("server", ["python3", "-c", RESETTING_SERVER], ready_line="ready")


@pytest.fixture(scope="module", params=["on", "off"], ids=["splice", "copy"])
def relay(lab: Lab, dns: Dns, resetting_server: None, request: pytest.FixtureRequest) -> Iterator[tuple[Pod, Process]]:
    pod = new_pod(lab)
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE="dns-proxy")
    assert done.returncode == 0, done.stderr
    lab.write_etc(pod.role, "resolv.conf", f"nameserver {DNS}\noptions timeout:1 attempts:1\n")
    env = environment(
        EGRESS_DNS_PROXY_DESTINATION=TARGETS,
        EGRESS_DNS_PROXY_DEBUG="1",
        EGRESS_DNS_PROXY_SPLICE=request.param,
        EGRESS_DNS_PROXY_CONNECT_TIMEOUT="1s",
    )
    argv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        sys.executable,
        "-m",
        "egress_router",
    ]
    proc = lab.start_in(pod.role, argv, env=env)  # no command: the mode comes from the environment
    lab.wait_for_port(pod.role, "127.0.0.1", 5432, process=proc)
    yield pod, proc
    lab.remove_namespace(pod.role)


@contextlib.contextmanager
def dns_pod(lab: Lab, **env: str) -> Iterator[tuple[Pod, Process]]:
    """A router pod of its own in dns-proxy mode running `egress-router dns-proxy` with `env` (debug on)."""
    pod = new_pod(lab)
    try:
        assert pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE="dns-proxy").returncode == 0
        lab.write_etc(pod.role, "resolv.conf", f"nameserver {DNS}\noptions timeout:1 attempts:1\n")
        proc = lab.start_in(
            pod.role, [sys.executable, "-m", "egress_router", "dns-proxy"], env=environment(EGRESS_DNS_PROXY_DEBUG="1", **env)
        )
        if "EGRESS_DNS_PROXY_DESTINATION" in env:
            port = int(env["EGRESS_DNS_PROXY_DESTINATION"].split()[0])
            lab.wait_for_port(pod.role, "127.0.0.1", port, process=proc)
            eventually(lambda: "closed=" in proc.stderr())  # the readiness probe's own relay has ended
        yield pod, proc
    finally:
        lab.remove_namespace(pod.role)


@contextlib.contextmanager
def relayed(lab: Lab, pod: Pod, port: int, timeout: float = 5) -> Iterator[tuple[socket.socket, Any, bytes]]:
    """A client connection through the relay, with the server's first line already read."""
    with socket_in(lab.ns("client")) as sock:
        sock.settimeout(timeout)
        sock.connect((pod.ip, port))
        reader = sock.makefile("rb")
        yield sock, reader, reader.readline()


def seen(lab: Lab, pod: Pod, port: int) -> Seen:
    return lab.tcp("client", pod.ip, port, timeout=5)


def test_names_and_addresses_default_and_other_remote_ports(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    db = seen(lab, pod, 5432)
    assert (db.server, db.port, db.client) == ("203.0.113.25", 5432, pod.source)
    by_address = seen(lab, pod, 9000)
    assert (by_address.server, by_address.port, by_address.client) == ("203.0.113.26", 9000, pod.source)
    web = seen(lab, pod, 8443)
    assert (web.server, web.port) == ("203.0.113.27", 443)


def test_one_refusing_address_of_several_is_skipped(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    for _ in range(6):
        assert seen(lab, pod, 6000).server == "203.0.113.25"


def test_new_connections_spread_over_every_address(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    assert {seen(lab, pod, 6100).server for _ in range(6)} == {"203.0.113.25", "203.0.113.26"}


def test_an_address_that_times_out_is_passed_over_then_avoided(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    for _ in range(2):  # whichever comes first, the answering address serves it
        assert seen(lab, pod, 6200).server == "203.0.113.27"
    for _ in range(4):
        started = time.monotonic()
        assert seen(lab, pod, 6200).server == "203.0.113.27"
        assert time.monotonic() - started < 0.9  # the dropping address (1 s connect timeout) is not waited for


def test_bytes_pass_unchanged_both_ways_with_half_close(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    payload = os.urandom(4 * 1024 * 1024)
    with relayed(lab, pod, 9000, timeout=10) as (sock, reader, first):
        assert Seen.parse(first).client == pod.source
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # half-close: the server still answers, then closes its side
        echoed = reader.read()
    assert echoed == payload


def test_a_reset_is_passed_on(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    with socket_in(lab.ns("client")) as sock:
        sock.settimeout(5)
        sock.connect((pod.ip, 9100))
        assert sock.recv(1) == b"x"
        sock.sendall(b"y")  # the server answers with a reset
        with pytest.raises(ConnectionResetError):
            while sock.recv(1):
                pass


def test_debug_logs_one_line_per_connection(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, proc = relay
    seen(lab, pod, 9000)
    line = eventually(lambda: next((x for x in proc.stderr().splitlines() if "target=203.0.113.26:9000" in x), None))
    assert f"client={t.CLIENT_IP}:" in line and "address=203.0.113.26" in line and " in=" in line and " out=" in line and "closed=" in line


def test_a_changed_record_is_followed(lab: Lab, dns: Dns, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    assert seen(lab, pod, 5432).server == "203.0.113.25"
    dns.set(HOSTS.replace("203.0.113.25 db.lab.test", "203.0.113.26 db.lab.test"))
    changed = time.monotonic()
    eventually(lambda: seen(lab, pod, 5432).server == "203.0.113.26", seconds=5)
    assert time.monotonic() - changed < 1 + 1 + 1  # TTL 1 s, plus a second, plus test slack
    dns.set(HOSTS)
    eventually(lambda: seen(lab, pod, 5432).server == "203.0.113.25")


def test_a_late_name_starts_working_once_it_resolves(lab: Lab, dns: Dns, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    with pytest.raises(OSError):
        seen(lab, pod, 7000)  # accepted, then closed: there is nothing to relay to yet
    dns.set(HOSTS + "203.0.113.27 late.lab.test\n")
    late = eventually(lambda: seen(lab, pod, 7000), seconds=40)
    assert (late.server, late.port) == ("203.0.113.27", 9000)
    dns.set(HOSTS)


def test_dns_down_keeps_the_last_good_answer_and_open_connections(lab: Lab, dns: Dns, relay: tuple[Pod, Process]) -> None:
    pod, proc = relay
    with relayed(lab, pod, 9000) as (open_connection, reader, _):
        dns.stop()
        try:
            time.sleep(2.5)  # several TTLs: the proxy has tried and failed to re-resolve
            assert seen(lab, pod, 5432).server == "203.0.113.25"
            open_connection.sendall(b"still here\n")
            assert reader.readline() == b"still here\n"
            assert "keeping 203.0.113.25" in proc.stderr()
        finally:
            dns.start()


def test_sigterm_lets_open_connections_finish_then_cuts_them(lab: Lab, dns: Dns) -> None:
    with dns_pod(lab, EGRESS_DNS_PROXY_DESTINATION="9000 203.0.113.26", EGRESS_DNS_PROXY_DRAIN_TIMEOUT="1500ms") as (pod, proc):
        with relayed(lab, pod, 9000) as (sock, reader, _):
            started = time.monotonic()
            proc.popen.send_signal(15)
            time.sleep(0.3)
            with pytest.raises(ConnectionRefusedError):
                seen(lab, pod, 9000)  # no new connections
            sock.sendall(b"in flight\n")
            assert reader.readline() == b"in flight\n"  # the open one still works
            assert reader.read() == b""  # until the drain deadline cuts it
            assert 1.2 < time.monotonic() - started < 4
        assert proc.popen.wait(5) == 0
        assert "1 connection(s) cut at the drain deadline" in proc.stderr()


def test_an_idle_connection_is_closed_after_the_idle_timeout(lab: Lab, dns: Dns) -> None:
    with dns_pod(lab, EGRESS_DNS_PROXY_DESTINATION="9000 203.0.113.26", EGRESS_DNS_PROXY_IDLE_TIMEOUT="1s") as (pod, proc):
        with relayed(lab, pod, 9000) as (sock, reader, _):
            started = time.monotonic()
            assert reader.read() == b""
            assert 0.9 < time.monotonic() - started < 3
        eventually(lambda: "closed=idle_timeout" in proc.stderr())


def test_the_list_file_is_followed(lab: Lab, dns: Dns, tmp_path: Path) -> None:
    listing = tmp_path / "destination"
    listing.write_text("9000 203.0.113.26\n")
    tmp_path.chmod(0o755)
    with dns_pod(lab, EGRESS_DNS_PROXY_DESTINATION_FILE=str(listing)) as (pod, proc):
        lab.wait_for_port(pod.role, "127.0.0.1", 9000, process=proc)
        assert seen(lab, pod, 9000).server == "203.0.113.26"
        listing.write_text("9000 203.0.113.27   # moved\n5432 db.lab.test\n")
        eventually(lambda: seen(lab, pod, 9000).server == "203.0.113.27")
        assert eventually(lambda: seen(lab, pod, 5432)).server == "203.0.113.25"  # a new port
        listing.write_text("5432 db.lab.test\n9000 nonsense..name\n")
        eventually(lambda: "keeping the previous list" in proc.stderr())
        listing.write_text("5432 db.lab.test\n9191 203.0.113.26\n")  # the metrics port: refused in a reload too
        eventually(lambda: "EGRESS_METRICS_PORT: port 9191 is forwarded by EGRESS_DNS_PROXY_DESTINATION line 2 too" in proc.stderr())
        scrape = samples(http_get(lab, "node", pod.ip, 9191, "/metrics")[1])
        assert scrape[("egress_router_config_reloads_total", (("result", "rejected"),))] == 2
        assert scrape[("egress_router_config_reloads_total", (("result", "applied"),))] == 1
        listing.write_text("5432 db.lab.test\n")
        eventually(lambda: "port 9000 closed" in proc.stderr())
        with pytest.raises(ConnectionRefusedError):
            seen(lab, pod, 9000)


def test_connection_limit(lab: Lab, dns: Dns) -> None:
    with dns_pod(lab, EGRESS_DNS_PROXY_DESTINATION="9000 203.0.113.26", EGRESS_DNS_PROXY_MAX_CONNECTIONS="2") as (pod, proc):
        with relayed(lab, pod, 9000) as (_, _, one), relayed(lab, pod, 9000) as (_, _, two):
            assert one and two  # relayed
            with pytest.raises(OSError):
                seen(lab, pod, 9000)  # the third is closed at once
            assert "connection limit (2) reached" in proc.stderr()
        eventually(lambda: seen(lab, pod, 9000))  # room again


def test_probes_and_metrics_from_the_node(lab: Lab, dns: Dns) -> None:
    """The kubelet probes from the node's address, Prometheus scrapes the pod address: both reach port 9191."""
    with dns_pod(lab, EGRESS_DNS_PROXY_DESTINATION="5432 db.lab.test\n6000 multi.lab.test 5432\n9000 203.0.113.26") as (pod, proc):
        assert http_get(lab, "node", pod.ip, 9191, "/healthz") == (200, "ok\n")
        assert http_get(lab, "node", pod.ip, 9191, "/readyz") == (200, "ok\n")
        for _ in range(3):
            assert seen(lab, pod, 6000).server == "203.0.113.25"  # the refusing address fails once, then goes last
        assert seen(lab, pod, 5432).server == "203.0.113.25"
        scrape = samples(http_get(lab, "client", pod.ip, 9191, "/metrics")[1])
        assert scrape[("egress_router_tcp_connections_total", (("port", "6000"),))] == 3
        assert scrape[("egress_router_tcp_connections_total", (("port", "5432"),))] >= 1  # and the readiness check's own
        assert scrape[("egress_router_tcp_connect_failures_total", (("address", REFUSING),))] >= 1
        assert scrape[("egress_router_tcp_bytes_total", (("direction", "out"), ("port", "6000")))] > 0
        assert scrape[("egress_router_dns_lookups_total", (("result", "ok"),))] >= 2
        assert scrape[("egress_router_dns_answer_stale", (("name", "db.lab.test"),))] == 0
        assert 0 <= scrape[("egress_router_dns_answer_age_seconds", (("name", "multi.lab.test"),))] < 60
        assert ("egress_router_dns_answer_age_seconds", (("name", "203.0.113.26"),)) not in scrape  # no DNS for addresses
        assert scrape[("egress_router_build_info", (("mode", "dns-proxy"), ("version", "0.1.0")))] == 1


def test_a_metrics_port_on_a_forwarded_port_is_a_clear_error(lab: Lab) -> None:
    done = lab.run_in(
        "client",
        [sys.executable, "-m", "egress_router", "dns-proxy"],
        env=environment(EGRESS_DNS_PROXY_DESTINATION="80 203.0.113.26\n9191 203.0.113.26"),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "EGRESS_METRICS_PORT: port 9191 is forwarded by EGRESS_DNS_PROXY_DESTINATION line 2 too" in done.stderr
