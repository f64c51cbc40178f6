"""An IPv4-only router in proxy mode in a dual-stack cluster: `eth0` keeps its IPv6 default route, and neither the
HTTP proxy nor the DNS proxy may use it (that traffic would leave from the cluster's address, not EGRESS_SOURCE)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab
from egress_router.lab import topology as t
from egress_router.lab.dns import DNS, DnsServer
from egress_router.lab.topology import Process, environment, run, v6
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import get_through, log_line, start_proxy
from tests.lab.waiting import eventually

SERVER = t.PROTECTED_SERVERS[0]
HOSTS = f"{SERVER} dual.lab.test\n{v6(SERVER)} dual.lab.test\n"
#: RFC 6724's table without its ULA label, so glibc sorts IPv6 first here (the pod's eth0 address would otherwise lose
#: to IPv4 by label): without the fix, every request would try IPv6 first.
GAI_CONF = """
label ::1/128 0
label ::/0 1
label ::ffff:0:0/96 4
precedence ::1/128 50
precedence ::/0 40
precedence ::ffff:0:0/96 35
"""
PROBE = ["nft", "-f", "-"]
#: A counter of every IPv6 TCP packet the router pod sends: it must stay at 0.
PROBE_RULES = """
table inet probe {
    chain out {
        type filter hook output priority 0;
        meta nfproto ipv6 meta l4proto tcp counter
    }
}
"""


def web_lab() -> Iterator[Lab]:
    """The dual-stack lab with the site's DNS (a name with both families) and a web server on both families' port 8000."""
    with Lab(ipv6=True).build(router=False) as built:
        DnsServer.site(built, HOSTS).start()
        built.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", "--http", "[::]:8000", ready_line="ready")
        yield built


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from web_lab()


def ipv4_only_router(lab: Lab, mode: str) -> Pod:
    """A router pod with only an IPv4 EGRESS_SOURCE, its resolver set to prefer IPv6, and the IPv6 packet counter."""
    pod = new_pod(lab)
    done = pod.init(EGRESS_SOURCE=pod.source, EGRESS_GATEWAY=t.GATEWAY_IP, EGRESS_ROUTER_MODE=mode)
    assert done.returncode == 0, done.stderr
    assert "dev eth0" in run(lab.exec_argv(pod.role, ["ip", "-6", "route", "show", "default"])).stdout  # the gap's premise
    lab.write_etc(pod.role, "resolv.conf", f"nameserver {DNS}\noptions timeout:1 attempts:1\n")
    lab.write_etc(pod.role, "gai.conf", GAI_CONF)
    subprocess.run(lab.exec_argv(pod.role, PROBE), input=PROBE_RULES, text=True, check=True)
    return pod


@pytest.fixture(scope="module")
def router(lab: Lab) -> Iterator[tuple[Pod, Process]]:
    pod = ipv4_only_router(lab, "http-proxy")
    proc = start_proxy(lab, pod.role, user=65534, EGRESS_HTTP_PROXY_DESTINATION="*", EGRESS_HTTP_PROXY_WORKERS="1")
    yield pod, proc
    lab.remove_namespace(pod.role)


#: The DNS proxy's destinations: a name with both families, and an IPv6 literal.
DNS_TARGETS = f"6100 dual.lab.test 5432\n6101 {v6(SERVER)} 5432\n"


@pytest.fixture(scope="module")
def relay(lab: Lab) -> Iterator[tuple[Pod, Process]]:
    pod = ipv4_only_router(lab, "dns-proxy")
    env = environment(EGRESS_DNS_PROXY_DESTINATION=DNS_TARGETS, EGRESS_DNS_PROXY_CONNECT_TIMEOUT="3s")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "egress_router", "dns-proxy"]
    proc = lab.start_in(pod.role, argv, env=env)
    lab.wait_for_port(pod.role, "127.0.0.1", 6100, process=proc)
    yield pod, proc
    lab.remove_namespace(pod.role)


def curl(lab: Lab, pod: Pod, url: str) -> tuple[int, str]:
    return get_through(lab, f"{pod.ip}:8080", url)


def ipv6_packets(lab: Lab, pod: Pod) -> int:
    listed = run(lab.exec_argv(pod.role, ["nft", "list", "chain", "inet", "probe", "out"])).stdout
    return int(listed.split("packets ", 1)[1].split()[0])


def test_a_name_with_both_families_is_reached_over_ipv4_only(lab: Lab, router: tuple[Pod, Process]) -> None:
    pod, _ = router
    for _ in range(3):  # happy eyeballs would start with IPv6 (RFC 6724 order) every time
        code, body = curl(lab, pod, "http://dual.lab.test:8000/")
        assert code == 200, body
        assert json.loads(body)["client"] == pod.source
    assert ipv6_packets(lab, pod) == 0


def test_an_ipv6_literal_gets_a_502_that_says_why(lab: Lab, router: tuple[Pod, Process]) -> None:
    pod, proc = router
    code, body = curl(lab, pod, f"http://[{v6(SERVER)}]:8000/")
    assert code == 502
    assert "this router has no IPv6 egress address (EGRESS_SOURCE)" in body
    assert "status=502" in log_line(proc, f"target=http://[{v6(SERVER)}]:8000/")
    assert ipv6_packets(lab, pod) == 0


def test_the_dns_proxy_relays_a_name_with_both_families_over_ipv4_only(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, _ = relay
    for _ in range(4):  # both families of the name would be used in turn (RFC 8305 interleaving)
        seen = eventually(lambda: lab.tcp("client", pod.ip, 6100, timeout=5), 8)
        assert (seen.server, seen.client) == (SERVER, pod.source)
    assert ipv6_packets(lab, pod) == 0


def test_the_dns_proxy_closes_a_connection_to_an_ipv6_literal_and_says_why(lab: Lab, relay: tuple[Pod, Process]) -> None:
    pod, proc = relay
    with pytest.raises(OSError):
        lab.tcp("client", pod.ip, 6101, timeout=5)
    why = f"port 6101: no address of {v6(SERVER)} answered (this router has no IPv6 egress address (EGRESS_SOURCE))"
    eventually(lambda: why in proc.stderr(), 5, proc.stderr)
    assert ipv6_packets(lab, pod) == 0
