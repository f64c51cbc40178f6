"""Both proxies over IPv6, end to end: the dual-stack lab (`Lab(ipv6=True)`), the site's DNS answering AAAA from
its IPv6 address, the origin servers reporting the source address they saw.

Router pods are set up by the real dual-stack `init` in proxy mode (both families' egress sources and gateways);
the proxies themselves are the real commands, unprivileged.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from egress_router.lab import Lab, Seen
from egress_router.lab import topology as t
from egress_router.lab.dns import DNS6, DnsServer
from egress_router.lab.netns import family_of, socket_in
from egress_router.lab.topology import Process, environment, run, v6
from tests.lab.conftest import Pod, new_pod
from tests.lab.http_helpers import get_through, log_line, read_head, start_proxy, status_of
from tests.lab.waiting import eventually

V6_A, V6_B, V6_DENIED = (v6(s) for s in t.PROTECTED_SERVERS)  # 2001:db8:113::25, ::26, ::27
BLACKHOLE6 = "2001:db8:113::61"  # the site firewall drops everything to it: connecting times out
HOSTS = f"""
{V6_A} v6only.lab.test
203.0.113.25 dual.lab.test
{V6_B} dual.lab.test
203.0.113.25 broken6.lab.test
{BLACKHOLE6} broken6.lab.test
::ffff:203.0.113.27 mapped.lab.test
64:ff9b::10.128.0.10 nat64.lab.test
::1 loop6.lab.test
fe80::1 ll6.lab.test
"""
UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The dual-stack lab; the site's DNS server on its IPv6 address; an origin server on both families."""
    with Lab(ipv6=True).build(router=False) as built:
        built.ip("server", "addr", "add", f"{BLACKHOLE6}/64", "dev", "eth0", "nodad")
        run(built.exec_argv("gw", ["nft", "insert", "rule", "inet", "site6", "forward", "ip6", "daddr", BLACKHOLE6, "drop"]))
        DnsServer.site(built, HOSTS, ipv6=True).start()
        built.python_in("server", "egress_router.lab.http_server", "--http", "0.0.0.0:8000", "--http", "[::]:8000", ready_line="ready")
        yield built


def router_pod(lab: Lab, mode: str) -> Pod:
    """A router pod in a proxy mode, set up by the dual-stack `init` (both families' egress addresses); names resolved
    by the site's DNS over IPv6."""
    pod = new_pod(lab)
    done = pod.init(
        EGRESS_SOURCE=f"{pod.source},{v6(pod.source)}", EGRESS_GATEWAY=f"{t.GATEWAY_IP},{v6(t.GATEWAY_IP)}", EGRESS_ROUTER_MODE=mode
    )
    assert done.returncode == 0, done.stderr
    lab.write_etc(pod.role, "resolv.conf", f"nameserver {DNS6}\noptions timeout:1 attempts:1\n")
    return pod


# HTTP proxy ----------------------------------------------------------------------------------------

ACL = f"""
!10.0.0.0/8
!{V6_DENIED}                 # an IPv6 address
!203.0.113.27                # an IPv4 address: its IPv6 spellings are denied too
*.lab.test
2001:db8:113::/64
203.0.113.0/24
"""


@pytest.fixture(scope="module")
def http_proxy(lab: Lab) -> Iterator[tuple[Pod, Process]]:
    pod = router_pod(lab, "http-proxy")
    proc = start_proxy(lab, pod.role, user=65534, EGRESS_HTTP_PROXY_DESTINATION=ACL, EGRESS_HTTP_PROXY_WORKERS="1")
    yield pod, proc
    lab.remove_namespace(pod.role)


def curl(lab: Lab, pod: Pod, url: str) -> tuple[int, str]:
    """A GET through the proxy, which the client pod reaches over IPv6."""
    return get_through(lab, f"[{v6(pod.ip)}]:8080", url)


def connect(lab: Lab, pod: Pod, proxy_address: str, target: str) -> tuple[int, Seen | None]:
    """CONNECT through the proxy; then the whoami server's line through the tunnel."""
    with socket_in(lab.ns("client"), family_of(proxy_address)) as sock:
        sock.settimeout(10)
        sock.connect((proxy_address, 8080))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status = status_of(read_head(sock))
        if status != 200:
            return status, None
        return status, Seen.parse(sock.makefile("rb").readline())


def test_get_an_ipv6_literal(lab: Lab, http_proxy: tuple[Pod, Process]) -> None:
    pod, proc = http_proxy
    code, body = curl(lab, pod, f"http://[{V6_A}]:8000/path")
    assert code == 200, body
    seen = json.loads(body)
    assert (seen["client"], seen["server"], seen["host"]) == (v6(pod.source), V6_A, f"[{V6_A}]:8000")
    line = log_line(proc, f"target=http://[{V6_A}]:8000/path")
    assert f"client=[{v6(t.CLIENT_IP)}]:" in line and "status=200" in line


def test_get_a_name_with_only_an_aaaa_record(lab: Lab, http_proxy: tuple[Pod, Process]) -> None:
    pod, _ = http_proxy
    code, body = curl(lab, pod, "http://v6only.lab.test:8000/")
    assert code == 200, body
    seen = json.loads(body)
    assert (seen["client"], seen["server"], seen["host"]) == (v6(pod.source), V6_A, "v6only.lab.test:8000")


def test_a_black_holed_ipv6_address_costs_a_quarter_second_not_the_connect_timeout(lab: Lab, http_proxy: tuple[Pod, Process]) -> None:
    pod, _ = http_proxy
    for _ in range(3):
        started = time.monotonic()
        code, body = curl(lab, pod, "http://broken6.lab.test:8000/")
        assert code == 200, body
        assert json.loads(body)["client"] in (pod.source, v6(pod.source))
        assert time.monotonic() - started < 2  # the connect timeout is 10 s


def test_connect_to_an_ipv6_literal_and_to_an_aaaa_name(lab: Lab, http_proxy: tuple[Pod, Process]) -> None:
    pod, _ = http_proxy
    for proxy_address, target in ((v6(pod.ip), f"[{V6_A}]:443"), (pod.ip, "v6only.lab.test:443")):
        status, seen = connect(lab, pod, proxy_address, target)
        assert status == 200 and seen is not None
        assert (seen.server, seen.port, seen.client) == (V6_A, 443, v6(pod.source))


def test_an_ipv4_mapped_literal_goes_out_as_ipv4(lab: Lab, http_proxy: tuple[Pod, Process]) -> None:
    pod, _ = http_proxy
    code, body = curl(lab, pod, "http://[::ffff:203.0.113.25]:8000/")
    assert code == 200, body
    assert (json.loads(body)["client"], json.loads(body)["server"]) == (pod.source, "203.0.113.25")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"http://[{V6_DENIED}]:8000/", f"{V6_DENIED}: line 3: !{V6_DENIED}"),
        ("http://[::ffff:203.0.113.27]:8000/", "::ffff:cb00:711b (IPv4 203.0.113.27): line 4: !203.0.113.27"),
        ("http://mapped.lab.test:8000/", "mapped.lab.test resolves to ::ffff:cb00:711b (IPv4 203.0.113.27): line 4: !203.0.113.27"),
        ("http://nat64.lab.test:8000/", "line 2: !10.0.0.0/8 (it carries the IPv4 address 10.128.0.10)"),
        ("http://[64:ff9b::203.0.113.27]:8000/", "line 4: !203.0.113.27 (it carries the IPv4 address 203.0.113.27)"),
        ("http://loop6.lab.test:8080/", "loop6.lab.test resolves to ::1: ::1 is loopback, link-local or unspecified"),
        ("http://ll6.lab.test:8000/", "fe80::1 is loopback, link-local or unspecified"),
        ("http://[::1]:8080/", "::1: no rule allows it (default deny)"),
    ],
)
def test_ipv6_denials_and_ipv6_spellings_of_denied_ipv4(lab: Lab, http_proxy: tuple[Pod, Process], url: str, reason: str) -> None:
    pod, _ = http_proxy
    code, body = curl(lab, pod, url)
    assert code == 403 and reason in body, body


# DNS proxy -----------------------------------------------------------------------------------------

TARGETS = f"""
5432 v6only.lab.test           # a name with only an AAAA record
8080 {V6_B} 80                 # an IPv6 literal
6100 dual.lab.test 5432        # A and AAAA: both families used
6200 broken6.lab.test 5432     # the IPv6 address drops packets
"""


@pytest.fixture(scope="module", params=["on", "off"], ids=["splice", "copy"])
def dns_proxy(lab: Lab, request: pytest.FixtureRequest) -> Iterator[tuple[Pod, Process]]:
    pod = router_pod(lab, "dns-proxy")
    env = environment(
        EGRESS_DNS_PROXY_DESTINATION=TARGETS,
        EGRESS_DNS_PROXY_DEBUG="1",
        EGRESS_DNS_PROXY_SPLICE=request.param,
        EGRESS_DNS_PROXY_CONNECT_TIMEOUT="3s",
    )
    proc = lab.start_in(pod.role, [*UNPRIVILEGED, sys.executable, "-m", "egress_router", "dns-proxy"], env=env)
    lab.wait_for_port(pod.role, "127.0.0.1", 5432, process=proc)
    yield pod, proc
    lab.remove_namespace(pod.role)


def relayed(lab: Lab, pod: Pod, port: int, *, over_ipv6: bool = False) -> Seen:
    """What the server saw of a connection through the relay, from the client pod."""
    return eventually(lambda: lab.tcp("client", v6(pod.ip) if over_ipv6 else pod.ip, port, timeout=5), 8)


def test_a_name_with_only_an_aaaa_record_is_relayed_over_ipv6(lab: Lab, dns_proxy: tuple[Pod, Process]) -> None:
    pod, _ = dns_proxy
    seen = relayed(lab, pod, 5432)
    assert (seen.server, seen.port, seen.client) == (V6_A, 5432, v6(pod.source))


def test_an_ipv6_literal_destination(lab: Lab, dns_proxy: tuple[Pod, Process]) -> None:
    pod, _ = dns_proxy
    seen = relayed(lab, pod, 8080)
    assert (seen.server, seen.port, seen.client) == (V6_B, 80, v6(pod.source))


def test_both_families_of_a_name_are_used(lab: Lab, dns_proxy: tuple[Pod, Process]) -> None:
    pod, _ = dns_proxy
    seen = [relayed(lab, pod, 6100) for _ in range(6)]
    assert {(s.server, s.client) for s in seen} == {("203.0.113.25", pod.source), (V6_B, v6(pod.source))}


def test_clients_reach_the_relay_over_ipv6_and_are_logged_in_brackets(lab: Lab, dns_proxy: tuple[Pod, Process]) -> None:
    pod, proc = dns_proxy
    seen = relayed(lab, pod, 8080, over_ipv6=True)
    assert (seen.server, seen.client) == (V6_B, v6(pod.source))
    eventually(lambda: f"client=[{v6(t.CLIENT_IP)}]:" in proc.stderr(), 5, proc.stderr)


def test_a_black_holed_ipv6_address_is_passed_over_then_avoided(lab: Lab, dns_proxy: tuple[Pod, Process]) -> None:
    pod, _ = dns_proxy
    for _ in range(4):
        started = time.monotonic()
        seen = relayed(lab, pod, 6200)
        assert (seen.server, seen.client) == ("203.0.113.25", pod.source)
        assert time.monotonic() - started < 1.5  # the connect timeout is 3 s
