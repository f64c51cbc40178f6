from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress_router.config.cluster_networks import parse_cluster_networks
from egress_router.config.errors import ConfigError
from egress_router.config.init_settings import load_init_settings


def test_empty_means_none() -> None:
    assert parse_cluster_networks(None) == ()
    assert parse_cluster_networks("  ") == ()


def test_commas_or_spaces_and_duplicates_folded() -> None:
    assert parse_cluster_networks("10.128.0.0/14, 172.30.0.0/16 10.128.0.0/14") == (
        IPv4Network("10.128.0.0/14"),
        IPv4Network("172.30.0.0/16"),
    )


def test_every_bad_cidr_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cluster_networks("10.128.0.1/14,0.0.0.0/0,10.0.0.0,10.0.0.0/33,300.0.0.0/8,fd00::1/8,fd00::,fd00::/129,::/0,fd00:::/8")
    assert [str(p) for p in caught.value.problems] == [
        'EGRESS_CLUSTER_NETWORKS: has host bits set (did you mean 10.128.0.0/14?): "10.128.0.1/14"',
        'EGRESS_CLUSTER_NETWORKS: a /0 network would send everything through eth0 instead of the egress interface: "0.0.0.0/0"',
        'EGRESS_CLUSTER_NETWORKS: not a CIDR (expected A.B.C.D/len, e.g. 172.30.0.0/16): "10.0.0.0"',
        'EGRESS_CLUSTER_NETWORKS: invalid prefix length (must be 1-32): "10.0.0.0/33"',
        'EGRESS_CLUSTER_NETWORKS: not an IPv4 address (octet 300 out of range 0-255): "300.0.0.0/8"',
        'EGRESS_CLUSTER_NETWORKS: has host bits set (did you mean fd00::/8?): "fd00::1/8"',
        'EGRESS_CLUSTER_NETWORKS: not a CIDR (expected addr::/len, e.g. fd00:10:96::/112): "fd00::"',
        'EGRESS_CLUSTER_NETWORKS: invalid prefix length (must be 1-128): "fd00::/129"',
        'EGRESS_CLUSTER_NETWORKS: a /0 network would send everything through eth0 instead of the egress interface: "::/0"',
        "EGRESS_CLUSTER_NETWORKS: not an IPv6 address (At most one '::' permitted in 'fd00:::'): \"fd00:::/8\"",
    ]


def test_ipv6_networks_and_both_families() -> None:
    assert parse_cluster_networks("fd00:10:128::/48 10.128.0.0/14,FD00:10:96::/112") == (
        IPv6Network("fd00:10:128::/48"),
        IPv4Network("10.128.0.0/14"),
        IPv6Network("fd00:10:96::/112"),
    )
    with pytest.raises(ConfigError) as caught:
        load_init_settings(
            source="192.168.12.99,2001:db8:12::99",
            gateway="192.168.12.1,fe80::1",
            destination="80 tcp 203.0.113.25",
            mode="init",
            cluster_networks="2001:db8::/32",
        )
    assert [str(p) for p in caught.value.problems] == [
        'EGRESS_CLUSTER_NETWORKS: contains EGRESS_SOURCE 2001:db8:12::99, which must stay on the egress interface: "2001:db8::/32"'
    ]


def test_a_network_holding_the_source_or_gateway_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_init_settings(
            source="192.168.12.99",
            gateway="192.168.12.1",
            destination="80 tcp 203.0.113.25",
            mode="init",
            cluster_networks="192.168.0.0/16",
        )
    assert [str(p) for p in caught.value.problems] == [
        'EGRESS_CLUSTER_NETWORKS: contains EGRESS_SOURCE 192.168.12.99, which must stay on the egress interface: "192.168.0.0/16"',
        'EGRESS_CLUSTER_NETWORKS: contains EGRESS_GATEWAY 192.168.12.1, which must stay on the egress interface: "192.168.0.0/16"',
    ]


@given(st.text(alphabet="0123456789abcdef:./, x", max_size=40))
def test_any_text_parses_or_says_why(text: str) -> None:
    try:
        networks = parse_cluster_networks(text)
    except ConfigError as error:
        assert all(str(p).startswith("EGRESS_CLUSTER_NETWORKS: ") for p in error.problems)
    else:
        assert all(0 < n.prefixlen <= n.max_prefixlen for n in networks)


@given(st.one_of(st.tuples(st.ip_addresses(v=4), st.integers(1, 32)), st.tuples(st.ip_addresses(v=6), st.integers(1, 128))))
def test_every_real_network_round_trips(given_network) -> None:  # type: ignore[no-untyped-def]
    address, prefix = given_network
    network = ip_network(f"{address}/{prefix}", strict=False)
    assert parse_cluster_networks(str(network)) == (network,)
