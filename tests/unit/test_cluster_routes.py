"""What stays on eth0: eth0's default route and own routes into the reply table, nameservers and cluster networks pinned."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.init.cluster_routes import (
    SCOPE_LINK,
    KernelRoute,
    NoNextHop,
    differences,
    eth0_default,
    nameserver_ways,
    pinned_routes,
    reply_table,
    same,
)
from egress_router.init.plan import REPLY_TABLE, ROUTE_PROTO

ETH0, EGRESS, LO = 2, 3, 1
DEFAULT = IPv4Network("0.0.0.0/0")
DEFAULT6 = IPv6Network("::/0")
NAMES = {LO: "lo", ETH0: "eth0", EGRESS: "macvlan0"}
CALICO_LINK = KernelRoute(IPv4Network("169.254.1.1/32"), ETH0, scope=SCOPE_LINK)
CALICO_DEFAULT = KernelRoute(DEFAULT, ETH0, IPv4Address("169.254.1.1"))
SDN_SUBNET = KernelRoute(IPv4Network("10.128.0.0/23"), ETH0, scope=SCOPE_LINK, proto=2, prefsrc=IPv4Address("10.128.0.20"))
SDN_DEFAULT = KernelRoute(DEFAULT, ETH0, IPv4Address("10.128.0.1"))
EGRESS_DEFAULT = KernelRoute(DEFAULT, EGRESS, IPv4Address("192.168.12.1"))


def test_reply_table_copies_eth0s_routes_link_routes_first() -> None:
    table = reply_table([CALICO_DEFAULT, CALICO_LINK], [], ETH0)
    assert [r.describe(NAMES) for r in table] == [
        "169.254.1.1 dev eth0 table 201 scope link",
        "default via 169.254.1.1 dev eth0 table 201",
    ]
    assert all(r.table == REPLY_TABLE and r.proto == ROUTE_PROTO for r in table)


def test_a_second_run_finds_eth0s_default_in_the_reply_table() -> None:
    first = reply_table([SDN_SUBNET, SDN_DEFAULT], [], ETH0)
    # after init: the main table's default is on the egress interface, eth0's is only in REPLY_TABLE
    again = reply_table([SDN_SUBNET, EGRESS_DEFAULT], list(first), ETH0)
    assert again == first
    assert eth0_default([EGRESS_DEFAULT], first, ETH0) == first[-1]


def test_routes_init_added_are_not_copied() -> None:
    pinned = KernelRoute(IPv4Network("172.30.0.10/32"), ETH0, IPv4Address("10.128.0.1"), proto=ROUTE_PROTO)
    assert pinned not in reply_table([SDN_SUBNET, SDN_DEFAULT, pinned], [], ETH0)
    assert len(reply_table([SDN_SUBNET, SDN_DEFAULT, pinned], [], ETH0)) == 2


def test_the_lowest_metric_default_wins() -> None:
    worse = KernelRoute(DEFAULT, ETH0, IPv4Address("10.128.0.2"), metric=200)
    better = KernelRoute(DEFAULT, ETH0, IPv4Address("10.128.0.1"), metric=100)
    assert eth0_default([worse, better], [], ETH0) == better


def test_no_default_route_on_eth0() -> None:
    with pytest.raises(NoNextHop):
        eth0_default([SDN_SUBNET, EGRESS_DEFAULT], [], ETH0)


def lookup(oif: int) -> KernelRoute:
    return KernelRoute(IPv4Network("0.0.0.0/32"), oif)


def test_nameserver_ways() -> None:
    cluster_dns, node_dns, external, local, unreachable = map(
        IPv4Address, ["172.30.0.10", "10.128.0.1", "192.168.12.53", "127.0.0.53", "198.51.100.1"]
    )
    lookups = {cluster_dns: lookup(ETH0), node_dns: lookup(ETH0), external: lookup(EGRESS), local: lookup(LO), unreachable: None}
    ways = nameserver_ways([cluster_dns, node_dns, external, local, unreachable], lookups, [SDN_SUBNET, SDN_DEFAULT], ETH0, NAMES)
    assert [(str(w.nameserver), w.keep, w.reason) for w in ways] == [
        ("172.30.0.10", True, "reached through eth0 by its default route: kept on eth0"),
        ("10.128.0.1", False, "reached through eth0 by 10.128.0.0/23 dev eth0 scope link src 10.128.0.20, which stays"),
        ("192.168.12.53", False, "reached through macvlan0, not eth0: stays there"),
        ("127.0.0.53", False, "reached through lo, not eth0: stays there"),
        ("198.51.100.1", False, "no route to it now: left alone"),
    ]


def test_pinned_routes_follow_eth0s_next_hop_and_fold_covered_nameservers() -> None:
    ways = nameserver_ways(
        [IPv4Address("172.30.0.10"), IPv4Address("10.96.0.10")],
        {IPv4Address("172.30.0.10"): lookup(ETH0), IPv4Address("10.96.0.10"): lookup(ETH0)},
        [CALICO_LINK, CALICO_DEFAULT],
        ETH0,
        NAMES,
    )
    pinned = pinned_routes(CALICO_DEFAULT, ways, [IPv4Network("172.30.0.0/16")])
    assert [r.describe(NAMES) for r in pinned] == ["172.30.0.0/16 via 169.254.1.1 dev eth0", "10.96.0.10 via 169.254.1.1 dev eth0"]
    assert all(r.proto == ROUTE_PROTO for r in pinned)


def test_onlink_next_hops_stay_onlink() -> None:
    onlink = KernelRoute(DEFAULT, ETH0, IPv4Address("10.0.0.1"), onlink=True)
    assert pinned_routes(onlink, [], [IPv4Network("10.96.0.0/12")])[0].onlink


# IPv6: a routed pod (Calico's shape) has a link-local next hop; its routes are copied and pinned the same way
CALICO6_LINK_LOCAL = KernelRoute(IPv6Network("fe80::/64"), ETH0, proto=2, metric=256)
CALICO6_DEFAULT = KernelRoute(DEFAULT6, ETH0, IPv6Address("fe80::1"), metric=1024)
EGRESS6_DEFAULT = KernelRoute(DEFAULT6, EGRESS, IPv6Address("2001:db8:12::1"), metric=1024)


def test_ipv6_reply_table_and_a_second_run() -> None:
    first = reply_table([CALICO6_LINK_LOCAL, CALICO6_DEFAULT], [], ETH0)
    assert [r.describe(NAMES) for r in first] == ["fe80::/64 dev eth0 table 201", "default via fe80::1 dev eth0 table 201"]
    assert reply_table([CALICO6_LINK_LOCAL, EGRESS6_DEFAULT], list(first), ETH0) == first
    with pytest.raises(NoNextHop):
        eth0_default([CALICO6_LINK_LOCAL, EGRESS6_DEFAULT], [], ETH0)


def test_ipv6_nameservers_and_cluster_networks_are_pinned_as_host_routes() -> None:
    dns, covered = IPv6Address("fd00:10:96::a"), IPv6Address("fd00:10:128:4::53")
    ways = nameserver_ways([dns, covered], {dns: lookup(ETH0), covered: lookup(ETH0)}, [CALICO6_LINK_LOCAL, CALICO6_DEFAULT], ETH0, NAMES)
    assert [w.keep for w in ways] == [True, True]
    pinned = pinned_routes(CALICO6_DEFAULT, ways, [IPv6Network("fd00:10:128::/48")])
    assert [r.describe(NAMES) for r in pinned] == ["fd00:10:128::/48 via fe80::1 dev eth0", "fd00:10:96::a via fe80::1 dev eth0"]


routes = st.builds(
    KernelRoute,
    dst=st.sampled_from([DEFAULT, IPv4Network("10.0.0.0/8"), IPv4Network("10.1.0.0/16"), IPv4Network("169.254.1.1/32")]),
    oif=st.sampled_from([ETH0, EGRESS]),
    gateway=st.sampled_from([None, IPv4Address("10.0.0.1"), IPv4Address("169.254.1.1")]),
    scope=st.sampled_from([0, SCOPE_LINK]),
    table=st.sampled_from([254, REPLY_TABLE]),
)


@given(st.lists(routes, max_size=6), st.lists(routes, max_size=6))
def test_differences_turn_current_into_wanted(current: list[KernelRoute], wanted: list[KernelRoute]) -> None:
    remove, add = differences(current, wanted)
    after = {same(r) for r in current if r not in remove} | {same(r) for r in add}
    assert after == {same(r) for r in wanted}
    assert differences(wanted, wanted) == ([], [])
