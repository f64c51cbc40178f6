"""Which families have an egress default route (/proc/net/route and /proc/net/ipv6_route), and the HTTP proxy
connecting only over those: an IPv4-only router in a dual-stack cluster keeps eth0's IPv6 default route."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.addresses import IPAddress
from egress_router.config.dns_settings import load_dns_settings
from egress_router.dns_proxy.names import FollowedName
from egress_router.runtime.egress_families import (
    IPV6_PROBE,
    EgressFamilies,
    can_send_ipv6,
    egress_families,
    ipv4_default_interfaces,
    ipv6_default_interfaces,
    unserved_reason,
)
from tests.unit.proxy_harness import Harness, ok, status_of

V4_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
#: An IPv4 router after init: the default route on macvlan0, eth0 keeps its subnet.
V4_ROUTER = V4_HEADER + (
    "macvlan0\t00000000\t010CA8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t0000800A\t00000000\t0001\t0\t0\t0\t00FEFFFF\t0\t0\t0\n"
)
V4_POD = V4_HEADER + "eth0\t00000000\t0100800A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
ZERO = "0" * 32
#: eth0's IPv6 default route, and the kernel's unreachable default on lo (always listed, never used).
V6_POD = (
    f"fd000010012800000000000000000000 40 {ZERO} 00 {ZERO} 00000100 00000001 00000000 00000001     eth0\n"
    f"{ZERO} 00 {ZERO} 00 fd000010012800000000000000000001 00000400 00000003 00000000 00000003     eth0\n"
    f"{ZERO} 00 {ZERO} 00 {ZERO} ffffffff 00000001 00000000 00200200       lo\n"
)
V6_ROUTER = V6_POD.replace("00000003     eth0", "00000003 macvlan0")


def test_default_routes_are_found_with_their_interface() -> None:
    assert ipv4_default_interfaces(V4_ROUTER) == {"macvlan0"}
    assert ipv4_default_interfaces(V4_POD) == {"eth0"}
    assert ipv6_default_interfaces(V6_POD) == {"eth0"}  # not lo's reject route
    assert ipv6_default_interfaces(V6_ROUTER) == {"macvlan0"}


def test_a_route_that_is_down_or_rejects_is_no_default_route() -> None:
    assert ipv4_default_interfaces(V4_HEADER + "macvlan0\t00000000\t010CA8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n") == set()
    assert ipv4_default_interfaces(V4_HEADER + "macvlan0\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0\n") == set()
    assert ipv6_default_interfaces(V6_ROUTER.replace("00000003 macvlan0", "00000202 macvlan0")) == set()


@pytest.mark.parametrize(
    ("v4", "v6", "served"),
    [
        (V4_ROUTER, V6_POD, frozenset({4})),  # the gap: an IPv4-only router in a dual-stack cluster
        (V4_POD, V6_ROUTER, frozenset({6})),
        (V4_ROUTER, V6_ROUTER, frozenset({4, 6})),
        (V4_ROUTER, None, frozenset({4})),  # no ipv6_route: IPv6 is off in this kernel
        (V4_POD, V6_POD, None),  # init has not run (or not a router pod): nothing filtered
        (None, None, None),
        (V4_HEADER, "", None),
    ],
)
def test_the_served_families(v4: str | None, v6: str | None, served: frozenset[int] | None) -> None:
    assert egress_families(v4, v6) == served


fields = st.text(alphabet="0123456789abcdefABCDEFxyz-", max_size=34)
lines = st.lists(fields, max_size=12).map(" ".join)


@given(st.lists(lines, max_size=6).map("\n".join))
def test_the_parsers_take_any_text(text: str) -> None:
    assert ipv4_default_interfaces(text) <= {line.split()[0] for line in text.splitlines() if line.split()}
    found = ipv6_default_interfaces(text)
    assert all(name != "lo" for name in found)


@given(st.sampled_from(["eth0", "macvlan0", "net1"]), st.integers(0, 0xFFFF), st.booleans())
def test_an_ipv4_default_route_is_recognised_by_its_flags(name: str, flags: int, default: bool) -> None:
    destination = "00000000" if default else "0000800A"
    text = V4_HEADER + f"{name}\t{destination}\t010CA8C0\t{flags:04X}\t0\t0\t0\t00000000\t0\t0\t0\n"
    expected = {name} if default and flags & 1 and not flags & 0x200 else set()
    assert ipv4_default_interfaces(text) == expected


def test_the_routes_are_read_again_once_the_interval_has_passed() -> None:
    files = {"/proc/net/route": V4_POD, "/proc/net/ipv6_route": V6_POD}
    now = [0.0]
    both = [ip_address("2001:db8::1"), ip_address("203.0.113.5")]
    families = EgressFamilies(read=files.get, clock=lambda: now[0], every=60.0)
    assert families.keep(both) == both
    files["/proc/net/route"] = V4_ROUTER  # init ran
    now[0] = 59.0
    assert families.keep(both) == both
    now[0] = 60.0
    assert families.keep(both) == [ip_address("203.0.113.5")]


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip to ask the kernel independently")
def test_whether_ipv6_can_be_sent_is_the_routing_tables_answer() -> None:
    """The probe sends nothing; it agrees with `ip -6 route get` in this namespace (the lab test sees both answers)."""
    routed = subprocess.run(["ip", "-6", "route", "get", IPV6_PROBE[0]], capture_output=True, check=False).returncode == 0
    assert can_send_ipv6() == routed


def test_the_ipv6_route_is_asked_about_once_at_start() -> None:
    files = {"/proc/net/route": V4_ROUTER, "/proc/net/ipv6_route": V6_POD}
    now, asked = [0.0], []
    families = EgressFamilies(read=files.get, clock=lambda: now[0], probe=lambda: not asked.append(1))
    now[0] = 120.0
    assert families.current() == frozenset({4})  # eth0's IPv6 default route: AAAA asked for, but not connected to
    assert families.sends_ipv6 and asked == [1]
    assert not EgressFamilies(read=files.get, probe=lambda: False).sends_ipv6


def test_the_reason_names_the_missing_family() -> None:
    assert unserved_reason([ip_address("2001:db8::1")]) == "this router has no IPv6 egress address (EGRESS_SOURCE)"
    assert unserved_reason([ip_address("203.0.113.5")]) == "this router has no IPv4 egress address (EGRESS_SOURCE)"


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness("*")
    harness.names.update({"dual.test": ["2001:db8::10", "203.0.113.10", "2001:db8::11"], "v6.test": ["2001:db8::10", "2001:db8::11"]})
    files = {"/proc/net/route": V4_ROUTER, "/proc/net/ipv6_route": V6_POD}
    harness.proxy.pool.families = EgressFamilies(read=files.get)
    yield harness
    harness.close()


def test_a_name_with_both_families_is_reached_over_the_served_one_only(h: Harness) -> None:
    client = h.client()
    client.send(b"GET http://dual.test/ HTTP/1.1\r\nHost: dual.test\r\n\r\n")
    server = h.server()
    assert [s.address for s in h.servers] == [("203.0.113.10", 80)]  # no IPv6 attempt, not even a late one
    server.send(ok())
    h.settle()
    assert status_of(client.take()) == 200


@pytest.mark.parametrize("target", ["http://[2001:db8::10]/", "http://v6.test/"])
def test_an_address_of_an_unserved_family_gets_a_502_that_says_why(h: Harness, target: str) -> None:
    _, response = h.ask(f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert status_of(response) == 502
    assert b"this router has no IPv6 egress address (EGRESS_SOURCE)" in response
    assert h.servers == []


def test_connect_to_an_unserved_family_gets_the_502_too(h: Harness) -> None:
    _, response = h.ask(b"CONNECT [2001:db8::10]:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(response) == 502
    assert b"no IPv6 egress address" in response
    assert h.servers == []


def test_the_dns_proxy_passes_over_addresses_of_an_unserved_family() -> None:
    settings = load_dns_settings(destination="5432 db.example.test")
    files = {"/proc/net/route": V4_ROUTER, "/proc/net/ipv6_route": V6_POD}
    name = FollowedName(settings.targets[0], settings, None, ipv6=True, families=EgressFamilies(read=files.get))
    name.addresses = (ip_address("2001:db8::10"), ip_address("203.0.113.10"), ip_address("2001:db8::11"))

    async def order() -> list[IPAddress]:
        return name.order()

    assert asyncio.run(order()) == [ip_address("203.0.113.10")]
    name.addresses = (ip_address("2001:db8::10"),)
    assert asyncio.run(order()) == []  # the forwarder then logs unserved_reason
